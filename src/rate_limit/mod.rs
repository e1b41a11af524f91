//! Per-user rate limits (GCRA), one for presigns and one for confirmations, and the
//! `RateLimit-*` / `Retry-After` headers (draft-ietf-httpapi-ratelimit-headers) that tell a client
//! where it stands. One trait, one file per backend: governor in memory for one replica, one Lua
//! step in Redis for many.

pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderValue, header};

use crate::error::whole_seconds_ceil;

pub use memory::MemoryLimiter;
pub use redis::RedisLimiter;

/// What a client is told about its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub limit: u32,
    pub remaining: u32,
    /// Until the budget is whole again.
    pub reset: Duration,
    /// Set when the request was refused.
    pub retry_after: Option<Duration>,
}

impl RateLimitHeaders {
    pub fn write(&self, headers: &mut HeaderMap) {
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert(
            "ratelimit-reset",
            HeaderValue::from(whole_seconds_ceil(self.reset)),
        );
        if let Some(wait) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(whole_seconds_ceil(wait).max(1)),
            );
        }
    }
}

/// `burst` presigns at once, the whole budget refilled over `period`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub burst: u32,
    pub period: Duration,
}

impl RateLimit {
    /// The time one presign's worth of budget takes to come back.
    pub fn emission_interval(&self) -> Duration {
        (self.period / self.burst.max(1)).max(Duration::from_micros(1))
    }
}

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// The budget is spent; the headers say how long to wait.
    #[error("rate limited")]
    Limited(RateLimitHeaders),
    /// The backend could not answer: never taken as "allowed".
    #[error("the rate limiter is unavailable")]
    Unavailable,
}

#[async_trait]
pub trait UserRateLimiter: Send + Sync + 'static {
    /// Takes one request from `user`'s budget, or says how long to wait.
    async fn check(&self, user: &str) -> Result<RateLimitHeaders, RateLimitError>;

    /// Drops state of users whose budget is whole again (where the backend needs it).
    fn prune(&self) {}
}
