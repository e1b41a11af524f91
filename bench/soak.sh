#!/usr/bin/env bash
# bench/soak.sh: does the gateway stay flat under hours of ordinary traffic? A paced mix of
# uploads (presigns, confirmations, repeats, late confirmations, 5 % bad requests) against the
# release binary, in memory and in Redis mode, sampled every 10 s. See README.md, "Soak".
#
#   bench/soak.sh              both modes, SOAK_SECONDS each; checks, CSVs, a PNG plot
#   bench/soak.sh memory       one mode (memory or redis)
#   SMOKE=1 bench/soak.sh      20 s per mode, accounting checked, flatness and plot skipped (CI)
#
# What it checks, per mode (exit 1 naming the failed check):
#   - every answer was the one expected of its request (bench-soak's "unexpected" is 0), and the
#     gateway's own kizen_gateway_requests_total{route,status,outcome} moved by exactly the
#     counts bench-soak got: no answer other than the injected errors, on either side;
#   - no WARN or ERROR line in the gateway's log;
#   - (FLAT=1, the default unless SMOKE=1) after SOAK_WARMUP seconds: every sample of RSS, open
#     descriptors and tokio tasks within FLAT_TOLERANCE (10 %) of the first one after warm-up,
#     and the median of the last third of the samples within FLAT_TOLERANCE of the first third's
#     (descriptors and tasks without the upstream pool's connections, which follow the requests
#     in flight, plus one); the pool within CONNECTIONS; no drift: the last third's median p99 at most
#     P99_DRIFT (2) times the first third's plus 1 ms, p50 at most 1.25 times plus 0.5 ms, the
#     gateway's CPU per request at most CPU_DRIFT (1.25) times.
#
# Knobs (environment):
#   SOAK_SECONDS=600   traffic per mode (SMOKE: 20)
#   SOAK_WARMUP=120    seconds before the flatness baseline: the memory store fills to
#                      STORE_MAX_UPLOADS and the token cache to TOKEN_CACHE, open uploads level off
#   RATE=200           requests per second (open loop, well below saturation on 2 cores, so that
#                      latency is service time, not queueing)
#   INTERVAL=10        sampling period, seconds
#   WINDOW=20          confirm.max_window in seconds: uploads expire all the time (SMOKE: 6;
#                      at least 5: confirmations come up to 3 s after their presign);
#                      late confirmations come WINDOW + 5 s after their presign
#   SWEEP=1s           store.sweep_interval
#   USERS=500 TOKENS_PER_USER=8   HS256 tokens, taken in turn (the verified-token cache churns)
#   TOKEN_CACHE=1000   auth.token_cache.max_entries (below USERS * TOKENS_PER_USER on purpose)
#   STORE_MAX_UPLOADS=8000   store.max_uploads: the memory store reaches it during warm-up and
#                      then evicts expired and confirmed uploads to make room, as a full store does
#   CONNECTIONS=8      bench-soak's keep-alive connections
#   FLAT=1 FLAT_TOLERANCE=0.10 P99_DRIFT=2 CPU_DRIFT=1.25   the flatness checks (SMOKE: FLAT=0)
#   PLOT=1             the PNG (matplotlib in a virtualenv: SOAK_VENV, default
#                      ~/.cache/kizen-gateway-soak/venv; SMOKE: PLOT=0)
#   GATEWAY_BIN=path   the gateway binary (default: cargo build --release, target/release)
#   GATEWAY_LOG=info   the gateway's log level, as deployed (its access lines go to a file)
#   SOAK_DIR=dir       CSVs, summaries, logs, plot (default: a new /tmp/kizen-soak.XXXXXX, kept)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/bench
cd "$ROOT"

SMOKE=${SMOKE:-0}
if [[ $SMOKE == 1 ]]; then
  SOAK_SECONDS=${SOAK_SECONDS:-20} SOAK_WARMUP=${SOAK_WARMUP:-5} WINDOW=${WINDOW:-6}
  INTERVAL=${INTERVAL:-2} FLAT=${FLAT:-0} PLOT=${PLOT:-0}
