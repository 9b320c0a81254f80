#!/usr/bin/env bash
# What rate limiting costs: req/s of one route without limits, with a local (memory) limit and
# with a Redis limit, as ratios to the route without limits. bench/run.sh-style: the same
# nginx upstream, wrk, CPU pinning and interleaved rounds; limits are high enough never to
# refuse, so every variant does the same proxying work plus the limit check.
#
# Usage: bench/rate_limit.sh
# Env knobs (as bench/run.sh): BENCH_DURATION=10s BENCH_CONNECTIONS=50 BENCH_THREADS=1
#   BENCH_ROUNDS=3 BENCH_WARMUP=2s PROXY_CPU=0 LOAD_CPU=1 SKIP_BUILD=1 BENCH_KEEP=1
#   CARGO_TARGET_DIR (binary: $CARGO_TARGET_DIR/release/portcullis)
# Redis: a private redis-server on a free port, pinned with the load (LOAD_CPU).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"
BIN="$CARGO_TARGET_DIR/release/portcullis"
DURATION="${BENCH_DURATION:-10s}"
CONNECTIONS="${BENCH_CONNECTIONS:-50}"
THREADS="${BENCH_THREADS:-1}"
ROUNDS="${BENCH_ROUNDS:-3}"
WARMUP="${BENCH_WARMUP:-2s}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
REQ_PATH=/bench/hello
EXPECTED_BODY="hello from upstream"

for tool in wrk nginx curl taskset ss redis-server redis-cli awk sed; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

WORK="$(mktemp -d /tmp/portcullis-rl-bench.XXXXXX)"
PIDS=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

USED=" "
free_port() { # free_port VAR
    local p lo
    lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
    [ "$lo" -gt 11000 ] || lo=32768
    for _ in $(seq 200); do
        p=$(( 10000 + RANDOM % (lo - 10000) ))
        if ! ss -Htan "sport = :$p" | grep -q . && [[ "$USED" != *" $p "* ]]; then
            USED+="$p "; printf -v "$1" '%s' "$p"; return 0
        fi
    done
    echo "no free port" >&2; return 1
}

wait_ready() { # wait_ready NAME PID URL LOG
    local body
    for _ in $(seq 200); do
        kill -0 "$2" 2>/dev/null || { echo "$1 exited; log:" >&2; cat "$4" >&2; return 1; }
        if body=$(curl -fsS --max-time 1 "$3" 2>/dev/null) && [ "$body" = "$EXPECTED_BODY" ]; then return 0; fi
        sleep 0.1
    done
    echo "$1 not ready; log:" >&2; cat "$4" >&2; return 1
}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    (cd "$REPO" && cargo build --release --quiet)
fi

free_port UP_PORT; free_port REDIS_PORT
sed -e "s|@PREFIX@|$WORK|g" -e "s|@PORT@|$UP_PORT|g" "$HERE/upstream.nginx.conf.tmpl" >"$WORK/upstream.conf"
taskset -c "$LOAD_CPU" nginx -p "$WORK" -c "$WORK/upstream.conf" -e "$WORK/upstream.error.log" >/dev/null 2>&1 &
PIDS+=($!)
wait_ready upstream "${PIDS[-1]}" "http://127.0.0.1:$UP_PORT$REQ_PATH" "$WORK/upstream.error.log"

taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --logfile "$WORK/redis.log" &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

# The same route three times; only `state` and `policies` differ.
config() { # config PORT STATE POLICIES
    cat <<EOF
workers: 1
listeners: [ { bind: "127.0.0.1:$1" } ]
access_log: { format: off }
$2
upstreams:
  fast: { targets: [ { url: "http://127.0.0.1:$UP_PORT" } ] }
routes:
  - name: bench
    match: { path: "/{*rest}" }
    upstream: fast
$3
EOF
}
LIMIT='    policies: [ { rate_limit: { key: ip, requests: 1000000000, per: 1s } } ]'
declare -A URL PID
TARGETS=(none local local-noheaders redis)
for t in "${TARGETS[@]}"; do
    free_port P
    case $t in
        none)  config "$P" "" "" ;;
        local) config "$P" "" "$LIMIT" ;;
        local-noheaders) config "$P" "" "${LIMIT/per: 1s/per: 1s, headers: false}" ;;
        redis) config "$P" "state: { backend: redis, redis: { url: \"redis://127.0.0.1:$REDIS_PORT\", prefix: \"bench:\", on_error: deny } }" "$LIMIT" ;;
    esac >"$WORK/$t.yaml"
    taskset -c "$PROXY_CPU" "$BIN" run -c "$WORK/$t.yaml" >"$WORK/$t.log" 2>&1 &
    PIDS+=($!)
    PID[$t]=$!
    URL[$t]="http://127.0.0.1:$P$REQ_PATH"
    wait_ready "$t" "${PIDS[-1]}" "${URL[$t]}" "$WORK/$t.log"
