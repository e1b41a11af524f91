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
    ($($(#[$doc:meta])* $variant:ident => ($code:literal, $status:ident, $retry:expr),)+) => {
        /// Every problem the gateway answers with: its stable `code` (clients may match on it; it
        /// never changes meaning), its status, its title and its `Retry-After`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)+
        }

        impl ErrorCode {
            /// Every code, in the order of the table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The stable `code` clients match on, e.g. `token_expired`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)+
                }
            }

            /// The HTTP status answered with this code.
            pub fn status(self) -> StatusCode {
                match self {
                    $(Self::$variant => StatusCode::$status,)+
                }
            }

            /// Which `Retry-After` the answer carries.
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
    /// No `Authorization` header, or one with another scheme than Bearer.
    TokenMissing => ("token_missing", UNAUTHORIZED, Never),
    /// Not one well-formed JWT: wrong shape, undecodable, too long, or two `Authorization` headers.
    TokenMalformed => ("token_malformed", UNAUTHORIZED, Never),
    /// An algorithm, `typ` or `crit` header this gateway does not accept (`none` included).
    TokenUnsupported => ("token_unsupported", UNAUTHORIZED, Never),
    /// No configured key serves the token's `kid` and `alg`, even after a JWKS refetch.
    TokenUnknownKey => ("token_unknown_key", UNAUTHORIZED, Never),
    /// No candidate key verifies the signature.
    TokenBadSignature => ("token_bad_signature", UNAUTHORIZED, Never),
    /// `exp` has passed (beyond `auth.leeway`).
    TokenExpired => ("token_expired", UNAUTHORIZED, Never),
    /// `nbf` or `iat` lies in the future (beyond `auth.leeway`).
    TokenNotYetValid => ("token_not_yet_valid", UNAUTHORIZED, Never),
    /// `iss` missing or not one the verifying key accepts.
    TokenWrongIssuer => ("token_wrong_issuer", UNAUTHORIZED, Never),
    /// `aud` missing or naming none of `auth.audiences`.
    TokenWrongAudience => ("token_wrong_audience", UNAUTHORIZED, Never),
    /// `exp`, the identity claim or the X-USER-ID claim is missing or unusable.
    TokenMissingClaim => ("token_missing_claim", UNAUTHORIZED, Never),
    /// A path other than the two the gateway serves.
    RouteNotFound => ("route_not_found", NOT_FOUND, Never),
    /// A served path with the wrong method (`Allow` names the right one).
    MethodNotAllowed => ("method_not_allowed", METHOD_NOT_ALLOWED, Never),
    /// A request target that is a URL rather than a path.
    AbsoluteFormTarget => ("absolute_form_target", BAD_REQUEST, Never),
    /// The asterisk-form target (`OPTIONS *`): the gateway has no server-wide options to tell.
    AsteriskFormTarget => ("asterisk_form_target", BAD_REQUEST, Never),
    /// Not exactly one `Host` header (none is allowed for HTTP/1.0 only).
    BadHostHeader => ("bad_host_header", BAD_REQUEST, Never),
    /// A `Transfer-Encoding` other than `chunked` on a confirmation, or any on a presign.
    TransferEncodingNotAccepted => ("transfer_encoding_not_accepted", BAD_REQUEST, Never),
    /// Invalid query or form fields, each listed in the problem's `errors`.
    InvalidInput => ("invalid_input", BAD_REQUEST, Never),
    /// A confirmation body that is not `application/x-www-form-urlencoded`.
    UnsupportedMediaType => ("unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, Never),
    /// A confirmation body over `confirm.max_body_bytes`.
    PayloadTooLarge => ("payload_too_large", PAYLOAD_TOO_LARGE, Never),
    /// A request target longer than the gateway reads (see `http_guard::MAX_TARGET_BYTES`).
    UriTooLong => ("uri_too_long", URI_TOO_LONG, Never),
    /// A request head over `server.max_header_bytes`, or more than `server.max_headers` lines.
    HeadersTooLarge => ("headers_too_large", REQUEST_HEADER_FIELDS_TOO_LARGE, Never),
    /// The user's presign or confirmation budget is spent.
    RateLimited => ("rate_limited", TOO_MANY_REQUESTS, Computed),
    /// The upload failed to confirm `confirm.max_attempts` times and is backing off.
    ConfirmationAttemptsExhausted => ("confirmation_attempts_exhausted", TOO_MANY_REQUESTS, Computed),
    /// The user holds the tier's `max_outstanding` issued, unconfirmed uploads.
    TooManyOutstandingUploads => ("too_many_outstanding_uploads", TOO_MANY_REQUESTS, Never),
    /// The tier's confirmed uploads for this UTC day are used up.
    DailyUploadQuotaExceeded => ("daily_upload_quota_exceeded", TOO_MANY_REQUESTS, Computed),
    /// The tier's confirmed bytes for this UTC day are used up.
    DailyByteQuotaExceeded => ("daily_byte_quota_exceeded", TOO_MANY_REQUESTS, Computed),
    /// No upload with this uuid was issued to this user (or it was forgotten).
    UploadNotFound => ("upload_not_found", NOT_FOUND, Never),
    /// The confirmation's `key` is not the one issued for this upload.
    KeyMismatch => ("key_mismatch", FORBIDDEN, Never),
    /// The upload's confirmation window has closed; presign again.
    UploadExpired => ("upload_expired", GONE, Never),
    /// Another confirmation of this upload is in flight.
    ConfirmationInProgress => ("confirmation_in_progress", CONFLICT, Fixed(1)),
    /// The upload was confirmed before and this repeat cannot be replayed.
    AlreadyConfirmed => ("already_confirmed", CONFLICT, Never),
    /// The memory store holds as many uploads as it may.
    StoreFull => ("store_full", SERVICE_UNAVAILABLE, Fixed(5)),
    /// The store did not answer in time, or failed.
    StoreUnavailable => ("store_unavailable", SERVICE_UNAVAILABLE, Fixed(5)),
    /// At `server.max_concurrent_requests`: load is shed rather than queued.
    Overloaded => ("overloaded", SERVICE_UNAVAILABLE, Fixed(1)),
    /// The whole request outlasted `server.request_timeout`.
    RequestTimeout => ("request_timeout", GATEWAY_TIMEOUT, Never),
    /// Kizen could not be reached.
    UpstreamUnreachable => ("upstream_unreachable", BAD_GATEWAY, Never),
    /// Kizen did not answer within `upstream.request_timeout`.
    UpstreamTimeout => ("upstream_timeout", GATEWAY_TIMEOUT, Never),
    /// Kizen's answer is unusable: bad JSON, too large, a redirect, or one that echoes the API key.
    UpstreamBadResponse => ("upstream_bad_response", BAD_GATEWAY, Never),
    /// Kizen answered with a 5xx.
    UpstreamError => ("upstream_error", BAD_GATEWAY, Never),
    /// Kizen refused the gateway's own credentials (401/403); told neutrally to the client.
    UpstreamUnavailable => ("upstream_unavailable", BAD_GATEWAY, Never),
    /// A bug or an impossible state inside the gateway.
    InternalError => ("internal_error", INTERNAL_SERVER_ERROR, Never),
}

impl ErrorCode {
    /// The problem's `title`: the status's reason phrase.
    pub fn title(self) -> &'static str {
        self.status().canonical_reason().unwrap_or("Error")
    }
}

