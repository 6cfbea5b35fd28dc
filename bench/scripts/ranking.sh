#!/usr/bin/env bash
# Time to ready with and without ranking (issue 6), over an emulated WAN link.
#
#   bench/scripts/ranking.sh            # redis,nginx,python at 150 ms / 100 Mbit/s
#   IMAGES=redis REPS=1 TRACE_RUNS=2 bench/scripts/ranking.sh
#
# Per image, on one link (starlight-bench link up) with the corpus registry and
# a proxy with a fresh database in the cloud namespace:
#   1. trace: a fresh worker (containerd + starlightd in the worker namespace)
#      runs `starlight trace --runs TRACE_RUNS` (pulls with ordering disabled,
#      records first opens until READY, uploads to the proxy, which ranks);
#      then the proxy builds the ranked bundle plan once (untimed fetch from
#      the cloud namespace), as the unordered plan was built by the traces.
#   2. REPS times, alternating: unranked = `starlight pull --trace --unordered`,
#      ranked = `starlight pull --trace`, each on a fresh worker, then
#      `ctr run --snapshotter starlight` until the READY line. Time to ready is
#      measured from the pull command to that line. starlightd's TakeTrace
#      (taken at READY) gives each first open and the ms it waited for its
#      content: an open is blocked when it waited >= 1 ms.
# Results: $OUT.tsv (one row per run) and $OUT.txt (summary), both with the
# command line; $OUT-traces/ holds the ranks, the trace runs' output and each
# timed run's first opens (TakeTrace JSON). Everything started is stopped on exit, failure included.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
IMAGES=${IMAGES:-redis,nginx,python}
REPS=${REPS:-2}
TRACE_RUNS=${TRACE_RUNS:-2}
RTT=${RTT:-150ms}
RATE=${RATE:-100mbit}
CORPUS=${CORPUS:-$ROOT/target/bench-corpus}
OUT_ARG=${OUT:+OUT=$OUT }
OUT=${OUT:-$ROOT/bench/results/ranking-${RTT}}
TIMEOUT=${TIMEOUT:-180}
TAG=${TAG:-v2-starlight}
TOKEN=starlight-bench
COMMAND="${OUT_ARG}IMAGES=$IMAGES REPS=$REPS TRACE_RUNS=$TRACE_RUNS RTT=$RTT RATE=$RATE TAG=$TAG bench/scripts/ranking.sh"

