//! Which upload was issued to whom, and its confirmation state. One trait, one file per backend;
//! every backend passes the same contract suite (`tests/it/store_contract.rs`).
//!
//! Lifecycle of one upload:
//! `record` (issued) -> `claim` (the commitment to forward one confirmation, under a lease) ->
//! `consume` (upstream said 2xx) or `release` (upstream refused or was not reached; the user may
//! retry, within the attempt limit). A claim never lapses by itself: once the call may have reached
//! the upstream, only its own settle (`consume` or `release`, matched by the lease) ends it, so a
//! confirmation is never forwarded twice, even when the store fails between the upstream's answer
//! and the settle. After its window closes an unconsumed upload answers `Expired`, and every entry
//! is forgotten `remember_expired` after its window.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use bytes::Bytes;
pub use memory::MemoryStore;
pub use redis::{RedisSettings, RedisStore, SentinelSettings};
use time::OffsetDateTime;
use uuid::Uuid;

pub use crate::domain::{IssuedUpload, QuotaKind};
use crate::rate_limit::{RateLimit, RateLimitHeaders};

/// What one user holds now: the input of the quota check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Issued, unconsumed uploads whose window is still open.
    pub outstanding: usize,
    /// Uploads confirmed today (UTC).
    pub uploads_today: u64,
    /// Bytes of the uploads confirmed today (UTC), as the upstream reported them.
    pub bytes_today: u64,
}

/// The UTC day a quota counter belongs to, as `yyyymmdd`.
pub fn day_of(at: OffsetDateTime) -> String {
    let date = at.to_offset(time::UtcOffset::UTC).date();
    format!(
        "{:04}{:02}{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Milliseconds since the Unix epoch: how the stores keep instants.
pub(crate) fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The upstream's answer to a successful confirmation, kept to answer idempotent repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// Kizen's status (2xx).
    pub status: u16,
    /// Kizen's `Content-Type`, replayed as it was.
    pub content_type: Option<String>,
    /// Kizen's body, at most [`MAX_STORED_RESPONSE_BYTES`] to be kept.
    pub body: Bytes,
}

/// Proof of a claim: release and consume act only for the claim that holds the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease(pub Uuid);

/// What a presign must pass, in this order: its tier's quotas (open uploads, and today's
/// confirmed plus open uploads, and today's bytes), then the user's presign budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresignRules {
    /// Open uploads the user may hold at once (the tier's `max_outstanding`).
    pub max_outstanding: usize,
    /// Confirmed plus open uploads the user may reach today (UTC); `None`: no limit.
    pub max_uploads_per_day: Option<u64>,
    /// Confirmed bytes the user may reach today (UTC); `None`: no limit.
    pub max_bytes_per_day: Option<u64>,
    /// The user's presign budget (`presign.rate_limit_*`).
    pub rate: RateLimit,
}

/// The verdict on a presign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within the quotas; one presign was taken from the budget.
    Admitted(RateLimitHeaders),
    /// A quota refused it; the budget was not touched.
    QuotaReached(QuotaKind),
    /// The budget is spent.
    RateLimited(RateLimitHeaders),
}

/// The rules a claim checks besides identity and key: the user's confirmation budget (spent by
/// every attempt, first), the per-upload attempt limit and the user's daily quotas (checked again
/// here, since a presign only saw the usage of its moment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRules {
    /// The user's confirmation budget (`confirm.rate_limit_*`), spent by every claim attempt.
    pub rate: RateLimit,
    /// Failed confirmations (released claims) after which the upload backs off.
    pub max_attempts: u32,
    /// How long an upload that used up its attempts refuses new ones.
    pub attempt_backoff: std::time::Duration,
    /// Confirmed uploads per UTC day; `None`: no limit.
    pub max_uploads_per_day: Option<u64>,
    /// Confirmed bytes per UTC day; `None`: no limit.
    pub max_bytes_per_day: Option<u64>,
}

/// What a settle (`consume` or `release`) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The claim was this lease's and is now settled.
    Done,
    /// The upload is gone or held under another lease: nothing was changed. This never happens
    /// in a sound deployment; callers log and count it.
    Stale,
}

/// Largest `size_bytes` counted for one confirmation, and for one user's day: a hostile or broken
/// upstream answer cannot overflow the day's byte counter (2^53 - 1 stays exact in Lua's doubles).
pub const MAX_COUNTED_BYTES: u64 = (1 << 53) - 1;

