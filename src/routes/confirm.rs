//! `POST /api/s3/success`, in this order: authenticate, validate the form, then in one store step
//! spend the user's confirmation budget and claim the upload (owner, key, window, attempt backoff,
//! daily quotas), forward, then settle the claim: consume it (upstream 2xx) or release it
//! (anything else) so that the user can retry; audit. The settle is retried in the background if
//! the store fails (see [`crate::settle`]); until it lands the upload is never forwarded again.

use std::sync::Arc;

use axum::{
    Extension,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::time::Instant;

use super::{extract::ConfirmForm, upstream_response};
use crate::{
    auth::AuthenticatedUser,
    domain::IssuedUpload,
    error::GatewayError,
    observability::{
        access::{Outcome, RequestId},
        audit::{self, AuditEvent},
    },
    quota,
    settle::Settlement,
    state::AppState,
    store::{Claim, ClaimOutcome, ClaimRules, StoredResponse},
};

/// Marks an answer replayed from a confirmation that already succeeded.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The `POST /api/s3/success` handler: claims, forwards and settles one confirmation (see the
/// module docs), or replays the answer of one that already succeeded.
pub async fn confirm(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    user: AuthenticatedUser,
    headers: HeaderMap,
    ConfirmForm(input): ConfirmForm,
) -> Result<Response, GatewayError> {
    // The confirmation budget, then the claim, in one step of the store.
    let now = state.clock.now();
    let (_, tier) = state.config.quotas.tier(user.tier.as_deref());
    let confirm = &state.config.confirm;
    let rules = ClaimRules {
        rate: state.confirm_rate,
        max_attempts: confirm.max_attempts,
        attempt_backoff: confirm.attempt_backoff,
        max_uploads_per_day: tier.max_uploads_per_day,
        max_bytes_per_day: tier.max_bytes_per_day,
    };
    let Claim { outcome, budget } = state
        .store
        .claim(&user.id, input.uuid, &input.key, now, &rules)
        .await?;
    let claimed_at = Instant::now();
    let (lease, upload) = match outcome {
        ClaimOutcome::Claimed { lease, upload } => (lease, upload),
        ClaimOutcome::AlreadyConfirmed(Some(stored)) => {
            let mut response = replay(stored);
            budget.write(response.headers_mut());
            return Ok(response);
        }
        ClaimOutcome::RateLimited => {
            return Err(GatewayError::RateLimited {
                what: "confirmations",
                budget,
            });
        }
        refused => {
            let error = match refused {
                ClaimOutcome::NotFound => GatewayError::UploadNotFound,
                ClaimOutcome::KeyMismatch => GatewayError::KeyMismatch,
                ClaimOutcome::Expired => GatewayError::UploadExpired,
                ClaimOutcome::InFlight => GatewayError::ConfirmationInProgress,
                ClaimOutcome::BackingOff { until } => GatewayError::AttemptsExhausted {
                    retry_after: (until - now).try_into().unwrap_or_default(),
                },
                ClaimOutcome::DailyQuotaReached(kind) => {
                    let quotas = &state.config.quotas;
                    quota::exceeded(quotas, user.tier.as_deref(), kind, now).into()
                }
                _ => GatewayError::AlreadyConfirmed,
            };
            let reason = error.code().as_str();
            let audited =
                audit::rejected(&state.metrics, &user.id, input.uuid, reason, &request_id.0);
            return Ok(with_audit(error.into_response(), audited));
        }
    };

    let is_public = input.is_public
        && confirm
            .public_sources
            .iter()
            .any(|source| source.as_str() == upload.source);

    // The forward and the settle run in a task of their own: a client that hangs up must not
    // cancel them halfway and leave the claim unsettled.
    let task = tokio::spawn(async move {
        let forwarded = state
            .upstream
            .confirm(&input, &upload, is_public, &user, &headers, &request_id.0)
            .await;
        // Record the outcome (retried in the background if the store fails now): a 2xx consumes
        // the upload, anything else gives it back for a retry.
        let settlement = match &forwarded {
            Ok(answer) if answer.status.is_success() => Settlement::Confirmed {
                response: StoredResponse {
                    status: answer.status.as_u16(),
                    content_type: answer.content_type().map(str::to_owned),
                    body: answer.body.clone(),
                },
                size_bytes: reported_size(&answer.body),
                at: state.clock.now(),
            },
            _ => Settlement::Failed {
                at: state.clock.now(),
                rules,
            },
        };
        state
            .settler
            .settle(&upload, lease, settlement, claimed_at)
            .await;

        // Upstream accepted it: the client hears so whether or not the store took the outcome at
        // once; a repeat meanwhile gets 409, never a second forward.
        let (response, audited) = match forwarded {
            Ok(answer) if answer.status.is_success() => {
                let audited = audit::confirmed(&state.metrics, &upload, &request_id.0);
                let mut response = upstream_response(answer, "confirmed");
                budget.write(response.headers_mut());
                (response, audited)
            }
            Ok(answer) => {
                let reason = "upstream_rejected_input";
                let audited = rejected_upstream(&state, &upload, reason, &request_id.0);
                let mut response = upstream_response(answer, reason);
                budget.write(response.headers_mut());
                (response, audited)
            }
            Err(failure) => {
                let error = GatewayError::from(failure);
                let reason = error.code().as_str();
                let audited = rejected_upstream(&state, &upload, reason, &request_id.0);
                (error.into_response(), audited)
            }
        };
        Ok(with_audit(response, audited))
    });
    task.await
        .map_err(|_| GatewayError::Internal("the confirmation task panicked"))?
}

/// A confirmation Kizen refused or never answered.
fn rejected_upstream(
    state: &AppState,
    upload: &IssuedUpload,
    reason: &'static str,
    request_id: &Arc<str>,
) -> AuditEvent {
    audit::rejected(
        &state.metrics,
        &upload.user,
        upload.s3object_id,
        reason,
        request_id,
    )
}

/// `response`, carrying the audit step to the request's log line.
fn with_audit(mut response: Response, audited: AuditEvent) -> Response {
    response.extensions_mut().insert(audited);
    response
}

/// The stored object's `size_bytes`, counted toward the daily byte quota (0 when absent; the
/// store caps it).
pub(crate) fn reported_size(body: &[u8]) -> u64 {
    // An object's `size_bytes` only: a derived struct would also be read from a JSON array, so
    // that `[12345]` counted 12345 bytes against the daily quota (found by the fuzzer).
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
        .ok()
        .and_then(|object| object.get("size_bytes")?.as_u64())
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

#[cfg(test)]
mod tests {
    use super::reported_size;

    #[test]
    fn the_size_is_read_from_an_object_only() {
        assert_eq!(reported_size(br#"{"id":"x","size_bytes":1234}"#), 1234);
        assert_eq!(reported_size(b"[1234]"), 0);
        assert_eq!(reported_size(br#"[null, 1234]"#), 0);
        assert_eq!(reported_size(br#"{"size_bytes":-1}"#), 0);
        assert_eq!(reported_size(b"not json"), 0);
    }
}
