//! One call per service sets up everything observable about it: JSON (or pretty) logs on stdout
//! that carry the current trace, and OpenTelemetry traces exported over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Spans get trace ids even when nothing is exported, so every log line inside a span, every
//! `traceparent` response header and every job's `trace_id` are real and consistent.

mod json;
mod otlp;
pub mod propagation;

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt};

use crate::config::{self, ConfigError};

pub use json::JsonLines;
pub use otlp::Protocol;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default; what Promtail/Loki expect).
    Json,
    /// Human-friendly multi-line output for a terminal.
    Pretty,
}

/// Telemetry settings, from the standard environment variables.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `service.name` and the `service` field of every log line.
    pub service: String,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `RUST_LOG`, or the default filter.
    pub log_filter: String,
    /// Where and how to export spans; `None` exports nothing.
    pub export: Option<otlp::Export>,
    /// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
    pub sampler: otlp::SamplerSetting,
    /// `METRICS_EXEMPLARS` (default true): the latency histograms keep the trace of a recent
    /// observation per bucket ([`crate::metrics::exemplars`]), while traces are exported.
    pub exemplars: bool,
}

impl Settings {
    /// Reads `OTEL_SERVICE_NAME` (default `default_service`), `LOG_FORMAT`, `RUST_LOG` and the
    /// `OTEL_*` exporter and sampler variables.
    pub fn from_env(default_service: &str) -> Result<Self, ConfigError> {
        let log_format = match config::string("LOG_FORMAT", "json").as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => {
                return Err(ConfigError {
                    var: "LOG_FORMAT",
                    value: other.to_owned(),
                    reason: "expected json or pretty".into(),
                });
            }
        };
        let log_filter = config::string("RUST_LOG", DEFAULT_FILTER);
        EnvFilter::try_new(&log_filter).map_err(|e| ConfigError {
            var: "RUST_LOG",
            value: log_filter.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            service: config::string("OTEL_SERVICE_NAME", default_service),
            log_format,
            log_filter,
            export: otlp::Export::from_env()?,
            sampler: otlp::SamplerSetting::from_env()?,
            exemplars: config::parse("METRICS_EXEMPLARS", true)?,
        })
    }
}

/// Quiet the chatty dependencies unless asked.
const DEFAULT_FILTER: &str = "info,h2=warn,tonic=warn,hyper=warn,lapin=warn,sqlx=warn,opentelemetry_sdk=off,opentelemetry-otlp=off";

/// Flushes buffered spans when the service stops. Keep it alive for the life of `main`.
#[derive(Debug)]
#[must_use = "dropping the guard early loses the last spans"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

/// How long [`TelemetryGuard::shutdown`] waits for the last spans to export (part of a
/// service's shutdown budget; deploy/k8s's check reads it).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

impl TelemetryGuard {
    /// Exports what is still buffered, waiting at most [`FLUSH_TIMEOUT`].
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            // shutdown() blocks while the batch thread exports, and a gRPC export needs this
            // runtime to make progress: run it on the blocking pool.
            let _ =
                tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                    .await;
        }
    }
}

static INSTALLED: OnceLock<()> = OnceLock::new();

/// Installs logging and tracing for the process, writing log lines to stdout. Must be called
/// inside a Tokio runtime (the gRPC exporter needs it). A second call in the same process (tests
/// start several services) changes nothing and returns an empty guard.
pub fn init(settings: &Settings) -> anyhow::Result<TelemetryGuard> {
    install(settings, std::io::stdout)
}

/// [`init`] with another destination for log lines, e.g. a buffer in a test.
pub fn install<W>(settings: &Settings, writer: W) -> anyhow::Result<TelemetryGuard>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    if INSTALLED.set(()).is_err() {
        return Ok(TelemetryGuard { provider: None });
    }
    let provider = otlp::provider(settings)?;
    // An exemplar names a trace to open: none when no trace is exported.
    crate::metrics::exemplars::set_enabled(settings.exemplars && settings.export.is_some());
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing::subscriber::set_global_default(subscriber(settings, writer, &provider))?;
    // A panic becomes a log line like any other, with the trace it happened in.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panic");
    }));
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// The subscriber [`install`] makes global: log lines to `writer`, spans to `provider`. Tests
/// use it to give each in-process service a subscriber (and a `service.name`) of its own.
pub fn subscriber<W>(
    settings: &Settings,
    writer: W,
    provider: &SdkTracerProvider,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    propagation::install();
    // Each layer has its own filter: RUST_LOG must never switch span export off.
    let logs = match settings.log_format {
        LogFormat::Json => JsonLines::new(settings.service.clone(), writer).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .pretty()
            .with_writer(writer)
            .boxed(),
    }
    .with_filter(EnvFilter::new(&settings.log_filter));
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(settings.service.clone()))
        // Busy/idle time per span costs two clock reads on every poll of every instrumented
        // future, and thread ids say nothing on a work-stealing runtime: both off, for speed.
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(EnvFilter::new(
            "info,h2=off,tonic=off,hyper=off,lapin=off,sqlx=off,tower=off",
        ));
    tracing_subscriber::registry().with(logs).with(traces)
}
