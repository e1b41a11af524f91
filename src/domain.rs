//! The gateway's own vocabulary, shared by the services: an upload it issued to a user, the
//! window in which that upload may be confirmed, and the quotas a user can reach.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

/// An upload the gateway presigned for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedUpload {
    /// Kizen's id of the upload (`s3object_id` in its answer); a confirmation names it as `uuid`.
    pub s3object_id: Uuid,
    /// The S3 key the upstream issued (`fields.key`); a confirmation must name exactly this key.
    pub key: String,
    /// The end user it was issued to, by their authenticated id; only they may confirm it.
    pub user: String,
    /// The presign's `source` (a Kizen source); whether it is in `confirm.public_sources` decides
    /// if the upload may be confirmed public.
    pub source: String,
    /// When the gateway presigned it, by its own clock; the window ends at most `max_window` later.
    pub issued_at: OffsetDateTime,
    /// Last instant a confirmation is accepted.
    pub window_end: OffsetDateTime,
}

/// How long after its presign an upload may be confirmed (`confirm.grace`, `confirm.max_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfirmationWindow {
    /// Accepted after the presigned POST expires: the browser may finish an upload it started.
    pub grace: Duration,
    /// Never longer than this after the presign, so that an upstream clock cannot stretch it.
    pub max_window: Duration,
}

impl ConfirmationWindow {
    /// The last instant a confirmation is accepted: the upload's `expires_at` plus the grace,
    /// capped at `max_window` after the presign.
    pub fn end(&self, issued_at: OffsetDateTime, expires_at: OffsetDateTime) -> OffsetDateTime {
        (expires_at + self.grace).min(issued_at + self.max_window)
    }
}

/// Which quota refused a presign or a confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// Open uploads at once.
    Outstanding,
    /// Confirmed uploads per UTC day.
    UploadsPerDay,
    /// Confirmed bytes per UTC day (Kizen's `size_bytes`).
    BytesPerDay,
}

impl QuotaKind {
    /// The option that sets this quota, as the problem body names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Outstanding => "max_outstanding",
            Self::UploadsPerDay => "max_uploads_per_day",
            Self::BytesPerDay => "max_bytes_per_day",
        }
    }
}
