//! The shared store for many replicas: Redis (one node or a cluster). Every operation is one
//! Lua script or one command, so it is atomic and costs one round trip. All keys of one user
//! share a hash tag, so each script touches a single cluster slot.
//!
//! Keys, where `U` is `u` and the user id hex-encoded (no user id can collide with another or break out
//! of the hash tag, whatever it contains):
//! - `<prefix>:{U}:up:<uuid>`: one upload (a hash), expiring when it is forgotten;
//! - `<prefix>:{U}:open`: the user's open uploads (a sorted set scored by window end);
//! - `<prefix>:{U}:day:<yyyymmdd>`: the user's confirmed uploads and bytes that day;
//! - `<prefix>:{U}:rate`: the user's presign rate-limit state (GCRA theoretical arrival time);
//! - `<prefix>:{U}:confirm-rate`: the same for confirmations.
//!
//! A presign costs two round trips (`ADMIT`: quotas and budget; `RECORD`), a confirmation two
//! (`CLAIM`: budget and claim; `CONSUME` or `RELEASE`).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::{Script, aio::ConnectionLike};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    Admission, Claim, ClaimOutcome, ClaimRules, IssuedUpload, Lease, MAX_COUNTED_BYTES,
    MAX_STORED_RESPONSE_BYTES, PresignRules, QuotaKind, Settled, StoreError, StoreLimits,
    StoredResponse, UploadStore, Usage, day_of, from_unix_ms, unix_ms,
};
use crate::rate_limit::{RateLimit, RateLimitHeaders};

/// A connection to one node (reconnecting by itself) or to a cluster.
#[derive(Clone)]
pub enum RedisConnection {
    /// One node (`store.redis.cluster = false`).
    Single(redis::aio::ConnectionManager),
    /// A Redis Cluster, found from its seed nodes.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URLs: one for a single node, the seed nodes for a cluster.
    pub urls: Vec<String>,
    /// Whether `urls` are the seed nodes of a Redis Cluster.
    pub cluster: bool,
    /// `AUTH` password, kept out of the URLs (which appear in errors).
    pub password: Option<secrecy::SecretString>,
    /// First part of every key, so that several gateways can share one Redis.
    pub prefix: String,
    /// Bound on every operation, connecting included.
    pub operation_timeout: Duration,
}

/// Names the keys of one user, all inside the user's hash tag.
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    prefix: std::sync::Arc<str>,
}

impl KeyBuilder {
    /// `<prefix>:{u<hex user>}:<suffix>`: every key of a user hashes to the same cluster slot, so
    /// one script can touch all of them.
    pub fn user_key(&self, user: &str, suffix: &str) -> String {
        // "u" keeps the tag non-empty for an empty id: `{}` would hash the whole key instead.
        format!("{}:{{u{}}}:{suffix}", self.prefix, hex(user))
    }
}

/// The upload store of many replicas: every operation one Lua script (or command) on the user's
/// keys, timed by the Redis server's clock.
pub struct RedisStore {
    connection: RedisConnection,
    keys: KeyBuilder,
    timeout: Duration,
    limits: StoreLimits,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

struct Scripts {
    admit: Script,
    record: Script,
    claim: Script,
    release: Script,
    consume: Script,
    usage: Script,
}

const RECORD: &str = r#"
-- KEYS: upload, open. ARGV: now_ms, cap, window_end_ms, ttl_ms, uuid, key, user, source, issued_ms, forget_ms
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return 'CAP' end
if redis.call('EXISTS', KEYS[1]) == 1 then return 'DUPLICATE' end
redis.call('HSET', KEYS[1], 'key', ARGV[6], 'user', ARGV[7], 'source', ARGV[8], 'issued', ARGV[9],
  'window_end', ARGV[3], 'forget', ARGV[10], 'state', 'issued')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
return 'OK'
"#;

/// GCRA on the budget key `KEYS[RATE]` with `ARGV[INTERVAL]` (µs) and `ARGV[BURST]`, timed by the
/// Redis server's clock (replicas' clocks do not matter): the arithmetic of
/// [`crate::rate_limit::gcra`]. Leaves `allowed`, `remaining`, `reset_us`, `retry_us` set.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[INTERVAL])
local burst = tonumber(ARGV[BURST])
local tat = tonumber(redis.call('GET', KEYS[RATE]) or '0')
if tat < now_us then tat = now_us end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
local allowed, remaining, reset_us, retry_us
if now_us < allow_at then
  allowed, remaining, reset_us, retry_us = false, 0, tat - now_us, allow_at - now_us
else
  redis.call('SET', KEYS[RATE], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now_us) / 1000))
  allowed, remaining, reset_us, retry_us = true, math.floor((now_us - allow_at) / interval), new_tat - now_us, 0
