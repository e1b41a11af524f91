//! `POST /api/s3/success`: authenticate, validate, claim the upload atomically, forward, then
//! consume it (upstream 2xx) or release it (anything else) so that the user can retry.

use axum::{
    Extension,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;

use super::upstream_response;
use crate::{
    app::AppState,
    auth::AuthenticatedUser,
    error::GatewayError,
    observability::{Outcome, RequestId, audit},
    store::{ClaimOutcome, StoredResponse},
    validate,
};

/// Marks an answer replayed from a confirmation that already succeeded.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

pub async fn confirm(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    user: AuthenticatedUser,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    if !validate::is_form_content_type(headers.get(header::CONTENT_TYPE)) {
        return Err(GatewayError::UnsupportedMediaType);
    }
    let body = read_limited(body, &headers, state.config.confirm.max_body_bytes).await?;
    let input = validate::confirm(&body).map_err(GatewayError::InvalidInput)?;

    let now = state.clock.now();
    let claim = state
        .store
        .claim(
            &user.id,
            input.uuid,
            &input.key,
            now,
            state.config.confirm.claim_lease,
        )
        .await?;
    let (lease, upload) = match claim {
        ClaimOutcome::Claimed { lease, upload } => (lease, upload),
        ClaimOutcome::AlreadyConfirmed(Some(stored)) => return Ok(replay(stored)),
        refused => {
            let error = match refused {
                ClaimOutcome::NotFound => GatewayError::UploadNotFound,
                ClaimOutcome::KeyMismatch => GatewayError::KeyMismatch,
                ClaimOutcome::Expired => GatewayError::UploadExpired,
                ClaimOutcome::InFlight => GatewayError::ConfirmationInProgress,
                _ => GatewayError::AlreadyConfirmed,
            };
            audit::rejected(
                &state.metrics,
                &user.id,
                &input.uuid,
                error.code(),
                &request_id.0,
            );
            return Err(error);
        }
    };

    let is_public = input.is_public && state.config.confirm.public_sources.contains(&upload.source);

    // The forward and the settling of the claim run in a task of their own: a client that hangs
    // up must not cancel them halfway and leave the upload claimed until its lease runs out.
    let task = tokio::spawn(async move {
        let forwarded = state
            .upstream
            .confirm(&input, &upload, is_public, &user, &headers, &request_id.0)
            .await;
        match forwarded {
            Ok(answer) if answer.status.is_success() => {
                let stored = StoredResponse {
                    status: answer.status.as_u16(),
                    content_type: answer.content_type().map(str::to_owned),
                    body: answer.body.clone(),
                };
                let size_bytes = reported_size(&answer.body);
                let settled = state
                    .store
                    .consume(&upload, lease, stored, size_bytes, state.clock.now())
                    .await;
                if let Err(e) = settled {
                    // Upstream accepted it: the client must hear so. A later repeat gets 409 at worst.
                    tracing::error!(error = %e, s3object_id = %upload.s3object_id, "could not mark the upload confirmed");
                }
                audit::confirmed(&state.metrics, &upload, &request_id.0);
                let mut response = upstream_response(answer, "confirmed");
                response.extensions_mut().insert(Outcome("confirmed"));
                Ok(response)
            }
            other => {
                if let Err(e) = state.store.release(&upload, lease).await {
                    tracing::error!(error = %e, s3object_id = %upload.s3object_id, "could not release the claim; it lapses with its lease");
                }
                let reason = match &other {
                    Ok(_) => "upstream_rejected_input",
                    Err(error) => error.code(),
                };
                audit::rejected(
                    &state.metrics,
                    &upload.user,
                    &upload.s3object_id,
                    reason,
                    &request_id.0,
                );
                other.map(|answer| upstream_response(answer, "upstream_rejected_input"))
            }
        }
    });
    task.await.map_err(|_| GatewayError::Internal)?
}

async fn read_limited(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| GatewayError::PayloadTooLarge { limit })
}

/// The stored object's `size_bytes`, counted toward the daily byte quota (0 when absent).
fn reported_size(body: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct S3Object {
        size_bytes: Option<u64>,
    }
    serde_json::from_slice::<S3Object>(body)
        .ok()
        .and_then(|o| o.size_bytes)
        .unwrap_or(0)
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    let headers = response.headers_mut();
    if let Some(content_type) = stored
        .content_type
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.extensions_mut().insert(Outcome("replayed"));
    response
}
