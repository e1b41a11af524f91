//! `GET /api/s3/presigned-post`, in this order: authenticate, validate the query, check the tier's
//! quotas and then spend the user's presign budget (one store step, so that a presign refused by a
//! quota spends no budget), forward, record what was issued (the open-uploads cap checked again,
//! atomically), audit, answer with the upstream's body.

use axum::{Extension, extract::State, http::HeaderMap, response::Response};
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{extract::PresignQuery, upstream_response};
use crate::{
    auth::AuthenticatedUser,
    domain::{IssuedUpload, QuotaKind},
    error::GatewayError,
    observability::{access::RequestId, audit},
    quota,
    state::AppState,
    store::{Admission, PresignRules, StoreError},
    upstream::UpstreamFailure,
};

/// The `GET /api/s3/presigned-post` handler: admits, forwards and records one presign (see the
/// module docs), answering with Kizen's body verbatim.
pub async fn presign(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    user: AuthenticatedUser,
    PresignQuery(input): PresignQuery,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    // Quotas, then the rate limit, in one step of the store.
    let now = state.clock.now();
    let quotas = &state.config.quotas;
    let (_, tier) = quotas.tier(user.tier.as_deref());
    let rules = PresignRules {
        max_outstanding: tier.max_outstanding,
        max_uploads_per_day: tier.max_uploads_per_day,
        max_bytes_per_day: tier.max_bytes_per_day,
        rate: state.presign_rate,
    };
    let budget = match state.store.admit(&user.id, now, &rules).await? {
        Admission::Admitted(budget) => budget,
        Admission::RateLimited(budget) => {
            return Err(GatewayError::RateLimited {
                what: "presign requests",
                budget,
            });
        }
        Admission::QuotaReached(kind) => {
            return Err(quota::exceeded(quotas, user.tier.as_deref(), kind, now).into());
        }
    };

    let answer = state
        .upstream
        .presign(&input, &user, &headers, &request_id.0)
        .await?;
    if !answer.status.is_success() {
        // A 4xx describes the client's input: pass it through, nothing recorded.
        let mut response = upstream_response(answer, "upstream_rejected_input");
        budget.write(response.headers_mut());
        return Ok(response);
    }

    let issued = PresignAnswer::parse(&answer.body)?;
    let upload = IssuedUpload {
        s3object_id: issued.s3object_id,
        key: issued.key,
        user: user.id,
        source: input.source,
        issued_at: now,
        window_end: state.confirmation_window().end(now, issued.expires_at),
    };
    // The cap is checked again inside the store's atomic record, so that concurrent presigns
    // cannot overshoot it.
    let recorded = state.store.record(&upload, tier.max_outstanding, now).await;
    if let Err(StoreError::UserCapReached { .. }) = recorded {
        let kind = QuotaKind::Outstanding;
        return Err(quota::exceeded(quotas, user.tier.as_deref(), kind, now).into());
    }
    recorded?;
    let audited = audit::issued(&state.metrics, &upload, &request_id.0);

    let mut response = upstream_response(answer, "issued");
    budget.write(response.headers_mut());
    response.extensions_mut().insert(audited);
    Ok(response)
}

/// The parts of the upstream's answer the gateway must understand to record the upload.
pub(crate) struct PresignAnswer {
    pub(crate) s3object_id: Uuid,
    pub(crate) key: String,
    pub(crate) expires_at: OffsetDateTime,
}

impl PresignAnswer {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, UpstreamFailure> {
        #[derive(Deserialize)]
        struct Fields {
            key: String,
        }
        #[derive(Deserialize)]
        struct Raw {
            s3object_id: String,
            fields: Fields,
            expires_at: String,
        }
        let bad = |why: &str| {
            tracing::warn!(reason = why, "unusable presign answer from upstream");
            UpstreamFailure::BadResponse
        };
        let raw: Raw = serde_json::from_slice(body).map_err(|_| bad("not the expected JSON"))?;
        let s3object_id =
            Uuid::try_parse(&raw.s3object_id).map_err(|_| bad("s3object_id is not a UUID"))?;
        if raw.fields.key.is_empty() {
            return Err(bad("fields.key is empty"));
        }
        let expires_at = OffsetDateTime::parse(
            &raw.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| bad("expires_at is not an RFC 3339 date-time"))?;
        Ok(Self {
            s3object_id,
            key: raw.fields.key,
            expires_at,
        })
    }
}