end
"#;

/// KEYS: open, day, rate. ARGV: now_ms, max_outstanding, max_uploads_per_day (or ''),
/// max_bytes_per_day (or ''), interval_us, burst.
const ADMIT: &str = r#"
local now = ARGV[1]
local open = redis.call('ZCOUNT', KEYS[1], now, '+inf')
if open >= tonumber(ARGV[2]) then return {'QUOTA', 'outstanding'} end
if ARGV[3] ~= '' or ARGV[4] ~= '' then
  local day = redis.call('HMGET', KEYS[2], 'uploads', 'bytes')
  -- Open uploads count toward the day: each may be confirmed today.
  if ARGV[3] ~= '' and tonumber(day[1] or '0') + open >= tonumber(ARGV[3]) then return {'QUOTA', 'uploads'} end
  if ARGV[4] ~= '' and tonumber(day[2] or '0') >= tonumber(ARGV[4]) then return {'QUOTA', 'bytes'} end
end
"#;

/// KEYS: upload, day, confirm-rate. ARGV: now_ms, user, key, lease, max_uploads_per_day (or ''),
/// max_bytes_per_day (or ''), interval_us, burst. Every answer ends with the budget.
const CLAIM: &str = r#"
if not allowed then return {'RATE_LIMITED', remaining, reset_us, retry_us} end
local function answer(...)
  local a = {...}
  table.insert(a, remaining)
  table.insert(a, reset_us)
  table.insert(a, retry_us)
  return a
end
local f = redis.call('HMGET', KEYS[1], 'user', 'key', 'state', 'retry_at', 'window_end', 'forget',
  'source', 'issued', 'status', 'content_type', 'body')
local now = tonumber(ARGV[1])
if not f[1] or f[1] ~= ARGV[2] or now >= tonumber(f[6]) then return answer('NOT_FOUND') end
local same_key = f[2] == ARGV[3]
if f[3] == 'consumed' then
  if same_key and f[9] then return answer('CONFIRMED', f[9], f[10] or '', f[11]) end
  return answer('CONFIRMED', '', '', '')
end
if not same_key then return answer('KEY_MISMATCH') end
-- A claim is never taken over: only its own settle ends it.
if f[3] == 'claimed' then return answer('IN_FLIGHT') end
if now > tonumber(f[5]) then return answer('EXPIRED') end
if f[4] and now < tonumber(f[4]) then return answer('BACKING_OFF', f[4]) end
if ARGV[5] ~= '' or ARGV[6] ~= '' then
  local day = redis.call('HMGET', KEYS[2], 'uploads', 'bytes')
  if ARGV[5] ~= '' and tonumber(day[1] or '0') >= tonumber(ARGV[5]) then return answer('QUOTA', 'uploads') end
  if ARGV[6] ~= '' and tonumber(day[2] or '0') >= tonumber(ARGV[6]) then return answer('QUOTA', 'bytes') end
end
-- The claim's time is the Redis server's, whatever the replica's clock says.
redis.call('HSET', KEYS[1], 'state', 'claimed', 'lease', ARGV[4], 'claimed_at', t[1])
return answer('CLAIMED', f[2], f[7], f[8], f[5])
"#;

/// The admission script: quotas, then (if they pass) the budget.
fn admit_script() -> Script {
    let gcra = GCRA
        .replace("KEYS[RATE]", "KEYS[3]")
        .replace("ARGV[INTERVAL]", "ARGV[5]")
        .replace("ARGV[BURST]", "ARGV[6]");
    Script::new(&format!(
        "{ADMIT}{gcra}if not allowed then return {{'RATE_LIMITED', remaining, reset_us, retry_us}} end\nreturn {{'OK', remaining, reset_us, retry_us}}\n"
    ))
}

