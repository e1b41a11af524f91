//! The shared store for many replicas: Redis (one node, a Sentinel-managed master, or a
//! cluster). Every operation is one
//! Lua script or one command, so it is atomic and costs one round trip. All keys of one user
//! share a hash tag, so each script touches a single cluster slot.
//!
//! Keys, where `U` is `u` and the user id hex-encoded (no user id can collide with another or break out
//! of the hash tag, whatever it contains):
//! - `<prefix>:{U}:up:<uuid>`: one upload (a string, see [`layout`]), expiring when it is
//!   forgotten;
//! - `<prefix>:{U}:open`: the user's open uploads (a sorted set scored by window end);
//! - `<prefix>:{U}:day:<yyyymmdd>`: the user's confirmed uploads and bytes that day;
//! - `<prefix>:{U}:rate`: the user's presign rate-limit state (GCRA theoretical arrival time);
//! - `<prefix>:{U}:confirm-rate`: the same for confirmations;
//! - `<prefix>:{due<n>}`, `n` in `0..EXPIRY_SHARDS`: every recorded upload (`U:<uuid>`), scored by
//!   when it is forgotten, so that the sweeper can report those never confirmed, as the memory
//!   store does. Redis's own key expiry is silent, and keyspace notifications are lost while no
//!   replica listens and would reach every replica; a sorted set taken from atomically is
//!   reported once, by whichever replica sweeps it first.
//!
//! A presign costs two round trips (admit: quotas and budget; record), a confirmation two
//! (claim: budget and claim; consume or release). The record's `ZADD` into the expiry index is
//! sent alongside the record script, not after it: on one node it shares its round trip, on a
//! cluster it goes to the index's node at the same time.
//!
//! What Redis spends per step is mostly fixed costs: running a script, each argument crossing
//! into Lua (copied, and interned: Redis hashes every byte), each command a script runs, each
//! number parsed from text. So the scripts run as few commands as they can, read and write only
//! the bytes they need, take the rules as literals in their text, and answer numbers from which
//! Rust derives the rest.

use std::{sync::Arc, time::Duration};

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
    /// The master that Redis Sentinel names, found again after a failover.
    Sentinel(SentinelConnection),
}

/// A connection to whichever node the sentinels name master. `ConnectionManager` reconnects to a
/// fixed address, which after a failover is a dead or demoted node; this asks the sentinels
/// again whenever the connection breaks, times out or lands on a read-only replica. The failing
/// request itself is not retried (its caller answers 503 at once); the next one reconnects.
#[derive(Clone)]
pub struct SentinelConnection(Arc<SentinelShared>);

struct SentinelShared {
    /// Held while asking the sentinels, so that a failover makes one lookup, not one per request.
    client: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    /// The master's connection, numbered so that a late failure of an old one cannot drop its
    /// successor.
    current: std::sync::Mutex<Option<(u64, redis::aio::MultiplexedConnection)>>,
    generation: std::sync::atomic::AtomicU64,
    config: redis::AsyncConnectionConfig,
    response_timeout: Duration,
}

impl SentinelConnection {
    fn current(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<(u64, redis::aio::MultiplexedConnection)>> {
        self.0
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn master(&self) -> redis::RedisResult<(u64, redis::aio::MultiplexedConnection)> {
        if let Some(current) = self.current().clone() {
            return Ok(current);
        }
        let mut client = self.0.client.lock().await;
        // Another request may have reconnected while this one waited for the lock.
        if let Some(current) = self.current().clone() {
            return Ok(current);
        }
        let connection = client
            .get_async_connection_with_config(&self.0.config)
            .await?;
        let generation = self
            .0
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.current() = Some((generation, connection.clone()));
        tracing::info!("redis sentinel: connected to the master");
        Ok((generation, connection))
    }

    /// Drops the connection of `generation` if `error` says the master is gone or demoted.
    fn check<T>(&self, generation: u64, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(error) = &result {
            let broken = error.is_io_error()
                || error.is_connection_dropped()
                || error.is_connection_refusal()
                || error.is_timeout()
                || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
            let mut current = self.current();
            if broken && current.as_ref().is_some_and(|(g, _)| *g == generation) {
                tracing::warn!(%error, "redis sentinel: the master's connection failed; asking the sentinels again");
                *current = None;
            }
        }
        result
    }

    async fn timed<T>(
        &self,
        generation: u64,
        operation: impl Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        let result = match tokio::time::timeout(self.0.response_timeout, operation).await {
            Ok(result) => result,
            // A frozen or partitioned master keeps its socket open: only a timeout tells.
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the master did not answer in time",
            ))),
        };
        self.check(generation, result)
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let (generation, mut connection) = self.master().await?;
            self.timed(generation, connection.req_packed_command(cmd))
                .await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let (generation, mut connection) = self.master().await?;
            self.timed(
                generation,
                connection.req_packed_commands(cmd, offset, count),
            )
            .await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(c) => c.req_packed_command(cmd),
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
            Self::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(c) => c.get_db(),
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
    /// Replicas that must acknowledge each record, claim and settle (`WAIT`); 0: none.
    pub wait_for_replicas: u32,
    /// Find the master through Redis Sentinel instead of `urls`.
    pub sentinel: Option<SentinelSettings>,
    /// How long an upload's key outlives its memory (`confirm.remember_expired` after its
    /// window), so that the sweeper, running every `store.sweep_interval`, still finds out
    /// whether it was confirmed; the scripts treat it as forgotten meanwhile.
    pub sweep_grace: Duration,
}

