//! Logs: the tracing subscriber (text or JSON), the request id, one access line per request and
//! the audit trail of every upload. Tokens and secrets are never fields of any event; strings a
//! client controls are logged with `?` (Debug), which escapes them.

use std::{
    sync::{Arc, OnceLock},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::Request,
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};
use uuid::Uuid;

use crate::{
    config::{LogConfig, LogFormat},
    telemetry::Telemetry,
};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Installs the global subscriber. `writer` is stdout in the binary and a buffer in log tests.
pub fn init_tracing<W>(config: &LogConfig, writer: W) -> Result<(), String>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    init_tracing_with_telemetry(config, false, writer).map(|_| ())
}

/// Installs the global subscriber, with the OpenTelemetry layer when `otlp_traces` is on. The
/// returned [`Telemetry`] must be shut down at exit to flush the last spans.
pub fn init_tracing_with_telemetry<W>(
    config: &LogConfig,
    otlp_traces: bool,
    writer: W,
) -> Result<Telemetry, String>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};

    let filter = EnvFilter::try_new(&config.level).map_err(|e| format!("log.level: {e}"))?;
    let fmt = match config.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(writer)
            .boxed(),
    };
    let (telemetry, otel) = match otlp_traces {
        true => {
            let (telemetry, layer) = Telemetry::start()?;
            (telemetry, Some(layer))
        }
        false => (Telemetry::default(), None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(telemetry)
}

pub fn seconds_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The outcome of a request in one word, set by the handler or the error; the access line logs it.
#[derive(Debug, Clone, Copy)]
pub struct Outcome(pub &'static str);

/// The request id: the client's `x-request-id` when it is sane, a fresh UUID otherwise.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// A slot the auth extractor fills, so that the access line can name the user.
#[derive(Debug, Clone, Default)]
pub struct RequestUser(Arc<OnceLock<String>>);

impl RequestUser {
    pub fn set(&self, user: &str) {
        let _ = self.0.set(user.to_owned());
    }

    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
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

/// A fixed label per route: raw client paths never reach the logs.
pub fn route_label(path: &str) -> &'static str {
    match path {
        crate::upstream::PRESIGN_PATH => "presign",
        crate::upstream::SUCCESS_PATH => "confirm",
        _ => "other",
    }
}

/// Middleware, the outermost: assigns the request id (echoed on the response), and writes one
/// access line per request with route, user, status, latency and outcome.
pub async fn observe(
    axum::extract::State(metrics): axum::extract::State<std::sync::Arc<crate::metrics::Metrics>>,
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
    let request_id = Some(request_id);

    // The request's span: a server span in OpenTelemetry, child of the client's trace if any.
    // Built only when OpenTelemetry consumes it; the access line carries the same fields.
    let span = if crate::telemetry::spans_consumed() {
        let span = tracing::info_span!(
            "request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            request_id = request_id.as_deref().unwrap_or("-"),
            route,
            http.response.status_code = tracing::field::Empty,
        );
        crate::telemetry::continue_trace(&span, request.headers());
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
    metrics.observe_request(route, status.as_u16(), outcome, elapsed);
    tracing::info!(
        target: "kizen_gateway::access",
        request_id = request_id.as_deref().unwrap_or("-"),
        method = %method,
        route,
        user = ?user.get().unwrap_or("-"),
        status = status.as_u16(),
        latency_ms = elapsed * 1000.0,
        outcome,
        "request"
    );
    response
}

/// The audit trail: one event per step of an upload's life. Uploads are named by `s3object_id`;
/// their S3 key is not logged, as the upstream builds it around the (secret) business id.
/// Each event also moves its counter in [`crate::metrics::Metrics`].
pub mod audit {
    use crate::{
        metrics::{Metrics, ReasonLabels},
        store::IssuedUpload,
    };

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
}
