//! The one error type of the gateway and its one `IntoResponse`: an RFC 9457
//! `application/problem+json` body with a stable `code`, a human `detail` and, where the
//! input was at fault, one entry per invalid field.

use std::time::Duration;

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::{
    auth::AuthFailure,
    observability::Outcome,
    quota::{QuotaExceeded, QuotaKind},
    rate_limit::RateLimitHeaders,
};

/// One invalid input field.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub code: &'static str,
    pub detail: String,
}

impl FieldError {
    pub fn new(field: &str, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            code,
            detail: detail.into(),
        }
    }
}

/// Why an upstream call failed, in linkerd's fixed vocabulary: 502 for a bad or refused answer,
/// 504 for no answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Unreachable,
    Timeout,
    /// Not JSON, missing fields, too large, a redirect, or a leaked secret.
    BadResponse,
    /// Upstream 5xx.
    ServerError,
    /// Upstream 401/403: the gateway's own credentials are wrong.
    CredentialsRejected,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("authentication failed")]
    Unauthorized(AuthFailure),
    #[error("not found")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("malformed request: {detail}")]
    MalformedRequest {
        code: &'static str,
        detail: &'static str,
    },
    #[error("invalid input")]
    InvalidInput(Vec<FieldError>),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("payload too large")]
    PayloadTooLarge { limit: usize },
    /// A per-user budget is spent; `what` names the requests it counts ("presign requests",
    /// "confirmations").
    #[error("rate limited")]
    RateLimited {
        what: &'static str,
        budget: RateLimitHeaders,
    },
    #[error("confirmation attempts exhausted")]
    AttemptsExhausted { retry_after: Duration },
    #[error("too many outstanding uploads")]
    QuotaExceeded(QuotaExceeded),
    #[error("upload not found")]
    UploadNotFound,
    #[error("key mismatch")]
    KeyMismatch,
    #[error("upload expired")]
    UploadExpired,
    #[error("confirmation in progress")]
    ConfirmationInProgress,
    #[error("already confirmed")]
    AlreadyConfirmed,
    #[error("store full")]
    StoreFull,
    #[error("store unavailable")]
    StoreUnavailable,
    #[error("overloaded")]
    Overloaded,
    #[error("request timed out")]
    RequestTimeout,
    #[error("upstream failure: {0:?}")]
    Upstream(UpstreamFailure),
    #[error("internal error")]
    Internal,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    code: &'a str,
    detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quota: Option<QuotaProblem>,
}

/// The quota a refused presign would exceed (a problem extension member).
#[derive(Serialize)]
struct QuotaProblem {
    name: &'static str,
    tier: String,
    limit: u64,
    /// RFC 3339; absent for the outstanding-uploads cap, which frees up as uploads settle.
    #[serde(skip_serializing_if = "Option::is_none")]
    resets_at: Option<String>,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RouteNotFound | UploadNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            MalformedRequest { .. } | InvalidInput(_) => StatusCode::BAD_REQUEST,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RateLimited { .. } | AttemptsExhausted { .. } | QuotaExceeded(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            KeyMismatch => StatusCode::FORBIDDEN,
            UploadExpired => StatusCode::GONE,
            ConfirmationInProgress | AlreadyConfirmed => StatusCode::CONFLICT,
            StoreFull | StoreUnavailable | Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            RequestTimeout | Upstream(UpstreamFailure::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Upstream(_) => StatusCode::BAD_GATEWAY,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code. Clients may match on it; it never changes meaning.
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            Unauthorized(failure) => failure.code(),
            RouteNotFound => "route_not_found",
            MethodNotAllowed { .. } => "method_not_allowed",
            MalformedRequest { code, .. } => code,
            InvalidInput(_) => "invalid_input",
            UnsupportedMediaType => "unsupported_media_type",
            PayloadTooLarge { .. } => "payload_too_large",
            RateLimited { .. } => "rate_limited",
            AttemptsExhausted { .. } => "confirmation_attempts_exhausted",
            QuotaExceeded(q) => match q.kind {
                QuotaKind::Outstanding => "too_many_outstanding_uploads",
                QuotaKind::UploadsPerDay => "daily_upload_quota_exceeded",
                QuotaKind::BytesPerDay => "daily_byte_quota_exceeded",
            },
            UploadNotFound => "upload_not_found",
            KeyMismatch => "key_mismatch",
            UploadExpired => "upload_expired",
            ConfirmationInProgress => "confirmation_in_progress",
            AlreadyConfirmed => "already_confirmed",
            StoreFull => "store_full",
            StoreUnavailable => "store_unavailable",
            Overloaded => "overloaded",
            RequestTimeout => "request_timeout",
            Upstream(UpstreamFailure::Unreachable) => "upstream_unreachable",
            Upstream(UpstreamFailure::Timeout) => "upstream_timeout",
            Upstream(UpstreamFailure::BadResponse) => "upstream_bad_response",
            Upstream(UpstreamFailure::ServerError) => "upstream_error",
            Upstream(UpstreamFailure::CredentialsRejected) => "upstream_unavailable",
            Internal => "internal_error",
        }
    }