/// How to reach the sentinels, and which master to ask them for.
#[derive(Debug, Clone)]
pub struct SentinelSettings {
    /// The name the sentinels monitor the master under.
    pub master_name: String,
    /// The sentinels' `redis://` or `rediss://` URLs; `rediss://` means TLS to the data nodes too.
    pub urls: Vec<String>,
    /// The sentinels' own password; the data nodes' is [`RedisSettings::password`].
    pub password: Option<secrecy::SecretString>,
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
        self.user(user).key(suffix)
    }

    /// The user's keys: the user id is encoded once for all of them.
    fn user(&self, user: &str) -> UserKeys {
        // "u" keeps the tag non-empty for an empty id: `{}` would hash the whole key instead.
        let mut prefix = String::with_capacity(self.prefix.len() + 2 * user.len() + 5);
        prefix.push_str(&self.prefix);
        prefix.push_str(":{u");
        for byte in user.bytes() {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            prefix.push(char::from(DIGITS[usize::from(byte >> 4)]));
            prefix.push(char::from(DIGITS[usize::from(byte & 15)]));
        }
        prefix.push_str("}:");
        UserKeys(prefix)
    }
}

/// One user's key prefix, hash tag included.
struct UserKeys(String);

impl UserKeys {
    fn key(&self, suffix: impl std::fmt::Display) -> String {
        format!("{}{suffix}", self.0)
    }
}

/// The upload store of many replicas: every operation one Lua script (or command) on the user's
/// keys, timed by the Redis server's clock.
pub struct RedisStore {
    connection: RedisConnection,
    keys: KeyBuilder,
    timeout: Duration,
    /// Replicas that must acknowledge each record, claim and settle (`WAIT`); 0: none.
    wait_for_replicas: u32,
    sweep_grace: Duration,
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
    admit: ScriptCache<PresignRules>,
    record: ScriptCache<usize>,
    claim: ScriptCache<ClaimScriptRules>,
    release: Script,
    consume: Script,
    unclaim: Script,
    usage: Script,
    take_due: Script,
    peek: Script,
}

/// Scripts with their rules written into the text as Lua literals, one per rule set in use (a
/// tier's quotas, a rate limit), built on first use. A literal is parsed once, when Redis compiles
/// the script; an argument is sent, copied into Lua, interned and parsed on every call.
struct ScriptCache<K> {
    scripts: std::sync::Mutex<Vec<(K, Arc<Script>)>>,
}

/// Rule sets kept at once: a few tiers, and the sets a configuration reload leaves behind; past
/// it the cache starts again.
const MAX_CACHED_SCRIPTS: usize = 64;

impl<K: Copy + PartialEq> ScriptCache<K> {
    fn new() -> Self {
        Self {
            scripts: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn get(&self, rules: K, text: impl FnOnce(K) -> String) -> Arc<Script> {
        let mut scripts = self
            .scripts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, script)) = scripts.iter().find(|(cached, _)| *cached == rules) {
            return script.clone();
        }
        if scripts.len() >= MAX_CACHED_SCRIPTS {
            scripts.clear();
        }
        let script = Arc::new(Script::new(&text(rules)));
        scripts.push((rules, script.clone()));
        script
    }
}

/// What the claim script is written for: the confirmation budget and the daily quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClaimScriptRules {
    rate: RateLimit,
    max_uploads_per_day: Option<u64>,
    max_bytes_per_day: Option<u64>,
}

/// An upload is one string: a header of fixed-width fields that the scripts read and overwrite
/// in place (`GETRANGE`, `SETRANGE`), so that a settle neither reads nor rewrites the whole
/// value; then what never changes (the key, the source); then, once consumed, the kept answer
/// (`APPEND`). Numbers are decimal, zero-padded; an empty (spaces) retry time is none.
/// Its first byte is the state: `i` issued, `c` claimed, `x` consumed.
mod layout {
    /// The last claim's lease (hyphenated UUID); spaces before the first claim.
    pub const LEASE: usize = 1;
    pub const LEASE_LEN: usize = 36;
    /// The last claim's time, Unix seconds by the Redis server's clock.
    pub const CLAIMED_AT: usize = 37;
    pub const CLAIMED_AT_LEN: usize = 10;
    /// Released claims (failed attempts).
    pub const FAILED: usize = 47;
    pub const FAILED_LEN: usize = 10;
    /// No claim before this (ms); set when the attempts are used up.
    pub const RETRY_AT: usize = 57;
    pub const WINDOW_END: usize = 77;
    pub const FORGET: usize = 97;
    pub const ISSUED: usize = 117;
    /// Width of the three instants above and of the retry time (an i64, sign included).
    pub const INSTANT_LEN: usize = 20;
    pub const KEY_LEN: usize = 137;
    pub const SOURCE_LEN: usize = 147;
    pub const LEN_LEN: usize = 10;
    pub const HEADER: usize = 157;
    /// The kept answer, after the source: status, content type length, content type, body.
    pub const STATUS_LEN: usize = 5;
}

/// Puts the layout's positions into a script: `$NAME` becomes the field's first and last
/// position as Lua counts them (from 1, inclusive), `@NAME` its 0-based first byte,
/// `#HEADER` the header's length and `STATE_*` the state's byte (compared as a number: no
/// one-byte string is made).
fn with_layout(script: &str) -> String {
    use layout::*;
    let fields = [
        ("LEASE", LEASE, LEASE_LEN),
        ("CLAIMED_AT", CLAIMED_AT, CLAIMED_AT_LEN),
        ("FAILED", FAILED, FAILED_LEN),
        ("RETRY_AT", RETRY_AT, INSTANT_LEN),
        ("WINDOW_END", WINDOW_END, INSTANT_LEN),
        ("FORGET", FORGET, INSTANT_LEN),
        ("KEY_LEN", KEY_LEN, LEN_LEN),
    ];
    let mut script = script
        .replace("#HEADER", &HEADER.to_string())
        .replace("STATE_CONSUMED", &b'x'.to_string())
        .replace("STATE_CLAIMED", &b'c'.to_string());
    for (name, at, len) in fields {
        script = script
            .replace(&format!("${name}"), &format!("{}, {}", at + 1, at + len))
            .replace(&format!("@{name}"), &at.to_string());
    }
    debug_assert!(!script.contains('$'), "a layout name is unknown");
    script
}

