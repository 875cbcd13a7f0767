//! Logging and tracing set-up for the binary: structured logs (pretty or JSON)
//! and, when built with the `otel` feature and `log.otlp_endpoint` is set, export
//! of request spans to an OpenTelemetry collector over OTLP/HTTP.
//!
//! Tests do not call this: they build the app with [`crate::App::build`] and keep
//! the process's subscriber to themselves.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::Config;

/// Keeps the span exporter alive; dropping it flushes spans still buffered.
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("OpenTelemetry exporter did not shut down cleanly: {e}");
            }
        }
    }
}

/// Installs the process-wide subscriber. `CAIRN_LOG` overrides `log.level`.
///
/// `serve` logs to standard output (what container runtimes collect); the other
/// subcommands log to standard error, so their output (`--json` plans and
/// reports, exports) stays machine-readable.
pub fn init(config: &Config, to_stderr: bool) -> anyhow::Result<Telemetry> {
    let filter =
        EnvFilter::try_from_env("CAIRN_LOG").or_else(|_| EnvFilter::try_new(&config.log.level))?;
    let fmt = match (config.log.format.as_str(), to_stderr) {
        ("json", false) => tracing_subscriber::fmt::layer().json().boxed(),
        ("json", true) => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        ("pretty", false) => tracing_subscriber::fmt::layer().boxed(),
        ("pretty", true) => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        (other, _) => {
            anyhow::bail!("log.format must be \"pretty\" or \"json\", not {other:?}")
        }
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);

    #[cfg(feature = "otel")]
    {
        let (layer, provider) = match &config.log.otlp_endpoint {
            Some(endpoint) => {
                let (l, p) = otel::layer(endpoint)?;
                (Some(l), Some(p))
            }
            None => (None, None),
        };
        registry.with(layer).try_init()?;
        Ok(Telemetry { provider })
    }
    #[cfg(not(feature = "otel"))]
    {
        if config.log.otlp_endpoint.is_some() {
            anyhow::bail!(
                "log.otlp_endpoint is set, but this cairn was built without the `otel` feature \
                 (cargo build --release --features otel)"
            );
        }
        registry.try_init()?;
        Ok(Telemetry {})
    }
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use tracing_subscriber::registry::LookupSpan;

    /// A tracing layer exporting spans in batches to `endpoint`
    /// (e.g. `http://127.0.0.1:4318/v1/traces`).
    pub fn layer<S>(
        endpoint: &str,
    ) -> anyhow::Result<(
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        SdkTracerProvider,
    )>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name("cairn")
                    .with_attribute(opentelemetry::KeyValue::new(
                        "service.version",
                        env!("CARGO_PKG_VERSION"),
                    ))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("cairn");
        Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
    }
}
