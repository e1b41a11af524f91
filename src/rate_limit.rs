//! Per-user presign rate limit (GCRA, by governor) and the `RateLimit-*` / `Retry-After` headers
//! (draft-ietf-httpapi-ratelimit-headers) that tell a client where it stands.

use std::{num::NonZeroU32, time::Duration};

use axum::http::{HeaderMap, HeaderValue, header};
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
};

use crate::error::{GatewayError, whole_seconds_ceil};

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

type KeyedLimiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub struct PresignLimiter {
    limiter: KeyedLimiter,
    burst: u32,
    per_token: Duration,
}

impl PresignLimiter {
    /// `burst` presigns at once, the whole budget refilled over `period`.
    pub fn new(burst: u32, period: Duration) -> Self {
        let burst_nz = NonZeroU32::new(burst.max(1)).expect("max(1) is non-zero");
        let per_token = (period / burst_nz.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(per_token)
            .expect("non-zero period")
            .allow_burst(burst_nz);
        let limiter = RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>();
        Self {
            limiter,
            burst: burst_nz.get(),
            per_token,
        }
    }

    /// Takes one presign from `user`'s budget, or says how long to wait.
    pub fn check(&self, user: &str) -> Result<RateLimitHeaders, GatewayError> {
        // Keyed by an owned String: governor's keyed state needs K: Clone + Hash.
        match self.limiter.check_key(&user.to_owned()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Ok(RateLimitHeaders {
                    limit: self.burst,
                    remaining,
                    reset: self.per_token * (self.burst - remaining),
                    retry_after: None,
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(GatewayError::RateLimited(RateLimitHeaders {
                    limit: self.burst,
                    remaining: 0,
                    reset: self.per_token * (self.burst - 1) + wait,
                    retry_after: Some(wait),
                }))
            }
        }
    }

    /// Drops users whose budget is whole again, so idle users cost no memory.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn tracked_users(&self) -> usize {
        self.limiter.len()
    }
}