/// The claim script: the budget, then the claim.
fn claim_script() -> Script {
    let gcra = GCRA
        .replace("KEYS[RATE]", "KEYS[3]")
        .replace("ARGV[INTERVAL]", "ARGV[7]")
        .replace("ARGV[BURST]", "ARGV[8]");
    Script::new(&format!("{gcra}{CLAIM}"))
}

const RELEASE: &str = r#"
-- KEYS: upload. ARGV: lease, max_attempts, retry_at_ms
local f = redis.call('HMGET', KEYS[1], 'state', 'lease', 'failed')
if f[2] ~= ARGV[1] then return 'STALE' end
-- This claim's release already landed (a retry after a timeout that hid its success).
if f[1] == 'issued' then return 'OK' end
if f[1] ~= 'claimed' then return 'STALE' end
local failed = tonumber(f[3] or '0') + 1
redis.call('HSET', KEYS[1], 'state', 'issued', 'failed', failed)
if failed >= tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'retry_at', ARGV[3]) end
return 'OK'
"#;

const CONSUME: &str = r#"
-- KEYS: upload, open, day. ARGV: lease, uuid, status, content_type, body (or ''), keep_body, size, day_ttl_ms
-- Everything that can fail is computed before the first write: the script never stops halfway.
local f = redis.call('HMGET', KEYS[1], 'state', 'lease')
if f[2] ~= ARGV[1] then return 'STALE' end
-- This claim's consume already landed (a retry after a timeout that hid its success).
if f[1] == 'consumed' then return 'OK' end
if f[1] ~= 'claimed' then return 'STALE' end
local size = tonumber(ARGV[7])
local ttl = tonumber(ARGV[8])
if not size or not ttl or size < 0 then return redis.error_reply('consume: bad arguments') end
local counted = tonumber(redis.call('HGET', KEYS[3], 'bytes') or '0') or 0
local bytes = math.min(counted + size, 9007199254740991)
redis.call('HSET', KEYS[1], 'state', 'consumed')
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'status', ARGV[3], 'content_type', ARGV[4], 'body', ARGV[5])
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'uploads', 1)
redis.call('HSET', KEYS[3], 'bytes', string.format('%d', bytes))
redis.call('PEXPIRE', KEYS[3], ttl)
return 'OK'
"#;

const USAGE: &str = r#"
-- KEYS: open, day. ARGV: now_ms
local open = redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf')
local day = redis.call('HMGET', KEYS[2], 'uploads', 'bytes')
return {open, tonumber(day[1] or '0'), tonumber(day[2] or '0')}
"#;

/// The budget from a script's `remaining, reset_us, retry_us`.
fn budget_of(limit: &RateLimit, values: &[redis::Value]) -> Result<RateLimitHeaders, StoreError> {
    let number = |i: usize| -> Result<i64, StoreError> {
        values
            .get(i)
            .and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok())
            .ok_or(StoreError::Unavailable)
    };
    Ok(RateLimitHeaders::from_micros(
        limit,
        number(0)?,
        number(1)?,
        number(2)?,
    ))
}

fn settled(answer: &str) -> Settled {
    if answer == "OK" {
        Settled::Done
    } else {
        Settled::Stale
    }
}

fn hex(user: &str) -> String {
    user.bytes().map(|b| format!("{b:02x}")).collect()
}

impl RedisStore {
    /// Connects now; an unreachable Redis is an error at start, not a surprise later.
    pub async fn connect(settings: &RedisSettings, limits: StoreLimits) -> Result<Self, String> {
        crate::tls::install_crypto_provider();
        let connection = tokio::time::timeout(settings.operation_timeout * 5, Self::open(settings))
            .await
            .map_err(|_| "store.redis: connecting timed out".to_string())??;
        let store = Self {
            connection,
            keys: KeyBuilder {
                prefix: settings.prefix.as_str().into(),
            },
            timeout: settings.operation_timeout,
            limits,
            scripts: Scripts {
                admit: admit_script(),
                record: Script::new(RECORD),
                claim: claim_script(),
                release: Script::new(RELEASE),
                consume: Script::new(CONSUME),
                usage: Script::new(USAGE),
            },
        };
        store
            .ping()
            .await
            .map_err(|_| "store.redis: PING failed".to_string())?;
        Ok(store)
    }

