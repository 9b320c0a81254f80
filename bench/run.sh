#!/usr/bin/env bash
# Throughput/latency benchmark: upstream direct vs nginx reverse proxy vs portcullis.
#
# Usage: bench/run.sh
# Env knobs:
#   BENCH_DURATION=10s     wrk -d per measured run
#   BENCH_CONNECTIONS=50   wrk -c
#   BENCH_THREADS=1        wrk -t
#   BENCH_ROUNDS=3         interleaved rounds (upstream, nginx, portcullis, ...)
#   BENCH_WARMUP=2s        unmeasured wrk run per target before round 1 ("0" = none)
#   BENCH_PATH=/bench/hello  request path (same for every target)
#   PROXY_CPU=0 LOAD_CPU=1 CPU pinning (proxy under test vs wrk + upstream)
#   SKIP_PORTCULLIS=1      only benchmark upstream + nginx (no cargo build)
#   SKIP_BUILD=1           use the existing binary, don't run cargo
#   BENCH_WAIT_QUIET=0     before each measured run, wait up to N seconds for other CPU load
#                          to stay below 10% for 6s (useful while builds run next door)
#   BENCH_NICE=            e.g. -10 (root): run servers + wrk at that nice level so a concurrent
#                          build disturbs less (it then gets less CPU while the benchmark runs)
#   BENCH_KEEP=1           keep the temp dir (configs, logs, raw wrk output)
#   CARGO_TARGET_DIR       default /work/target; binary is $CARGO_TARGET_DIR/release/portcullis
#   BASELINE_BIN=PATH      also run this portcullis binary (row "portcullis-base") in the same
#                          interleaved rounds: a before/after comparison under the same noise
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"
PORTCULLIS_BIN="$CARGO_TARGET_DIR/release/portcullis"

DURATION="${BENCH_DURATION:-10s}"
CONNECTIONS="${BENCH_CONNECTIONS:-50}"
THREADS="${BENCH_THREADS:-1}"
ROUNDS="${BENCH_ROUNDS:-3}"
WARMUP="${BENCH_WARMUP:-2s}"
REQ_PATH="${BENCH_PATH:-/bench/hello}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
SKIP_PORTCULLIS="${SKIP_PORTCULLIS:-0}"
EXPECTED_BODY="hello from upstream"

for tool in wrk nginx curl taskset ss awk sed; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

WORK="$(mktemp -d /tmp/portcullis-bench.XXXXXX)"
PIDS=() SERVER_NAMES=() SERVER_LOGS=() WORKER_PIDS=()
WRK_PID=

# Stop everything we started: TERM first, KILL whatever is left after ~5s,
# so an interrupted or failed run never leaves listeners behind.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    [ -n "$WRK_PID" ] && PIDS+=("$WRK_PID")
    PIDS+=("${WORKER_PIDS[@]}")  # nginx workers, in case their master already died
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${OLD_AUTOGROUP_NICE:-}" ] && echo "$OLD_AUTOGROUP_NICE" >/proc/self/autogroup
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "kept work dir: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A port no socket uses. Picked below the kernel's ephemeral range so outgoing
# connections (ours or the lead's test suite) can't grab it between check and bind.
# Random start so parallel runs rarely collide; startup fails loudly if we lose a race.
# Sets the variable named $1 (not echo: a $(...) subshell would lose USED_PORTS).
USED_PORTS=" "
free_port() {
    local p lo
    lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
    [ "$lo" -gt 11000 ] || lo=32768
    for _ in $(seq 200); do
        p=$(( 10000 + RANDOM % (lo - 10000) ))
        if ! ss -Htan "sport = :$p" | grep -q . && [[ "$USED_PORTS" != *" $p "* ]]; then
            USED_PORTS+="$p "
            printf -v "$1" '%s' "$p"; return 0
        fi
    done
    echo "no free port found" >&2; return 1
}

render() { # render TEMPLATE OUT PORT [UPSTREAM_PORT]
    sed -e "s|@PREFIX@|$WORK|g" -e "s|@PORT@|$3|g" -e "s|@UPSTREAM_PORT@|${4:-}|g" "$1" >"$2"
}

