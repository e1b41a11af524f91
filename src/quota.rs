//! Per-user quotas, by tier: open uploads at once, and confirmed uploads and bytes per UTC day.
//! Checked before a presign is forwarded, against one read of the store; the daily quotas are
//! checked again when a confirmation claims its upload (see [`crate::store::ClaimRules`]).
//!
//! What each guarantees:
//! - `max_outstanding`: a user never holds more open uploads (atomic in the store's record).
//! - `max_uploads_per_day`: a presign is refused once today's confirmed plus open uploads reach
//!   it, and a confirmation is refused (never forwarded) once today's confirmed uploads reach it.
//!   Concurrent confirmations of one user can each pass the claim check before either is counted,
//!   so the count can be exceeded by the confirmations in flight at that moment.
//! - `max_bytes_per_day`: no confirmation is forwarded once today's confirmed bytes reach it; the
//!   confirmation that crosses it counts in full, so the day ends at most one file (plus those in
//!   flight at once) above it. Each confirmation counts at most 2^53 - 1 bytes.

use time::{OffsetDateTime, Time};

use crate::{config::QuotaConfig, domain::QuotaKind};

/// A refused presign: the quota, its limit, and when it frees up (`None`: when an open upload is
/// confirmed or expires).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// The quota that was reached.
    pub kind: QuotaKind,
    /// The tier whose limit applied: the claimed one, or the default.
    pub tier: String,
    /// That tier's limit for the quota (uploads or bytes).
    pub limit: u64,
    /// When the quota frees up: the next UTC midnight for the daily ones.
    pub resets_at: Option<OffsetDateTime>,
}

/// The refusal a client is told when `kind` of the tier named by `claimed_tier` was reached at
/// `now`: the daily quotas free up at the next UTC midnight, the open-uploads cap when an upload is
/// confirmed or expires.
pub fn exceeded(
    quotas: &QuotaConfig,
    claimed_tier: Option<&str>,
    kind: QuotaKind,
    now: OffsetDateTime,
) -> QuotaExceeded {
    let (tier, limits) = quotas.tier(claimed_tier);
    let (limit, resets_at) = match kind {
        QuotaKind::Outstanding => (limits.max_outstanding as u64, None),
        QuotaKind::UploadsPerDay => (
            limits.max_uploads_per_day.unwrap_or_default(),
            Some(next_utc_midnight(now)),
        ),
        QuotaKind::BytesPerDay => (
            limits.max_bytes_per_day.unwrap_or_default(),
            Some(next_utc_midnight(now)),
        ),
    };
    QuotaExceeded {
        kind,
        tier: tier.to_owned(),
        limit,
        resets_at,
    }
}
/// The first instant of the UTC day after `now`: when the daily quotas reset.
pub fn next_utc_midnight(now: OffsetDateTime) -> OffsetDateTime {
    let now = now.to_offset(time::UtcOffset::UTC);
    (now.date().next_day().unwrap_or(now.date()))
        .with_time(Time::MIDNIGHT)
        .assume_utc()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::TierLimits;

    fn config() -> QuotaConfig {
        let mut tiers = BTreeMap::new();
        tiers.insert(
            "default".into(),
            TierLimits {
                max_outstanding: 2,
                max_uploads_per_day: Some(3),
                max_bytes_per_day: None,
            },
        );
        tiers.insert(
            "pro".into(),
            TierLimits {
                max_outstanding: 10,
                max_uploads_per_day: None,
                max_bytes_per_day: Some(100),
            },
        );
        QuotaConfig {
            tier_claim: Some("plan".into()),
            default_tier: "default".into(),
            tiers,
        }
    }

    #[test]
    fn unknown_tiers_fall_back_to_the_default() {
        assert_eq!(config().tier(Some("gold")).0, "default");
        assert_eq!(config().tier(Some("pro")).0, "pro");
        assert_eq!(config().tier(None).0, "default");
    }

    #[test]
    fn a_refusal_names_its_tier_limit_and_reset() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let refused = exceeded(&config(), Some("pro"), QuotaKind::BytesPerDay, now);
        assert_eq!(
            (refused.tier.as_str(), refused.limit, refused.resets_at),
            ("pro", 100, Some(next_utc_midnight(now)))
        );
        let refused = exceeded(&config(), Some("gold"), QuotaKind::Outstanding, now);
        assert_eq!(
            (refused.tier.as_str(), refused.limit, refused.resets_at),
            ("default", 2, None)
        );
    }

    #[test]
    fn midnight_is_the_next_one() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(); // 2027-01-15T08:00:00Z
        let midnight = next_utc_midnight(now);
        assert_eq!(midnight.unix_timestamp() % 86_400, 0);
        assert!(midnight > now && midnight - now <= time::Duration::DAY);
    }
}
