//! Every service error mapped to one HTTP problem: an RFC 9457 `application/problem+json` body
//! with a stable `code`, a human `detail` and, where the input was at fault, one entry per invalid
//! field. [`ErrorCode`] is the table of every problem the gateway answers with; the OpenAPI
//! document and its test are checked against it.

use std::time::Duration;

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::{
    auth::AuthFailure,
    domain::QuotaKind,
    observability::access::Outcome,
    quota::QuotaExceeded,
    rate_limit::{RateLimitHeaders, whole_seconds_ceil},
    store::StoreError,
    upstream::UpstreamFailure,
    validate::FieldError,
};

/// What `Retry-After` an answer with a given code carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// None: retrying the same request does not help.
    Never,
    /// Always this many seconds.
    Fixed(u64),
    /// Computed from the state that refused the request (a budget, a quota, a backoff).
    Computed,
}

macro_rules! error_codes {
    ($($variant:ident => ($code:literal, $status:ident, $retry:expr),)+) => {
        /// Every problem the gateway answers with: its stable `code` (clients may match on it; it
        /// never changes meaning), its status, its title and its `Retry-After`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($variant,)+
        }

        impl ErrorCode {
            /// Every code, in the order of the table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)+
                }
            }

            pub fn status(self) -> StatusCode {
                match self {
                    $(Self::$variant => StatusCode::$status,)+
                }
            }

            pub fn retry_after(self) -> RetryAfter {
                use RetryAfter::*;
                match self {
                    $(Self::$variant => $retry,)+
                }
            }
        }
    };
}

