#!/usr/bin/env bash
# bench/run.sh: what a request through kizen-gateway costs, next to the floor (a bare hyper
# forwarding proxy), on loopback. See README.md, "Benchmarks".
#
#   bench/run.sh            build, start everything on free loopback ports, load it with wrk,
#                           print one table and the per-upload figures, stop what it started
#   bench/run.sh build      only build; prints the gateway binary's path (for peers-gateway.sh)
#   bench/run.sh lint       cargo fmt --check and clippy -D warnings of the bench/ crate
#   SMOKE=1 bench/run.sh    1-second runs, few tokens: checks that every scenario works (CI)
#
# Knobs (environment):
#   DURATION=10 WARMUP=3 CONNS=64 THREADS=2   wrk, per scenario (measured window, warm-up)
#   SCENARIOS=floor,rs256-distinct,hs256-distinct,rs256-reused,redis-hs256-distinct
#             any of: floor, and [redis-]{rs256,hs256}-{distinct,reused}
#   USERS=1000             users; "reused" scenarios send one token per user, again and again
#   RS256_TOKENS=DURATION*12000 HS256_TOKENS=DURATION*25000   tokens of the "distinct"
#             scenarios (all different, spread over the USERS users, each sent once before any
#             is sent again; minting RS256 tokens takes about 0.7 ms of CPU each)
#   OUTSTANDING=100000     presigns left open before the gateway's RSS is read
#   LIFECYCLES=10000       presign + confirm pairs for the Redis round trips and Redis CPU
#   GATEWAY_BIN=path       use this gateway binary instead of building one (CI passes the release
#                          binary that deploy/check.sh built)
#   GATEWAY_LOG=info       the gateway's log level (its access lines go to a file)
#   BENCH_DIR=dir          where keys, tokens, configs, logs and results go (default: a new
#                          /tmp/kizen-bench.XXXXXX, kept; at the end the token files are removed
#                          and each log is cut to its last 200 lines)
#   BENCH_TARGET_DIR=target/bench   cargo's target directory for the benchmark build
#   SMOKE=1                DURATION=1 WARMUP=1, 2000 tokens, 1000 outstanding, 200 lifecycles
#                          (explicit knobs still win); checks only that every scenario had
#                          successful requests and that the table printed
#
# The build: `cargo build --locked --profile profiling` (Cargo.toml: release + line tables) of the
# gateway and of the bench/ tools, with RUSTFLAGS="-C force-frame-pointers=yes" (for perf and
# other profilers), into their own target directory, target/bench, so that the everyday
# target/debug and target/release caches are never invalidated by the different flags.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/bench
cd "$ROOT"

SMOKE=${SMOKE:-0}
if [[ $SMOKE == 1 ]]; then
  DURATION=${DURATION:-1} WARMUP=${WARMUP:-1}
  RS256_TOKENS=${RS256_TOKENS:-2000} HS256_TOKENS=${HS256_TOKENS:-2000}
  OUTSTANDING=${OUTSTANDING:-1000} LIFECYCLES=${LIFECYCLES:-200}
fi
DURATION=${DURATION:-10} WARMUP=${WARMUP:-3} CONNS=${CONNS:-64} THREADS=${THREADS:-2}
SCENARIOS=${SCENARIOS:-floor,rs256-distinct,hs256-distinct,rs256-reused,redis-hs256-distinct}
# Enough distinct tokens that none is sent twice in the measured window (see req/token).
USERS=${USERS:-1000} RS256_TOKENS=${RS256_TOKENS:-$((DURATION * 12000))}
HS256_TOKENS=${HS256_TOKENS:-$((DURATION * 25000))}
OUTSTANDING=${OUTSTANDING:-100000} LIFECYCLES=${LIFECYCLES:-10000}
GATEWAY_LOG=${GATEWAY_LOG:-info}
BENCH_TARGET_DIR=${BENCH_TARGET_DIR:-$ROOT/target/bench}
API_KEY=bench-api-key BUSINESS_ID=bench-business-id AUDIENCE=kizen-bench
QUERY='/api/s3/presigned-post?contenttype=image/png&filename=a.png&source=field_value'
HZ=$(getconf CLK_TCK)

