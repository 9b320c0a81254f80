#!/usr/bin/env bash
# Where a proxied request's CPU goes: user and kernel microseconds per request for nginx and
# Portcullis on the bench route, read from /proc/PID/stat around a wrk run, and (CALLGRIND=1)
# both proxies' user-space instructions per request under callgrind (CACHE_SIM=1: with cache
# misses and mispredicted branches), which are repeatable whatever else the machine is doing.
#
# Usage: bench/cost.sh
# Env knobs:
#   BENCH_DURATION=8s   wrk -d per measured run
#   BENCH_ROUNDS=2      rounds (nginx, portcullis, ...)
#   CALLGRIND=0         1: also count instructions per request (needs valgrind)
#   CALLGRIND_KEEP=DIR  keep the profiles there (cg.out and n for Portcullis, nginx.cg.out and
#                       nginx.n for nginx) for callgrind_annotate
#   CACHE_SIM=1         with CALLGRIND=1: also simulate caches and branch prediction
#   SKIP_BUILD=1        use the existing release binary
#   BIN=PATH            the portcullis binary (default $CARGO_TARGET_DIR/release/portcullis)
#   PROXY_CPU=0 LOAD_CPU=1
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"
BIN="${BIN:-$CARGO_TARGET_DIR/release/portcullis}"
DURATION="${BENCH_DURATION:-8s}"
ROUNDS="${BENCH_ROUNDS:-2}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
REQ_PATH=/bench/hello

for tool in wrk nginx curl taskset bc; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
[ "${CALLGRIND:-0}" = 1 ] && { command -v valgrind >/dev/null || { echo "missing tool: valgrind" >&2; exit 1; }; }