/// Why a request failed, as the client is told: each variant answers with one [`ErrorCode`] row
/// (see [`GatewayError::code`]) as an `application/problem+json` body.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The bearer token was missing or refused (`token_*`, 401 with `WWW-Authenticate`).
    #[error("authentication failed")]
    Unauthorized(AuthFailure),
    /// The path is neither of the two the gateway serves.
    #[error("not found")]
    RouteNotFound,
    /// A served path with the wrong method.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The one method the route accepts, sent back in `Allow`.
        allow: &'static str,
    },
    /// The request target is a URL, not a path.
    #[error("the request target is not a path")]
    AbsoluteFormTarget,
    /// The request target is `*`.
    #[error("the request target is *")]
    AsteriskFormTarget,
    /// The request target is longer than `limit` bytes.
    #[error("request target too long")]
    UriTooLong {
        /// The longest target read, named in the `detail`.
        limit: usize,
    },
    /// The request head is over a limit; `what` names it for the `detail`.
    #[error("request head too large")]
    HeadersTooLarge {
        /// Which limit, e.g. "server.max_header_bytes (16384 bytes)".
        what: String,
    },
    /// Not exactly one `Host` header.
    #[error("not exactly one Host header")]
    BadHostHeader,
    /// The request carries a `Transfer-Encoding` the route does not take.
    #[error("Transfer-Encoding sent")]
    TransferEncodingNotAccepted,
    /// The query or form failed validation; every invalid field is listed.
    #[error("invalid input")]
    InvalidInput(Vec<FieldError>),
    /// The confirmation body is not `application/x-www-form-urlencoded`.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// The confirmation body is larger than allowed.
    #[error("payload too large")]
    PayloadTooLarge {
        /// `confirm.max_body_bytes`, named in the `detail`.
        limit: usize,
    },
    /// A per-user budget is spent; `what` names the requests it counts ("presign requests",
    /// "confirmations").
    #[error("rate limited")]
    RateLimited {
        /// The requests the spent budget counts, for the `detail`.
        what: &'static str,
        /// The budget's state, sent as `RateLimit-*` and `Retry-After`.
        budget: RateLimitHeaders,
    },
    /// The upload failed to confirm too many times and backs off.
    #[error("confirmation attempts exhausted")]
    AttemptsExhausted {
        /// Time left until the upload takes attempts again (`Retry-After`, rounded up).
        retry_after: Duration,
    },
    /// A presign or confirmation would exceed a quota of the user's tier.
    #[error("too many outstanding uploads")]
    QuotaExceeded(QuotaExceeded),
    /// The uuid names no upload issued to this user (or one already forgotten).
    #[error("upload not found")]
    UploadNotFound,
    /// The confirmation's `key` is not the one issued for the upload.
    #[error("key mismatch")]
    KeyMismatch,
    /// The upload's confirmation window has closed.
    #[error("upload expired")]
    UploadExpired,
    /// Another confirmation of the upload is in flight.
    #[error("confirmation in progress")]
    ConfirmationInProgress,
    /// The upload was already confirmed and the repeat cannot be replayed.
    #[error("already confirmed")]
    AlreadyConfirmed,
    /// The memory store is full of uploads it may not evict.
    #[error("store full")]
    StoreFull,
    /// The store failed or did not answer in time; nothing was forwarded.
    #[error("store unavailable")]
    StoreUnavailable,
    /// Load shed at `server.max_concurrent_requests`.
    #[error("overloaded")]
    Overloaded,
    /// The request outlasted `server.request_timeout`.
    #[error("request timed out")]
    RequestTimeout,
    /// The Kizen call failed; the variant says how.
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
            AsteriskFormTarget => ErrorCode::AsteriskFormTarget,
            UriTooLong { .. } => ErrorCode::UriTooLong,
            HeadersTooLarge { .. } => ErrorCode::HeadersTooLarge,
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

    /// The HTTP status of this error's code.
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
            AsteriskFormTarget => {
                "the gateway has no server-wide options; OPTIONS * is not served".into()
            }
            UriTooLong { limit } => format!("the request target is longer than {limit} bytes"),
            HeadersTooLarge { what } => format!("the request head is over {what}"),
            BadHostHeader => "an HTTP/1.1 request carries exactly one Host header".into(),
            TransferEncodingNotAccepted => {
                "send a confirmation with Content-Length or Transfer-Encoding: chunked, and a \
                 presign with no body"
                    .into()
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

/// The `Content-Type` of every problem answer.
pub static PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        // The client hears the code only; the operator reads the cause. The upstream and the store
        // log their own failures where they happen, with more detail than is left here; an
        // overload or a deadline is the access line's outcome. What is left is a bug's cause.
        if let GatewayError::Internal(cause) = &self {
            tracing::error!(code = self.code().as_str(), cause, "request failed");
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

#[cfg(test)]
mod tests {
    use super::GatewayError;
    use crate::upstream::UpstreamFailure;

    #[test]
    fn an_upstream_credentials_refusal_has_an_outcome_of_its_own() {
        // deploy/monitoring's KizenGatewayUpstreamCredentialsRejected alerts on requests whose
        // outcome is this code: Kizen refused the gateway's credentials, and nothing else maps
        // to it.
        let code = GatewayError::Upstream(UpstreamFailure::CredentialsRejected).code();
        assert_eq!(
            (code.as_str(), code.status().as_u16()),
            ("upstream_unavailable", 502)
        );
        for other in [
            UpstreamFailure::Unreachable,
            UpstreamFailure::Timeout,
            UpstreamFailure::BadResponse,
            UpstreamFailure::ServerError,
            UpstreamFailure::RequestNotBuilt,
        ] {
            assert_ne!(
                GatewayError::Upstream(other).code().as_str(),
                "upstream_unavailable"
            );
        }
    }
}