    async fn open(settings: &RedisSettings) -> Result<RedisConnection, String> {
        use redis::IntoConnectionInfo;
        use secrecy::ExposeSecret;
        let describe = |e: redis::RedisError| format!("store.redis: {e}");
        if settings.cluster {
            let mut builder = redis::cluster::ClusterClient::builder(settings.urls.clone())
                .connection_timeout(settings.operation_timeout)
                .response_timeout(settings.operation_timeout)
                .retries(1);
            if let Some(password) = &settings.password {
                builder = builder.password(password.expose_secret());
            }
            let client = builder.build().map_err(describe)?;
            Ok(RedisConnection::Cluster(
                client.get_async_connection().await.map_err(describe)?,
            ))
        } else {
            let url = settings.urls.first().ok_or("store.redis.urls: no URL")?;
            let mut info = url.as_str().into_connection_info().map_err(describe)?;
            if let Some(password) = &settings.password {
                let redis = info
                    .redis_settings()
                    .clone()
                    .set_password(password.expose_secret());
                info = info.set_redis_settings(redis);
            }
            let client = redis::Client::open(info).map_err(describe)?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.operation_timeout))
                .set_response_timeout(Some(settings.operation_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let manager = redis::aio::ConnectionManager::new_with_config(client, config)
                .await
                .map_err(describe)?;
            Ok(RedisConnection::Single(manager))
        }
    }

    /// The connection shared by the store and the distributed rate limiter.
    pub fn connection(&self) -> RedisConnection {
        self.connection.clone()
    }

    /// How this store names its keys (tests inspect them).
    pub fn key_builder(&self) -> KeyBuilder {
        self.keys.clone()
    }

    fn user_key(&self, user: &str, suffix: &str) -> String {
        self.keys.user_key(user, suffix)
    }

    /// Runs one Redis operation under the operation timeout; any failure is "unavailable".
    async fn run<T>(
        &self,
        operation: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                tracing::warn!(%error, "redis operation failed");
                Err(StoreError::Unavailable)
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.timeout.as_millis() as u64,
                    "redis operation timed out"
                );
                Err(StoreError::Unavailable)
            }
        }
    }

    /// One round trip, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let _: String = self
            .run(redis::cmd("PING").query_async(&mut connection))
            .await?;
        Ok(())
    }

    fn ttl_ms(&self, window_end: OffsetDateTime, now: OffsetDateTime) -> i64 {
        let forget = window_end + self.limits.remember_expired;
        (unix_ms(forget) - unix_ms(now)).max(1)
    }
}