[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
mkdir -p /var/tmp
WORK=$(mktemp -d /var/tmp/starlight-ranking.XXXXXX)
BIN=$WORK/bin
mkdir -p "$BIN"
# Private copies: a rebuild of the shared target dir must not change them mid-run.
for b in starlight starlightd starlight-proxy starlight-bench; do
    cp "$ROOT/target/release/$b" "$BIN/$b"
done

LINK_PID= REG_PID= PROXY_PID= CTRD_PID= SLD_PID= WDIR= WNS= CNS= WNSPACE=

log() { echo "[$(date -u +%T)] $*" >&2; }

# Waits (up to $1 s) until the command in "${@:2}" succeeds.
wait_for() {
    local t=$1; shift
    local end=$((SECONDS + t))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.1
    done
}

# Stops pid $1 (TERM, then KILL after $2 s) if it is alive.
stop_pid() {
    local pid=$1 grace=${2:-5}
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    local end=$((SECONDS + grace))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Background daemons are started with nsenter directly (not through these
# functions), so that $! is the daemon's own pid (nsenter execs it).
in_w() { nsenter --net="/run/netns/$WNS" -- "$@"; }
in_c() { nsenter --net="/run/netns/$CNS" -- "$@"; }
ctr_w() { in_w ctr --address "$WDIR/containerd.sock" --namespace "$WNSPACE" "$@"; }

stop_worker() {
    [ -n "$WDIR" ] || return 0
    if [ -n "$CTRD_PID" ] && kill -0 "$CTRD_PID" 2>/dev/null; then
        for c in $(ctr_w task ls -q 2>/dev/null); do
            timeout 30 ctr --address "$WDIR/containerd.sock" --namespace "$WNSPACE" task kill -s SIGKILL "$c" >/dev/null 2>&1 || true
            timeout 30 ctr --address "$WDIR/containerd.sock" --namespace "$WNSPACE" task delete "$c" >/dev/null 2>&1 || true
        done
    fi
    stop_pid "$SLD_PID" 3; SLD_PID=
    stop_pid "$CTRD_PID" 5; CTRD_PID=
    # Shims serving this worker's (unique) containerd namespace, by pid.
    for p in $(pgrep -f -- "-namespace $WNSPACE " || true); do
        if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "containerd-shim-runc-v2 -namespace $WNSPACE "; then
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    # Unmount everything below the worker dir, deepest first.
    awk -v d="$WDIR" '$5 == d || index($5, d "/") == 1 {print length($5), $5}' /proc/self/mountinfo \
        | sort -rn | cut -d' ' -f2- | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "/run/containerd/runc/$WNSPACE"
    mkdir -p "$WORK/logs"
    cp "$WDIR/starlightd.log" "$WORK/logs/$(basename "$WDIR").starlightd.log" 2>/dev/null || true
    rm -rf "$WDIR" || { sleep 1; rm -rf "$WDIR"; }
    WDIR=
}

cleanup() {
    local rc=$?
    set +e
    stop_worker
    stop_pid "$PROXY_PID" 3
    stop_pid "$REG_PID" 5
    stop_pid "$LINK_PID" 10
    rm -rf "$BIN" "$WORK/cloud/proxy-db" "$WORK/cloud/warm.bundle" "$WORK/pending"
    log "done (exit $rc); logs in $WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- link ----------------------------------------------------------------
"$BIN/starlight-bench" link up --rtt "$RTT" --rate "$RATE" >"$WORK/link.out" 2>"$WORK/link.err" &
LINK_PID=$!
wait_for 30 grep -q '^worker ' "$WORK/link.out" || { cat "$WORK/link.err" >&2; exit 1; }
read -r _ WNS WADDR _ CNS CADDR <"$WORK/link.out"
log "link $RTT $RATE: worker $WNS ($WADDR), cloud $CNS ($CADDR)"

# ---- cloud: registry + proxy (fresh database) ------------------------------
C=$WORK/cloud
mkdir -p "$C/registry" "$C/certs"
cat >"$C/registry/registry.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $CORPUS/registry
http:
  addr: 0.0.0.0:5000
YML
nsenter --net="/run/netns/$CNS" -- docker-registry serve "$C/registry/registry.yml" >"$C/registry.log" 2>&1 &
REG_PID=$!
wait_for 20 in_c curl -fsS -o /dev/null --max-time 2 "http://$CADDR:5000/v2/"
"$BIN/starlight-proxy" gen-cert --out "$C/certs" --name "$CADDR" --name 127.0.0.1 --name localhost >/dev/null
# Twice the path's bandwidth-delay product, at least 2 MiB (as the sweep).
WINDOW=$(python3 - "$RTT" "$RATE" <<'PY'
import re, sys
def num(s, units):
    m = re.fullmatch(r"([0-9.]+)([a-z]*)", s.lower())
    return float(m.group(1)) * units[m.group(2)]
rtt = num(sys.argv[1], {"": 1e-3, "ms": 1e-3, "s": 1.0})
rate = num(sys.argv[2], {"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9})
print(max(int(2 * rate / 8 * rtt), 2 << 20))
PY
)
printf '[serve]\nsend_window = %s\n' "$WINDOW" >"$C/proxy.toml"
RUST_LOG=${PROXY_LOG:-info} nsenter --net="/run/netns/$CNS" -- "$BIN/starlight-proxy" serve --config "$C/proxy.toml" \
    --listen "$CADDR:4433" --registry "$CADDR:5000" --plain-http --db "$C/proxy-db" \
    --cert "$C/certs/cert.pem" --key "$C/certs/key.pem" --token "$TOKEN" >"$C/proxy.log" 2>&1 &
PROXY_PID=$!
wait_for 30 grep -q 'listening on' "$C/proxy.log" || { tail "$C/proxy.log" >&2; exit 1; }
log "registry and proxy up (send window $WINDOW)"

# Untimed fetch from the cloud namespace: the proxy indexes the image and
# builds the (current) ordered plan.
warm() {
    in_c "$BIN/starlight" fetch --proxy "$CADDR:4433" --ca "$C/certs/cert.pem" --token "$TOKEN" \
        --no-verify -o "$C/warm.bundle" "$1" >/dev/null
    rm -f "$C/warm.bundle"
}

# ---- worker ----------------------------------------------------------------
N=0
start_worker() {
    N=$((N + 1))
    WDIR=$WORK/w$N
    WNSPACE=ranking-$$-$N
    mkdir -p "$WDIR"
    cat >"$WDIR/containerd.toml" <<TOML
version = 2
root = "$WDIR/root"
state = "$WDIR/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$WDIR/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "$WDIR/opt"

[proxy_plugins.starlight]
  type = "snapshot"
  address = "$WDIR/starlight-snapshotter.sock"
TOML
    nsenter --net="/run/netns/$WNS" -- containerd --config "$WDIR/containerd.toml" >"$WDIR/containerd.log" 2>&1 &
    CTRD_PID=$!
    wait_for 30 ctr --address "$WDIR/containerd.sock" version
    cat >"$WDIR/starlightd.toml" <<TOML
proxy = "$CADDR:4433"
server_name = "$CADDR"
ca_file = "$C/certs/cert.pem"
token = "$TOKEN"
state_dir = "$WDIR/starlight"
containerd_socket = "$WDIR/containerd.sock"
namespace = "$WNSPACE"
snapshotter_socket = "$WDIR/starlight-snapshotter.sock"
api_socket = "$WDIR/starlight-api.sock"
TOML
    RUST_LOG=${STARLIGHTD_LOG:-info} nsenter --net="/run/netns/$WNS" -- "$BIN/starlightd" run --config "$WDIR/starlightd.toml" \
        >"$WDIR/starlightd.log" 2>&1 &
    SLD_PID=$!
    wait_for 30 "$BIN/starlight" images --api "$WDIR/starlight-api.sock" \
        || { tail "$WDIR/starlightd.log" >&2; return 1; }
}

# One timed run on the current worker: prints a TSV row.
measure() { # IMAGE_NAME MODE REF REP
    in_w python3 - "$BIN/starlight" "$WDIR" "$WNSPACE" "$3" "$2" "$TIMEOUT" "$1" "$4" "$WORK/traces" <<'PY'
import json, re, socket, subprocess, sys, threading, time
starlight, wdir, ns, ref, mode, timeout, name, rep, tracedir = sys.argv[1:]
timeout = float(timeout)
api = f"{wdir}/starlight-api.sock"
ctr = ["ctr", "--address", f"{wdir}/containerd.sock", "--namespace", ns]
pull = [starlight, "pull", "--api", api, "--trace"] + (["--unordered"] if mode == "unranked" else []) + [ref]
cid = f"rank-{mode}-{rep}"
t0 = time.monotonic()
subprocess.run(pull, check=True, timeout=timeout, stdout=subprocess.DEVNULL)
t_pull = time.monotonic() - t0
err = open(f"{wdir}/{cid}.stderr", "w")
p = subprocess.Popen(ctr + ["run", "--rm", "--net-host", "--snapshotter", "starlight", ref, cid],
                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)
ready, done = threading.Event(), threading.Event()
def reader():
    for line in p.stdout:
        if line.strip() == "READY":
            ready.set()
    done.set()
threading.Thread(target=reader, daemon=True).start()
end = time.monotonic() + timeout
while not ready.is_set() and not done.is_set() and time.monotonic() < end:
    ready.wait(0.005)
t_ready = time.monotonic() - t0
ok = ready.is_set()
def call(req):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(api)
    s.sendall((json.dumps(req) + "\n").encode())
    buf = b""
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        buf += b
    s.close()
    return json.loads(buf.decode().strip().splitlines()[-1])
resp = call({"TakeTrace": {"image": ref}})
records = resp.get("Trace", [])
subprocess.run(ctr + ["task", "kill", "-s", "SIGKILL", cid], timeout=30,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    p.wait(30)
except subprocess.TimeoutExpired:
    p.kill()
blocked = [r for r in records if r["wait_ms"] >= 1.0]
if not ok:
    print(f"{name} {mode}: no READY: " + open(f"{wdir}/{cid}.stderr").read()[-500:], file=sys.stderr)
    t_ready = float("nan")
# The whole body's arrival (starlightd logs it), to tell link variance
# from ordering: waits at most 60 s more.
body = float("nan")
end = time.monotonic() + 60
while time.monotonic() < end:
    m = re.search(r"bundle received .*time_to_end=([0-9.]+)s", open(f"{wdir}/starlightd.log").read())
    if m:
        body = float(m.group(1))
        break
    time.sleep(0.1)
worst = max(records, key=lambda r: r["wait_ms"], default={"path": "-", "wait_ms": 0})
json.dump(records, open(f"{tracedir}/{name}-{mode}-{rep}.json", "w"), indent=1)
print("\t".join(map(str, [name, mode, rep, f"{t_ready:.3f}", f"{t_pull:.3f}", f"{body:.3f}",
                          len(records), len(blocked), f"{sum(r['wait_ms'] for r in blocked):.0f}",
                          f"{worst['wait_ms']:.0f}", worst["path"]])))
PY
}

# ---- runs ------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
TSV_TMP=$WORK/runs.tsv
{
    echo "# $COMMAND"
    printf 'image\tmode\trep\tready_s\tpull_s\tbody_s\topens\tblocked\tblocked_ms\tmax_wait_ms\tmax_wait_path\n'
} >"$TSV_TMP"
mkdir -p "$WORK/traces"
IFS=, read -r -a IMGS <<<"$IMAGES"
for img in "${IMGS[@]}"; do
    REF="$CADDR:5000/$img:$TAG"
    log "$img: warming the proxy"
    warm "$REF"
    log "$img: tracing ($TRACE_RUNS runs)"
    start_worker
    if ! in_w "$BIN/starlight" trace --api "$WDIR/starlight-api.sock" --config "$WDIR/starlightd.toml" \
        --net-host --pending-dir "$WORK/pending" --runs "$TRACE_RUNS" --ready '^READY$' --timeout "$TIMEOUT" \
        "$REF" 2>>"$WORK/trace-$img.err" | tee "$WORK/trace-$img.out" >&2; then
        why=$(grep -E 'WARN|error' "$WORK/trace-$img.err" | tail -2 | sed 's/^.*Z *//' | tr '\n' ' ')
        log "$img: tracing failed, skipped: $why"
        echo "# $img: tracing failed, not measured: $why" >>"$TSV_TMP"
        cp "$WORK/trace-$img.err" "$WORK/traces/trace-$img.err"
        stop_worker
        continue
    fi
    in_w "$BIN/starlight" ranks --config "$WDIR/starlightd.toml" "$REF" >"$WORK/ranks-$img.txt"
    head -4 "$WORK/ranks-$img.txt" >&2
    stop_worker
    warm "$REF"
    for rep in $(seq 1 "$REPS"); do
        for mode in unranked ranked; do
            start_worker
            row=$(measure "$img" "$mode" "$REF" "$rep")
            log "$row"
            echo "$row" >>"$TSV_TMP"
            stop_worker
        done
    done
done

# ---- report ----------------------------------------------------------------
cp "$TSV_TMP" "$OUT.tsv"
rm -rf "$OUT-traces"
mkdir -p "$OUT-traces"
cp "$WORK"/ranks-*.txt "$WORK"/trace-*.out "$WORK"/traces/* "$OUT-traces/" 2>/dev/null || true
python3 - "$OUT.tsv" "$COMMAND" "$RTT" "$RATE" >"$OUT.txt" <<'PY'
import math, statistics, sys
path, command, rtt, rate = sys.argv[1:]
lines = open(path).read().splitlines()
rows = [l.split("\t") for l in lines if not l.startswith("#")][1:]
notes = [l for l in lines[1:] if l.startswith("#")]
by = {}
for r in rows:
    by.setdefault((r[0], r[1]), []).append(r)
def med(rs, i):
    v = [float(r[i]) for r in rs if not math.isnan(float(r[3]))]
    return statistics.median(v) if v else float("nan")
print(f"# {command}")
print(f"# time to READY (s, from `starlight pull` to the ready line; median of runs), {rtt} RTT, {rate}")
print(f"# blocked = first opens that waited >= 1 ms for content (starlightd TakeTrace at READY)")
print(f"# ratio = ranked / unranked; body = whole bundle received (s, median), for link variance")
print(f"{'image':<10}{'unranked s':>11}{'ranked s':>10}{'ratio':>7}{'blk unr':>9}{'ms unr':>8}{'blk rnk':>9}{'ms rnk':>8}{'opens':>7}{'body s':>8}{'runs':>6}")
for img in dict.fromkeys(r[0] for r in rows):
    u, k = by.get((img, "unranked"), []), by.get((img, "ranked"), [])
    tu, tk = med(u, 3), med(k, 3)
    print(f"{img:<10}{tu:>11.2f}{tk:>10.2f}{tk / tu:>7.2f}{med(u, 7):>9.0f}{med(u, 8):>8.0f}"
          f"{med(k, 7):>9.0f}{med(k, 8):>8.0f}{med(u, 6):>7.0f}{med(u + k, 5):>8.2f}{len(u):>4}/{len(k)}")
for n in notes:
    print(n)
print()
print("per run: image mode rep ready_s pull_s body_s opens blocked blocked_ms max_wait_ms max_wait_path")
for r in rows:
    print("  " + "  ".join(r))
PY
cat "$OUT.txt"
