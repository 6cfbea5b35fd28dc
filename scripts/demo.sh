#!/usr/bin/env bash
# Starlight demo: start a private registry, build a small multi-layer image
# with real tools (umoci, skopeo), convert it to the Starlight layer format
# (gzip and zstd), index it into the proxy's directory database, and print
# the table of contents summary and the size overhead.
#
# Run as root on Debian bookworm: sudo scripts/demo.sh
# Everything it starts is stopped on exit (also on Ctrl-C); its files live in
# a temporary directory that is removed (keep it with KEEP=1).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ -t 1 ]]; then
    step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
    step() { printf '\n==> %s\n' "$*"; }
fi
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (sudo $0): it installs packages and runs a registry"

# Only warnings from the binaries' logs: their reports go to stdout.
export RUST_LOG=${RUST_LOG:-warn}

step "Checking and installing dependencies"
"$ROOT/scripts/setup.sh"
# shellcheck source=scripts/cargo-env.sh
source "$ROOT/scripts/cargo-env.sh"

step "Building release binaries (starlight, starlight-proxy)"
cargo build --release -p starlight-tools -p starlight-proxy
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
STARLIGHT=$TARGET_DIR/release/starlight
PROXY=$TARGET_DIR/release/starlight-proxy

WORK=$(mktemp -d /tmp/starlight-demo.XXXXXX)
REGISTRY_PID=
PROXY_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $PROXY_PID ]] && kill -0 "$PROXY_PID" 2>/dev/null; then
        kill "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
    fi
    if [[ -n $REGISTRY_PID ]] && kill -0 "$REGISTRY_PID" 2>/dev/null; then
        kill "$REGISTRY_PID" 2>/dev/null || true
        wait "$REGISTRY_PID" 2>/dev/null || true
    fi
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "demo files kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "Starting a private docker-registry on loopback"
port=
for _ in $(seq 50); do
    candidate=$((20000 + RANDOM % 30000))
    if [[ -z $(ss -Hltn "sport = :$candidate") ]]; then port=$candidate; break; fi
done
[[ -n $port ]] || die "no free port found"
REG=127.0.0.1:$port
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/registry
  delete:
    enabled: true
http:
  addr: $REG
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 </dev/null &
REGISTRY_PID=$!
for _ in $(seq 100); do
    curl -fsS "http://$REG/v2/" >/dev/null 2>&1 && break
    kill -0 "$REGISTRY_PID" 2>/dev/null || { cat "$WORK/registry.log" >&2; die "docker-registry exited"; }
    sleep 0.1
done
curl -fsS "http://$REG/v2/" >/dev/null || die "registry did not answer on $REG"
echo "registry: http://$REG (pid $REGISTRY_PID, storage $WORK/registry)"

step "Building a 3-layer test image with umoci"
OCI=$WORK/oci
B=$WORK/bundle
umoci init --layout "$OCI"
umoci new --image "$OCI:v1"

# Layer 1: busybox and its applets, /etc basics, a log file deleted later.
umoci unpack --image "$OCI:v1" "$B" >/dev/null
R=$B/rootfs
mkdir -p "$R"/{bin,etc,tmp,root,var/log,usr/share/demo}
chmod 1777 "$R/tmp"
chmod 700 "$R/root"
cp /bin/busybox "$R/bin/busybox"
for applet in $(/bin/busybox --list); do
    [[ $applet == busybox ]] || ln -s busybox "$R/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\ndemo:x:1000:1000:demo:/home/demo:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\ndemo:x:1000:\n' >"$R/etc/group"
cp /etc/services /etc/protocols "$R/etc/"
echo "starlight demo, version 1" >"$R/usr/share/demo/readme.txt"
echo "old log line" >"$R/var/log/demo.log"
umoci repack --image "$OCI:v1" "$B"
rm -rf "$B"

