//! Per-user rate limits, one for presigns and one for confirmations: GCRA (the generic cell
//! rate algorithm, as redis-cell and Envoy's rate-limit service do it), and the `RateLimit-*` /
//! `Retry-After` headers (draft-ietf-httpapi-ratelimit-headers) that tell a client where it
//! stands.
//!
//! A user's budget is state of that user, kept by the upload store beside their uploads, so that a
//! presign's quota check and rate limit are one step (one Redis round trip, in one Lua script that
//! mirrors [`gcra`]); see [`crate::store::UploadStore::admit`] and
//! [`crate::store::UploadStore::claim`].

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

/// Seconds for `Retry-After` and `RateLimit-Reset`: rounded up, never 0 while waiting.
pub fn whole_seconds_ceil(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

// Named once: a `&str` name is parsed again on every insert.
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// What a client is told about its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// The budget's size: the configured burst (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests left in the budget now (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Until the budget is whole again.
    pub reset: Duration,
    /// Set when the request was refused.
    pub retry_after: Option<Duration>,
}

impl RateLimitHeaders {
    /// Writes `RateLimit-Limit`, `-Remaining`, `-Reset` (whole seconds, rounded up) and, when
    /// refused, `Retry-After`.
    pub fn write(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(self.limit));
        headers.insert(
            RATELIMIT_REMAINING.clone(),
            HeaderValue::from(self.remaining),
        );
        headers.insert(
            RATELIMIT_RESET.clone(),
            HeaderValue::from(whole_seconds_ceil(self.reset)),
        );
        if let Some(wait) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(whole_seconds_ceil(wait).max(1)),
            );
        }
    }

    /// The budget as answered by a backend: remaining requests, microseconds until whole, and
    /// microseconds to wait (refused when positive).
    pub fn from_micros(limit: &RateLimit, remaining: i64, reset_us: i64, retry_us: i64) -> Self {
        let micros = |us: i64| Duration::from_micros(us.max(0) as u64);
        Self {
            limit: limit.burst,
            remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            reset: micros(reset_us),
            retry_after: (retry_us > 0).then(|| micros(retry_us)),
        }
    }
}

/// `burst` requests at once, the whole budget refilled over `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests a user may make at once (`rate_limit_burst`).
    pub burst: u32,
    /// Time over which a spent budget refills whole (`rate_limit_period`).
    pub period: Duration,
}

impl RateLimit {
    /// The time one request's worth of budget takes to come back.
    pub fn emission_interval(&self) -> Duration {
        (self.period / self.burst.max(1)).max(Duration::from_micros(1))
    }

    /// [`RateLimit::emission_interval`] in microseconds, the unit the GCRA state is kept in.
    pub fn emission_interval_us(&self) -> i64 {
        i64::try_from(self.emission_interval().as_micros()).unwrap_or(i64::MAX)
    }
}

/// One GCRA step over a user's theoretical arrival time `tat_us` at `now_us` (both in
/// microseconds on one clock). Returns the TAT to keep (`None`: refused, keep the old one) and
/// what the client is told. The Redis store runs the same arithmetic in Lua.
pub fn gcra(tat_us: i64, now_us: i64, limit: &RateLimit) -> (Option<i64>, RateLimitHeaders) {
    let interval = limit.emission_interval_us();
    let burst = i64::from(limit.burst.max(1));
    let tat = tat_us.max(now_us);
    let new_tat = tat.saturating_add(interval);
    let allow_at = new_tat.saturating_sub(burst.saturating_mul(interval));
    if now_us < allow_at {
        let headers = RateLimitHeaders::from_micros(limit, 0, tat - now_us, allow_at - now_us);
        return (None, headers);
    }
    let remaining = (now_us - allow_at) / interval;
    let headers = RateLimitHeaders::from_micros(limit, remaining, new_tat - now_us, 0);
    (Some(new_tat), headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let limit = RateLimit {
            burst: 3,
            period: Duration::from_secs(3),
        };
        let mut tat = 0;
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let (kept, headers) = gcra(tat, 1_000_000, &limit);
            tat = kept.expect("within the burst");
            remaining.push(headers.remaining);
            assert_eq!(headers.retry_after, None);
        }
        assert_eq!(remaining, [2, 1, 0]);
        let (kept, refused) = gcra(tat, 1_000_000, &limit);
        assert_eq!(kept, None);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(1)));
        assert_eq!(refused.reset, Duration::from_secs(3));
        // One interval later, one more.
        let (kept, headers) = gcra(tat, 2_000_000, &limit);
        assert!(kept.is_some());
        assert_eq!(headers.remaining, 0);
    }
}