error_codes! {
    TokenMissing => ("token_missing", UNAUTHORIZED, Never),
    TokenMalformed => ("token_malformed", UNAUTHORIZED, Never),
    TokenUnsupported => ("token_unsupported", UNAUTHORIZED, Never),
    TokenUnknownKey => ("token_unknown_key", UNAUTHORIZED, Never),
    TokenBadSignature => ("token_bad_signature", UNAUTHORIZED, Never),
    TokenExpired => ("token_expired", UNAUTHORIZED, Never),
    TokenNotYetValid => ("token_not_yet_valid", UNAUTHORIZED, Never),
    TokenWrongIssuer => ("token_wrong_issuer", UNAUTHORIZED, Never),
    TokenWrongAudience => ("token_wrong_audience", UNAUTHORIZED, Never),
    TokenMissingClaim => ("token_missing_claim", UNAUTHORIZED, Never),
    RouteNotFound => ("route_not_found", NOT_FOUND, Never),
    MethodNotAllowed => ("method_not_allowed", METHOD_NOT_ALLOWED, Never),
    AbsoluteFormTarget => ("absolute_form_target", BAD_REQUEST, Never),
    BadHostHeader => ("bad_host_header", BAD_REQUEST, Never),
    TransferEncodingNotAccepted => ("transfer_encoding_not_accepted", BAD_REQUEST, Never),
    InvalidInput => ("invalid_input", BAD_REQUEST, Never),
    UnsupportedMediaType => ("unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, Never),
    PayloadTooLarge => ("payload_too_large", PAYLOAD_TOO_LARGE, Never),
    RateLimited => ("rate_limited", TOO_MANY_REQUESTS, Computed),
    ConfirmationAttemptsExhausted => ("confirmation_attempts_exhausted", TOO_MANY_REQUESTS, Computed),
    TooManyOutstandingUploads => ("too_many_outstanding_uploads", TOO_MANY_REQUESTS, Never),
    DailyUploadQuotaExceeded => ("daily_upload_quota_exceeded", TOO_MANY_REQUESTS, Computed),
    DailyByteQuotaExceeded => ("daily_byte_quota_exceeded", TOO_MANY_REQUESTS, Computed),
    UploadNotFound => ("upload_not_found", NOT_FOUND, Never),
    KeyMismatch => ("key_mismatch", FORBIDDEN, Never),
    UploadExpired => ("upload_expired", GONE, Never),
    ConfirmationInProgress => ("confirmation_in_progress", CONFLICT, Fixed(1)),
    AlreadyConfirmed => ("already_confirmed", CONFLICT, Never),
    StoreFull => ("store_full", SERVICE_UNAVAILABLE, Fixed(5)),
    StoreUnavailable => ("store_unavailable", SERVICE_UNAVAILABLE, Fixed(5)),
    Overloaded => ("overloaded", SERVICE_UNAVAILABLE, Fixed(1)),
    RequestTimeout => ("request_timeout", GATEWAY_TIMEOUT, Never),
    UpstreamUnreachable => ("upstream_unreachable", BAD_GATEWAY, Never),
    UpstreamTimeout => ("upstream_timeout", GATEWAY_TIMEOUT, Never),
    UpstreamBadResponse => ("upstream_bad_response", BAD_GATEWAY, Never),
    UpstreamError => ("upstream_error", BAD_GATEWAY, Never),
    UpstreamUnavailable => ("upstream_unavailable", BAD_GATEWAY, Never),
    InternalError => ("internal_error", INTERNAL_SERVER_ERROR, Never),
}

impl ErrorCode {
    /// The problem's `title`: the status's reason phrase.
    pub fn title(self) -> &'static str {
        self.status().canonical_reason().unwrap_or("Error")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("authentication failed")]
    Unauthorized(AuthFailure),
    #[error("not found")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("the request target is not a path")]
    AbsoluteFormTarget,
    #[error("not exactly one Host header")]
    BadHostHeader,
    #[error("Transfer-Encoding sent")]
    TransferEncodingNotAccepted,
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
    /// A bug or an impossible state; the cause is logged, never shown.
    #[error("internal error: {0}")]
    Internal(&'static str),
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
    /// The row of the table this error answers with.
    pub fn code(&self) -> ErrorCode {
        use GatewayError::*;
        match self {
            Unauthorized(failure) => match failure {
                AuthFailure::Missing => ErrorCode::TokenMissing,
                AuthFailure::Malformed => ErrorCode::TokenMalformed,
                AuthFailure::Unsupported => ErrorCode::TokenUnsupported,
                AuthFailure::UnknownKey => ErrorCode::TokenUnknownKey,
                AuthFailure::BadSignature => ErrorCode::TokenBadSignature,
                AuthFailure::Expired => ErrorCode::TokenExpired,
                AuthFailure::NotYetValid => ErrorCode::TokenNotYetValid,
                AuthFailure::WrongIssuer => ErrorCode::TokenWrongIssuer,
                AuthFailure::WrongAudience => ErrorCode::TokenWrongAudience,
                AuthFailure::MissingClaim => ErrorCode::TokenMissingClaim,
            },
            RouteNotFound => ErrorCode::RouteNotFound,
            MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            AbsoluteFormTarget => ErrorCode::AbsoluteFormTarget,
            BadHostHeader => ErrorCode::BadHostHeader,
            TransferEncodingNotAccepted => ErrorCode::TransferEncodingNotAccepted,
            InvalidInput(_) => ErrorCode::InvalidInput,
            UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            RateLimited { .. } => ErrorCode::RateLimited,
            AttemptsExhausted { .. } => ErrorCode::ConfirmationAttemptsExhausted,
            QuotaExceeded(q) => match q.kind {
                QuotaKind::Outstanding => ErrorCode::TooManyOutstandingUploads,
                QuotaKind::UploadsPerDay => ErrorCode::DailyUploadQuotaExceeded,
                QuotaKind::BytesPerDay => ErrorCode::DailyByteQuotaExceeded,
            },
            UploadNotFound => ErrorCode::UploadNotFound,
            KeyMismatch => ErrorCode::KeyMismatch,
            UploadExpired => ErrorCode::UploadExpired,
            ConfirmationInProgress => ErrorCode::ConfirmationInProgress,
            AlreadyConfirmed => ErrorCode::AlreadyConfirmed,
            StoreFull => ErrorCode::StoreFull,
            StoreUnavailable => ErrorCode::StoreUnavailable,
            Overloaded => ErrorCode::Overloaded,
            RequestTimeout => ErrorCode::RequestTimeout,
            Upstream(failure) => match failure {
                UpstreamFailure::Unreachable => ErrorCode::UpstreamUnreachable,
                UpstreamFailure::Timeout => ErrorCode::UpstreamTimeout,
                UpstreamFailure::BadResponse => ErrorCode::UpstreamBadResponse,
                UpstreamFailure::ServerError => ErrorCode::UpstreamError,
                UpstreamFailure::CredentialsRejected => ErrorCode::UpstreamUnavailable,
                UpstreamFailure::RequestNotBuilt => ErrorCode::InternalError,
            },
            Internal(_) => ErrorCode::InternalError,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code().status()
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
            AbsoluteFormTarget => {
                "the request target must be a path (origin-form), not a URL".into()
            }
            BadHostHeader => "an HTTP/1.1 request carries exactly one Host header".into(),
            TransferEncodingNotAccepted => {
                "send the body with Content-Length; Transfer-Encoding is not accepted".into()
            }
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
            Upstream(UpstreamFailure::RequestNotBuilt) => "internal error".into(),
            // Neutral on purpose: the client must not learn that the gateway's credentials failed.
            Upstream(UpstreamFailure::CredentialsRejected) => {
                "the upload service is unavailable".into()
            }
            Internal(_) => "internal error".into(),
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
            _ => {
                if let RetryAfter::Fixed(seconds) = self.code().retry_after() {
                    headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                }
            }
        }
    }

    /// The problem body alone, for callers that build a response by hand.
    pub fn to_json(&self) -> Vec<u8> {
        let code = self.code();
        let problem = Problem {
            kind: format!("urn:kizen-gateway:problem:{}", code.as_str()),
            title: code.title(),
            status: code.status().as_u16(),
            code: code.as_str(),
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
        if self.status().is_server_error() {
            // The client hears the code only; the operator reads the cause.
            tracing::warn!(code = self.code().as_str(), cause = %self, "request failed");
        }
        let mut response = (self.status(), self.to_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, PROBLEM_JSON.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.extra_headers(headers);
        response
            .extensions_mut()
            .insert(Outcome(self.code().as_str()));
        response
    }
}

impl From<AuthFailure> for GatewayError {
    fn from(failure: AuthFailure) -> Self {
        GatewayError::Unauthorized(failure)
    }
}

impl From<Vec<FieldError>> for GatewayError {
    fn from(errors: Vec<FieldError>) -> Self {
        GatewayError::InvalidInput(errors)
    }
}

impl From<UpstreamFailure> for GatewayError {
    fn from(failure: UpstreamFailure) -> Self {
        GatewayError::Upstream(failure)
    }
}

impl From<QuotaExceeded> for GatewayError {
    fn from(exceeded: QuotaExceeded) -> Self {
        GatewayError::QuotaExceeded(exceeded)
    }
}

impl From<StoreError> for GatewayError {
    fn from(error: StoreError) -> Self {
        match error {
            // Only a presign's record reaches a user's cap, and its handler answers it with the
            // tier's quota; here it can only be a bug.
            StoreError::UserCapReached { .. } => GatewayError::Internal("unmapped user cap"),
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