# Wait until URL returns 200 with the expected body; bail out early if PID died.
wait_ready() { # wait_ready NAME PID URL LOG
    local body
    for _ in $(seq 200); do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "$1 exited during startup; log:" >&2; cat "$4" >&2 || true; return 1
        fi
        if body=$(curl -fsS --max-time 1 "$3" 2>/dev/null) && [ "$body" = "$EXPECTED_BODY" ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "$1 not ready after 20s at $3 (last body: ${body:-<none>}); log:" >&2
    cat "$4" >&2 || true
    return 1
}

# --- build ----------------------------------------------------------------
if [ "$SKIP_PORTCULLIS" != 1 ] && [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "building release binary (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)..." >&2
    (cd "$REPO" && cargo build --release --quiet)
fi
if [ "$SKIP_PORTCULLIS" != 1 ] && [ ! -x "$PORTCULLIS_BIN" ]; then
    echo "no binary at $PORTCULLIS_BIN" >&2; exit 1
fi

# Optional priority boost, same for every process under test. With autogroup
# scheduling (kernel default on most distros) nice only counts within a session,
# and a build started from another session would still get an equal share; so
# also boost this session's autogroup, and restore it in cleanup.
PRIO=()
if [ -n "${BENCH_NICE:-}" ]; then
    PRIO=(nice -n "$BENCH_NICE")
    if [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" = 1 ] && [ -w /proc/self/autogroup ]; then
        OLD_AUTOGROUP_NICE=$(awk '{print $NF}' /proc/self/autogroup)
        echo "$BENCH_NICE" >/proc/self/autogroup
    fi
fi

# --- start servers ----------------------------------------------------------
free_port UPSTREAM_PORT
free_port NGINX_PORT
free_port PORTCULLIS_PORT

# The upstream shares LOAD_CPU with wrk so the proxy under test gets PROXY_CPU
# to itself; both proxies see the exact same upstream and load generator.
render "$HERE/upstream.nginx.conf.tmpl" "$WORK/upstream.conf" "$UPSTREAM_PORT"
"${PRIO[@]}" taskset -c "$LOAD_CPU" nginx -p "$WORK" -c "$WORK/upstream.conf" -e "$WORK/upstream.error.log" \
    >"$WORK/upstream.out" 2>&1 &
PIDS+=($!); SERVER_NAMES+=(upstream); SERVER_LOGS+=(upstream.error.log)
wait_ready upstream "${PIDS[-1]}" "http://127.0.0.1:$UPSTREAM_PORT$REQ_PATH" "$WORK/upstream.error.log"

render "$HERE/proxy.nginx.conf.tmpl" "$WORK/proxy.conf" "$NGINX_PORT" "$UPSTREAM_PORT"
"${PRIO[@]}" taskset -c "$PROXY_CPU" nginx -p "$WORK" -c "$WORK/proxy.conf" -e "$WORK/proxy.error.log" \
    >"$WORK/proxy.out" 2>&1 &
PIDS+=($!); SERVER_NAMES+=(nginx); SERVER_LOGS+=(proxy.error.log)
wait_ready nginx "${PIDS[-1]}" "http://127.0.0.1:$NGINX_PORT$REQ_PATH" "$WORK/proxy.error.log"

TARGETS=(upstream nginx)
declare -A URL=(
    [upstream]="http://127.0.0.1:$UPSTREAM_PORT$REQ_PATH"
    [nginx]="http://127.0.0.1:$NGINX_PORT$REQ_PATH"
)

if [ "$SKIP_PORTCULLIS" != 1 ]; then
    render "$HERE/portcullis.yaml.tmpl" "$WORK/portcullis.yaml" "$PORTCULLIS_PORT" "$UPSTREAM_PORT"
    # Same core as nginx-proxy: equal hardware for the two proxies under test.
    "${PRIO[@]}" taskset -c "$PROXY_CPU" "$PORTCULLIS_BIN" run -c "$WORK/portcullis.yaml" \
        >"$WORK/portcullis.log" 2>&1 &
    PIDS+=($!); SERVER_NAMES+=(portcullis); SERVER_LOGS+=(portcullis.log)
    wait_ready portcullis "${PIDS[-1]}" "http://127.0.0.1:$PORTCULLIS_PORT$REQ_PATH" "$WORK/portcullis.log"
    TARGETS+=(portcullis)
    URL[portcullis]="http://127.0.0.1:$PORTCULLIS_PORT$REQ_PATH"
    if [ -n "${BASELINE_BIN:-}" ]; then
        free_port BASE_PORT
        render "$HERE/portcullis.yaml.tmpl" "$WORK/portcullis-base.yaml" "$BASE_PORT" "$UPSTREAM_PORT"
        "${PRIO[@]}" taskset -c "$PROXY_CPU" "$BASELINE_BIN" run -c "$WORK/portcullis-base.yaml" \
            >"$WORK/portcullis-base.log" 2>&1 &
        PIDS+=($!); SERVER_NAMES+=(portcullis-base); SERVER_LOGS+=(portcullis-base.log)
        wait_ready portcullis-base "${PIDS[-1]}" "http://127.0.0.1:$BASE_PORT$REQ_PATH" "$WORK/portcullis-base.log"
        TARGETS+=(portcullis-base)
        URL[portcullis-base]="http://127.0.0.1:$BASE_PORT$REQ_PATH"
    fi
fi

# Remember nginx worker pids so cleanup can reach them even if a master dies.
for p in "${PIDS[@]}"; do WORKER_PIDS+=($(pgrep -P "$p" || true)); done

# --- measure --------------------------------------------------------------
# wrk runs in the background + `wait` so a Ctrl-C/TERM interrupts the wait and
# the trap fires immediately instead of after the current run ends.
run_wrk() { # run_wrk URL DURATION OUTFILE
    "${PRIO[@]}" taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2" --latency "$1" >"$3" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || echo "wrk exited with status $? (output: $3)" >&2
    WRK_PID=
}

# The box is shared (e.g. a cargo build next door), which skews numbers badly on
# 2 cores. To make that visible, each round reports "other CPU": busy CPU time
# (from /proc/stat) not spent by our servers, wrk or this script, as % of all cores.
cpu_snapshot() { # prints "busy_jiffies total_jiffies our_jiffies"
    local pids=("${PIDS[@]}" "${WORKER_PIDS[@]}") p
    {
        head -1 /proc/stat
        # Servers: own utime+stime (all threads). This shell: own + reaped children (wrk, curl).
        for p in "${pids[@]}"; do [ -r "/proc/$p/stat" ] && echo "srv $(sed 's/^.*) //' "/proc/$p/stat")"; done
        echo "self $(sed 's/^.*) //' "/proc/$$/stat")"
    } 2>/dev/null | awk '
        $1 == "cpu"  { busy = $2 + $3 + $4 + $7 + $8; total = busy + $5 + $6 + $9 }
        # after stripping "pid (comm) ", utime/stime/cutime/cstime are fields 13-16 (+1 for our tag)
        $1 == "srv"  { ours += $13 + $14 }
        $1 == "self" { ours += $13 + $14 + $15 + $16 }
        END { print busy, total, ours }'
}
other_cpu_pct() { # other_cpu_pct "SNAPSHOT_BEFORE" "SNAPSHOT_AFTER"
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ")
        t = y[2] - x[2]; o = (y[1] - x[1]) - (y[3] - x[3])
        if (o < 0) o = 0
        printf "%.0f%%", (t > 0 ? 100 * o / t : 0) }'
}

# wrk prints latency as e.g. 812.00us / 1.23ms / 1.02s / 1.50m; normalise to ms.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n }'
}

# Pull "rps p50 p99 non2xx socket_errors" out of one wrk output file.
parse_wrk() {
    local f=$1 rps p50 p99 non2xx errs
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$f")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$f")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f")
    errs=$(awk '/Socket errors:/ {sub(/^ *Socket errors: */, ""); gsub(/ /, ""); print}' "$f")
    echo "${rps:-0} $p50 $p99 ${non2xx:-0} ${errs:-none}"
}

