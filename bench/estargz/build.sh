#!/usr/bin/env bash
# Builds the eStargz peer of the provisioning sweep (methods estargz and
# estargz-opt) from Debian bookworm packages, without any Go module download:
#
#   bench/estargz/build.sh [OUT_DIR]     # default: target/estargz
#
# OUT_DIR/containerd-stargz-grpc  the stargz remote snapshotter (daemon/main.go
#                                 over golang-github-containerd-stargz-snapshotter-dev)
# OUT_DIR/ctr-remote              Debian's stargz-snapshotter ctr-remote (convert,
#                                 optimize = workload-optimized conversion, rpull)
#
# Only the bench needs this (CI does not): it installs golang-go, the Go sources
# and stargz-snapshotter with apt when missing. k8s.io/cri-api is not packaged:
# stub/ declares the one record the snapshotter's resolver refers to.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-$ROOT/target/estargz}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

pkgs=(golang-go golang-github-containerd-stargz-snapshotter-dev stargz-snapshotter fuse3)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "build.sh: needs root to install ${missing[*]}" >&2; exit 1; }
    echo "installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A GOPATH build: the stub first, then Debian's /usr/share/gocode.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/gopath/src/starlight-bench"
cp -a "$HERE/stub/." "$WORK/gopath/src/"
cp -a "$HERE/daemon" "$WORK/gopath/src/starlight-bench/stargz"
export GO111MODULE=off GOFLAGS= GOPROXY=off GOTOOLCHAIN=local
export GOPATH="$WORK/gopath:/usr/share/gocode"
export GOCACHE=${GOCACHE:-$OUT/.gocache}
cd "$WORK/gopath/src/starlight-bench/stargz"
go build -trimpath -o "$OUT/containerd-stargz-grpc" .
ln -sf "$(command -v ctr-remote)" "$OUT/ctr-remote"
"$OUT/containerd-stargz-grpc" -version