#[async_trait]
impl UploadStore for RedisStore {
    async fn usage(&self, user: &str, now: OffsetDateTime) -> Result<Usage, StoreError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.scripts.usage.prepare_invoke();
        invocation
            .key(self.user_key(user, "open"))
            .key(self.user_key(user, &format!("day:{}", day_of(now))))
            .arg(unix_ms(now));
        let (outstanding, uploads_today, bytes_today): (usize, u64, u64) =
            self.run(invocation.invoke_async(&mut connection)).await?;
        Ok(Usage {
            outstanding,
            uploads_today,
            bytes_today,
        })
    }

    async fn admit(
        &self,
        user: &str,
        now: OffsetDateTime,
        rules: &PresignRules,
    ) -> Result<Admission, StoreError> {
        let mut connection = self.connection.clone();
        let limit = |max: Option<u64>| max.map(|m| m.to_string()).unwrap_or_default();
        let mut invocation = self.scripts.admit.prepare_invoke();
        invocation
            .key(self.user_key(user, "open"))
            .key(self.user_key(user, &format!("day:{}", day_of(now))))
            .key(self.user_key(user, "rate"))
            .arg(unix_ms(now))
            .arg(rules.max_outstanding)
            .arg(limit(rules.max_uploads_per_day))
            .arg(limit(rules.max_bytes_per_day))
            .arg(rules.rate.emission_interval_us())
            .arg(rules.rate.burst.max(1));
        let answer: Vec<redis::Value> = self.run(invocation.invoke_async(&mut connection)).await?;
        let verdict: Option<String> = answer
            .first()
            .and_then(|v| redis::from_redis_value(v.clone()).ok());
        Ok(match verdict.as_deref() {
            Some("OK") => Admission::Admitted(budget_of(&rules.rate, &answer[1..])?),
            Some("RATE_LIMITED") => Admission::RateLimited(budget_of(&rules.rate, &answer[1..])?),
            Some("QUOTA") => {
                let kind: Option<String> = answer
                    .get(1)
                    .and_then(|v| redis::from_redis_value(v.clone()).ok());
                Admission::QuotaReached(match kind.as_deref() {
                    Some("outstanding") => QuotaKind::Outstanding,
                    Some("uploads") => QuotaKind::UploadsPerDay,
                    _ => QuotaKind::BytesPerDay,
                })
            }
            _ => return Err(StoreError::Unavailable),
        })
    }

    async fn record(
        &self,
        upload: &IssuedUpload,
        max_outstanding: usize,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let id = upload.s3object_id.to_string();
        let forget = upload.window_end + self.limits.remember_expired;
        let mut invocation = self.scripts.record.prepare_invoke();
        invocation
            .key(self.user_key(&upload.user, &format!("up:{id}")))
            .key(self.user_key(&upload.user, "open"))
            .arg(unix_ms(now))
            .arg(max_outstanding)
            .arg(unix_ms(upload.window_end))
            .arg(self.ttl_ms(upload.window_end, now))
            .arg(&id)
            .arg(&upload.key)
            .arg(&upload.user)
            .arg(&upload.source)
            .arg(unix_ms(upload.issued_at))
            .arg(unix_ms(forget));
        let answer: String = self.run(invocation.invoke_async(&mut connection)).await?;
        match answer.as_str() {
            "OK" => Ok(()),
            "DUPLICATE" => Err(StoreError::Duplicate),
            "CAP" => Err(StoreError::UserCapReached {
                limit: max_outstanding,
            }),
            _ => Err(StoreError::Unavailable),
        }
    }

    async fn claim(
        &self,
        user: &str,
        id: Uuid,
        key: &str,
        now: OffsetDateTime,
        rules: &ClaimRules,
    ) -> Result<Claim, StoreError> {
        let mut connection = self.connection.clone();
        let lease = Lease(Uuid::new_v4());
        let limit = |max: Option<u64>| max.map(|m| m.to_string()).unwrap_or_default();
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(self.user_key(user, &format!("up:{id}")))
            .key(self.user_key(user, &format!("day:{}", day_of(now))))
            .key(self.user_key(user, "confirm-rate"))
            .arg(unix_ms(now))
            .arg(user)
            .arg(key)
            .arg(lease.0.to_string())
            .arg(limit(rules.max_uploads_per_day))
            .arg(limit(rules.max_bytes_per_day))
            .arg(rules.rate.emission_interval_us())
            .arg(rules.rate.burst.max(1));
        let answer: Vec<redis::Value> = self.run(invocation.invoke_async(&mut connection)).await?;
        // The budget closes every answer.
        let Some(fields) = answer.len().checked_sub(3) else {
            return Err(StoreError::Unavailable);
        };
        let budget = budget_of(&rules.rate, &answer[fields..])?;
        let answer = &answer[..fields];
        let text = |i: usize| -> Option<String> {
            answer
                .get(i)
                .and_then(|v| redis::from_redis_value(v.clone()).ok())
        };
        let number = |i: usize| -> Result<i64, StoreError> {
            text(i)
                .and_then(|t| t.parse().ok())
                .ok_or(StoreError::Unavailable)
        };
        let outcome = match text(0).as_deref() {
            Some("RATE_LIMITED") => ClaimOutcome::RateLimited,
            Some("NOT_FOUND") => ClaimOutcome::NotFound,
            Some("KEY_MISMATCH") => ClaimOutcome::KeyMismatch,
            Some("EXPIRED") => ClaimOutcome::Expired,
            Some("IN_FLIGHT") => ClaimOutcome::InFlight,
            Some("BACKING_OFF") => ClaimOutcome::BackingOff {
                until: from_unix_ms(number(1)?),
            },
            Some("QUOTA") => ClaimOutcome::DailyQuotaReached(match text(1).as_deref() {
                Some("bytes") => QuotaKind::BytesPerDay,
                _ => QuotaKind::UploadsPerDay,
            }),
            Some("CONFIRMED") => ClaimOutcome::AlreadyConfirmed(match (text(1), text(2)) {
                (Some(status), Some(content_type)) if !status.is_empty() => Some(StoredResponse {
                    status: status.parse().unwrap_or(200),
                    content_type: (!content_type.is_empty()).then_some(content_type),
                    body: answer
                        .get(3)
                        .and_then(|v| redis::from_redis_value::<Vec<u8>>(v.clone()).ok())
                        .map(Bytes::from)
                        .unwrap_or_default(),
                }),
                _ => None,
            }),
            Some("CLAIMED") => {
                let field = |i| text(i).ok_or(StoreError::Unavailable);
                ClaimOutcome::Claimed {
                    lease,
                    upload: IssuedUpload {
                        s3object_id: id,
                        key: field(1)?,
                        user: user.to_owned(),
                        source: field(2)?,
                        issued_at: from_unix_ms(number(3)?),
                        window_end: from_unix_ms(number(4)?),
                    },
                }
            }
            _ => return Err(StoreError::Unavailable),
        };
        Ok(Claim { outcome, budget })
    }

    async fn release(
        &self,
        upload: &IssuedUpload,
        lease: Lease,
        now: OffsetDateTime,
        rules: &ClaimRules,
    ) -> Result<Settled, StoreError> {
        let mut connection = self.connection.clone();
        let retry_at = unix_ms(now)
            .saturating_add(i64::try_from(rules.attempt_backoff.as_millis()).unwrap_or(i64::MAX));
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(self.user_key(&upload.user, &format!("up:{}", upload.s3object_id)))
            .arg(lease.0.to_string())
            .arg(rules.max_attempts)
            .arg(retry_at);
        let answer: String = self.run(invocation.invoke_async(&mut connection)).await?;
        Ok(settled(&answer))
    }

    async fn consume(
        &self,
        upload: &IssuedUpload,
        lease: Lease,
        response: StoredResponse,
        size_bytes: u64,
        now: OffsetDateTime,
    ) -> Result<Settled, StoreError> {
        let mut connection = self.connection.clone();
        let keep = response.body.len() <= MAX_STORED_RESPONSE_BYTES;
        let mut invocation = self.scripts.consume.prepare_invoke();
        invocation
            .key(self.user_key(&upload.user, &format!("up:{}", upload.s3object_id)))
            .key(self.user_key(&upload.user, "open"))
            .key(self.user_key(&upload.user, &format!("day:{}", day_of(now))))
            .arg(lease.0.to_string())
            .arg(upload.s3object_id.to_string())
            .arg(response.status)
            .arg(response.content_type.unwrap_or_default())
            .arg(if keep {
                response.body.as_ref()
            } else {
                &b""[..]
            })
            .arg(if keep { "1" } else { "0" })
            .arg(size_bytes.min(MAX_COUNTED_BYTES))
            .arg(2 * 24 * 3600 * 1000);
        let answer: String = self.run(invocation.invoke_async(&mut connection)).await?;
        Ok(settled(&answer))
    }

    async fn purge(&self, _now: OffsetDateTime) -> Result<Vec<IssuedUpload>, StoreError> {
        // Redis forgets by itself: every key carries its TTL.
        Ok(Vec::new())
    }

    async fn entry_count(&self) -> Result<Option<usize>, StoreError> {
        // Counting keys would mean scanning every node; Redis reports its own memory.
        Ok(None)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        RedisStore::ping(self).await
    }
}