median() { # median DECIMALS NUMBER...
    local d=$1; shift
    printf '%s\n' "$@" | sort -g | awk -v d="$d" '{a[NR] = $1} END {
        m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
        printf "%." d "f", m }'
}

echo "## Portcullis benchmark"
echo
echo "- commit: $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo 'n/a (no commits)')"
echo "- wrk: -t$THREADS -c$CONNECTIONS -d$DURATION --latency, path $REQ_PATH, $ROUNDS interleaved rounds, warm-up ${WARMUP}"
echo "- CPU pinning (taskset, $(nproc) cores): proxy under test (nginx-proxy / portcullis) on CPU $PROXY_CPU; wrk + upstream nginx on CPU $LOAD_CPU"
echo "  (so the 'upstream' row shares one core between wrk and the upstream: it's a reference, not a ceiling)"
[ -n "${BENCH_NICE:-}" ] && echo "- servers and wrk run at nice $BENCH_NICE${OLD_AUTOGROUP_NICE:+ (session autogroup too)}"
echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //'), 1 worker, access_log off, upstream keepalive 64"
[ "$SKIP_PORTCULLIS" != 1 ] && echo "- portcullis: $PORTCULLIS_BIN, workers: 1, access_log off"
[ -n "${BASELINE_BIN:-}" ] && echo "- portcullis-base: $BASELINE_BIN, same config"
# Other CPU load (e.g. a cargo build) skews results; record it so a noisy run is recognisable.
echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg); 'other CPU' = busy CPU not used by the benchmark's own processes, % of all cores"
echo "  (in upstream rounds CPU $PROXY_CPU is idle for us, so others using it there costs nothing)"
echo

