#!/usr/bin/env bash
# Starlight demo: provisions a real image (redis from Debian packages, whose
# entrypoint prints READY once `redis-cli ping` answers) through plain
# containerd (ctr pull + ctr run, overlayfs) and through Starlight
# (starlightd + proxy), both ways a user has: `starlight pull`, and the
# containerd-native pull (`starlight rpull`: containerd's client pull with
# the image labels CRI sets, answered by starlightd's remote snapshotter
# from one bundle; kubelet's CRI PullImage takes the same path), each
# followed by ctr run --snapshotter starlight; fresh and as an update from
# v1 to v2, and prints the times to the ready line side by side.
#
# Run as root on Debian bookworm: sudo scripts/demo.sh
#   DEMO_IMAGE=nginx   another corpus image (redis, nginx, postgres, mariadb, python, node)
#   DEMO_RTT=50ms      round-trip time of the emulated link (default 50ms;
#                      DEMO_RTT=loopback: no link, everything on 127.0.0.1)
#   DEMO_RATE=100mbit  rate of the emulated link
# The first run builds the image from Debian packages (debootstrap + apt,
# a few minutes; cached in target/bench-corpus). Everything it starts
# (registry, proxy, containerd, starlightd, link namespaces) is stopped on
# exit, also on Ctrl-C; its files live in a temporary directory that is
# removed (keep it with KEEP=1).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ -t 1 ]]; then
    step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
    step() { printf '\n==> %s\n' "$*"; }
fi
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (sudo $0): it installs packages, runs containerd and network namespaces"

IMAGE=${DEMO_IMAGE:-redis}
RTT=${DEMO_RTT:-50ms}
RATE=${DEMO_RATE:-100mbit}
export RUST_LOG=${RUST_LOG:-warn}

step "Checking and installing dependencies"
"$ROOT/scripts/setup.sh"
# shellcheck source=scripts/cargo-env.sh
source "$ROOT/scripts/cargo-env.sh"

step "Building release binaries (starlight, starlight-proxy, starlightd, starlight-bench)"
cargo build --release -p starlight-tools -p starlight-proxy -p starlight-worker -p starlight-bench
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
BIN=$TARGET_DIR/release
BENCH=$BIN/starlight-bench

WORK=$(mktemp -d /var/tmp/starlight-demo.XXXXXX)
SWEEP_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # starlight-bench stops everything it started when it gets SIGTERM.
    if [[ -n $SWEEP_PID ]] && kill -0 "$SWEEP_PID" 2>/dev/null; then
        kill -TERM "$SWEEP_PID" 2>/dev/null || true
        wait "$SWEEP_PID" 2>/dev/null || true
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

step "Building the $IMAGE image, v1 and v2, from Debian packages (cached in target/bench-corpus)"
"$BENCH" corpus build --images "$IMAGE" --starlight "$BIN/starlight"

link_args=(--rtt "$RTT" --rate "$RATE" --skip-calibration)
where="an emulated link (RTT $RTT, $RATE)"
if [[ $RTT == loopback ]] || [[ ! -e /dev/net/tun ]]; then
    link_args=(--loopback)
    where="loopback (no emulated link)"
fi
step "Provisioning $IMAGE through containerd and through Starlight over $where"
echo "fresh: empty worker, provision $IMAGE:v2; update: $IMAGE:v1 present, provision $IMAGE:v2"
"$BENCH" sweep --images "$IMAGE" --methods containerd,starlight,starlight-rpull,wget --scenarios fresh,update \
    --runs 1 "${link_args[@]}" --bin-dir "$BIN" --work-dir "$WORK/work" --out "$WORK/results" \
    >"$WORK/sweep.out" 2>"$WORK/sweep.err" &
SWEEP_PID=$!
wait "$SWEEP_PID" || { cat "$WORK/sweep.err" >&2; die "the provisioning runs failed"; }
SWEEP_PID=

step "Time from the provisioning command to the ready line"
awk -F'\t' '
    /^#/ || $1 == "image" { next }
    { key = $3; t[key, $2] = ($7 == "true") ? sprintf("%.2f s", $8) : "failed"
      mb[key, $2] = ($10 == "") ? "" : sprintf("%.1f MB", $10 / 1e6); seen[key] = 1
      raw[key, $2] = $8; ok[key, $2] = ($7 == "true") }
    END {
        printf "%-8s %-12s %-16s %-17s %-18s %-10s\n", "", "containerd", "starlight pull", "starlight rpull", "(bundle download)", "speedup"
        n = split("fresh update", order, " ")
        for (i = 1; i <= n; i++) {
            s = order[i]; if (!(s in seen)) continue
            sp = (ok[s, "containerd"] && ok[s, "starlight"]) ? sprintf("%.1fx", raw[s, "containerd"] / raw[s, "starlight"]) : "-"
            if (ok[s, "containerd"] && ok[s, "starlight-rpull"]) sp = sp sprintf(" / %.1fx", raw[s, "containerd"] / raw[s, "starlight-rpull"])
            printf "%-8s %-12s %-16s %-17s %-18s %-10s\n", s, t[s, "containerd"], t[s, "starlight"], t[s, "starlight-rpull"], t[s, "wget"], sp
            printf "%-8s %-12s %-16s %-17s %-18s\n", "", mb[s, "containerd"], mb[s, "starlight"], mb[s, "starlight-rpull"], mb[s, "wget"]
        }
    }' "$WORK/results/runs.tsv"
if grep -q $'\tfalse\t' "$WORK/results/runs.tsv"; then
    echo
    echo "failed runs:"
    awk -F'\t' '$7 == "false" { print "  " $2 " " $3 ": " $15 }' "$WORK/results/runs.tsv" | cut -c1-300
fi

step "Done: everything stopped and $WORK removed on exit"
