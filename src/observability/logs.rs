//! The tracing subscriber: text or JSON lines, filtered by `log.level`, with the OpenTelemetry
//! layer when traces are on. Tokens and secrets are never fields of any event; strings a client
//! controls are logged with `?` (Debug), which escapes them.

use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

use super::traces::Telemetry;
use crate::config::{LogConfig, LogFormat};

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