done
# The limits really are checked (and never refuse).
curl -fsS -D - -o /dev/null "${URL[local]}" | grep -qi '^ratelimit-policy:' || { echo "local: no RateLimit-Policy" >&2; exit 1; }
curl -fsS -D - -o /dev/null "${URL[redis]}" | grep -qi '^ratelimit-policy:' || { echo "redis: no RateLimit-Policy" >&2; exit 1; }

# Busy CPU not spent by the benchmark's own processes (as in bench/run.sh), % of all cores:
# a noisy round is recognisable.
cpu_snapshot() {
    local pids=("${PIDS[@]}") p
    for p in "${PIDS[@]}"; do pids+=($(pgrep -P "$p" || true)); done
    {
        head -1 /proc/stat
        for p in "${pids[@]}"; do [ -r "/proc/$p/stat" ] && echo "srv $(sed 's/^.*) //' "/proc/$p/stat")"; done
        echo "self $(sed 's/^.*) //' "/proc/$$/stat")"
    } 2>/dev/null | awk '
        $1 == "cpu"  { busy = $2 + $3 + $4 + $7 + $8; total = busy + $5 + $6 + $9 }
        $1 == "srv"  { ours += $13 + $14 }
        $1 == "self" { ours += $13 + $14 + $15 + $16 }
        END { print busy, total, ours }'
}
other_cpu_pct() {
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ")
        t = y[2] - x[2]; o = (y[1] - x[1]) - (y[3] - x[3]); if (o < 0) o = 0
        printf "%.0f%%", (t > 0 ? 100 * o / t : 0) }'
}
run_wrk() { taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2" --latency "$1" >"$3" 2>&1; }
# CPU time (user + system, all threads) the gateway process has used so far, in clock ticks.
# Per request, it is the cost of the work itself, and much less disturbed by other load on
# the machine than req/s.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
reqs() { awk '/requests in/ {print $1}' "$1"; }
rps() { awk '/^Requests\/sec:/ {print $2}' "$1"; }
non2xx() { awk '/Non-2xx or 3xx responses:/ {print $NF}' "$1"; }
p99() { awk '$1 == "99%" {print $2}' "$1"; }

echo "## Rate-limit cost"
echo
echo "- commit: $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo n/a), $(redis-server --version | awk '{print $3}')"
echo "- wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds; portcullis (workers: 1) on CPU $PROXY_CPU; wrk, upstream nginx and redis on CPU $LOAD_CPU"
echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
if [ "$WARMUP" != 0 ]; then for t in "${TARGETS[@]}"; do run_wrk "${URL[$t]}" "$WARMUP" "$WORK/warm-$t.txt"; done; fi
declare -A ALL
TICK_US=$(awk -v hz="$(getconf CLK_TCK)" 'BEGIN { print 1000000 / hz }')
declare -A CPU
echo "| round | variant | req/s | p99 | non-2xx | gateway CPU µs/request | other CPU |"
echo "|---|---|---:|---:|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        out="$WORK/wrk-$r-$t.txt"
        before=$(cpu_snapshot)
        c0=$(cpu_ticks "${PID[$t]}")
        run_wrk "${URL[$t]}" "$DURATION" "$out"
        c1=$(cpu_ticks "${PID[$t]}")
        other=$(other_cpu_pct "$before" "$(cpu_snapshot)")
        us=$(awk -v c=$((c1 - c0)) -v n="$(reqs "$out")" -v t="$TICK_US" 'BEGIN { printf "%.2f", c * t / n }')
        ALL[$t]+="$(rps "$out") "
        CPU[$t]+="$us "
        echo "| $r | $t | $(rps "$out") | $(p99 "$out") | $(non2xx "$out" || true) | $us | $other |"
    done
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }
echo
echo "| variant | median req/s | req/s ratio to no limit | median gateway CPU µs/request | CPU-bound throughput ratio (none µs / variant µs) |"
echo "|---|---:|---:|---:|---:|"
# shellcheck disable=SC2086
base=$(median ${ALL[none]}); base_cpu=$(median ${CPU[none]})
for t in "${TARGETS[@]}"; do
    # shellcheck disable=SC2086
    m=$(median ${ALL[$t]}); c=$(median ${CPU[$t]})
    echo "| $t | ${m%.*} | $(awk -v a="$m" -v b="$base" 'BEGIN { printf "%.3f", a / b }') | $c | $(awk -v a="$base_cpu" -v b="$c" 'BEGIN { printf "%.3f", a / b }') |"
done
echo
echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