# Layer 2: application files owned by uid 1000, licences as bulk text.
umoci unpack --image "$OCI:v1" "$B" >/dev/null
R=$B/rootfs
mkdir -p "$R/home/demo/app" "$R/usr/share/licenses"
cp /usr/share/common-licenses/* "$R/usr/share/licenses/" 2>/dev/null || true
cat >"$R/home/demo/app/hello.sh" <<'EOF'
#!/bin/sh
echo "hello from a Starlight image: $(cat /usr/share/demo/readme.txt)"
EOF
chmod 755 "$R/home/demo/app/hello.sh"
: >"$R/home/demo/app/empty"
ln "$R/home/demo/app/hello.sh" "$R/home/demo/app/hello-hardlink.sh"
chown -R 1000:1000 "$R/home/demo"
umoci repack --image "$OCI:v1" "$B"
rm -rf "$B"

# Layer 3: replace a file of layer 1 and delete another (a whiteout).
umoci unpack --image "$OCI:v1" "$B" >/dev/null
R=$B/rootfs
echo "starlight demo, version 2 (replaced in layer 3)" >"$R/usr/share/demo/readme.txt"
rm "$R/var/log/demo.log"
umoci repack --image "$OCI:v1" "$B"
rm -rf "$B"

umoci config --image "$OCI:v1" --config.cmd /home/demo/app/hello.sh \
    --config.env PATH=/bin --config.user 1000:1000
umoci stat --image "$OCI:v1" | sed -n '1,5p'

step "Pushing it to the registry as $REG/demo:v1 (skopeo)"
skopeo copy -q --dest-tls-verify=false "oci:$OCI:v1" "docker://$REG/demo:v1"

step "Converting to the Starlight format: demo:v1-starlight (gzip)"
"$STARLIGHT" convert --plain-http "$REG/demo:v1" "$REG/demo:v1-starlight"

step "Converting to the Starlight format: demo:v1-starlight-zstd (zstd)"
"$STARLIGHT" convert --plain-http --compression zstd "$REG/demo:v1" "$REG/demo:v1-starlight-zstd"

step "Indexing demo:v1-starlight into the directory database ($WORK/db)"
"$PROXY" index --plain-http --db "$WORK/db" "$REG/demo:v1-starlight"

step "Merged table of contents (summary)"
"$PROXY" toc --db "$WORK/db" "$REG/demo:v1-starlight" --summary

step "Merged table of contents, entries outside /bin (mode, uid:gid, size, sha256, layer, path)"
"$PROXY" toc --db "$WORK/db" "$REG/demo:v1-starlight" | grep -v ' /bin/'

step "Indexing demo:v1-starlight-zstd too (same files, other layer digests)"
"$PROXY" index --plain-http --db "$WORK/db" "$REG/demo:v1-starlight-zstd" | head -3

step "Serving delta bundles over QUIC (starlight-proxy serve, self-signed TLS, token 'demo')"
QPORT=$((20000 + RANDOM % 20000))
"$PROXY" serve --listen "127.0.0.1:$QPORT" --registry "$REG" --plain-http --db "$WORK/db" \
    --self-signed "$WORK/certs" --token demo >"$WORK/proxy.out" 2>"$WORK/proxy.log" &
PROXY_PID=$!
for _ in $(seq 100); do
    grep -q "listening on" "$WORK/proxy.out" 2>/dev/null && break
    kill -0 "$PROXY_PID" 2>/dev/null || die "starlight-proxy serve exited: $(cat "$WORK/proxy.log")"
    sleep 0.1
done
grep -q "listening on" "$WORK/proxy.out" || die "starlight-proxy serve did not start"
cat "$WORK/proxy.out"
fetch() { "$STARLIGHT" fetch --proxy "127.0.0.1:$QPORT" --ca "$WORK/certs/cert.pem" --token demo "$@"; }

step "A fresh worker fetches demo:v1-starlight (every distinct content once, verified)"
fetch "$REG/demo:v1-starlight" -o "$WORK/fresh.bundle"

step "A worker holding demo:v1-starlight-zstd fetches demo:v1-starlight (nothing to send but metadata)"
fetch --from "$REG/demo:v1-starlight-zstd" "$REG/demo:v1-starlight" -o "$WORK/update.bundle"

step "Size overhead (sum of compressed layer sizes, from the registry's manifests)"
layers_size() {
    curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "http://$REG/v2/demo/manifests/$1" | jq '[.layers[].size] | add'
}
orig=$(layers_size v1)
printf '%-22s %12s %10s\n' image bytes "vs v1"
printf '%-22s %12d %10s\n' "demo:v1 (original)" "$orig" "-"
for tag in v1-starlight v1-starlight-zstd; do
    size=$(layers_size "$tag")
    printf '%-22s %12d %+9.2f%%\n' "demo:$tag" "$size" "$(echo "$size $orig" | awk '{print ($1 / $2 - 1) * 100}')"
done

step "Done: registry stopped and $WORK removed on exit"