log() { echo "[bench] $*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}

# ---------------------------------------------------------------------------------------------
# tools and build
# ---------------------------------------------------------------------------------------------
install_missing() {
  local need=()
  command -v wrk >/dev/null || need+=(wrk)
  command -v openssl >/dev/null || need+=(openssl)
  command -v curl >/dev/null || need+=(curl)
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v redis-cli >/dev/null || need+=(redis-tools)
  ((${#need[@]})) || return 0
  ((EUID == 0)) || die "missing ${need[*]}: install them (apt-get install ${need[*]})"
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

BENCH_RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C force-frame-pointers=yes"
build() {
  export CARGO_TARGET_DIR=$BENCH_TARGET_DIR RUSTFLAGS=$BENCH_RUSTFLAGS
  if [[ -z ${GATEWAY_BIN:-} ]]; then
    log "cargo build --locked --profile profiling (gateway; CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    cargo build --locked --quiet --profile profiling --bin kizen-gateway
    GATEWAY_BIN=$CARGO_TARGET_DIR/profiling/kizen-gateway
  fi
  [[ -x $GATEWAY_BIN ]] || die "GATEWAY_BIN=$GATEWAY_BIN is not an executable"
  log "cargo build --locked --profile profiling (bench tools)"
  cargo build --locked --quiet --profile profiling --manifest-path "$HERE/Cargo.toml"
  TOOLS=$CARGO_TARGET_DIR/profiling
  unset CARGO_TARGET_DIR RUSTFLAGS
}

# The bench crate's format and lints (CI), with the build's target directory and flags.
lint() {
  cargo fmt --check --manifest-path "$HERE/Cargo.toml"
  CARGO_TARGET_DIR=$BENCH_TARGET_DIR RUSTFLAGS=$BENCH_RUSTFLAGS cargo clippy --locked --quiet \
    --profile profiling --manifest-path "$HERE/Cargo.toml" --all-targets -- -D warnings
}

case "$*" in
  build)
    build
    echo "$GATEWAY_BIN"
    exit 0
    ;;
  lint)
    lint
    exit 0
    ;;
  "") ;;
  *) die "usage: bench/run.sh [build | lint]" ;;
esac

IFS=, read -ra SCENARIO_LIST <<<"$SCENARIOS"
for s in "${SCENARIO_LIST[@]}"; do
  [[ $s =~ ^(floor|(redis-)?(rs256|hs256)-(distinct|reused))$ ]] || die "unknown scenario $s"
done

STARTED_AT=$SECONDS
install_missing
build
BUILT_AT=$SECONDS

BENCH_DIR=${BENCH_DIR:-$(mktemp -d /tmp/kizen-bench.XXXXXX)}
mkdir -p "$BENCH_DIR"
RESULTS=$BENCH_DIR/results.txt
: >"$RESULTS"

# ---------------------------------------------------------------------------------------------
# processes: everything started here is stopped by its PID on exit
# ---------------------------------------------------------------------------------------------
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -f "$BENCH_DIR"/tokens-*.txt
  # The gateways' access lines run to hundreds of MB: keep the end of each log.
  local f
  for f in "$BENCH_DIR"/gateway-*.log; do
    [[ -f $f ]] && tail -n 200 "$f" >"$f.tail" && mv "$f.tail" "$f"
  done
}
trap cleanup EXIT

LOG_DIR=$BENCH_DIR
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

cpu_ticks() { # utime + stime of a process, all its threads (0 without a PID)
  if [[ -n ${1:-} && -r /proc/$1/stat ]]; then
    sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
  else
    echo 0
  fi
}
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }

