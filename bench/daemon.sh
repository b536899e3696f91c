#!/usr/bin/env bash
# daemon.sh - the sync daemon's numbers: `s4kv sync --interval 1s` against
# s3rver on loopback (tools/s3rver.sh), driven over HTTP by wrk (Debian's
# package, installed when missing and run as root) with the Lua scripts in
# bench/wrk/. It measures
#   - HTTP PUT and GET throughput and latency (p50, p99) at 1, 16 and 64
#     connections (PUT: 100-byte values, random keys of 100,000, default
#     durability: each PUT is fdatasync'd, group-committed across
#     connections; GET: random keys of 10,000 loaded first, all hits);
#   - upload lag p50 / p99 under a steady write load (8 connections, each
#     PUT then 10 ms of pause), from /metrics s4kv_upload_lag_quantile_seconds
#     of a daemon that saw only that load, and its S3 requests per hour;
#   - the compaction pause after a load of overwrites (1,000 keys), from
#     s4kv_compaction_pause_seconds / _max_seconds;
#   - S3 requests per hour while idle (s4kv_s3_requests_total over
#     BENCH_DAEMON_IDLE seconds, default 60, once S3 has caught up): must be 0.
# It prints a Markdown table and writes bench/results/daemon.md and
# daemon.json (BENCH_DAEMON_OUT=path/prefix elsewhere). Exit 1 when a run
# failed or the idle daemon sent an S3 request.
#
#   bench/daemon.sh [path/to/s4kv]      # default $S4KV_BIN, then build/s4kv
#
# BENCH_DAEMON_SECONDS (default 10) is the length of each wrk run. About
# 3 minutes in all. Client and daemon share the machine: on 2 cores wrk's
# threads take CPU from the daemon, so the throughput is a floor.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
BIN=${1:-${S4KV_BIN:-$root/build/s4kv}}
DUR=${BENCH_DAEMON_SECONDS:-10}
IDLE=${BENCH_DAEMON_IDLE:-60}
OUT=${BENCH_DAEMON_OUT:-$root/bench/results/daemon}
STEADY=${BENCH_DAEMON_STEADY:-30}
load0=$(cut -d' ' -f1 /proc/loadavg)

die() { echo "daemon.sh: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "$BIN is not built (run: make)"
command -v python3 >/dev/null || die "python3 is needed to load the GET keys"
command -v curl >/dev/null || die "curl is needed to read /metrics"
if ! command -v wrk >/dev/null; then
    [ "$(id -u)" = 0 ] || die "wrk is missing (as root: apt-get install wrk)"
    echo "daemon.sh: installing wrk" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } ||
        die "cannot install wrk"
fi