/// GCRA on the budget key `KEYS[{rate}]`, timed by the Redis server's clock (replicas' clocks
/// do not matter): the arithmetic of [`crate::rate_limit::gcra`]. Leaves `t` (TIME), `allowed`
/// and `wait` (how far the arrival time was ahead of now, µs), from which Rust derives the
/// budget. The arrival time is kept for the tolerance (rounded up to ms): the longest it can be
/// ahead of now, so that it never expires while it still counts.
fn gcra(rate: usize, limit: &RateLimit) -> String {
    let interval = limit.emission_interval_us();
    let tolerance = i64::from(limit.burst.max(1)).saturating_mul(interval);
    let slack = tolerance.saturating_sub(interval);
    let ttl_ms = (tolerance.saturating_add(999) / 1000).max(1);
    format!(
        r#"
local t = redis.call('TIME')
local now_us = t[1] * 1000000 + t[2]
local tat = tonumber(redis.call('GET', KEYS[{rate}])) or now_us
if tat < now_us then tat = now_us end
local wait = tat - now_us
local allowed = wait <= {slack}
if allowed then redis.call('SET', KEYS[{rate}], string.format('%d', tat + {interval}), 'PX', '{ttl_ms}') end
"#
    )
}

/// KEYS: open, rate, and the day when a daily quota is set. ARGV: now_ms. Answers a quota
/// (`ADMIT_*`), or the budget's `wait`.
fn admit_script(rules: PresignRules) -> String {
    let mut script = format!(
        r#"
local open = redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf')
if open >= {} then return -1 end
"#,
        rules.max_outstanding
    );
    if rules.max_uploads_per_day.is_some() || rules.max_bytes_per_day.is_some() {
        script += "local day = redis.call('HMGET', KEYS[3], 'uploads', 'bytes')\n";
    }
    if let Some(max) = rules.max_uploads_per_day {
        script += "-- Open uploads count toward the day: each may be confirmed today.\n";
        script += &format!("if tonumber(day[1] or '0') + open >= {max} then return -2 end\n");
    }
    if let Some(max) = rules.max_bytes_per_day {
        script += &format!("if tonumber(day[2] or '0') >= {max} then return -3 end\n");
    }
    script + &gcra(2, &rules.rate) + "return wait\n"
}
const ADMIT_OUTSTANDING: i64 = -1;
const ADMIT_UPLOADS: i64 = -2;

/// KEYS: upload (ending with its uuid, the open set's member), open. ARGV: now_ms, ttl_ms, the
/// upload. Answers `RECORD_*`. Expired members leave the open set lazily: when the cap is
/// reached, and when its TTL is extended, which it is by a margin so that most records need not.
fn record_script(max_outstanding: usize, margin: Duration) -> String {
    with_layout(&format!(
        r#"
if redis.call('ZCARD', KEYS[2]) >= {max_outstanding} then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
  if redis.call('ZCARD', KEYS[2]) >= {max_outstanding} then return 1 end
end
if not redis.call('SET', KEYS[1], ARGV[3], 'NX', 'PX', ARGV[2]) then return 2 end
redis.call('ZADD', KEYS[2], string.sub(ARGV[3], $WINDOW_END), string.sub(KEYS[1], -36))
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[2] + {})
end
return 0
"#,
        margin.as_millis()
    ))
}
const RECORD_CAP: i64 = 1;
const RECORD_DUPLICATE: i64 = 2;

/// KEYS: upload, confirm-rate, and the day when a daily quota is set. ARGV: now_ms, key,
/// 'c' .. lease. The budget, then the claim. Answers `{CLAIM_*, wait}`, and the upload where the
/// verdict needs it (claimed: its fields; confirmed with the same key: the kept answer; backing
/// off: the retry time).
fn claim_script(rules: ClaimScriptRules) -> String {
    let mut script = gcra(2, &rules.rate);
    script += &with_layout(
        r#"
if not allowed then return {0, wait} end
local v = redis.call('GET', KEYS[1])
local now = tonumber(ARGV[1])
if not v or now >= tonumber(string.sub(v, $FORGET)) then return {1, wait} end
local key_len = tonumber(string.sub(v, $KEY_LEN))
local same_key = key_len == #ARGV[2] and string.find(v, ARGV[2], #HEADER + 1, true) == #HEADER + 1
local state = string.byte(v)
if state == STATE_CONSUMED then
  if same_key then return {2, wait, v} end
  return {2, wait}
end
if not same_key then return {3, wait} end
-- A claim is never taken over: only its own settle ends it.
if state == STATE_CLAIMED then return {4, wait} end
if now > tonumber(string.sub(v, $WINDOW_END)) then return {5, wait} end
local retry_at = tonumber(string.sub(v, $RETRY_AT))
if retry_at and now < retry_at then return {6, wait, v} end
"#,
    );
    if rules.max_uploads_per_day.is_some() || rules.max_bytes_per_day.is_some() {
        script += "local day = redis.call('HMGET', KEYS[3], 'uploads', 'bytes')\n";
    }
    if let Some(max) = rules.max_uploads_per_day {
        script += &format!("if tonumber(day[1] or '0') >= {max} then return {{7, wait}} end\n");
    }
    if let Some(max) = rules.max_bytes_per_day {
        script += &format!("if tonumber(day[2] or '0') >= {max} then return {{8, wait}} end\n");
    }
    script
        + r#"
-- The claim's time is the Redis server's, whatever the replica's clock says (Unix seconds have
-- ten digits until 2286).
redis.call('SETRANGE', KEYS[1], 0, ARGV[3] .. t[1])
return {9, wait, v}
"#
}
const CLAIM_RATE_LIMITED: i64 = 0;
const CLAIM_NOT_FOUND: i64 = 1;
const CLAIM_CONFIRMED: i64 = 2;
const CLAIM_KEY_MISMATCH: i64 = 3;
const CLAIM_IN_FLIGHT: i64 = 4;
const CLAIM_EXPIRED: i64 = 5;
const CLAIM_BACKING_OFF: i64 = 6;
const CLAIM_QUOTA_UPLOADS: i64 = 7;
const CLAIM_QUOTA_BYTES: i64 = 8;
const CLAIM_CLAIMED: i64 = 9;

