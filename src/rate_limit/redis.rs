//! The limiter shared by every replica: GCRA (as redis-cell and Envoy's rate-limit service do it)
//! in one Lua step, timed by the Redis server's clock so that replicas' clocks do not matter.

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{RateLimit, RateLimitError, RateLimitHeaders, UserRateLimiter};
use crate::store::redis::RedisConnection;

const GCRA: &str = r#"
-- KEYS: rate. ARGV: emission interval (us), burst. Returns allowed, remaining, retry_after_us, reset_us.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
"#;

pub struct RedisLimiter {
    connection: RedisConnection,
    key_of: Box<dyn Fn(&str) -> String + Send + Sync>,
    script: Script,
    limit: RateLimit,
    timeout: Duration,
}

impl RedisLimiter {
    /// `key_of` names the user's rate-limit key (inside the user's hash tag).
    pub fn new(
        connection: RedisConnection,
        key_of: impl Fn(&str) -> String + Send + Sync + 'static,
        limit: RateLimit,
        timeout: Duration,
    ) -> Self {
        Self {
            connection,
            key_of: Box::new(key_of),
            script: Script::new(GCRA),
            limit,
            timeout,
        }
    }
}

#[async_trait]
impl UserRateLimiter for RedisLimiter {
    async fn check(&self, user: &str) -> Result<RateLimitHeaders, RateLimitError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key((self.key_of)(user))
            .arg(self.limit.emission_interval().as_micros() as u64)
            .arg(self.limit.burst.max(1));
        let answer: redis::RedisResult<(i64, i64, i64, i64)> = match tokio::time::timeout(
            self.timeout,
            invocation.invoke_async(&mut connection),
        )
        .await
        {
            Ok(answer) => answer,
            Err(_) => {
                tracing::warn!("redis rate-limit check timed out");
                return Err(RateLimitError::Unavailable);
            }
        };
        let (allowed, remaining, retry_after_us, reset_us) = answer.map_err(|error| {
            tracing::warn!(%error, "redis rate-limit check failed");
            RateLimitError::Unavailable
        })?;
        let micros = |us: i64| Duration::from_micros(us.max(0) as u64);
        let headers = RateLimitHeaders {
            limit: self.limit.burst,
            remaining: remaining.max(0) as u32,
            reset: micros(reset_us),
            retry_after: (allowed == 0).then(|| micros(retry_after_us)),
        };
        if allowed == 1 {
            Ok(headers)
        } else {
            Err(RateLimitError::Limited(headers))
        }
    }
}
