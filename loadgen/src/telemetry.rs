//! Client spans: every request starts its own trace and carries it in a W3C `traceparent`;
//! spans are exported over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Kept small and local until `shared::telemetry` can be used from here; spans go through the
//! `opentelemetry::global` tracer and propagator, so switching is a change to [`init`] only.

use std::time::Duration;

use opentelemetry::propagation::Injector;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Keeps the tracer provider; [`Telemetry::shutdown`] flushes the spans still queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// Installs the propagator and the global tracer provider. Must run inside the Tokio runtime
/// (the gRPC exporter needs it).
pub fn init() -> anyhow::Result<Telemetry> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("loadgen");
    }
    // Without an exporter the provider still makes real, sampled ids for `traceparent`.
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    if let Some(exporter) = exporter()? {
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    Ok(Telemetry { provider })
}

fn exporter() -> anyhow::Result<Option<SpanExporter>> {
    use opentelemetry_otlp::WithExportConfig as _;
    if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").map_or(true, |e| e.is_empty()) {
        return Ok(None);
    }
    // Leaving the endpoint out of the builder makes the exporter read the variable itself
    // (and append /v1/traces for HTTP).
    let timeout = Duration::from_secs(3);
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_else(|_| "grpc".into());
    let exporter = match protocol.as_str() {
        "grpc" => SpanExporter::builder()
            .with_tonic()
            .with_timeout(timeout)
            .build()?,
        "http/protobuf" => SpanExporter::builder()
            .with_http()
            .with_timeout(timeout)
            .build()?,
        other => {
            anyhow::bail!("OTEL_EXPORTER_OTLP_PROTOCOL: `{other}` is not grpc or http/protobuf")
        }
    };
    Ok(Some(exporter))
}

impl Telemetry {
    /// Flushes and stops the exporter. Runs on a blocking thread: the export may need this
    /// runtime to make progress while the flush waits.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        })
        .await;
    }
}

/// A client span for one HTTP request, and the headers that carry it.
#[derive(Debug)]
pub struct ClientSpan {
    cx: Context,
    /// `traceparent` (and `tracestate` if any), to send with the request.
    pub headers: Vec<(String, String)>,
}

impl ClientSpan {
    /// Starts a new trace: a root client span named `METHOD route`.
    pub fn start(method: &'static str, route: &'static str, url: &str) -> Self {
        let tracer = global::tracer("loadgen");
        let span = tracer
            .span_builder(format!("{method} {route}"))
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", method),
                KeyValue::new("url.full", url.to_owned()),
            ])
            .start_with_context(&tracer, &Context::new());
        let cx = Context::new().with_span(span);
        let mut headers = Headers(Vec::with_capacity(1));
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
        Self {
            cx,
            headers: headers.0,
        }
    }

    /// Ends the span with the response status, or an error.
    pub fn end(self, status: Result<u16, &str>) {
        let span = self.cx.span();
        match status {
            Ok(code) => {
                span.set_attribute(KeyValue::new("http.response.status_code", i64::from(code)));
                if code >= 500 {
                    span.set_status(Status::error(code.to_string()));
                }
            }
            Err(kind) => {
                span.set_attribute(KeyValue::new("error.type", kind.to_owned()));
                span.set_status(Status::error(kind.to_owned()));
            }
        }
        span.end();
    }

    /// The trace id (32 hex).
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }
}

struct Headers(Vec<(String, String)>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_request_gets_a_fresh_w3c_traceparent() {
        let telemetry = init().unwrap();
        let a = ClientSpan::start("POST", "/jobs", "http://x/jobs");
        let b = ClientSpan::start("POST", "/jobs", "http://x/jobs");
        let (ka, va) = &a.headers[0];
        assert_eq!(ka, "traceparent");
        let parts: Vec<&str> = va.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        assert_eq!(parts[1], a.trace_id());
        assert_ne!(a.trace_id(), b.trace_id());
        a.end(Ok(202));
        b.end(Err("timeout"));
        telemetry.shutdown().await;
    }
}