/// KEYS: upload. ARGV: lease, max_attempts, retry_at (the layout's instant). Answers `SETTLED_*`.
const RELEASE: &str = r#"
local h = redis.call('GETRANGE', KEYS[1], 0, @RETRY_AT - 1)
if string.sub(h, $LEASE) ~= ARGV[1] then return 1 end
-- This claim's release already landed (a retry after a timeout that hid its success).
if string.sub(h, 1, 1) == 'i' then return 0 end
if string.sub(h, 1, 1) ~= 'c' then return 1 end
local failed = tonumber(string.sub(h, $FAILED)) + 1
local header = 'i' .. string.sub(h, 2, @FAILED) .. string.format('%010d', failed)
if failed >= tonumber(ARGV[2]) then header = header .. ARGV[3] end
redis.call('SETRANGE', KEYS[1], 0, header)
return 0
"#;

/// KEYS: upload (ending with its uuid), open, day. ARGV: 'c' .. lease (the state and lease this
/// settle expects: one comparison of interned strings), the kept answer ('' for none), size.
/// Answers `SETTLED_*`. The one write that can fail (a size that is not an integer) comes first:
/// the script never stops halfway.
const CONSUME: &str = r#"
local h = redis.call('GETRANGE', KEYS[1], 0, @CLAIMED_AT - 1)
if h ~= ARGV[1] then
  -- This claim's consume already landed (a retry after a timeout that hid its success).
  if string.byte(h) == STATE_CONSUMED and string.sub(h, 2) == string.sub(ARGV[1], 2) then return 0 end
  return 1
end
if string.byte(ARGV[3]) == 45 then return redis.error_reply('consume: negative size') end
if redis.call('HINCRBY', KEYS[3], 'bytes', ARGV[3]) > 9007199254740991 then
  redis.call('HSET', KEYS[3], 'bytes', '9007199254740991')
end
redis.call('SETRANGE', KEYS[1], 0, 'x')
if ARGV[2] ~= '' then redis.call('APPEND', KEYS[1], ARGV[2]) end
redis.call('ZREM', KEYS[2], string.sub(KEYS[1], -36))
-- A day's counters live two days from its first confirmation, long after the day ends.
if redis.call('HINCRBY', KEYS[3], 'uploads', 1) == 1 then redis.call('PEXPIRE', KEYS[3], '172800000') end
return 0
"#;
const SETTLED_DONE: i64 = 0;

/// How long a claim no replica acknowledged is retried to be given back.
const UNCLAIM_RETRIES_FOR: Duration = Duration::from_secs(60);

/// KEYS: upload. ARGV: 'c' .. lease. Takes back a claim that no replica acknowledged, before
/// anything was forwarded: the upload is issued again, no attempt counted.
const UNCLAIM: &str = r#"
if redis.call('GETRANGE', KEYS[1], 0, 36) ~= ARGV[1] then return 1 end
redis.call('SETRANGE', KEYS[1], 0, 'i')
return 0
"#;

/// Shards of the expiry index: on a cluster they spread over the nodes.
const EXPIRY_SHARDS: usize = 16;
/// Index entries one sweep step takes from a shard.
const SWEEP_BATCH: usize = 500;

/// KEYS: one shard of the expiry index. ARGV: now_ms, batch. Takes (removes and answers) the
/// entries forgotten by now: atomic, so that of replicas sweeping at once each entry goes to one.
const TAKE_DUE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"#;

/// KEYS: upload. The upload if it was never confirmed, else nothing (a consumed upload's kept
/// answer is not sent for nothing).
const PEEK: &str = r#"
if redis.call('GETRANGE', KEYS[1], 0, 0) == 'x' then return false end
return redis.call('GET', KEYS[1])
"#;

const USAGE: &str = r#"
-- KEYS: open, day. ARGV: now_ms
local open = redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf')
local day = redis.call('HMGET', KEYS[2], 'uploads', 'bytes')
return {open, tonumber(day[1] or '0'), tonumber(day[2] or '0')}
"#;

/// The budget after a GCRA step whose arrival time was `wait` µs ahead of the server's clock,
/// and whether it allowed the request: the script's arithmetic, shifted to now = 0.
fn budget_of(limit: &RateLimit, wait: i64) -> (bool, RateLimitHeaders) {
    let (kept, headers) = crate::rate_limit::gcra(wait, 0, limit);
    (kept.is_some(), headers)
}

/// An issued upload as the scripts keep it (see [`layout`]).
fn encode_upload(upload: &IssuedUpload, forget: OffsetDateTime) -> Vec<u8> {
    use std::io::Write as _;
    let mut value = Vec::with_capacity(layout::HEADER + upload.key.len() + upload.source.len());
    write!(
        value,
        "i{:lease$}{:0claimed$}{:0failed$}{:instant$}{:0instant$}{:0instant$}{:0instant$}{:0len$}{:0len$}",
        "",
        0,
        0,
        "",
        unix_ms(upload.window_end),
        unix_ms(forget),
        unix_ms(upload.issued_at),
        upload.key.len(),
        upload.source.len(),
        lease = layout::LEASE_LEN,
        claimed = layout::CLAIMED_AT_LEN,
        failed = layout::FAILED_LEN,
        instant = layout::INSTANT_LEN,
        len = layout::LEN_LEN,
    )
    .expect("writing to a Vec");
    value.extend_from_slice(upload.key.as_bytes());
    value.extend_from_slice(upload.source.as_bytes());
    debug_assert_eq!(
        value.len(),
        layout::HEADER + upload.key.len() + upload.source.len()
    );
    value
}

