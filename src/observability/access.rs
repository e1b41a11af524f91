//! The outermost middleware: the request id (the client's when sane, echoed on the answer) and one
//! line per request with route, user, status, latency and outcome, and the audit step the request
//! caused, if any (see [`super::audit`]).

use std::{
    sync::{Arc, OnceLock},
    time::Instant,
};

use axum::{
    extract::{Request, State},
    http::{HeaderName, HeaderValue, Method},
    middleware::Next,
    response::Response,
};
use uuid::Uuid;

use super::{
    audit::{AuditEvent, AuditStep},
    metrics::Metrics,
    traces,
};
use crate::paths::route_label;

/// The header that carries the request id, in both directions.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The outcome of a request in one word, set by the handler or the error; the access line logs it.
#[derive(Debug, Clone, Copy)]
pub struct Outcome(pub &'static str);

/// The request id: the client's `x-request-id` when it is sane, a fresh UUID otherwise.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// A slot the auth extractor fills, so that the access line can name the user and the metrics
/// the user's quota tier.
#[derive(Debug, Clone, Default)]
pub struct RequestUser(Arc<UserSlot>);

#[derive(Debug, Default)]
struct UserSlot {
    id: OnceLock<String>,
    tier: OnceLock<String>,
}

impl RequestUser {
    /// Names the authenticated user (its qualified id); only the first call counts.
    pub fn set(&self, user: &str) {
        let _ = self.0.id.set(user.to_owned());
    }

    /// The user named by [`set`](Self::set), if the request got that far.
    pub fn get(&self) -> Option<&str> {
        self.0.id.get().map(String::as_str)
    }

    /// Names the user's quota tier: a configured tier's name (never the raw claim, which the
    /// client controls), so that it is a bounded metric label. Only the first call counts.
    pub fn set_tier(&self, tier: &str) {
        let _ = self.0.tier.set(tier.to_owned());
    }

    /// The tier named by [`set_tier`](Self::set_tier), if the request got that far.
    pub fn tier(&self) -> Option<&str> {
        self.0.tier.get().map(String::as_str)
    }
}

fn is_sane_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// The client's `x-request-id` when it is sane, a fresh UUID otherwise.
fn request_id_of(request: &Request) -> HeaderValue {
    match request.headers().get(&X_REQUEST_ID) {
        Some(value) if is_sane_request_id(value) => value.clone(),
        _ => {
            let mut buffer = Uuid::encode_buffer();
            let id = Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
            HeaderValue::from_str(id).expect("a UUID is a valid header value")
        }
    }
}

/// Middleware, the outermost: assigns the request id (echoed on the response), and writes one
/// access line per request with route, user, status, latency and outcome.
pub async fn observe(
    State(metrics): State<Arc<Metrics>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id_header = request_id_of(&request);
    let request_id: Arc<str> = request_id_header.to_str().unwrap_or_default().into();
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
    let method = request.method().clone();
    let route = route_label(request.uri().path());
    let user = RequestUser::default();
    request.extensions_mut().insert(user.clone());

    // The request's span: a server span in OpenTelemetry, child of the client's trace if any.
    // Built only when OpenTelemetry consumes it; the access line carries the same fields.
    let span = if traces::spans_consumed() {
        let span = tracing::info_span!(
            "request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            request_id = &*request_id,
            route,
            http.response.status_code = tracing::field::Empty,
        );
        traces::continue_trace(&span, request.headers());
        span
    } else {
        tracing::Span::none()
    };
    let mut response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id_header);

    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    let outcome = response
        .extensions()
        .get::<Outcome>()
        .map(|o| o.0)
        .unwrap_or(if status.is_success() {
            "ok"
        } else if status.is_client_error() {
            "client_error"
        } else {
            "error"
        });
    let elapsed = started.elapsed().as_secs_f64();
    metrics.observe_request(route, status.as_u16(), outcome, user.tier(), elapsed);
    let audit = response.extensions_mut().remove::<AuditEvent>();
    write_line(
        &AccessLine {
            request_id: &request_id,
            method: &method,
            route,
            user: user.get().unwrap_or("-"),
            status: status.as_u16(),
            latency_ms: elapsed * 1000.0,
            outcome,
        },
        audit.as_ref(),
    );
    response
}

/// What the access line says of every request.
struct AccessLine<'a> {
    request_id: &'a str,
    method: &'a Method,
    route: &'static str,
    user: &'a str,
    status: u16,
    latency_ms: f64,
    outcome: &'static str,
}

/// The request's one line: under `kizen_gateway::audit`, with the step's fields, when the request
/// moved an upload along; under `kizen_gateway::access` otherwise.
fn write_line(line: &AccessLine<'_>, audit: Option<&AuditEvent>) {
    let AccessLine {
        request_id,
        method,
        route,
        user,
        status,
        latency_ms,
        outcome,
    } = *line;
    match audit.map(AuditEvent::take) {
        None => tracing::info!(
            target: "kizen_gateway::access",
            request_id, method = %method, route, user = ?user, status, latency_ms, outcome,
            "request"
        ),
        Some((AuditStep::Issued { source, window_end }, s3object_id)) => tracing::info!(
            target: "kizen_gateway::audit",
            request_id, method = %method, route, user = ?user, status, latency_ms, outcome,
            event = "upload_issued", s3object_id = %s3object_id, source = %source,
            window_end = %window_end,
            "upload issued"
        ),
        Some((AuditStep::Confirmed, s3object_id)) => tracing::info!(
            target: "kizen_gateway::audit",
            request_id, method = %method, route, user = ?user, status, latency_ms, outcome,
            event = "upload_confirmed", s3object_id = %s3object_id,
            "upload confirmed"
        ),
        Some((AuditStep::Rejected { reason }, s3object_id)) => tracing::info!(
            target: "kizen_gateway::audit",
            request_id, method = %method, route, user = ?user, status, latency_ms, outcome,
            event = "upload_rejected", s3object_id = %s3object_id, reason = *reason,
            "confirmation rejected"
        ),
    }
}
