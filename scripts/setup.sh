#!/usr/bin/env bash
# Installs what Starlight needs to build, test and run its demo on Debian
# bookworm, and only what is missing. Idempotent; run as root.
#
# Build: Rust (rustup, preinstalled), a C toolchain, libclang (bindgen for
# RocksDB's bindings), protoc, and Debian's librocksdb (linked instead of
# compiling RocksDB's C++, see .cargo/config.toml; it pulls in snappy, lz4,
# zstd, bz2 and zlib).
# Run and test: containerd + runc, a registry, skopeo and umoci to build and
# push images, busybox-static for test images, fuse3, systemd (systemd-analyze
# verify of the starlightd unit), and small utilities.
set -euo pipefail

BUILD_PKGS=(build-essential pkg-config libclang-dev protobuf-compiler librocksdb-dev)
RUN_PKGS=(containerd runc docker-registry fuse3 skopeo umoci busybox-static
          debootstrap iproute2 curl jq ca-certificates tar zstd gzip attr
          systemd fonts-dejavu-core e2fsprogs mount util-linux libc-bin)

log() { printf '[setup] %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "scripts/setup.sh must run as root (try: sudo $0)" >&2
    exit 1
fi

missing=()
for pkg in "${BUILD_PKGS[@]}" "${RUN_PKGS[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "all Debian packages present"
fi

# Rust comes from rustup (the project needs a newer toolchain than Debian's).
# shellcheck source=scripts/cargo-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/cargo-env.sh"
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found (PATH, ~/.cargo, or the sudo user's ~/.cargo)." >&2
    echo "Install Rust with rustup (https://rustup.rs), e.g.:" >&2
    echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y" >&2
    exit 1
fi
log "$(cargo --version)"

# Installing docker-registry and containerd may start their system services
# (registry on :5000, containerd on /run/containerd/containerd.sock). The
# demo and the tests never use them: they run private instances on free
# loopback ports and sockets in temporary directories, so nothing here
# stops or reconfigures a system service.
# Overlay and FUSE must be available for containerd's snapshotter and the worker.
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || log "warning: no overlayfs in this kernel"
log "ok"
