//! The per-replica limiter: governor's keyed GCRA.

use std::{num::NonZeroU32, time::Duration};

use async_trait::async_trait;
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
};

use super::{RateLimit, RateLimitError, RateLimitHeaders, UserRateLimiter};

type KeyedLimiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub struct MemoryLimiter {
    limiter: KeyedLimiter,
    burst: u32,
    per_token: Duration,
}

impl MemoryLimiter {
    pub fn new(limit: RateLimit) -> Self {
        let burst = NonZeroU32::new(limit.burst.max(1)).expect("max(1) is non-zero");
        let per_token = limit.emission_interval();
        let quota = Quota::with_period(per_token)
            .expect("non-zero period")
            .allow_burst(burst);
        let limiter = RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>();
        Self {
            limiter,
            burst: burst.get(),
            per_token,
        }
    }
}

#[async_trait]
impl UserRateLimiter for MemoryLimiter {
    async fn check(&self, user: &str) -> Result<RateLimitHeaders, RateLimitError> {
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
                Err(RateLimitError::Limited(RateLimitHeaders {
                    limit: self.burst,
                    remaining: 0,
                    reset: self.per_token * (self.burst - 1) + wait,
                    retry_after: Some(wait),
                }))
            }
        }
    }

    fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}
