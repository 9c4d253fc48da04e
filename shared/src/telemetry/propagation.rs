//! W3C trace-context propagation over HTTP headers and AMQP message headers.
//!
//! lapin has no OpenTelemetry integration, so the injector and extractor over its `FieldTable`
//! live here. Every publish injects the current span's context; every consume extracts it and
//! makes it the parent of the processing span, so one trace runs across the queue both ways.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Installs the W3C propagator globally (idempotent).
pub(crate) fn install() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

struct AmqpInjector<'a>(&'a mut FieldTable);

impl Injector for AmqpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
}

struct AmqpExtractor<'a>(&'a FieldTable);

impl Extractor for AmqpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|k| k.as_str()).collect()
    }
}

/// Writes `span`'s context (`traceparent`, `tracestate`) into AMQP headers.
pub fn inject_amqp(span: &tracing::Span, headers: &mut FieldTable) {
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut AmqpInjector(headers));
    });
}

/// Reads the context a publisher put into AMQP headers (empty when there is none).
pub fn extract_amqp(headers: Option<&FieldTable>) -> opentelemetry::Context {
    match headers {
        Some(h) => opentelemetry::global::get_text_map_propagator(|p| p.extract(&AmqpExtractor(h))),
        None => opentelemetry::Context::new(),
    }
}

struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

/// Reads the caller's context from HTTP request headers (empty when there is none).
pub fn extract_http(headers: &axum::http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Makes `parent` the parent of `span`. Must run before the span is first entered: after that
/// tracing-opentelemetry has started the span and ignores a new parent.
pub fn set_parent(span: &tracing::Span, parent: opentelemetry::Context) {
    if let Err(e) = span.set_parent(parent) {
        tracing::debug!(error = %e, "span already started; parent not applied");
    }
}

/// Links `span` to the span named by a W3C `traceparent` (an earlier attempt's, say): a new
/// trace that points back at the one it follows, instead of growing it. Must run before the
/// span is first entered. A malformed value adds no link.
pub fn link_to(span: &tracing::Span, traceparent: &str) {
    let linked = from_traceparent(traceparent).span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// `span`'s context as a W3C `traceparent` value, e.g. to answer in a response header or to
/// keep with an outbox row.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// `span`'s 32-hex trace id.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Parses a stored `traceparent` back into a parent context.
pub fn from_traceparent(traceparent: &str) -> opentelemetry::Context {
    let mut headers = std::collections::HashMap::new();
    headers.insert("traceparent".to_owned(), traceparent.to_owned());
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&headers))
}

/// Marks `span` as failed and records the error on it, following the OTel exception convention.
pub fn record_error(span: &tracing::Span, error: &str) {
    span.set_status(opentelemetry::trace::Status::error(error.to_owned()));
    span.add_event(
        "exception",
        vec![opentelemetry::KeyValue::new(
            "exception.message",
            error.to_owned(),
        )],
    );
}
