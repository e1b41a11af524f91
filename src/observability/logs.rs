//! The tracing subscriber: text or JSON lines, filtered by `log.level`, with the OpenTelemetry
//! layer when traces are on. Tokens and secrets are never fields of any event; strings a client
//! controls are logged with `?` (Debug), which escapes them.

use tracing_subscriber::{
    EnvFilter,
    field::MakeExt,
    fmt::{FormatFields, MakeWriter, format::debug_fn},
};

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
            .fmt_fields(plain_fields())
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

/// `message name=value ...`, exactly as tracing-subscriber's default field format writes it with
/// ANSI off, without routing every name through its (then empty) ANSI styles: that styling cost
/// about a third of each line's formatting.
fn plain_fields() -> impl for<'writer> FormatFields<'writer> + Send + Sync + 'static {
    debug_fn(|writer, field, value| match field.name() {
        "message" => write!(writer, "{value:?}"),
        name => write!(writer, "{name}={value:?}"),
    })
    .delimited(" ")
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::fmt::format::{DefaultFields, Writer};

    use super::*;

    /// The fields of one event, formatted by `fields`.
    fn formatted(fields: impl for<'w> FormatFields<'w> + Send + Sync + 'static) -> String {
        use std::sync::{Arc, Mutex};
        let out = Arc::new(Mutex::new(String::new()));
        let layer = {
            let out = out.clone();
            Capture { out, fields }
        };
        let subscriber =
            tracing_subscriber::layer::SubscriberExt::with(tracing_subscriber::registry(), layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                route = "presign",
                user = ?"al\"ice",
                status = 200u16,
                latency_ms = 1.25,
                ok = true,
                shown = %"x y",
                "request"
            );
        });
        out.lock().unwrap().clone()
    }

    struct Capture<F> {
        out: std::sync::Arc<std::sync::Mutex<String>>,
        fields: F,
    }

    impl<S, F> tracing_subscriber::Layer<S> for Capture<F>
    where
        S: tracing::Subscriber,
        F: for<'w> FormatFields<'w> + 'static,
    {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut line = String::new();
            self.fields
                .format_fields(Writer::new(&mut line), event)
                .unwrap();
            *self.out.lock().unwrap() = line;
        }
    }

    #[test]
    fn plain_fields_write_what_the_default_format_writes_without_ansi() {
        let plain = formatted(plain_fields());
        assert_eq!(plain, formatted(DefaultFields::new()));
        assert_eq!(
            plain,
            r#"request route="presign" user="al\"ice" status=200 latency_ms=1.25 ok=true shown=x y"#
        );
    }
}