WORK="$(mktemp -d /tmp/portcullis-cost.XXXXXX)"
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do pkill -TERM -P "$p" 2>/dev/null || true; kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port() { # a free port below the ephemeral range
    local p
    for _ in $(seq 200); do
        p=$(( 10000 + RANDOM % 20000 ))
        ss -Htan "sport = :$p" | grep -q . || { echo "$p"; return; }
    done
    echo "no free port" >&2; return 1
}
render() { sed -e "s|@PREFIX@|$WORK|g" -e "s|@PORT@|$3|g" -e "s|@UPSTREAM_PORT@|${4:-}|g" "$1" >"$2"; }
ready() { for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$1$REQ_PATH" 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not ready" >&2; return 1; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    (cd "$REPO" && cargo build --release --quiet)
fi

UP=$(port); NG=$(port); PC=$(port)
render "$HERE/upstream.nginx.conf.tmpl" "$WORK/up.conf" "$UP"
taskset -c "$LOAD_CPU" nginx -p "$WORK" -c "$WORK/up.conf" -e "$WORK/up.err" >/dev/null 2>&1 &
PIDS+=($!); ready "$UP"
render "$HERE/proxy.nginx.conf.tmpl" "$WORK/px.conf" "$NG" "$UP"
taskset -c "$PROXY_CPU" nginx -p "$WORK" -c "$WORK/px.conf" -e "$WORK/px.err" >/dev/null 2>&1 &
NGINX_MASTER=$!; PIDS+=($!); ready "$NG"
NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" | head -1)
render "$HERE/portcullis.yaml.tmpl" "$WORK/p.yaml" "$PC" "$UP"
taskset -c "$PROXY_CPU" "$BIN" run -c "$WORK/p.yaml" >"$WORK/p.log" 2>&1 &
PORTCULLIS=$!; PIDS+=($!); ready "$PC"

TCK=$(getconf CLK_TCK)
measure() { # measure NAME PID PORT
    local u0 s0 u1 s1 n rps
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$2/stat")
    taskset -c "$LOAD_CPU" wrk -t1 -c50 -d"$DURATION" "http://127.0.0.1:$3$REQ_PATH" >"$WORK/wrk.out"
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$2/stat")
    n=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$WORK/wrk.out")
    printf '| %s | %s | %s | %s |\n' "$1" "$rps" \
        "$(echo "scale=2; ($u1-$u0)*1000000/$TCK/$n" | bc)" \
        "$(echo "scale=2; ($s1-$s0)*1000000/$TCK/$n" | bc)"
}

echo "## CPU per proxied request (wrk -t1 -c50 -d$DURATION, proxies on CPU $PROXY_CPU)"
echo
echo "| target | req/s | user µs/req | kernel µs/req |"
echo "|---|---:|---:|---:|"
for _ in $(seq "$ROUNDS"); do
    measure nginx "$NGINX_WORKER" "$NG"
    measure portcullis "$PORTCULLIS" "$PC"
done

if [ "${CALLGRIND:-0}" = 1 ]; then
    # Both proxies under callgrind, one after the other, on the same load (wrk -c20 after a
    # warm-up, counters zeroed in between); nginx as one process (`master_process off`) so
    # the worker is the process counted. CACHE_SIM=1 adds callgrind's cache and branch
    # simulation: instruction- and data-cache misses and mispredicted branches per request,
    # also repeatable, and the reason equal instruction counts can still take unequal time.
    kill "$PORTCULLIS" "$NGINX_MASTER"; wait "$PORTCULLIS" "$NGINX_MASTER" 2>/dev/null || true
    SIM=()
    [ "${CACHE_SIM:-0}" = 1 ] && SIM=(--cache-sim=yes --branch-sim=yes)
    count() { # count NAME PORT COMMAND...: prints one table row, keeps the profile in $WORK/NAME.cg
        local name=$1 port=$2 vg n f
        shift 2
        taskset -c "$PROXY_CPU" valgrind --tool=callgrind "${SIM[@]}" \
            --callgrind-out-file="$WORK/$name.cg" "$@" >"$WORK/$name.vg.log" 2>&1 &
        vg=$!; PIDS+=($!)
        ready "$port"
        for _ in $(seq 200); do curl -fsS -o /dev/null "http://127.0.0.1:$port$REQ_PATH"; done
        callgrind_control -z "$vg" >/dev/null 2>&1
        taskset -c "$LOAD_CPU" wrk -t1 -c20 -d"$DURATION" "http://127.0.0.1:$port$REQ_PATH" >"$WORK/wrk.out"
        n=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
        callgrind_control -d "$vg" >/dev/null 2>&1
        sleep 1
        kill "$vg"; wait "$vg" 2>/dev/null || true
        f=$(ls "$WORK/$name.cg."* | head -1) # the dump taken after the load
        mv "$f" "$WORK/$name.cg"; echo "$n" >"$WORK/$name.n"
        # PROGRAM TOTALS carries one count per event, in the order of the "Events shown" line.
        callgrind_annotate "$WORK/$name.cg" 2>/dev/null | awk -v n="$n" -v name="$name" '
            /^Events shown:/ { for (i = 3; i <= NF; i++) ev[i - 2] = $i }
            /PROGRAM TOTALS/ { k = 0
                for (i = 1; i <= NF; i++) { v = $i; gsub(",", "", v); if (v ~ /^[0-9]+$/) c[ev[++k]] = v }
                if ("I1mr" in c)
                    printf "| %s | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n", name, n, c["Ir"] / n,
                        c["Dw"] / n, c["I1mr"] / n, (c["D1mr"] + c["D1mw"]) / n, c["Bcm"] / n, c["Bim"] / n
                else
                    printf "| %s | %d | %.0f |\n", name, n, c["Ir"] / n }'
    }
    echo
    if [ ${#SIM[@]} -gt 0 ]; then
        echo "## callgrind, per request (user space, with cache and branch simulation)"
        echo
        echo "| target | requests | instructions | data writes | I1 misses | D1 misses | cond. mispredicts | indirect mispredicts |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    else
        echo "## callgrind, per request (user space)"
        echo
        echo "| target | requests | instructions |"
        echo "|---|---:|---:|"
    fi
    count nginx "$NG" nginx -p "$WORK" -c "$WORK/px.conf" -e "$WORK/px.err" -g 'master_process off;'
    count portcullis "$PC" "$BIN" run -c "$WORK/p.yaml"
    if [ ${#SIM[@]} -gt 0 ]; then
        echo
        sed -n 's/^desc: \(I1\|D1\)\( cache: .*\)/- simulated \1\2/p' "$WORK/portcullis.cg"
    fi
    if [ -n "${CALLGRIND_KEEP:-}" ]; then
        mkdir -p "$CALLGRIND_KEEP"
        cp "$WORK/portcullis.cg" "$CALLGRIND_KEEP/cg.out" && cp "$WORK/portcullis.n" "$CALLGRIND_KEEP/n"
        cp "$WORK/nginx.cg" "$CALLGRIND_KEEP/nginx.cg.out" && cp "$WORK/nginx.n" "$CALLGRIND_KEEP/nginx.n"
    fi
fi