# shellcheck source=../tools/s3rver.sh
. "$root/tools/s3rver.sh"
work=$(mktemp -d "${TMPDIR:-/tmp}/s4kv-bench-daemon.XXXXXX")
DPID=
ADDR=
stop_daemon() {
    [ -n "$DPID" ] || return 0
    kill -TERM "$DPID" 2>/dev/null
    local rc=0
    wait "$DPID" || rc=$?
    DPID=
    return $rc
}
cleanup() {
    stop_daemon || true
    s3rver_stop
    rm -rf -- "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
s3rver_start s4kv-bench || die "s3rver did not start"

# start_daemon NAME: a fresh database $work/NAME synced to s3://s4kv-bench/NAME/.
start_daemon() {
    local dir=$work/$1 i
    "$BIN" -d "$dir" --s3 "s3://s4kv-bench/$1/" sync --listen 127.0.0.1:0 --interval 1s \
        --log "$work/$1.log" &
    DPID=$!
    for ((i = 0; i < 300; i++)); do
        if [ -s "$dir/SYNC_ADDR" ]; then ADDR=$(head -n 1 "$dir/SYNC_ADDR"); return 0; fi
        kill -0 "$DPID" 2>/dev/null || { cat "$work/$1.log" >&2; die "s4kv sync exited"; }
        sleep 0.05
    done
    die "s4kv sync wrote no SYNC_ADDR in 15 s"
}

# metric NAME: the value of the /metrics line NAME (labels included).
metric() {
    curl -sf "http://$ADDR/metrics" | awk -v n="$1" '$1 == n { print $2; exit }'
}

# run_wrk SCRIPT CONNS [SECONDS]: sets REQS RATE P50 P99 (ms) BAD.
run_wrk() {
    local conns=$2 secs=${3:-$DUR} threads=2 line
    [ "$conns" -lt 2 ] && threads=1
    line=$(wrk -t "$threads" -c "$conns" -d "${secs}s" --timeout 10s -s "$here/wrk/$1" \
        "http://$ADDR" 2>&1 | grep '^RESULT ') || die "wrk $1 -c $conns failed"
    eval "$(echo "$line" | sed 's/^RESULT //')"
    REQS=$requests
    RATE=$(awk -v r="$requests" -v d="$duration_us" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
    P50=$(awk -v v="$p50_us" 'BEGIN { printf "%.2f", v / 1000 }')
    P99=$(awk -v v="$p99_us" 'BEGIN { printf "%.2f", v / 1000 }')
    BAD=$((non2xx + errors))
}

fail=0
rows=()
json=()
add_row() { # name conns rate p50 p99 bad
    rows+=("| $1 | $2 | $3 | $4 | $5 | $6 |")
    json+=("{\"op\":\"$1\",\"connections\":$2,\"requests_per_s\":$3,\"p50_ms\":$4,\"p99_ms\":$5,\"errors\":$6}")
    [ "$6" = 0 ] || fail=1
}

# ---- 1. steady write load on a fresh daemon: upload lag, S3 requests
echo "daemon.sh: steady load (${STEADY} s)" >&2
start_daemon steady
sleep 2
r0=$(metric s4kv_s3_requests_total)
DELAY_MS=10 KEYS=100000 run_wrk put.lua 8 "$STEADY"
steady_rate=$RATE
steady_bad=$BAD
[ "$BAD" = 0 ] || fail=1
r1=$(metric s4kv_s3_requests_total)
lag50=$(metric 's4kv_upload_lag_quantile_seconds{quantile="0.5"}')
lag99=$(metric 's4kv_upload_lag_quantile_seconds{quantile="0.99"}')
lagmax=$(metric s4kv_upload_lag_max_seconds)
uploads=$(metric s4kv_uploads_total)
load_rph=$(awk -v a="$r0" -v b="$r1" -v s="$STEADY" 'BEGIN { printf "%.0f", (b - a) * 3600 / s }')
stop_daemon || { echo "daemon.sh: the steady daemon did not stop cleanly" >&2; fail=1; }

# ---- 2. throughput and latency
start_daemon main
echo "daemon.sh: loading 10,000 keys for the GETs" >&2
python3 - "$ADDR" <<'EOF' || die "loading the GET keys failed"
import http.client, struct, sys
host, port = sys.argv[1].rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port), timeout=60)
for base in range(0, 10000, 1000):
    body = b"".join(struct.pack("<BII", 1, len(k), 100) + k + b"g" * 100
                    for k in (b"bench%d" % i for i in range(base, base + 1000)))
    c.request("POST", "/v1/batch", body)
    r = c.getresponse()
    r.read()
    if r.status != 204:
        sys.exit("batch: HTTP %d" % r.status)
EOF
for c in 1 16 64; do
    echo "daemon.sh: PUT, $c connections (${DUR} s)" >&2
    KEYS=100000 run_wrk put.lua "$c"
    add_row PUT "$c" "$RATE" "$P50" "$P99" "$BAD"
done
for c in 1 16 64; do
    echo "daemon.sh: GET, $c connections (${DUR} s)" >&2
    KEYS=10000 run_wrk get.lua "$c"
    add_row GET "$c" "$RATE" "$P50" "$P99" "$BAD"
done

# ---- 3. compaction after overwrites
echo "daemon.sh: overwrites of 1,000 keys, then compaction" >&2
c0=$(metric s4kv_compactions_total)
KEYS=1000 run_wrk put.lua 16
overwrite_rate=$RATE
[ "$BAD" = 0 ] || fail=1
for ((i = 0; i < 100; i++)); do
    [ "$(metric s4kv_compactions_total)" != "$c0" ] && break
    sleep 0.2