# ---------------------------------------------------------------------------------------------
# keys and tokens
# ---------------------------------------------------------------------------------------------
log "keys and tokens in $BENCH_DIR"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$BENCH_DIR/rs256-private.pem" 2>/dev/null
openssl pkey -in "$BENCH_DIR/rs256-private.pem" -pubout -out "$BENCH_DIR/rs256-public.pem"
openssl rand -hex 32 >"$BENCH_DIR/hs256.secret"
chmod 600 "$BENCH_DIR/rs256-private.pem" "$BENCH_DIR/hs256.secret"

declare -A KEY=([rs256]=$BENCH_DIR/rs256-private.pem [hs256]=$BENCH_DIR/hs256.secret)
declare -A TOKEN_COUNT=([rs256]=$RS256_TOKENS [hs256]=$HS256_TOKENS)
tokens() { # tokens ALG KIND: the token file, minted on first use
  local file=$BENCH_DIR/tokens-$1-$2.txt count=$USERS
  [[ $2 == distinct ]] && count=${TOKEN_COUNT[$1]}
  if [[ ! -s $file ]]; then
    local started=$SECONDS
    "$TOOLS/bench-tokens" --alg "${1^^}" --key "${KEY[$1]}" --count "$count" --users "$USERS" \
      --aud "$AUDIENCE" --out "$file"
    log "  $count $1 tokens for $USERS users ($((SECONDS - started)) s)"
  fi
  echo "$file"
}

# ---------------------------------------------------------------------------------------------
# upstream, floor proxy, Redis, gateway
# ---------------------------------------------------------------------------------------------
UP_PORT=$(free_port)
start upstream "$TOOLS/bench-upstream" --listen "127.0.0.1:$UP_PORT" --api-key "$API_KEY" \
  --business-id "$BUSINESS_ID"
UP_PID=$STARTED
wait_port "$UP_PORT" "$UP_PID" upstream

FLOOR_PORT=$(free_port)
start floor-proxy "$TOOLS/floor-proxy" --listen "127.0.0.1:$FLOOR_PORT" \
  --upstream "http://127.0.0.1:$UP_PORT" --api-key "$API_KEY" --business-id "$BUSINESS_ID"
FLOOR_PID=$STARTED
wait_port "$FLOOR_PORT" "$FLOOR_PID" floor-proxy

REDIS_PORT=$(free_port) REDIS_PID=
redis() { redis-cli -p "$REDIS_PORT" "$@"; }
start_redis() {
  [[ -z $REDIS_PID ]] || return 0
  start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
  REDIS_PID=$STARTED
  wait_port "$REDIS_PORT" "$REDIS_PID" redis
}

GW_PORT=$(free_port) ADMIN_PORT=$(free_port)
GW_URL=http://127.0.0.1:$GW_PORT

# gateway_config STORE: a config with both keys and limits far above what the load reaches
gateway_config() {
  local file=$BENCH_DIR/gateway-$1.toml
  cat >"$file" <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[log]
level = "$GATEWAY_LOG"

[auth]
audiences = ["$AUDIENCE"]

[[auth.keys]]
algorithm = "RS256"
public_key_file = "$BENCH_DIR/rs256-public.pem"

[[auth.keys]]
algorithm = "HS256"
secret = "file:$BENCH_DIR/hs256.secret"

[upstream]
base_url = "http://127.0.0.1:$UP_PORT"
api_key = "value:$API_KEY"
business_id = "value:$BUSINESS_ID"
user_id_claim = "sub"
pool_max_idle_per_host = 256

[presign]
rate_limit_burst = 1000000
rate_limit_period = "1m"

[confirm]
rate_limit_burst = 1000000
rate_limit_period = "1m"

[quotas.tiers.default]
max_outstanding = 1000000

[store]
kind = "$1"
max_uploads = 50000000
max_uploads_per_user = 1000001

[store.redis]
urls = ["redis://127.0.0.1:$REDIS_PORT"]
TOML
  echo "$file"
}