fi
SOAK_SECONDS=${SOAK_SECONDS:-600} SOAK_WARMUP=${SOAK_WARMUP:-120} RATE=${RATE:-200}
INTERVAL=${INTERVAL:-10} WINDOW=${WINDOW:-20} SWEEP=${SWEEP:-1s}
USERS=${USERS:-500} TOKENS_PER_USER=${TOKENS_PER_USER:-8} TOKEN_CACHE=${TOKEN_CACHE:-1000}
STORE_MAX_UPLOADS=${STORE_MAX_UPLOADS:-8000} CONNECTIONS=${CONNECTIONS:-8}
FLAT=${FLAT:-1} FLAT_TOLERANCE=${FLAT_TOLERANCE:-0.10} P99_DRIFT=${P99_DRIFT:-2} CPU_DRIFT=${CPU_DRIFT:-1.25}
PLOT=${PLOT:-1}
GATEWAY_LOG=${GATEWAY_LOG:-info}
SOAK_VENV=${SOAK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kizen-gateway-soak/venv}
MATPLOTLIB=matplotlib==3.10.8
API_KEY=soak-api-key BUSINESS_ID=soak-business-id AUDIENCE=kizen-soak

MODES=("$@")
((${#MODES[@]})) || MODES=(memory redis)

log() { echo "[soak] $*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}

for mode in "${MODES[@]}"; do
  [[ $mode == memory || $mode == redis ]] || die "usage: bench/soak.sh [memory] [redis]"
done
((WINDOW >= 5)) || die "WINDOW=$WINDOW: at least 5 (confirmations come up to 3 s after their presign)"

# ---------------------------------------------------------------------------------------------
# tools and build
# ---------------------------------------------------------------------------------------------
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v redis-server >/dev/null || need+=(redis-server)
if ((${#need[@]})); then
  ((EUID == 0)) || die "missing ${need[*]}: install them (apt-get install ${need[*]})"
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [[ -z ${GATEWAY_BIN:-} ]]; then
  log "cargo build --locked --release (gateway)"
  cargo build --locked --quiet --release --bin kizen-gateway
  GATEWAY_BIN=$ROOT/target/release/kizen-gateway
fi
[[ -x $GATEWAY_BIN ]] || die "GATEWAY_BIN=$GATEWAY_BIN is not an executable"
# The bench tools, built as bench/run.sh builds them (and into the same target directory).
GATEWAY_BIN=$GATEWAY_BIN "$HERE/run.sh" build >/dev/null
TOOLS=${BENCH_TARGET_DIR:-$ROOT/target/bench}/profiling

SOAK_DIR=${SOAK_DIR:-$(mktemp -d /tmp/kizen-soak.XXXXXX)}
mkdir -p "$SOAK_DIR"

# ---------------------------------------------------------------------------------------------
# processes: everything started here is stopped by its PID on exit
# ---------------------------------------------------------------------------------------------
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -f "$SOAK_DIR/tokens.txt"
}
trap cleanup EXIT

LOG_DIR=$SOAK_DIR
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# ---------------------------------------------------------------------------------------------
# keys, tokens, upstream
# ---------------------------------------------------------------------------------------------
openssl rand -hex 32 >"$SOAK_DIR/hs256.secret"
chmod 600 "$SOAK_DIR/hs256.secret"
# Valid for the whole run, both modes and their start-up included.
"$TOOLS/bench-tokens" --alg HS256 --key "$SOAK_DIR/hs256.secret" \
  --count $((USERS * TOKENS_PER_USER)) --users "$USERS" --aud "$AUDIENCE" \
  --ttl $((2 * SOAK_SECONDS + 3600)) --out "$SOAK_DIR/tokens.txt"

UP_PORT=$(free_port)
start upstream "$TOOLS/bench-upstream" --listen "127.0.0.1:$UP_PORT" --api-key "$API_KEY" \
  --business-id "$BUSINESS_ID"
wait_port "$UP_PORT" "$STARTED" upstream

GW_PORT=$(free_port) ADMIN_PORT=$(free_port) REDIS_PORT=$(free_port)

gateway_config() { # gateway_config MODE: rate limits and quotas far above the load
  cat >"$SOAK_DIR/gateway-$1.toml" <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[log]
level = "$GATEWAY_LOG"

[auth]
audiences = ["$AUDIENCE"]

[auth.token_cache]
max_entries = $TOKEN_CACHE

[[auth.keys]]
algorithm = "HS256"
secret = "file:$SOAK_DIR/hs256.secret"

[upstream]
base_url = "http://127.0.0.1:$UP_PORT"
api_key = "value:$API_KEY"
business_id = "value:$BUSINESS_ID"
user_id_claim = "sub"

[presign]
rate_limit_burst = 1000000
rate_limit_period = "1m"

[confirm]
max_window = "${WINDOW}s"
rate_limit_burst = 1000000
rate_limit_period = "1m"

[quotas.tiers.default]
max_outstanding = 1000

[store]
kind = "$1"
max_uploads = $STORE_MAX_UPLOADS
max_uploads_per_user = 1001
sweep_interval = "$SWEEP"

[store.redis]
urls = ["redis://127.0.0.1:$REDIS_PORT"]
TOML
  echo "$SOAK_DIR/gateway-$1.toml"
}

# requests_total MODE FILE: "route status outcome count" per line of the gateway's counter
requests_total() {
  curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" >"$SOAK_DIR/metrics-$1.txt" ||
    die "$1: cannot read the gateway's metrics"
  sed -n 's/^kizen_gateway_requests_total{route="\([^"]*\)",status="\([^"]*\)",outcome="\([^"]*\)"} \(.*\)$/\1 \2 \3 \4/p' \
    "$SOAK_DIR/metrics-$1.txt" >"$2"
}

# ---------------------------------------------------------------------------------------------
# one mode
# ---------------------------------------------------------------------------------------------
soak() {
  local mode=$1 redis_pid="" gw_pid deadline
  if [[ $mode == redis ]]; then
    start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
    redis_pid=$STARTED
    wait_port "$REDIS_PORT" "$redis_pid" redis
  fi
  start "gateway-$mode" "$GATEWAY_BIN" --config "$(gateway_config "$mode")"
  gw_pid=$STARTED
  deadline=$((SECONDS + 30))
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/readyz") == 200 ]]; do
    kill -0 "$gw_pid" 2>/dev/null || { tail -20 "$SOAK_DIR/gateway-$mode.log" >&2; die "$mode: the gateway exited"; }
    ((SECONDS < deadline)) || die "$mode: the gateway is not ready after 30 s"
    sleep 0.1
  done
  requests_total "$mode-before" "$SOAK_DIR/requests-$mode-before.txt"

  log "$mode: ${SOAK_SECONDS}s at $RATE req/s, window ${WINDOW}s, sweep every $SWEEP; loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
  "$TOOLS/bench-soak" --url "http://127.0.0.1:$GW_PORT" --admin "http://127.0.0.1:$ADMIN_PORT" \
    --pid "$gw_pid" ${redis_pid:+--redis-pid "$redis_pid"} --tokens "$SOAK_DIR/tokens.txt" \
    --users "$USERS" --seconds "$SOAK_SECONDS" --rate "$RATE" --interval "$INTERVAL" \
    --late $((WINDOW + 5)) --connections "$CONNECTIONS" --clock-ticks "$(getconf CLK_TCK)" \
    --upstream-port "$UP_PORT" \
    --csv "$SOAK_DIR/soak-$mode.csv" --summary "$SOAK_DIR/summary-$mode.txt" |
    tee "$SOAK_DIR/soak-$mode.out" >&2
  requests_total "$mode-after" "$SOAK_DIR/requests-$mode-after.txt"
  kill -0 "$gw_pid" 2>/dev/null || die "$mode: the gateway died during the soak"
  stop "$gw_pid"
  [[ -z $redis_pid ]] || stop "$redis_pid"

  check_accounting "$mode"
  check_log "$mode"
  if [[ $FLAT == 1 ]]; then check_flat "$mode"; fi
}

# The answers bench-soak got, by (route, status, outcome), must be exactly what it expected and
# exactly what the gateway counted between the two scrapes.
check_accounting() {
  local mode=$1 summary=$SOAK_DIR/summary-$1.txt
  [[ -s $summary ]] || die "$mode: bench-soak wrote no summary"
  local unexpected
  unexpected=$(awk '$1 == "unexpected" {print $2}' "$summary")
  awk '
    FILENAME == ARGV[1] { before[$1 " " $2 " " $3] = $4; next }
    FILENAME == ARGV[2] { moved[$1 " " $2 " " $3] = $4 - before[$1 " " $2 " " $3]; next }
    $1 == "unexpected" { next }
    { got[$1 " " $2 " " $3] = $5 }
    END {
      for (k in moved) if (moved[k] != 0 && !(k in got)) { print "  gateway counted " moved[k] " x " k ", bench-soak got none"; bad = 1 }
      for (k in got) if (got[k] != moved[k] + 0) { print "  " k ": bench-soak got " got[k] ", the gateway counted " moved[k] + 0; bad = 1 }
      exit bad
    }' "$SOAK_DIR/requests-$mode-before.txt" "$SOAK_DIR/requests-$mode-after.txt" "$summary" >&2 ||
    die "$mode: the gateway's requests_total does not match the answers bench-soak got"
  log "$mode: answers (route status outcome expected got):"
  grep -v '^unexpected' "$summary" | sed 's/^/[soak]   /' >&2
  [[ $unexpected == 0 ]] || die "$mode: $unexpected answers were not the expected ones (first ones in $SOAK_DIR/soak-$mode.out)"
}

check_log() {
  local mode=$1 file=$SOAK_DIR/gateway-$1.log bad
  bad=$(grep -cE '(^| )(WARN|ERROR)( |$)|"level":"(WARN|ERROR)"' "$file" || true)
  if ((bad > 0)); then
    grep -E '(^| )(WARN|ERROR)( |$)|"level":"(WARN|ERROR)"' "$file" | head -5 >&2
    die "$mode: $bad WARN/ERROR lines in the gateway's log"
  fi
  # The access lines run to tens of MB: keep the end.
  tail -n 200 "$file" >"$file.tail" && mv "$file.tail" "$file"
}

# After warm-up, RSS, descriptors and tasks, each two ways: every sample within FLAT_TOLERANCE of
# the first one, and the median of the last third of the samples within FLAT_TOLERANCE of the
# first third's (a slow leak hiding inside the tolerance still moves the median). The connections
# of the gateway's upstream pool come and go with the requests in flight (a descriptor and a task
# each, at most CONNECTIONS of them), so descriptors and tasks are checked without them, with one
# more for the sampler's own admin connection; the pool itself must stay within CONNECTIONS.
# Drift, last third's median against the first third's: p99 at most P99_DRIFT times plus 1 ms
# (what else runs on a shared machine moves it most), p50 at most 1.25 times plus 0.5 ms, and the
# gateway's CPU per request at most CPU_DRIFT times (work per request that grows with the run;
# hardly moved by other processes).
check_flat() {
  local mode=$1
  awk -F, -v warm="$SOAK_WARMUP" -v tol="$FLAT_TOLERANCE" -v drift="$P99_DRIFT" \
    -v conns="$CONNECTIONS" -v cpu_drift="$CPU_DRIFT" -v mode="$mode" '
    function median(a, n,   i, j, t) {
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    # thirds(KEY): the medians of the first and the last third of the samples, in early and late
    function thirds(c,   i, a, b) {
      for (i = 1; i <= third; i++) { a[i] = v[c, i]; b[i] = v[c, n - third + i] }
      early = median(a, third); late = median(b, third)
    }
    function flat(c, name, slack,   i, first) {
      first = v[c, 1]
      for (i = 1; i <= n; i++) {
        if (v[c, i] > first * (1 + tol) + slack || v[c, i] < first * (1 - tol) - slack) {
          printf "  %s %s at %ss: %s, first after warm-up %s (tolerance %d %% + %d)\n", mode, name, t[i], v[c, i], first, tol * 100, slack
          bad = 1
        }
      }
      thirds(c)
      printf "[soak] %s %s: first %s, median %s in the first third after warm-up, %s in the last\n", mode, name, first, early, late > "/dev/stderr"
      if (late > early * (1 + tol) + slack || late < early * (1 - tol) - slack) {
        printf "  %s %s: the median moved from %s to %s (tolerance %d %% + %d)\n", mode, name, early, late, tol * 100, slack
        bad = 1
      }
    }
    function drifted(c, name, factor, plus) {
      thirds(c)
      printf "[soak] %s %s: median %.3f in the first third after warm-up, %.3f in the last\n", mode, name, early, late > "/dev/stderr"
      if (late > early * factor + plus) { printf "  %s %s drifted: %.3f -> %.3f (limit %.2f x + %s)\n", mode, name, early, late, factor, plus; bad = 1 }
    }
    NR == 1 { next }
    $1 + 0 <= warm + 0 { next }
    {
      n++; t[n] = $1
      v["rss", n] = $7; v["fds", n] = $8 - $15; v["tasks", n] = $10 - $15
      v["p99", n] = $5; v["p50", n] = $4; v["cpu", n] = $14
      if ($15 + 0 > conns + 0) { printf "  %s upstream connections at %ss: %s, more than the %d requests that can be in flight\n", mode, $1, $15, conns; bad = 1 }
    }
    END {
      if (n < 6) { printf "  %s: only %d samples after warm-up, 6 needed\n", mode, n; exit 1 }
      third = int(n / 3)
      flat("rss", "RSS KiB", 0); flat("fds", "open fds but upstream", 1); flat("tasks", "tokio tasks but upstream", 1)
      drifted("p99", "p99 ms", drift, 1); drifted("p50", "p50 ms", 1.25, 0.5); drifted("cpu", "CPU us per request", cpu_drift, 0)
      exit bad
    }' "$SOAK_DIR/soak-$mode.csv" >&2 || die "$mode: not flat after warm-up (samples in $SOAK_DIR/soak-$mode.csv)"
  log "$mode: flat after warm-up: RSS, descriptors and tasks within tolerance, no drift"
}

# A row per mode for the report: traffic, answers, and after warm-up RSS, descriptors and tasks
# (without the upstream pool's connections; the pool's largest size apart) and p99, first sample
# -> last, and p99's medians of the first and last third.
report() {
  local mode=$1 totals
  totals=$(grep -o 'requests=[0-9]* unexpected=[0-9]* seconds=[0-9.]*' "$SOAK_DIR/soak-$mode.out")
  awk -F, -v warm="$SOAK_WARMUP" -v mode="$mode" -v totals="$totals" '
    function median(a, n,   i, j, t) {
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    NR == 1 { next }
    $1 + 0 > warm + 0 {
      n++; r[n] = $7; f[n] = $8 - $15; k[n] = $10 - $15; p[n] = $5
      if ($15 + 0 > pool) pool = $15 + 0
      load += $13
    }
    END {
      split(totals, t, /[= ]/)
      third = int(n / 3)
      for (i = 1; i <= third; i++) { a[i] = p[i]; b[i] = p[n - third + i] }
      printf "| %-6s | %5.0f s | %7d | %4d | %5.1f -> %5.1f MiB | %2d -> %2d (pool <= %d) | %2d -> %2d | %6.2f -> %6.2f ms (%.2f -> %.2f) | %4.1f |\n",
        mode, t[6], t[2], t[4], r[1] / 1024, r[n] / 1024, f[1], f[n], pool, k[1], k[n], p[1], p[n],
        median(a, third), median(b, third), n ? load / n : 0
    }' "$SOAK_DIR/soak-$mode.csv"
}

plot() {
  local stamp=$SOAK_VENV/.kizen-soak-packages
  if [[ ! -x $SOAK_VENV/bin/python || ! -f $stamp || $(cat "$stamp") != "$MATPLOTLIB" ]]; then
    python3 -c 'import venv, ensurepip' 2>/dev/null || die "python3 lacks venv/ensurepip: install python3-venv"
    log "installing $MATPLOTLIB into $SOAK_VENV"
    python3 -m venv --clear "$SOAK_VENV"
    "$SOAK_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$MATPLOTLIB"
    echo "$MATPLOTLIB" >"$stamp"
  fi
  "$SOAK_VENV/bin/python" "$HERE/soak_plot.py" --warmup "$SOAK_WARMUP" --out "$SOAK_DIR/soak.png" \
    "${CSVS[@]}"
  log "plot: $SOAK_DIR/soak.png"
}

STARTED_AT=$SECONDS
CSVS=()
for mode in "${MODES[@]}"; do
  soak "$mode"
  CSVS+=("$mode=$SOAK_DIR/soak-$mode.csv")
done
if [[ $PLOT == 1 ]]; then plot; fi

echo
echo "kizen-gateway soak: $RATE req/s, window ${WINDOW}s, sweep $SWEEP, warm-up ${SOAK_WARMUP}s, $(nproc) cores, loadavg now $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo "after warm-up (${SOAK_WARMUP} s), first sample -> last; fds and tasks without the upstream pool's connections;"
echo "p99 of a ${INTERVAL} s interval, in brackets the medians of the first and the last third; load: mean 1-min load average"
echo "| mode   | traffic | requests | unexpected | gateway RSS | open fds | tokio tasks | p99 | load |"
echo "|--------|--------:|--------:|-----:|------------:|---------:|-----:|----:|----:|"
for mode in "${MODES[@]}"; do report "$mode"; done
echo
echo "run folder: $SOAK_DIR (CSVs, answer summaries, gateway logs' ends); $((SECONDS - STARTED_AT)) s"
