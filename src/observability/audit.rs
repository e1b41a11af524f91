//! The audit trail: one event per step of an upload's life. Uploads are named by `s3object_id`;
//! their S3 key is not logged, as the upstream builds it around the (secret) business id.
//! Each event also moves its counter in [`Metrics`].

use super::metrics::{Metrics, ReasonLabels};
use crate::domain::IssuedUpload;

/// Records a presigned upload: counts `uploads_issued` and logs `upload_issued`.
pub fn issued(metrics: &Metrics, upload: &IssuedUpload, request_id: &str) {
    metrics.uploads_issued.inc();
    tracing::info!(
        target: "kizen_gateway::audit",
        event = "upload_issued",
        request_id,
        user = ?upload.user,
        s3object_id = %upload.s3object_id,
        source = %upload.source,
        window_end = %upload.window_end,
        "upload issued"
    );
}

/// Records an upload Kizen confirmed: counts `uploads_confirmed` and logs `upload_confirmed`.
pub fn confirmed(metrics: &Metrics, upload: &IssuedUpload, request_id: &str) {
    metrics.uploads_confirmed.inc();
    tracing::info!(
        target: "kizen_gateway::audit",
        event = "upload_confirmed",
        request_id,
        user = ?upload.user,
        s3object_id = %upload.s3object_id,
        "upload confirmed"
    );
}

/// Records a refused confirmation, with its problem code as `reason`: counts `uploads_rejected`
/// and logs `upload_rejected`.
pub fn rejected(
    metrics: &Metrics,
    user: &str,
    s3object_id: &uuid::Uuid,
    reason: &'static str,
    request_id: &str,
) {
    metrics
        .uploads_rejected
        .get_or_create(&ReasonLabels { reason })
        .inc();
    tracing::info!(
        target: "kizen_gateway::audit",
        event = "upload_rejected",
        request_id,
        user = ?user,
        s3object_id = %s3object_id,
        reason,
        "confirmation rejected"
    );
}

/// Records an upload forgotten unconfirmed: counts `uploads_expired` and logs `upload_expired`.
pub fn expired(metrics: &Metrics, upload: &IssuedUpload) {
    metrics.uploads_expired.inc();
    tracing::info!(
        target: "kizen_gateway::audit",
        event = "upload_expired",
        user = ?upload.user,
        s3object_id = %upload.s3object_id,
        "upload expired unconfirmed and was forgotten"
    );
}
