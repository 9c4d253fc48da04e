//! The JSON log line: one object per event with `timestamp`, `level`, `target`, `service`,
//! `trace_id`/`span_id` of the current OpenTelemetry span, the current span's name, the fields of
//! every enclosing span (so `job.id`, `job.kind`, `job.attempt` reach each line about a job) and
//! the event's own fields.
//!
//! Written as a layer of its own rather than a wrapper of `fmt().json()`: tracing-subscriber's
//! formatter only shows the innermost span's fields, and the OTel ids are not fields at all.

use std::io::Write as _;

use opentelemetry::trace::TraceContextExt as _;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The layer that writes JSON lines.
#[derive(Debug)]
pub struct JsonLines<W> {
    service: String,
    writer: W,
}

impl<W> JsonLines<W> {
    /// Lines name `service` and go to `writer`.
    pub fn new(service: String, writer: W) -> Self {
        Self { service, writer }
    }
}

/// A span's recorded fields, kept in its extensions.
struct SpanFields(Map<String, Value>);

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = FieldMap(Map::new());
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.0));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(SpanFields(map)) = ext.get_mut::<SpanFields>() {
                let mut fields = FieldMap(std::mem::take(map));
                values.record(&mut fields);
                *map = fields.0;
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut own = FieldMap(Map::new());
        event.record(&mut own);
        let mut own = own.0;

        // The fixed fields first, so a person reading raw lines finds them in one place.
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert(
            "level".into(),
            meta.level().as_str().to_ascii_lowercase().into(),
        );
        if let Some(message) = own.remove("message") {
            line.insert("message".into(), message);
        }
        line.insert("target".into(), meta.target().into());
        line.insert("service".into(), self.service.as_str().into());

        // tracing-opentelemetry attaches the span's OTel context while the span is entered.
        let otel = opentelemetry::Context::current();
        let sc = otel.span().span_context().clone();
        if sc.is_valid() {
            line.insert("trace_id".into(), sc.trace_id().to_string().into());
            line.insert("span_id".into(), sc.span_id().to_string().into());
        }

        if let Some(scope) = ctx.event_scope(event) {
            let mut spans = scope.from_root().peekable();
            while let Some(span) = spans.next() {
                if spans.peek().is_none() {
                    line.insert("span".into(), span.name().into());
                }
                if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                    for (k, v) in fields {
                        line.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        line.extend(own);

        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        // One write per line, so lines from concurrent tasks never interleave.
        let _ = self.writer.make_writer_for(meta).write_all(&bytes);
    }
}

/// Collects fields into a JSON map, skipping `otel.*` (instructions to the OTel layer, not
/// data) and renaming `log.*` fields that bridge crates add.
struct FieldMap(Map<String, Value>);

impl FieldMap {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name.starts_with("otel.") || name.starts_with("log.") {
            return;
        }
        self.0.insert(name.to_owned(), value);
    }
}

impl Visit for FieldMap {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // `{:#}`-style chain: the error and its causes on one line.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.put(field, text.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}