/// The kept answer as consume appends it (see [`layout`]).
fn encode_response(response: &StoredResponse) -> Vec<u8> {
    use std::io::Write as _;
    let content_type = response.content_type.as_deref().unwrap_or_default();
    let mut value = Vec::with_capacity(
        layout::STATUS_LEN + layout::LEN_LEN + content_type.len() + response.body.len(),
    );
    write!(
        value,
        "{:0status$}{:0len$}{content_type}",
        response.status,
        content_type.len(),
        status = layout::STATUS_LEN,
        len = layout::LEN_LEN,
    )
    .expect("writing to a Vec");
    value.extend_from_slice(&response.body);
    value
}

/// Reads an upload kept as [`layout`] says.
struct StoredUpload<'a>(&'a [u8]);

impl<'a> StoredUpload<'a> {
    fn bytes(&self, at: usize, len: usize) -> Result<&'a [u8], StoreError> {
        self.0.get(at..at + len).ok_or(StoreError::Unavailable)
    }

    fn number(&self, at: usize, len: usize) -> Result<Option<i64>, StoreError> {
        let text =
            std::str::from_utf8(self.bytes(at, len)?).map_err(|_| StoreError::Unavailable)?;
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| StoreError::Unavailable)
    }

    fn instant(&self, at: usize) -> Result<OffsetDateTime, StoreError> {
        let ms = self.number(at, layout::INSTANT_LEN)?;
        ms.map(from_unix_ms).ok_or(StoreError::Unavailable)
    }

    fn length(&self, at: usize) -> Result<usize, StoreError> {
        let len = self
            .number(at, layout::LEN_LEN)?
            .ok_or(StoreError::Unavailable)?;
        usize::try_from(len).map_err(|_| StoreError::Unavailable)
    }

    fn text(&self, at: usize, len: usize) -> Result<String, StoreError> {
        String::from_utf8(self.bytes(at, len)?.to_vec()).map_err(|_| StoreError::Unavailable)
    }

    /// The key and the source, and where the kept answer starts.
    fn key_and_source(&self) -> Result<(String, String, usize), StoreError> {
        let key_len = self.length(layout::KEY_LEN)?;
        let source_len = self.length(layout::SOURCE_LEN)?;
        let key = self.text(layout::HEADER, key_len)?;
        let source = self.text(layout::HEADER + key_len, source_len)?;
        Ok((key, source, layout::HEADER + key_len + source_len))
    }

    /// The answer kept when the upload was consumed, if it was.
    fn response(&self) -> Result<Option<StoredResponse>, StoreError> {
        let (_, _, at) = self.key_and_source()?;
        if at == self.0.len() {
            return Ok(None);
        }
        let status = self
            .number(at, layout::STATUS_LEN)?
            .ok_or(StoreError::Unavailable)?;
        let content_type_len = self.length(at + layout::STATUS_LEN)?;
        let content_type_at = at + layout::STATUS_LEN + layout::LEN_LEN;
        let content_type = self.text(content_type_at, content_type_len)?;
        let body = self
            .0
            .get(content_type_at + content_type_len..)
            .ok_or(StoreError::Unavailable)?;
        Ok(Some(StoredResponse {
            status: u16::try_from(status).unwrap_or(200),
            content_type: (!content_type.is_empty()).then_some(content_type),
            body: Bytes::copy_from_slice(body),
        }))
    }
}

/// The cluster slot of `key`, as Redis computes it: CRC16 of its hash tag (or of the whole key
/// when it has none), modulo 16384.
fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &bytes[open + 1..open + 1 + close])
        })
        .unwrap_or(bytes);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % 16384
}