    fn detail(&self) -> String {
        use GatewayError::*;
        match self {
            Unauthorized(failure) => failure.detail().to_owned(),
            RouteNotFound => {
                "this gateway serves only GET /api/s3/presigned-post and POST /api/s3/success"
                    .into()
            }
            MethodNotAllowed { allow } => format!("this route accepts only {allow}"),
            MalformedRequest { detail, .. } => (*detail).to_owned(),
            InvalidInput(errors) => {
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                format!("invalid input in: {}", fields.join(", "))
            }
            UnsupportedMediaType => "the body must be application/x-www-form-urlencoded".into(),
            PayloadTooLarge { limit } => format!("the body is larger than {limit} bytes"),
            RateLimited { what, budget } => format!(
                "too many {what}; retry in {} s",
                budget.retry_after.map(|d| d.as_secs().max(1)).unwrap_or(1)
            ),
            AttemptsExhausted { retry_after } => format!(
                "this upload failed to confirm too many times; retry in {} s",
                whole_seconds_ceil(*retry_after).max(1)
            ),
            QuotaExceeded(q) => match q.kind {
                QuotaKind::Outstanding => format!(
                    "you have {} uploads that are issued but not confirmed; confirm or let them expire first",
                    q.limit
                ),
                QuotaKind::UploadsPerDay => {
                    format!("your tier allows {} confirmed uploads per day", q.limit)
                }
                QuotaKind::BytesPerDay => {
                    format!("your tier allows {} confirmed bytes per day", q.limit)
                }
            },
            UploadNotFound => "no upload with this uuid was issued to you".into(),
            KeyMismatch => "key is not the key issued for this upload".into(),
            UploadExpired => {
                "the confirmation window of this upload has closed; presign again".into()
            }
            ConfirmationInProgress => {
                "a confirmation of this upload is in progress; retry shortly".into()
            }
            AlreadyConfirmed => "this upload was already confirmed".into(),
            StoreFull => "the gateway holds as many uploads as it may; retry later".into(),
            StoreUnavailable => "the upload store is unavailable; retry later".into(),
            Overloaded => "the gateway is at its concurrency limit; retry shortly".into(),
            RequestTimeout => "the request did not complete in time".into(),
            Upstream(UpstreamFailure::Unreachable) => {
                "the upload service could not be reached".into()
            }
            Upstream(UpstreamFailure::Timeout) => {
                "the upload service did not answer in time".into()
            }
            Upstream(UpstreamFailure::BadResponse) => {
                "the upload service gave an unusable answer".into()
            }
            Upstream(UpstreamFailure::ServerError) => "the upload service failed".into(),
            // Neutral on purpose: the client must not learn that the gateway's credentials failed.
            Upstream(UpstreamFailure::CredentialsRejected) => {
                "the upload service is unavailable".into()
            }
            Internal => "internal error".into(),
        }
    }

    fn extra_headers(&self, headers: &mut HeaderMap) {
        match self {
            GatewayError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            GatewayError::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            GatewayError::RateLimited { budget, .. } => budget.write(headers),
            GatewayError::AttemptsExhausted { retry_after } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(whole_seconds_ceil(*retry_after).max(1)),
                );
            }
            GatewayError::QuotaExceeded(QuotaExceeded {
                resets_at: Some(at),
                ..
            }) => {
                let wait = (*at - time::OffsetDateTime::now_utc()).max(time::Duration::SECOND);
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.whole_seconds().max(1) as u64),
                );
            }
            GatewayError::ConfirmationInProgress | GatewayError::Overloaded => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::StoreFull | GatewayError::StoreUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
    }

    /// The problem body alone, for callers that build a response by hand.
    pub fn to_json(&self) -> Vec<u8> {
        let status = self.status();
        let code = self.code();
        let problem = Problem {
            kind: format!("urn:kizen-gateway:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            code,
            detail: self.detail(),
            errors: match self {
                GatewayError::InvalidInput(errors) => errors.clone(),
                _ => Vec::new(),
            },
            quota: match self {
                GatewayError::QuotaExceeded(q) => Some(QuotaProblem {
                    name: q.kind.name(),
                    tier: q.tier.clone(),
                    limit: q.limit,
                    resets_at: q.resets_at.and_then(|at| {
                        at.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    }),
                }),
                _ => None,
            },
        };
        serde_json::to_vec(&problem).unwrap_or_default()
    }
}

pub static PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), self.to_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, PROBLEM_JSON.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.extra_headers(headers);
        response.extensions_mut().insert(Outcome(self.code()));
        response
    }
}

/// Seconds for `Retry-After` and `RateLimit-Reset`: rounded up, never 0 while waiting.
pub fn whole_seconds_ceil(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

impl From<crate::store::StoreError> for GatewayError {
    fn from(error: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match error {
            StoreError::UserCapReached { limit } => GatewayError::QuotaExceeded(QuotaExceeded {
                kind: QuotaKind::Outstanding,
                tier: String::new(),
                limit: limit as u64,
                resets_at: None,
            }),
            StoreError::Full => GatewayError::StoreFull,
            StoreError::Unavailable => GatewayError::StoreUnavailable,
            // Never overwrite what another user holds; the upstream's answer is unusable.
            StoreError::Duplicate => {
                tracing::error!("upstream issued an s3object_id that is already recorded");
                GatewayError::Upstream(UpstreamFailure::BadResponse)
            }
        }
    }
}
