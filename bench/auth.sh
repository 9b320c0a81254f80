#!/usr/bin/env bash
# What authentication costs: req/s of one Portcullis route without authentication, with an
# API key, and with an RS256 JWT (verified-token cache on, and off), as ratios to the route
# without authentication. Same upstream (nginx, fixed body), same gateway process, same
# path shape; the variants run interleaved so drifting machine load hits all of them.
#
# Usage: bench/auth.sh
# Env knobs:
#   BENCH_DURATION=10s     wrk -d per measured run
#   BENCH_CONNECTIONS=50   wrk -c
#   BENCH_THREADS=1        wrk -t
#   BENCH_ROUNDS=3         interleaved rounds
#   BENCH_WARMUP=2s        unmeasured wrk run per variant before round 1 ("0" = none)
#   PROXY_CPU=0 LOAD_CPU=1 CPU pinning (gateway vs wrk + upstream)
#   SKIP_BUILD=1           use the existing binary
#   BENCH_KEEP=1           keep the temp dir (configs, keys, raw wrk output)
#   CARGO_TARGET_DIR       default /work/target; binary is $CARGO_TARGET_DIR/release/portcullis
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
EXPECTED_BODY="hello from upstream"

for tool in wrk nginx curl openssl taskset ss awk sed; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

WORK="$(mktemp -d /tmp/portcullis-auth-bench.XXXXXX)"
PIDS=()
WRK_PID=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    [ -n "$WRK_PID" ] && PIDS+=("$WRK_PID")
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "kept work dir: $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

USED_PORTS=" "
free_port() {
    local p
    for _ in $(seq 200); do
        p=$(( 20000 + RANDOM % 30000 ))
        if ! ss -Htln "sport = :$p" | grep -q . && [[ "$USED_PORTS" != *" $p "* ]]; then
            USED_PORTS+="$p "
            printf -v "$1" '%s' "$p"; return 0
        fi
    done
    echo "no free port found" >&2; return 1
}

wait_ready() { # wait_ready NAME PID URL LOG [HEADER]
    local body
    for _ in $(seq 200); do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "$1 exited during startup; log:" >&2; cat "$4" >&2 || true; return 1
        fi
        if body=$(curl -fsS --max-time 1 ${5:+-H "$5"} "$3" 2>/dev/null) && [ "$body" = "$EXPECTED_BODY" ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "$1 not ready at $3 (last body: ${body:-<none>}); log:" >&2; cat "$4" >&2 || true
    return 1
}

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

# --- build ------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "building release binary (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)..." >&2
    (cd "$REPO" && cargo build --release --quiet)
fi
[ -x "$BIN" ] || { echo "no binary at $BIN" >&2; exit 1; }

# --- credentials: an API key and an RS256 token, made here ----------------------
mapfile -t KEYLINES < <("$BIN" hash-key --generate 2>/dev/null)
API_KEY="${KEYLINES[0]}"
API_KEY_STORED="${KEYLINES[1]}"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/jwt.key" 2>/dev/null
openssl pkey -in "$WORK/jwt.key" -pubout -out "$WORK/jwt.pub"
NOW=$(date +%s)
HEADER=$(printf '{"alg":"RS256","typ":"JWT"}' | b64url)
PAYLOAD=$(printf '{"iss":"https://idp.bench/","aud":"api","sub":"bench-user","iat":%d,"exp":%d,"scope":"bench"}' \
    "$NOW" $((NOW + 86400)) | b64url)
SIG=$(printf '%s.%s' "$HEADER" "$PAYLOAD" | openssl dgst -sha256 -sign "$WORK/jwt.key" -binary | b64url)
TOKEN="$HEADER.$PAYLOAD.$SIG"

# --- servers --------------------------------------------------------------------
free_port UPSTREAM_PORT
free_port GW_PORT
sed -e "s|@PREFIX@|$WORK|g" -e "s|@PORT@|$UPSTREAM_PORT|g" "$HERE/upstream.nginx.conf.tmpl" >"$WORK/upstream.conf"
taskset -c "$LOAD_CPU" nginx -p "$WORK" -c "$WORK/upstream.conf" -e "$WORK/upstream.error.log" \
    >"$WORK/upstream.out" 2>&1 &
PIDS+=($!)
wait_ready upstream "${PIDS[-1]}" "http://127.0.0.1:$UPSTREAM_PORT/x" "$WORK/upstream.error.log"

cat >"$WORK/portcullis.yaml" <<EOF
workers: 1
listeners: [ { bind: "127.0.0.1:$GW_PORT" } ]
access_log: { format: "off" }
upstreams:
  fast: { targets: [ { url: "http://127.0.0.1:$UPSTREAM_PORT" } ] }
consumers:
  - { name: bench-app, roles: [reader], api_keys: ["$API_KEY_STORED"] }
auth:
  jwt:
    bench-jwt:
      public_key: jwt.pub
      algorithms: [RS256]
      issuer: https://idp.bench/
      audiences: [api]
      forward_claims: { sub: X-User-Id }
    bench-jwt-nocache:
      public_key: jwt.pub
      algorithms: [RS256]
      issuer: https://idp.bench/
      audiences: [api]
      forward_claims: { sub: X-User-Id }
      cache_size: 0
routes:
  - { name: none, match: { path: "/none/{*rest}" }, upstream: fast }
  - { name: key, match: { path: "/key/{*rest}" }, upstream: fast, policies: [ { authenticate: [api_key] } ] }
  - { name: jwt, match: { path: "/jwt/{*rest}" }, upstream: fast, policies: [ { authenticate: [bench-jwt] } ] }
  - { name: jwt-nocache, match: { path: "/jwtnc/{*rest}" }, upstream: fast, policies: [ { authenticate: [bench-jwt-nocache] } ] }
EOF
taskset -c "$PROXY_CPU" "$BIN" run -c "$WORK/portcullis.yaml" >"$WORK/portcullis.log" 2>&1 &
PIDS+=($!)
GW="http://127.0.0.1:$GW_PORT"
wait_ready portcullis "${PIDS[-1]}" "$GW/none/hello" "$WORK/portcullis.log"
wait_ready "api key" "${PIDS[-1]}" "$GW/key/hello" "$WORK/portcullis.log" "X-API-Key: $API_KEY"
wait_ready jwt "${PIDS[-1]}" "$GW/jwt/hello" "$WORK/portcullis.log" "Authorization: Bearer $TOKEN"
wait_ready "jwt (no cache)" "${PIDS[-1]}" "$GW/jwtnc/hello" "$WORK/portcullis.log" "Authorization: Bearer $TOKEN"
# The checks are real: without credentials these routes refuse.
[ "$(curl -s -o /dev/null -w '%{http_code}' "$GW/key/hello")" = 401 ] || { echo "api-key route did not refuse" >&2; exit 1; }
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${TOKEN}x" "$GW/jwt/hello")" = 401 ] \
    || { echo "jwt route accepted a bad token" >&2; exit 1; }