/// The verdict of [`UploadStore::claim`] on one confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This caller now holds the upload; it must `consume` or `release` it.
    Claimed {
        /// Proof of this claim, required to settle it.
        lease: Lease,
        /// The upload as recorded, to forward and to settle.
        upload: IssuedUpload,
    },
    /// Unknown uuid, or issued to another user: the same answer, so there is no oracle.
    NotFound,
    /// The key does not match the one issued for the upload.
    KeyMismatch,
    /// The upload's confirmation window has closed (it is remembered `remember_expired` longer).
    Expired,
    /// Another confirmation holds the upload and has not settled (it may be in flight, or its
    /// outcome may not be recorded yet): answered 409, never forwarded again.
    InFlight,
    /// The upload used up its confirmation attempts; it takes new ones again at `until`.
    BackingOff {
        /// When the backoff ends (the last failure plus `confirm.attempt_backoff`).
        until: OffsetDateTime,
    },
    /// The user reached a daily quota; the upload stays issued.
    DailyQuotaReached(QuotaKind),
    /// The user's confirmation budget is spent; nothing was checked.
    RateLimited,
    /// Confirmed before. `Some` when the same key is repeated and the answer was kept.
    AlreadyConfirmed(Option<StoredResponse>),
}

/// A claim's verdict, and the user's confirmation budget after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// What the claim found.
    pub outcome: ClaimOutcome,
    /// The user's confirmation budget after this attempt, sent as the `RateLimit-*` headers.
    pub budget: RateLimitHeaders,
}

/// Why a store operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The user already holds their tier's cap of open uploads (checked again at record time).
    #[error("the user holds {limit} outstanding uploads")]
    UserCapReached {
        /// The cap reached: the tier's `max_outstanding`.
        limit: usize,
    },
    /// The memory store is at `store.max_uploads` and has nothing it may evict.
    #[error("the store is full")]
    Full,
    /// The backend failed or did not answer within `store.redis.operation_timeout`.
    #[error("the store is unavailable")]
    Unavailable,
    /// The s3object_id is already recorded: the upstream issued one id twice.
    #[error("the upload id is already recorded")]
    Duplicate,
}

/// Bounds that are the store's own, fixed at construction.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Entries held at once, all states together. When full, confirmed and expired entries are
    /// forgotten early to make room; an open upload is never evicted.
    pub max_uploads: usize,
    /// Entries one user may hold, all states together: past it, that user's confirmed or
    /// expired entry is forgotten early, so that one user cannot crowd the store.
    pub max_uploads_per_user: usize,
    /// How long an entry is kept after its window closes.
    pub remember_expired: std::time::Duration,
}

/// Largest upstream answer kept for idempotent repeats; a larger one is not replayed (409).
pub const MAX_STORED_RESPONSE_BYTES: usize = 64 * 1024;

/// Where issued uploads, their confirmation state, the users' rate-limit budgets and quota counters
/// are kept: in memory ([`MemoryStore`]) or in Redis ([`RedisStore`]), with the same contract.
#[async_trait]
pub trait UploadStore: Send + Sync + 'static {
    /// The user's open uploads and today's confirmed uploads and bytes, in one read.
    async fn usage(&self, user: &str, now: OffsetDateTime) -> Result<Usage, StoreError>;

    /// Checks a presign against the user's quotas and, if they allow it, takes it from the user's
    /// presign budget: one atomic step. The budget runs on the store's own clock (the Redis
    /// server's), not on `now`, which dates the quota day and the open uploads.
    async fn admit(
        &self,
        user: &str,
        now: OffsetDateTime,
        rules: &PresignRules,
    ) -> Result<Admission, StoreError>;

    /// Records an issued upload, unless the user already holds `max_outstanding` open uploads
    /// or the store is full. Never evicts a live upload to make room.
    async fn record(
        &self,
        upload: &IssuedUpload,
        max_outstanding: usize,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// Atomically takes one confirmation from the user's budget, then checks that `user` may
    /// confirm `id` with `key` now (owner, key, window, attempt backoff, daily quotas of
    /// `rules`), and if so takes a lease. The claim holds until settled.
    async fn claim(
        &self,
        user: &str,
        id: Uuid,
        key: &str,
        now: OffsetDateTime,
        rules: &ClaimRules,
    ) -> Result<Claim, StoreError>;

    /// Gives a claimed upload back (the upstream refused it, or was never reached) and counts the
    /// failed attempt; after `rules.max_attempts` of them the upload backs off for
    /// `rules.attempt_backoff` from `now`.
    async fn release(
        &self,
        upload: &IssuedUpload,
        lease: Lease,
        now: OffsetDateTime,
        rules: &ClaimRules,
    ) -> Result<Settled, StoreError>;

    /// Marks a claimed upload confirmed for good, keeping the answer for repeats, and counts it
    /// (and its `size_bytes`, capped at [`MAX_COUNTED_BYTES`]) toward the user's quota of the day
    /// of `now`.
    async fn consume(
        &self,
        upload: &IssuedUpload,
        lease: Lease,
        response: StoredResponse,
        size_bytes: u64,
        now: OffsetDateTime,
    ) -> Result<Settled, StoreError>;

    /// Forgets entries past their memory and returns the uploads among them that were never
    /// confirmed. Backends whose entries expire by themselves (Redis) forget without reporting.
    async fn purge(&self, now: OffsetDateTime) -> Result<Vec<IssuedUpload>, StoreError>;

    /// Entries held, all states together, where the backend can tell cheaply.
    async fn entry_count(&self) -> Result<Option<usize>, StoreError>;

    /// Whether the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
