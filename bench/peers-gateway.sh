#!/usr/bin/env bash
# bench/peers-gateway.sh [LISTEN]: runs kizen-gateway in the foreground as the "gateway under
# test" of the peer benchmark (../shared/bench/peers.sh, next to HAProxy and nginx):
#
#   GATEWAY_CMD='bench/peers-gateway.sh 127.0.0.1:18090' GATEWAY_URL=http://127.0.0.1:18090 \
#     GATEWAY_HS_URL=http://127.0.0.1:18090 ../shared/bench/peers.sh
#
# It reads what peers.sh hands a gateway (its gateway.env, exported): BENCH_JWT_PUBLIC_KEY_FILE
# (RS256 public key), BENCH_JWT_HS256_SECRET (the HMAC key's characters), BENCH_UPSTREAM,
# BENCH_API_KEY, BENCH_BUSINESS_ID; writes a config next to them ($BENCH_DIR, else a temporary
# folder) and execs the gateway, so that the PID peers.sh holds is the gateway's own.
#
# The peer tokens carry `"iss":"peer-bench"` and no `aud`, so the config sets
# auth.allow_any_audience = true (the gateway logs a warning about it at start). X-USER-ID is the
# token's `sub` (upstream.user_id_claim). Rate limits and quotas are far above what the load
# reaches, so that throttling never shows up as non-2xx answers.
#
# Environment: GATEWAY_LISTEN (when no argument; default 127.0.0.1:18090), GATEWAY_ADMIN_LISTEN
# (default 127.0.0.1:0, any free port), GATEWAY_BIN (default target/bench/profiling/kizen-gateway:
# `bench/run.sh build` makes it), GATEWAY_STORE=memory|redis with GATEWAY_REDIS_URL
# (default redis://127.0.0.1:6379), GATEWAY_LOG (default info), GATEWAY_ALGS (default
# RS256,HS256: both keys on the one listener, so peers.sh's "hs256_on_rs" check, which wants an
# HS256 token refused on the RS256 address, fails by design; GATEWAY_ALGS=RS256 passes it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LISTEN=${1:-${GATEWAY_LISTEN:-127.0.0.1:18090}}
ADMIN=${GATEWAY_ADMIN_LISTEN:-127.0.0.1:0}
BIN=${GATEWAY_BIN:-$ROOT/target/bench/profiling/kizen-gateway}
STORE=${GATEWAY_STORE:-memory}
ALGS=${GATEWAY_ALGS:-RS256,HS256}

die() {
  echo "peers-gateway.sh: $*" >&2
  exit 1
}
[[ -x $BIN ]] || die "no gateway binary at $BIN: run 'bench/run.sh build' first, or set GATEWAY_BIN"
for v in BENCH_JWT_PUBLIC_KEY_FILE BENCH_JWT_HS256_SECRET BENCH_UPSTREAM BENCH_API_KEY BENCH_BUSINESS_ID; do
  [[ -n ${!v:-} ]] || die "$v is not set (peers.sh exports it from \$BENCH_DIR/gateway.env)"
done
[[ $STORE == memory || $STORE == redis ]] || die "GATEWAY_STORE must be memory or redis"

KEYS=
[[ ,$ALGS, == *,RS256,* ]] && KEYS+=$'[[auth.keys]]\nalgorithm = "RS256"\npublic_key_file = "'"$BENCH_JWT_PUBLIC_KEY_FILE"$'"\n\n'
[[ ,$ALGS, == *,HS256,* ]] && KEYS+=$'[[auth.keys]]\nalgorithm = "HS256"\nsecret = "env:BENCH_JWT_HS256_SECRET"\n'
[[ -n $KEYS ]] || die "GATEWAY_ALGS must name RS256, HS256 or both"

DIR=${BENCH_DIR:-$(mktemp -d /tmp/peers-gateway.XXXXXX)}
CONFIG=$DIR/kizen-gateway.toml
# The secrets stay in the environment ("env:" secrets): the file holds none.
cat >"$CONFIG" <<TOML
[admin]
listen = "$ADMIN"

[log]
level = "${GATEWAY_LOG:-info}"

[auth]
allow_any_audience = true

$KEYS
[upstream]
base_url = "$BENCH_UPSTREAM"
api_key = "env:BENCH_API_KEY"
business_id = "env:BENCH_BUSINESS_ID"
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
kind = "$STORE"
max_uploads = 50000000
max_uploads_per_user = 1000001

[store.redis]
urls = ["${GATEWAY_REDIS_URL:-redis://127.0.0.1:6379}"]
TOML
exec "$BIN" --config "$CONFIG" --listen "$LISTEN"