VARIANTS=(none api_key jwt_rs256 jwt_rs256_nocache)
declare -A PATH_OF=( [none]=/none/hello [api_key]=/key/hello [jwt_rs256]=/jwt/hello [jwt_rs256_nocache]=/jwtnc/hello )
declare -A HDR_OF=( [none]="X-Bench: 1" [api_key]="X-API-Key: $API_KEY" [jwt_rs256]="Authorization: Bearer $TOKEN" [jwt_rs256_nocache]="Authorization: Bearer $TOKEN" )

run_wrk() { # run_wrk VARIANT DURATION OUTFILE
    taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2" --latency \
        -H "${HDR_OF[$1]}" "$GW${PATH_OF[$1]}" >"$3" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID"
    WRK_PID=
}

to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n }'
}

parse_wrk() {
    local f=$1 rps p50 p99 non2xx errs
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$f")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$f")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f")
    errs=$(awk '/Socket errors:/ {sub(/^ *Socket errors: */, ""); gsub(/ /, ""); print}' "$f")
    echo "${rps:-0} $p50 $p99 ${non2xx:-0} ${errs:-none}"
}

median() {
    local d=$1; shift
    printf '%s\n' "$@" | sort -g | awk -v d="$d" '{a[NR] = $1} END {
        m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
        printf "%." d "f", m }'
}

echo "## Portcullis authentication benchmark"
echo
echo "- commit: $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo n/a)"
echo "- wrk: -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds, warm-up $WARMUP"
echo "- CPU pinning ($(nproc) cores): gateway (workers: 1) on CPU $PROXY_CPU; wrk + nginx upstream on CPU $LOAD_CPU"
echo "- credentials: one API key (SHA-256 digest in the config); one RS256 token (2048-bit key, PEM public key in the config)"
echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

if [ "$WARMUP" != 0 ]; then
    for v in "${VARIANTS[@]}"; do run_wrk "$v" "$WARMUP" "$WORK/warmup-$v.txt"; done
fi

declare -A RPS P50 P99
echo "### Raw rounds"
echo
echo "| round | variant | req/s | p50 ms | p99 ms | non-2xx/3xx | socket errors |"
echo "|---|---|---:|---:|---:|---:|---|"
for r in $(seq "$ROUNDS"); do
    for v in "${VARIANTS[@]}"; do
        out="$WORK/wrk-$r-$v.txt"
        run_wrk "$v" "$DURATION" "$out"
        read -r rps p50 p99 non2xx errs < <(parse_wrk "$out")
        RPS[$v]+="$rps "; P50[$v]+="$p50 "; P99[$v]+="$p99 "
        echo "| $r | $v | $rps | $p50 | $p99 | $non2xx | $errs |"
        if [ "$non2xx" != 0 ] || [ "$errs" != none ]; then
            echo "WARNING: $v round $r had non-2xx responses or socket errors" >&2
            cat "$out" >&2
        fi
    done
done
echo

echo "### Median of $ROUNDS rounds, and the ratio to the route without authentication"
echo
echo "| variant | req/s | p50 ms | p99 ms | req/s ratio |"
echo "|---|---:|---:|---:|---:|"
# shellcheck disable=SC2086
BASE=$(median 0 ${RPS[none]})
for v in "${VARIANTS[@]}"; do
    # shellcheck disable=SC2086
    m=$(median 0 ${RPS[$v]})
    # shellcheck disable=SC2086
    echo "| $v | $m | $(median 3 ${P50[$v]}) | $(median 3 ${P99[$v]}) | $(awk -v a="$m" -v b="$BASE" 'BEGIN { printf "%.2f", a / b }') |"
done
echo
echo "Goal: api_key and jwt_rs256 at >= 0.90 of none. jwt_rs256_nocache verifies the RS256"
echo "signature on every request (cache_size: 0): the cost of one verification per request."
