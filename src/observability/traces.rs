//! OpenTelemetry traces, off by default. When `telemetry.otlp_traces` is on, every request is a
//! server span (parented by the client's W3C `traceparent`) and every Kizen call a client span
//! whose context travels upstream in `traceparent`. The OTLP/HTTP exporter is configured by the
//! standard `OTEL_*` environment variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, ...).

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Whether an OpenTelemetry layer consumes spans: request and upstream spans are built only then
/// (each costs an allocation and the formatting of its fields).
static SPANS_CONSUMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether request and upstream spans have a consumer (OpenTelemetry tracing is on).
pub fn spans_consumed() -> bool {
    SPANS_CONSUMED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes the spans not yet sent.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("enabled", &self.provider.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Builds the OTLP pipeline and returns it with the tracing layer that feeds it.
    pub fn start<S>() -> Result<
        (
            Self,
            tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        ),
        String,
    >
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        // The exporter's HTTP client is built on rustls too.
        crate::tls::install_crypto_provider();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| format!("telemetry: cannot build the OTLP exporter: {e}"))?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("kizen-gateway");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("kizen-gateway"));
        SPANS_CONSUMED.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok((
            Self {
                provider: Some(provider),
            },
            layer,
        ))
    }

    /// Sends what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("kizen-gateway: telemetry: flushing spans failed: {error}");
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes the client's trace (if any) the parent of `span`. A no-op while telemetry is off.
pub fn continue_trace(span: &tracing::Span, client_headers: &HeaderMap) {
    let parent: Context = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(client_headers))
    });
    let _ = span.set_parent(parent);
}

/// Writes the current span's trace context into an upstream request. While telemetry is off
/// there is no gateway span to name, so the client's own `traceparent`/`tracestate` (when well
/// formed) go upstream unchanged: the trace stays whole either way.
pub fn propagate(upstream: &mut HeaderMap, client_headers: &HeaderMap) {
    if spans_consumed() {
        let context = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut HeaderInjector(upstream))
        });
        if upstream.contains_key(&TRACEPARENT) {
            return;
        }
    }
    if let Some(traceparent) = client_headers
        .get(&TRACEPARENT)
        .filter(|v| is_traceparent(v.as_bytes()))
    {
        upstream.insert(TRACEPARENT.clone(), traceparent.clone());
        if let Some(state) = client_headers.get(&TRACESTATE).filter(|v| v.len() <= 512) {
            upstream.insert(TRACESTATE.clone(), state.clone());
        }
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, the W3C Trace Context version 00 form.
fn is_traceparent(value: &[u8]) -> bool {
    let parts: Vec<&[u8]> = value.split(|b| *b == b'-').collect();
    let hex = |part: &[u8], len: usize| part.len() == len && part.iter().all(u8::is_ascii_hexdigit);
    parts.len() == 4
        && parts[0] == b"00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

#[cfg(test)]
mod tests {
    #[test]
    fn traceparent_shape() {
        assert!(super::is_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!super::is_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
        ));
        assert!(!super::is_traceparent(
            b"00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
    }
}