# Optionally hold off while something else (a build, tests) is eating the CPUs.
# Called before every measured run: on a shared 2-core box, load comes and goes.
wait_quiet() {
    [ "${BENCH_WAIT_QUIET:-0}" -gt 0 ] || return 0
    local deadline=$(( SECONDS + BENCH_WAIT_QUIET )) quiet=0 s1 busy
    while [ "$quiet" -lt 3 ]; do  # 3 quiet 2s samples in a row: a lull between rustc jobs isn't enough
        s1=$(cpu_snapshot); sleep 2; busy=$(other_cpu_pct "$s1" "$(cpu_snapshot)")
        if [ "${busy%\%}" -lt 10 ]; then quiet=$(( quiet + 1 )); else quiet=0; fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "still busy (other CPU $busy) after ${BENCH_WAIT_QUIET}s; measuring anyway" >&2; return 0
        fi
        [ "$quiet" = 0 ] && echo "waiting for a quiet machine (other CPU $busy)..." >&2
    done
    return 0
}

if [ "$WARMUP" != 0 ]; then
    for t in "${TARGETS[@]}"; do run_wrk "${URL[$t]}" "$WARMUP" "$WORK/warmup-$t.txt"; done
fi

declare -A RPS P50 P99
NOISY=0
echo "### Raw rounds"
echo
echo "| round | target | req/s | p50 ms | p99 ms | non-2xx/3xx | socket errors | other CPU |"
echo "|---|---|---:|---:|---:|---:|---|---:|"
for r in $(seq "$ROUNDS"); do
    # The proxies swap places every other round (the upstream stays first): a machine that
    # drifts within a round then favours neither, and each pair still runs back to back.
    ORDER=("${TARGETS[@]}")
    if [ $((r % 2)) = 0 ]; then
        ORDER=(upstream)
        for ((i = ${#TARGETS[@]} - 1; i >= 1; i--)); do ORDER+=("${TARGETS[$i]}"); done
    fi
    for t in "${ORDER[@]}"; do
        out="$WORK/wrk-$r-$t.txt"
        wait_quiet
        before=$(cpu_snapshot)
        run_wrk "${URL[$t]}" "$DURATION" "$out"
        other=$(other_cpu_pct "$before" "$(cpu_snapshot)")
        read -r rps p50 p99 non2xx errs < <(parse_wrk "$out")
        RPS[$t]+="$rps "; P50[$t]+="$p50 "; P99[$t]+="$p99 "
        echo "| $r | $t | $rps | $p50 | $p99 | $non2xx | $errs | $other |"
        [ "${other%\%}" -ge 10 ] && NOISY=1
        # A server dying under load is a result in itself: say so and stop.
        for i in "${!PIDS[@]}"; do
            if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
                echo "ERROR: server #$i (${SERVER_NAMES[$i]}) died during '$t' round $r; its log:" >&2
                cat "$WORK/${SERVER_LOGS[$i]}" >&2 || true
                exit 1
            fi
        done
        if [ "$non2xx" != 0 ] || [ "$errs" != none ]; then
            echo "WARNING: $t round $r had non-2xx responses or socket errors; wrk output:" >&2
            cat "$out" >&2
        fi
    done
done
echo

if [ "$NOISY" = 1 ]; then
    echo "**Warning:** some rounds ran with >=10% of the CPUs busy with other processes; treat the numbers with care."
    echo
fi

echo "### Median of $ROUNDS rounds"
echo
echo "| target | req/s | p50 ms | p99 ms |"
echo "|---|---:|---:|---:|"
declare -A MRPS MP99
for t in "${TARGETS[@]}"; do
    # shellcheck disable=SC2086  # word-splitting the per-round lists is the point
    MRPS[$t]=$(median 0 ${RPS[$t]}); MP99[$t]=$(median 3 ${P99[$t]})
    # shellcheck disable=SC2086
    echo "| $t | ${MRPS[$t]} | $(median 3 ${P50[$t]}) | ${MP99[$t]} |"
done
echo

# sign_count up|down RATIO...: how many ratios are above (up) or below (down) 1.
sign_count() {
    local dir=$1; shift
    printf '%s\n' "$@" | awk -v d="$dir" '(d == "up" && $1 > 1) || (d == "down" && $1 < 1) { k++ } END { print k + 0 }'
}
# median_interval RATIO...: "[lo, hi]", the 95% distribution-free interval of the median,
# or "n/a" with fewer than 6 rounds (no such interval at 95% then).
median_interval() {
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
        n = NR; k = 0; c = 0; b = 0.5 ^ n
        # b = P(X = j) and c = P(X <= j) for X ~ Binomial(n, 1/2); the interval is ranks
        # k .. n+1-k for the largest k with P(X <= k - 1) <= 0.025
        for (j = 0; j < n; j++) { c += b; if (c > 0.025) break; k = j + 1; b = b * (n - j) / (j + 1) }
        if (k < 1) { print "n/a (too few rounds)"; exit }
        printf "[%.2f, %.2f]", a[k], a[n + 1 - k] }'
}

if [ "$SKIP_PORTCULLIS" != 1 ]; then
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
    echo "### portcullis / nginx"
    echo
    echo "| metric | ratio |"
    echo "|---|---:|"
    echo "| req/s (higher is better) | $(ratio "${MRPS[portcullis]}" "${MRPS[nginx]}") |"
    echo "| p99 latency (lower is better) | $(ratio "${MP99[portcullis]}" "${MP99[nginx]}") |"
    echo
    # The ratio of the medians depends on which target drew a machine's slow or fast spell;
    # each round's pair ran back to back, so its own ratio is the steadier reading.
    echo "### portcullis / nginx, round by round"
    echo
    echo "| round | req/s ratio | p99 ratio |"
    echo "|---|---:|---:|"
    read -r -a pr <<<"${RPS[portcullis]}"; read -r -a nr <<<"${RPS[nginx]}"
    read -r -a pp <<<"${P99[portcullis]}"; read -r -a np <<<"${P99[nginx]}"
    RR=""; PR=""
    for i in "${!pr[@]}"; do
        a=$(ratio "${pr[$i]}" "${nr[$i]}"); b=$(ratio "${pp[$i]}" "${np[$i]}")
        RR+="$a "; PR+="$b "
        echo "| $((i + 1)) | $a | $b |"
    done
    # shellcheck disable=SC2086
    echo "| median | $(median 2 $RR) | $(median 2 $PR) |"
    echo
    # How sure the median is: rounds on each side of 1, and a distribution-free 95% interval
    # for the median ratio (order statistics of the rounds: the k-th smallest and largest,
    # k the largest rank with P(Binomial(n, 1/2) < k) <= 2.5%). "At least matches" reads as
    # an interval that holds 1.00 or lies on the better side of it (above for req/s, below
    # for p99).
    # shellcheck disable=SC2086
    echo "req/s: portcullis ahead in $(sign_count up $RR) of ${#pr[@]} rounds, 95% interval of the median ratio $(median_interval $RR)"
    # shellcheck disable=SC2086
    echo "p99: portcullis lower in $(sign_count down $PR) of ${#pr[@]} rounds, 95% interval of the median ratio $(median_interval $PR)"
    echo
    if [ -n "${BASELINE_BIN:-}" ]; then
        echo "### portcullis / portcullis-base"
        echo
        echo "| metric | ratio |"
        echo "|---|---:|"
        echo "| req/s (higher is better) | $(ratio "${MRPS[portcullis]}" "${MRPS[portcullis-base]}") |"
        echo "| p99 latency (lower is better) | $(ratio "${MP99[portcullis]}" "${MP99[portcullis-base]}") |"
        echo
    fi
fi