# start_gateway STORE NAME: a fresh gateway (fresh store: Redis is emptied first), ready, checked
# with one presign; its PID goes to $GW_PID.
start_gateway() {
  local store=$1 name=$2 deadline code
  if [[ $store == redis ]]; then
    start_redis
    redis FLUSHALL >/dev/null
  fi
  start "gateway-$name" "$GATEWAY_BIN" --config "$(gateway_config "$store")"
  GW_PID=$STARTED
  deadline=$((SECONDS + 30))
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/readyz") == 200 ]]; do
    kill -0 "$GW_PID" 2>/dev/null || { tail -20 "$BENCH_DIR/gateway-$name.log" >&2; die "the gateway exited"; }
    ((SECONDS < deadline)) || die "the gateway is not ready after 30 s"
    sleep 0.1
  done
  code=$(curl -s -o "$BENCH_DIR/check.body" -w '%{http_code}' "$GW_URL$QUERY" \
    -H "Authorization: Bearer $(head -1 "$(tokens hs256 reused)")")
  [[ $code == 200 ]] || { cat "$BENCH_DIR/check.body" >&2; die "a presign through the gateway answered $code"; }
}

# ---------------------------------------------------------------------------------------------
# scenarios
# ---------------------------------------------------------------------------------------------
# wrk_run SECONDS URL TOKENS: prints wrk's RESULT line and its CPU seconds (WRKCPU user sys)
wrk_run() {
  local TIMEFORMAT='WRKCPU %U %S'
  { time TOKENS=$3 WRK_THREADS=$THREADS wrk -t"$THREADS" -c"$CONNS" -d"${1}s" \
    -s "$HERE/wrk.lua" "$2$QUERY"; } 2>&1
}