done
compactions=$(( $(metric s4kv_compactions_total) - c0 ))
pause=$(metric s4kv_compaction_pause_seconds)
pausemax=$(metric s4kv_compaction_pause_max_seconds)
garbage=$(metric s4kv_garbage_ratio)
[ "$compactions" -gt 0 ] || { echo "daemon.sh: no compaction after the overwrites" >&2; fail=1; }

# ---- 4. idle
for ((i = 0; i < 100; i++)); do
    [ "$(metric s4kv_upload_pending_seconds)" = "0.000" ] && break
    sleep 0.2
done
sleep 3 # a tick or two after the last upload
echo "daemon.sh: idle (${IDLE} s)" >&2
i0=$(metric s4kv_s3_requests_total)
sleep "$IDLE"
i1=$(metric s4kv_s3_requests_total)
idle=$((i1 - i0))
idle_rph=$(awk -v n="$idle" -v s="$IDLE" 'BEGIN { printf "%.0f", n * 3600 / s }')
[ "$idle" = 0 ] || { echo "daemon.sh: $idle S3 requests while idle" >&2; fail=1; }
stop_daemon || { echo "daemon.sh: the daemon did not stop cleanly" >&2; fail=1; }

# ---- report
cpus=$(nproc)
fs=$(df -T "$work" | awk 'NR == 2 { print $2 }')
when=$(date -u +%Y-%m-%dT%H:%MZ)
ms() { awk -v v="$1" 'BEGIN { printf "%.0f", v * 1000 }'; }
md=$(
    echo "## s4kv sync: HTTP and S3 ($when, $cpus CPUs, load average $load0 at the start, s3rver on loopback, wrk on the same machine)"
    echo
    echo "wrk runs of ${DUR} s; keep-alive; PUT = 100-byte value, default durability (fdatasync per"
    echo "acknowledged write, group commit; the database is on $fs); GET = hits on 10,000 keys."
    echo
    echo "| op | connections | requests/s | p50 ms | p99 ms | non-2xx + errors |"
    echo "|---|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
    echo
    echo "| sync loop (--interval 1s) | value |"
    echo "|---|---|"
    echo "| upload lag p50 / p99 / max, steady load of $steady_rate PUT/s for ${STEADY} s | $(ms "$lag50") / $(ms "$lag99") / $(ms "$lagmax") ms ($uploads uploads) |"
    echo "| S3 requests per hour under that load | $load_rph |"
    echo "| S3 requests per hour idle (${IDLE} s measured) | $idle_rph ($idle requests) |"
    echo "| compaction pause last / max after overwrites ($overwrite_rate PUT/s, 1,000 keys) | $(ms "$pause") / $(ms "$pausemax") ms ($compactions compaction(s); garbage ratio at the end $garbage) |"
)
echo "$md"
mkdir -p "$(dirname "$OUT")"
echo "$md" >"$OUT.md"
{
    echo "{\"when\":\"$when\",\"cpus\":$cpus,\"loadavg_start\":$load0,\"filesystem\":\"$fs\",\"wrk_seconds\":$DUR,\"http\":["
    (IFS=,; echo "${json[*]}")
    echo "],\"steady_put_per_s\":$steady_rate,\"steady_errors\":$steady_bad,"
    echo "\"upload_lag_p50_s\":$lag50,\"upload_lag_p99_s\":$lag99,\"upload_lag_max_s\":$lagmax,\"uploads\":$uploads,"
    echo "\"s3_requests_per_hour_load\":$load_rph,\"s3_requests_per_hour_idle\":$idle_rph,\"idle_seconds\":$IDLE,"
    echo "\"compactions\":$compactions,\"compaction_pause_s\":$pause,\"compaction_pause_max_s\":$pausemax,"
    echo "\"overwrite_put_per_s\":$overwrite_rate}"
} >"$OUT.json"
exit $fail