fn settled(answer: i64) -> Settled {
    if answer == SETTLED_DONE {
        Settled::Done
    } else {
        Settled::Stale
    }
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
            wait_for_replicas: settings.wait_for_replicas,
            sweep_grace: settings.sweep_grace,
            limits,
            scripts: Scripts {
                admit: ScriptCache::new(),
                record: ScriptCache::new(),
                claim: ScriptCache::new(),
                release: Script::new(&with_layout(RELEASE)),
                consume: Script::new(&with_layout(CONSUME)),
                unclaim: Script::new(UNCLAIM),
                take_due: Script::new(TAKE_DUE),
                peek: Script::new(PEEK),
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
        if let Some(sentinel) = &settings.sentinel {
            Self::open_sentinel(settings, sentinel).await
        } else if settings.cluster {
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

    async fn open_sentinel(
        settings: &RedisSettings,
        sentinel: &SentinelSettings,
    ) -> Result<RedisConnection, String> {
        use redis::IntoConnectionInfo;
        use secrecy::ExposeSecret;
        let describe = |e: redis::RedisError| format!("store.redis.sentinel: {e}");
        let sentinels = sentinel
            .urls
            .iter()
            .map(|url| {
                let info = url.as_str().into_connection_info().map_err(describe)?;
                Ok(match &sentinel.password {
                    Some(password) => {
                        let redis = info
                            .redis_settings()
                            .clone()
                            .set_password(password.expose_secret());
                        info.set_redis_settings(redis)
                    }
                    None => info,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut node = redis::RedisConnectionInfo::default();
        if let Some(password) = &settings.password {
            node = node.set_password(password.expose_secret());
        }
        let mut master =
            redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(node);
        if sentinel.urls.iter().any(|url| url.starts_with("rediss://")) {
            master = master.set_tls_mode(redis::TlsMode::Secure);
        }
        let client = redis::sentinel::SentinelClient::build(
            sentinels,
            sentinel.master_name.as_str(),
            Some(master),
            redis::sentinel::SentinelServerType::Master,
        )
        .map_err(describe)?;
        // Below the operation timeout, so that the connection learns of a silent master before
        // the request's own deadline ends it.
        let response_timeout = settings.operation_timeout * 9 / 10;
        let connection = SentinelConnection(Arc::new(SentinelShared {
            client: tokio::sync::Mutex::new(client),
            current: std::sync::Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
            config: redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(settings.operation_timeout))
                .set_response_timeout(Some(response_timeout)),
            response_timeout,
        }));
        connection.master().await.map_err(describe)?;
        Ok(RedisConnection::Sentinel(connection))
    }

    /// The connection shared by the store and the distributed rate limiter.
    pub fn connection(&self) -> RedisConnection {
        self.connection.clone()
    }

    /// How this store names its keys (tests inspect them).
    pub fn key_builder(&self) -> KeyBuilder {
        self.keys.clone()
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

    /// Waits until `store.redis.wait_for_replicas` replicas of the node holding `key` have this
    /// connection's writes so far (`WAIT`, for at most half the operation timeout). Redis
    /// replicates asynchronously: without this, a write the master acknowledged can vanish in
    /// a failover that promotes a replica which never received it.
    async fn replicated(&self, key: &str) -> Result<(), StoreError> {
        if self.wait_for_replicas == 0 {
            return Ok(());
        }
        let wait_ms = (self.timeout / 2).as_millis().max(1) as u64;
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.wait_for_replicas).arg(wait_ms);
        let mut connection = self.connection.clone();
        let acked: i64 = match &mut connection {
            // Unrouted, a cluster sends WAIT to every master; it must reach the key's own.
            RedisConnection::Cluster(cluster) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::new(slot_of(key), SlotAddr::Master),
                ));
                let value = self.run(cluster.route_command(wait, routing)).await?;
                redis::from_redis_value(value).map_err(|_| StoreError::Unavailable)?
            }
            other => self.run(wait.query_async(other)).await?,
        };
        if acked < i64::from(self.wait_for_replicas) {
            tracing::warn!(
                acked,
                wanted = self.wait_for_replicas,
                "redis: too few replicas acknowledged a write"
            );
            return Err(StoreError::Unavailable);
        }
        Ok(())
    }

    /// Gives back a claim that was never forwarded, retrying in the background with backoff for
    /// up to [`UNCLAIM_RETRIES_FOR`]: when the master dies between a claim and its `WAIT`, the
    /// claim may live on in the promoted replica, and would otherwise hold the upload (409)
    /// until its window closes.
    fn unclaim(&self, key: String, lease: Lease) {
        let script = self.scripts.unclaim.clone();
        let mut connection = self.connection.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut invocation = script.prepare_invoke();
                invocation.key(&key).arg(format!("c{}", lease.0));
                match tokio::time::timeout(timeout, invocation.invoke_async::<i64>(&mut connection))
                    .await
                {
                    // Given back, or no longer this claim's (lost in a failover): done either way.
                    Ok(Ok(_)) => return,
                    _ if started.elapsed() >= UNCLAIM_RETRIES_FOR => {
                        tracing::warn!(
                            "redis: an unacknowledged claim could not be given back; the upload \
                             answers 409 until its window closes"
                        );
                        return;
                    }
                    _ => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
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
        let forget = window_end + self.limits.remember_expired + self.sweep_grace;
        (unix_ms(forget) - unix_ms(now)).max(1)
    }

    fn expiry_shard(&self, shard: usize) -> String {
        format!("{}:{{due{shard}}}", self.keys.prefix)
    }

    /// The index entry of an upload: its user's hash tag and its uuid.
    fn expiry_member(keys: &UserKeys, id: Uuid) -> String {
        let tag = &keys.0[keys.0.find('{').map_or(0, |at| at + 1)..keys.0.len() - 2];
        format!("{tag}:{id}")
    }

    /// The upload an index entry names, if it is still kept and was never confirmed.
    async fn unconfirmed(&self, member: &str) -> Result<Option<IssuedUpload>, StoreError> {
        let Some((tag, id)) = member.rsplit_once(':') else {
            return Ok(None);
        };
        let (Some(hex), Ok(id)) = (tag.strip_prefix('u'), Uuid::parse_str(id)) else {
            return Ok(None);
        };
        let Some(user) = decode_hex(hex) else {
            return Ok(None);
        };
        let mut connection = self.connection.clone();
        let mut invocation = self.scripts.peek.prepare_invoke();
        invocation.key(format!("{}:{{{tag}}}:up:{id}", self.keys.prefix));
        let value: Option<Vec<u8>> = self.run(invocation.invoke_async(&mut connection)).await?;
        let Some(value) = value else {
            return Ok(None);
        };
        let stored = StoredUpload(&value);
        let (key, source, _) = stored.key_and_source()?;
        Ok(Some(IssuedUpload {
            s3object_id: id,
            key,
            user,
            source,
            issued_at: stored.instant(layout::ISSUED)?,
            window_end: stored.instant(layout::WINDOW_END)?,
        }))
    }
}

/// The user id a key's hex encoding names.
fn decode_hex(hex: &str) -> Option<String> {
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[async_trait]
impl UploadStore for RedisStore {
    async fn usage(&self, user: &str, now: OffsetDateTime) -> Result<Usage, StoreError> {
        let mut connection = self.connection.clone();
        let keys = self.keys.user(user);
        let mut invocation = self.scripts.usage.prepare_invoke();
        invocation
            .key(keys.key("open"))
            .key(keys.key(format_args!("day:{}", day_of(now))))
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
        let keys = self.keys.user(user);
        let script = self.scripts.admit.get(*rules, admit_script);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.key("open"))
            .key(keys.key("rate"))
            .arg(unix_ms(now));
        if rules.max_uploads_per_day.is_some() || rules.max_bytes_per_day.is_some() {
            invocation.key(keys.key(format_args!("day:{}", day_of(now))));
        }
        let answer: i64 = self.run(invocation.invoke_async(&mut connection)).await?;
        Ok(match answer {
            ADMIT_OUTSTANDING => Admission::QuotaReached(QuotaKind::Outstanding),
            ADMIT_UPLOADS => Admission::QuotaReached(QuotaKind::UploadsPerDay),
            wait if wait < 0 => Admission::QuotaReached(QuotaKind::BytesPerDay),
            wait => match budget_of(&rules.rate, wait) {
                (true, budget) => Admission::Admitted(budget),
                (false, budget) => Admission::RateLimited(budget),
            },
        })
    }

    async fn record(
        &self,
        upload: &IssuedUpload,
        max_outstanding: usize,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let keys = self.keys.user(&upload.user);
        let forget = upload.window_end + self.limits.remember_expired;
        let margin = self.limits.remember_expired;
        let script = self
            .scripts
            .record
            .get(max_outstanding, |max| record_script(max, margin));
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.key(format_args!("up:{}", upload.s3object_id)))
            .key(keys.key("open"))
            .arg(unix_ms(now))
            .arg(self.ttl_ms(upload.window_end, now))
            .arg(encode_upload(upload, forget));
        let mut index = redis::cmd("ZADD");
        index
            .arg(self.expiry_shard(usize::from(upload.s3object_id.as_bytes()[0]) % EXPIRY_SHARDS))
            .arg("NX")
            .arg(unix_ms(forget))
            .arg(Self::expiry_member(&keys, upload.s3object_id));
        let mut index_connection = self.connection.clone();
        // Sent together: the index entry costs no round trip of its own. An entry whose record
        // is refused names no upload, and the sweep skips it.
        let (answer, indexed) = tokio::join!(
            self.run(invocation.invoke_async::<i64>(&mut connection)),
            self.run(index.query_async::<i64>(&mut index_connection)),
        );
        let answer = answer?;
        if answer == 0 && indexed.is_err() {
            tracing::warn!(
                s3object_id = %upload.s3object_id,
                "redis: the upload is recorded but not indexed; its expiry will not be reported"
            );
        }
        match answer {
            0 => self.replicated(&keys.key("open")).await,
            RECORD_DUPLICATE => Err(StoreError::Duplicate),
            RECORD_CAP => Err(StoreError::UserCapReached {
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
        let keys = self.keys.user(user);
        let lease = Lease(Uuid::new_v4());
        let script = self.scripts.claim.get(
            ClaimScriptRules {
                rate: rules.rate,
                max_uploads_per_day: rules.max_uploads_per_day,
                max_bytes_per_day: rules.max_bytes_per_day,
            },
            claim_script,
        );
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.key(format_args!("up:{id}")))
            .key(keys.key("confirm-rate"))
            .arg(unix_ms(now))
            .arg(key)
            .arg(format!("c{}", lease.0));
        if rules.max_uploads_per_day.is_some() || rules.max_bytes_per_day.is_some() {
            invocation.key(keys.key(format_args!("day:{}", day_of(now))));
        }
        let answer: Vec<redis::Value> = self.run(invocation.invoke_async(&mut connection)).await?;
        let (verdict, wait, stored) = match answer.as_slice() {
            [
                redis::Value::Int(verdict),
                redis::Value::Int(wait),
                rest @ ..,
            ] => (
                *verdict,
                *wait,
                match rest {
                    [redis::Value::BulkString(stored)] => Some(stored.as_slice()),
                    _ => None,
                },
            ),
            _ => return Err(StoreError::Unavailable),
        };
        let (_, budget) = budget_of(&rules.rate, wait);
        let stored = || stored.map(StoredUpload).ok_or(StoreError::Unavailable);
        let outcome = match verdict {
            CLAIM_RATE_LIMITED => ClaimOutcome::RateLimited,
            CLAIM_NOT_FOUND => ClaimOutcome::NotFound,
            CLAIM_KEY_MISMATCH => ClaimOutcome::KeyMismatch,
            CLAIM_EXPIRED => ClaimOutcome::Expired,
            CLAIM_IN_FLIGHT => ClaimOutcome::InFlight,
            CLAIM_BACKING_OFF => ClaimOutcome::BackingOff {
                until: stored()?.instant(layout::RETRY_AT)?,
            },
            CLAIM_QUOTA_UPLOADS => ClaimOutcome::DailyQuotaReached(QuotaKind::UploadsPerDay),
            CLAIM_QUOTA_BYTES => ClaimOutcome::DailyQuotaReached(QuotaKind::BytesPerDay),
            // Another key than the one confirmed gets no answer: the script sends none.
            CLAIM_CONFIRMED => ClaimOutcome::AlreadyConfirmed(match stored() {
                Ok(upload) => upload.response()?,
                Err(_) => None,
            }),
            CLAIM_CLAIMED => {
                let upload = stored()?;
                let (key, source, _) = upload.key_and_source()?;
                let claimed = keys.key(format_args!("up:{id}"));
                if let Err(error) = self.replicated(&claimed).await {
                    // Nothing was forwarded: give the upload back rather than leave a claim that
                    // only its own settle could end.
                    self.unclaim(claimed, lease);
                    return Err(error);
                }
                ClaimOutcome::Claimed {
                    lease,
                    upload: IssuedUpload {
                        s3object_id: id,
                        key,
                        user: user.to_owned(),
                        source,
                        issued_at: upload.instant(layout::ISSUED)?,
                        window_end: upload.instant(layout::WINDOW_END)?,
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
        let keys = self.keys.user(&upload.user);
        let retry_at = unix_ms(now)
            .saturating_add(i64::try_from(rules.attempt_backoff.as_millis()).unwrap_or(i64::MAX));
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(keys.key(format_args!("up:{}", upload.s3object_id)))
            .arg(lease.0.to_string())
            .arg(rules.max_attempts)
            .arg(format!("{retry_at:0width$}", width = layout::INSTANT_LEN));
        let answer: i64 = self.run(invocation.invoke_async(&mut connection)).await?;
        if answer == SETTLED_DONE {
            // Not on a replica yet: the settler retries, and the settle is idempotent.
            self.replicated(&keys.key("open")).await?;
        }
        Ok(settled(answer))
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
        let keys = self.keys.user(&upload.user);
        let kept = if response.body.len() <= MAX_STORED_RESPONSE_BYTES {
            encode_response(&response)
        } else {
            Vec::new()
        };
        let mut invocation = self.scripts.consume.prepare_invoke();
        invocation
            .key(keys.key(format_args!("up:{}", upload.s3object_id)))
            .key(keys.key("open"))
            .key(keys.key(format_args!("day:{}", day_of(now))))
            .arg(format!("c{}", lease.0))
            .arg(kept)
            .arg(size_bytes.min(MAX_COUNTED_BYTES));
        let answer: i64 = self.run(invocation.invoke_async(&mut connection)).await?;
        if answer == SETTLED_DONE {
            // Not on a replica yet: the settler retries, and the settle is idempotent.
            self.replicated(&keys.key("open")).await?;
        }
        Ok(settled(answer))
    }

    async fn purge(&self, now: OffsetDateTime) -> Result<Vec<IssuedUpload>, StoreError> {
        // Redis forgets the keys by itself (each carries its TTL); this reports, once across
        // replicas, the uploads among them never confirmed.
        let mut never_confirmed = Vec::new();
        for shard in 0..EXPIRY_SHARDS {
            loop {
                let mut connection = self.connection.clone();
                let mut invocation = self.scripts.take_due.prepare_invoke();
                invocation
                    .key(self.expiry_shard(shard))
                    .arg(unix_ms(now))
                    .arg(SWEEP_BATCH);
                let due: Vec<String> = self.run(invocation.invoke_async(&mut connection)).await?;
                for member in &due {
                    // Taken: a failure here loses this report rather than risk a second one.
                    match self.unconfirmed(member).await {
                        Ok(Some(upload)) => never_confirmed.push(upload),
                        Ok(None) => {}
                        Err(_) => {
                            tracing::warn!(member, "redis sweep: an upload could not be read")
                        }
                    }
                }
                if due.len() < SWEEP_BATCH {
                    break;
                }
            }
        }
        Ok(never_confirmed)
    }

    async fn entry_count(&self) -> Result<Option<usize>, StoreError> {
        // The expiry index holds one entry per upload until it is forgotten: exact but for
        // entries whose record was refused (until their time) and records whose entry was
        // lost to a failover.
        let mut total = 0;
        for shard in 0..EXPIRY_SHARDS {
            let mut connection = self.connection.clone();
            let count: usize = self
                .run(
                    redis::cmd("ZCARD")
                        .arg(self.expiry_shard(shard))
                        .query_async(&mut connection),
                )
                .await?;
            total += count;
        }
        Ok(Some(total))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        RedisStore::ping(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hex_encode_the_user_inside_the_hash_tag() {
        let keys = KeyBuilder { prefix: "p".into() };
        assert_eq!(keys.user_key("a}:{b", "open"), "p:{u617d3a7b62}:open");
        assert_eq!(keys.user_key("", "rate"), "p:{u}:rate");
        assert_eq!(keys.user_key("ü", "x"), "p:{uc3bc}:x");
    }

    #[test]
    fn slots_are_the_ones_redis_computes() {
        // The examples of Redis's `CLUSTER KEYSLOT` documentation.
        assert_eq!(slot_of("somekey"), 11058);
        assert_eq!(slot_of("foo{hash_tag}"), 2515);
        assert_eq!(slot_of("p:{hash_tag}:open"), 2515);
        // An empty tag hashes the whole key.
        assert_ne!(slot_of("{}hash_tag"), slot_of("hash_tag"));
    }

    #[test]
    fn an_upload_reads_back_as_written() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let upload = IssuedUpload {
            s3object_id: Uuid::new_v4(),
            key: "uploads/ü|x/a.png".into(),
            user: "alice".into(),
            source: "field_value".into(),
            issued_at: now,
            window_end: now + Duration::from_secs(600),
        };
        let mut value = encode_upload(&upload, upload.window_end + Duration::from_secs(3600));
        let stored = StoredUpload(&value);
        assert_eq!(stored.instant(layout::ISSUED).unwrap(), upload.issued_at);
        assert_eq!(
            stored.instant(layout::WINDOW_END).unwrap(),
            upload.window_end
        );
        let (key, source, _) = stored.key_and_source().unwrap();
        assert_eq!(
            (key.as_str(), source.as_str()),
            (upload.key.as_str(), "field_value")
        );
        assert_eq!(stored.response().unwrap(), None);
        assert_eq!(
            stored
                .number(layout::RETRY_AT, layout::INSTANT_LEN)
                .unwrap(),
            None
        );

        let answer = StoredResponse {
            status: 201,
            content_type: None,
            body: Bytes::from_static(b"{}"),
        };
        value.extend_from_slice(&encode_response(&answer));
        assert_eq!(StoredUpload(&value).response().unwrap(), Some(answer));
    }
}
