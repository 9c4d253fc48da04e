//! Client spans: every request starts its own trace and carries it in a W3C `traceparent`;
//! spans are exported over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set — through
//! `shared::telemetry`, like every service (same variables, sampler and exporter).

use opentelemetry::propagation::Injector;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue, global};
use shared::telemetry::{Settings, TelemetryGuard};

/// Installs the propagator and the tracer provider (service `loadgen` unless
/// `OTEL_SERVICE_NAME` says otherwise). Log lines go to stderr: stdout carries the report.
/// Must run inside the Tokio runtime (the gRPC exporter needs it).
pub fn init() -> anyhow::Result<TelemetryGuard> {
    shared::telemetry::install(&Settings::from_env("loadgen")?, std::io::stderr)
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