# scenario NAME: warm-up, then the measured run with CPU counters read around it
scenario() {
  local name=$1 url warm="" measured="" store=memory alg kind
  if [[ $name == floor ]]; then
    url=http://127.0.0.1:$FLOOR_PORT
  else
    [[ $name == redis-* ]] && store=redis
    alg=${name#redis-} kind=${alg#*-} alg=${alg%%-*}
    warm=$(tokens "$alg" reused) measured=$(tokens "$alg" "$kind")
    start_gateway "$store" "$name"
    url=$GW_URL
  fi
  if ((WARMUP > 0)); then wrk_run "$WARMUP" "$url" "$warm" >/dev/null || die "wrk failed in $name"; fi
  local g0 u0 f0 r0 b0 g1 u1 f1 r1 b1 out result
  g0=$(cpu_ticks "${GW_PID:-}") u0=$(cpu_ticks "$UP_PID") f0=$(cpu_ticks "$FLOOR_PID")
  r0=$(cpu_ticks "$REDIS_PID") b0=$(busy_ticks)
  out=$(wrk_run "$DURATION" "$url" "$measured") || die "wrk failed in $name: $out"
  g1=$(cpu_ticks "${GW_PID:-}") u1=$(cpu_ticks "$UP_PID") f1=$(cpu_ticks "$FLOOR_PID")
  r1=$(cpu_ticks "$REDIS_PID") b1=$(busy_ticks)
  result=$(grep '^RESULT' <<<"$out") || die "wrk failed in $name: $out"
  [[ $name == floor ]] && g0=0 g1=0
  if [[ $store != redis ]]; then r0=0 r1=0; fi
  local tokens_sent=0
  [[ -n $measured ]] && tokens_sent=$(wc -l <"$measured")
  echo "$name ${result#RESULT } tokens=$tokens_sent gateway=$((g1 - g0)) upstream=$((u1 - u0)) \
proxy=$((f1 - f0)) redis=$((r1 - r0)) busy=$((b1 - b0)) $(awk '/^WRKCPU/{printf "wrk_s=%.2f", $2 + $3}' <<<"$out")" >>"$RESULTS"
  log "  $name: ${result#RESULT }"
  if [[ $name != floor ]]; then
    stop "$GW_PID"
    GW_PID=
  fi
}

log "load: wrk -t$THREADS -c$CONNS, ${WARMUP}s warm-up + ${DURATION}s measured per scenario; loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
GW_PID=
for s in "${SCENARIO_LIST[@]}"; do scenario "$s"; done

# ---------------------------------------------------------------------------------------------
# per-upload figures
# ---------------------------------------------------------------------------------------------
EXTRA=$BENCH_DIR/extra.txt
: >"$EXTRA"
metric() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

# Memory: RSS of a fresh memory-mode gateway before and after OUTSTANDING open presigns, spread
# over OUTSTANDING users (one each) and over USERS users.
rss_run() { # rss_run USERS_LABEL TOKEN_FILE
  start_gateway memory "rss-$1"
  local before after out
  before=$(rss_kib "$GW_PID")
  out=$("$TOOLS/bench-lifecycle" --url "$GW_URL" --tokens "$2" --count "$OUTSTANDING" --concurrency 64)
  after=$(rss_kib "$GW_PID")
  local ok=${out#*ok=}
  ok=${ok%% *}
  ((ok > 0)) || die "no presign succeeded in the memory run: $out"
  awk -v n="$OUTSTANDING" -v users="$1" -v before="$before" -v after="$after" -v ok="$ok" \
    -v entries="$(metric kizen_gateway_store_entries)" -v statuses="$(grep -o 'statuses=[^ ]*' <<<"$out")" \
    'BEGIN {printf "memory store: %d open uploads of %d users: gateway RSS %.1f MiB -> %.1f MiB (%.0f bytes per upload; store_entries %s; %s)\n",
            n, users, before / 1024, after / 1024, (after - before) * 1024 / ok, entries, statuses}' >>"$EXTRA"
  stop "$GW_PID"
  GW_PID=
}
log "memory: $OUTSTANDING open presigns"
SOLO=$BENCH_DIR/tokens-hs256-solo.txt
"$TOOLS/bench-tokens" --alg HS256 --key "$BENCH_DIR/hs256.secret" --count "$OUTSTANDING" \
  --users "$OUTSTANDING" --user-prefix solo- --aud "$AUDIENCE" --out "$SOLO"
rss_run "$OUTSTANDING" "$SOLO"
if ((USERS < OUTSTANDING)); then rss_run "$USERS" "$(tokens hs256 reused)"; fi

# Redis: round trips per presign and per confirm, counted with MONITOR (which tells the commands
# a client sent from those that its scripts ran), then Redis CPU per upload (INFO cpu) in a
# second run without MONITOR, whose own cost would count.
ROUND_TRIP_UPLOADS=$((LIFECYCLES < 1000 ? LIFECYCLES : 1000))
lifecycle() { # lifecycle ARGS...: bench-lifecycle against the gateway with the reused HS256 tokens
  "$TOOLS/bench-lifecycle" --url "$GW_URL" --tokens "$(tokens hs256 reused)" "$@"
}
check_all_ok() { # check_all_ok N OUTPUT
  [[ $2 == *" ok=$1 "* ]] || die "not every request of the Redis run succeeded: $2"
}
monitored() { # monitored NAME ARGS...: bench-lifecycle under MONITOR; the log is $BENCH_DIR/monitor-NAME.log
  local file=$BENCH_DIR/monitor-$1.log deadline=$((SECONDS + 10)) out
  shift
  redis-cli -p "$REDIS_PORT" MONITOR >"$file" &
  local monitor=$!
  until grep -q '^OK' "$file" 2>/dev/null; do
    ((SECONDS < deadline)) || die "redis-cli MONITOR did not start"
    sleep 0.05
  done
  out=$(lifecycle "$@")
  sleep 0.2
  kill "$monitor"
  wait "$monitor" 2>/dev/null || true
  echo "$out"
}
round_trips() { # round_trips NAME N: "R round trips (cmd r, ...) + S commands inside scripts" per upload
  awk -v n="$2" '
    $2 !~ /^\[/ { next }
    $3 == "lua]" { inside++; next }
    { cmd = tolower($4); gsub("\"", "", cmd); calls[cmd]++; total++ }
    END {
      for (c in calls) list = list sprintf("%s%s %.2f", (list ? ", " : ""), c, calls[c] / n)
      printf "%.2f round trips (%s), running %.2f commands inside scripts", total / n, list, inside / n
    }' "$BENCH_DIR/monitor-$1.log"
}
redis_cpu() { # "user+sys sys" seconds
  redis INFO cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/{s += $2} /^used_cpu_sys:/{k = $2} END {printf "%.6f %.6f", s, k}'
}
# scripts_run: "calls usec" of EVALSHA since the last CONFIG RESETSTAT (usec: time inside the
# scripts, the commands they run included; wall time, so it grows if Redis is preempted)
scripts_run() {
  redis INFO commandstats | tr -d '\r' | awk -F'[:=,]' '$1 == "cmdstat_evalsha" {c = $3; u = $5} END {printf "%d %d", c, u}'
}

log "redis: $ROUND_TRIP_UPLOADS uploads under MONITOR, then $LIFECYCLES for Redis CPU"
start_gateway redis redis-lifecycle
# Warm-up: every script loaded (a first EVALSHA misses and loads it), the connections open.
lifecycle --count 100 --save "$BENCH_DIR/issued-warm-up.txt" >/dev/null
lifecycle --confirm-from "$BENCH_DIR/issued-warm-up.txt" >/dev/null
out=$(monitored presign --count "$ROUND_TRIP_UPLOADS" --save "$BENCH_DIR/issued-monitored.txt")
check_all_ok "$ROUND_TRIP_UPLOADS" "$out"
out=$(monitored confirm --confirm-from "$BENCH_DIR/issued-monitored.txt")
check_all_ok "$ROUND_TRIP_UPLOADS" "$out"
redis CONFIG RESETSTAT >/dev/null
cpu0=$(redis_cpu)
out=$(lifecycle --count "$LIFECYCLES" --save "$BENCH_DIR/issued.txt")
check_all_ok "$LIFECYCLES" "$out"
cpu_presigned=$(redis_cpu) presign_scripts=$(scripts_run)
redis CONFIG RESETSTAT >/dev/null
out=$(lifecycle --confirm-from "$BENCH_DIR/issued.txt")
check_all_ok "$LIFECYCLES" "$out"
cpu1=$(redis_cpu) confirm_scripts=$(scripts_run)
stop "$GW_PID"
GW_PID=
{
  echo "redis store: per presign: $(round_trips presign "$ROUND_TRIP_UPLOADS")"
  echo "redis store: per confirm: $(round_trips confirm "$ROUND_TRIP_UPLOADS")"
  awk -v a="${cpu0% *}" -v b="${cpu1% *}" -v n="$LIFECYCLES" \
    'BEGIN {printf "redis store: Redis CPU per upload (presign + confirm): %.1f us (%d uploads)\n", (b - a) * 1e6 / n, n}'
  # Per step: CPU, of it the kernel's, and the scripts' own time as Redis counts it.
  per_step() { # per_step NAME "CPU0 SYS0" "CPU1 SYS1" "CALLS USEC"
    awk -v name="$1" -v c0="$2" -v c1="$3" -v s="$4" -v n="$LIFECYCLES" 'BEGIN {
      split(c0, a, " "); split(c1, b, " "); split(s, r, " ")
      printf "redis store: per %s: Redis CPU %.1f us (kernel %.1f us); %.2f scripts, usec_per_call %.2f\n",
        name, (b[1] - a[1]) * 1e6 / n, (b[2] - a[2]) * 1e6 / n, r[1] / n, r[1] ? r[2] / r[1] : 0
    }'
  }
  per_step presign "$cpu0" "$cpu_presigned" "$presign_scripts"
  per_step confirm "$cpu_presigned" "$cpu1" "$confirm_scripts"
} >>"$EXTRA"

# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
echo
echo "kizen-gateway benchmark: wrk -t$THREADS -c$CONNS, ${DURATION}s measured after ${WARMUP}s warm-up, $(nproc) cores, $(date -u +%FT%TZ)"
echo "gateway: $GATEWAY_BIN (log level $GATEWAY_LOG); $USERS users"
echo
awk -v hz="$HZ" '
  function us(ticks, n) { return n > 0 ? ticks * 1e6 / hz / n : 0 }
  function cell(ticks, n) { return ticks > 0 ? sprintf("%.1f", us(ticks, n)) : "-" }
  {
    name[NR] = $1
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[NR, kv[1]] = kv[2] }
    if ($1 == "floor") floor = us(v[NR, "proxy"], v[NR, "requests"])
  }
  END {
    fmt = "| %-22s | %8s | %6s | %6s | %7s | %8s | %9s | %10s | %11s | %8s | %8s | %8s | %11s |\n"
    printf fmt, "scenario", "req/s", "p50 ms", "p99 ms", "non-2xx", "sock err", "req/token", \
      "gateway us", "upstream us", "proxy us", "redis us", "x floor", "other cores"
    printf "|%s|%s:|%s:|%s:|%s:|%s:|%s:|%s:|%s:|%s:|%s:|%s:|%s:|\n", "------------------------", \
      "---------", "-------", "-------", "--------", "---------", "----------", "-----------", \
      "------------", "---------", "---------", "---------", "------------"
    for (r = 1; r <= NR; r++) {
      n = v[r, "requests"]; secs = v[r, "duration_us"] / 1e6
      front = us(v[r, "gateway"] + v[r, "redis"] + v[r, "proxy"], n)
      own = (v[r, "gateway"] + v[r, "upstream"] + v[r, "proxy"] + v[r, "redis"]) / hz + v[r, "wrk_s"]
      other = v[r, "busy"] / hz - own; if (other < 0) other = 0
      printf fmt, name[r], sprintf("%.0f", n / secs), sprintf("%.2f", v[r, "p50_us"] / 1000), \
        sprintf("%.2f", v[r, "p99_us"] / 1000), v[r, "non2xx"], v[r, "sockerr"], \
        (v[r, "tokens"] > 0 ? sprintf("%.2f", n / v[r, "tokens"]) : "-"), \
        cell(v[r, "gateway"], n), cell(v[r, "upstream"], n), cell(v[r, "proxy"], n), \
        cell(v[r, "redis"], n), (floor > 0 ? sprintf("%.2f", front / floor) : "-"), \
        sprintf("%.2f", other / secs)
    }
  }' "$RESULTS"
echo
echo "us = CPU microseconds per request of that process (utime + stime over the measured window / requests)."
echo "x floor = (gateway + redis) us per request / the floor proxy's us per request."
echo "req/token = requests / distinct tokens sent: at most 1, no token was sent twice in the window."
echo "other cores = busy CPU of the whole machine minus these processes and wrk, in cores: above ~0.1, something else ran."
echo
cat "$EXTRA"
echo
echo "run folder: $BENCH_DIR (the end of each log, raw results); $((SECONDS - BUILT_AT)) s, build $((BUILT_AT - STARTED_AT)) s"

if [[ $SMOKE == 1 ]]; then
  awk '{for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        if (v["requests"] - v["non2xx"] <= 0) { print "no successful request in " $1; bad = 1 } }
       END { exit bad }' "$RESULTS" || die "smoke: a scenario had no successful request"
  echo "bench smoke: $(wc -l <"$RESULTS") scenarios with successful requests, table printed"
fi
