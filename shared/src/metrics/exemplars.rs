//! Exemplars: for each bucket of the latency histograms, the trace of the latest sampled
//! observation that fell into it, so a spike on a Grafana panel links to a trace that caused it.
//!
//! `metrics-exporter-prometheus` has no exemplars. They are kept here, beside its histograms
//! (one [`observe`] records both), and [`super::openmetrics`] writes them onto the bucket lines
//! when Prometheus asks for OpenMetrics, the only text format that carries them. What it costs:
//! reading the span's ids, formatting the label key and one short lock per observation (about
//! 11 µs of api CPU per request, measured against `METRICS_EXEMPLARS=false`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::SystemTime;

use metrics_exporter_prometheus::formatting::{sanitize_label_key, sanitize_label_value};
use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The histograms that carry exemplars, with their bucket bounds (what the recorder uses).
const HISTOGRAMS: &[(&str, &[f64])] = &[
    ("http_server_request_duration_seconds", super::HTTP_BUCKETS),
    ("jobstack_job_duration_seconds", super::JOB_BUCKETS),
];

/// One observation's trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    /// The trace of the observation.
    pub trace_id: TraceId,
    /// Its span.
    pub span_id: SpanId,
    /// The observed value.
    pub value: f64,
    /// When it was observed.
    pub at: SystemTime,
}

/// Latest exemplar per bucket (`bounds.len() + 1` slots, the last is `+Inf`), per label set.
type Series = HashMap<String, Box<[Option<Exemplar>]>>;

static ENABLED: AtomicBool = AtomicBool::new(true);
static STORE: LazyLock<Mutex<HashMap<&'static str, Series>>> = LazyLock::new(Default::default);

/// `METRICS_EXEMPLARS`: whether [`observe`] keeps exemplars (the histograms are recorded either
/// way). Process-wide; tests that start several services in one process share it.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Records `value` in the histogram `name` with `labels` and, if `span` is sampled and `name`
/// is one of the histograms with exemplars, keeps `span`'s ids as its bucket's exemplar.
pub fn observe(
    name: &'static str,
    labels: &[(&'static str, &str)],
    value: f64,
    span: &tracing::Span,
) {
    let owned: Vec<metrics::Label> = labels
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, (*v).to_owned()))
        .collect();
    metrics::histogram!(name, owned).record(value);
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let Some(bounds) = bounds(name) else { return };
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    // An unsampled trace is never exported: an exemplar would link to nothing.
    if !(sc.is_valid() && sc.is_sampled()) {
        return;
    }
    let exemplar = Exemplar {
        trace_id: sc.trace_id(),
        span_id: sc.span_id(),
        value,
        at: SystemTime::now(),
    };
    let bucket = bounds.partition_point(|b| *b < value);
    let key = label_key(labels);
    let mut store = STORE.lock().unwrap_or_else(|e| e.into_inner());
    let slots = store
        .entry(name)
        .or_default()
        .entry(key)
        .or_insert_with(|| vec![None; bounds.len() + 1].into_boxed_slice());
    slots[bucket] = Some(exemplar);
}

/// The exemplar of the bucket `le` of `name`'s series `labels` (rendered as the exporter renders
/// them, `le` excluded).
pub(super) fn find(name: &str, labels: &str, le: &str) -> Option<Exemplar> {
    let bounds = bounds(name)?;
    let bucket = if le == "+Inf" {
        bounds.len()
    } else {
        let le: f64 = le.parse().ok()?;
        bounds.iter().position(|b| *b == le)?
    };
    let store = STORE.lock().unwrap_or_else(|e| e.into_inner());
    store.get(name)?.get(labels)?[bucket]
}

fn bounds(name: &str) -> Option<&'static [f64]> {
    HISTOGRAMS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// The label set as `metrics-exporter-prometheus` writes it on a sample line, with its own
/// escaping and in the order given (it keeps the key's order).
fn label_key(labels: &[(&str, &str)]) -> String {
    let mut key = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(&sanitize_label_key(k));
        key.push_str("=\"");
        key.push_str(&sanitize_label_value(v));
        key.push('"');
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_key_is_escaped_as_the_exporter_escapes_values() {
        assert_eq!(
            label_key(&[("route", "/a\"b"), ("status", "200")]),
            r#"route="/a\"b",status="200""#
        );
        assert_eq!(label_key(&[]), "");
    }

    #[test]
    fn only_the_histograms_with_exemplars_have_bounds() {
        assert!(bounds("http_server_request_duration_seconds").is_some());
        assert!(bounds("jobstack_job_queue_wait_seconds").is_none());
    }
}
