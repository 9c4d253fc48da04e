//! The process-wide Prometheus recorder. Installed once (tests start several services in one
//! process, the first one's settings win), rendered by each service's own `/metrics` route: in
//! OpenMetrics, with exemplars, when the scraper asks for it (Prometheus does), else in the
//! Prometheus text format.

pub mod exemplars;
mod openmetrics;

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Request latencies: 1 ms … 10 s.
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Job run times and queue waits: 10 ms … 10 min.
const JOB_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Publish-to-confirm latencies: 0.5 ms … 5 s.
const PUBLISH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The buckets of one of a service's own histograms (the ones above are everyone's).
#[derive(Debug, Clone)]
pub struct Buckets {
    /// The histogram's full name.
    pub metric: &'static str,
    /// Its upper bounds, ascending.
    pub bounds: Vec<f64>,
}

/// Installs the recorder on first use, with the shared buckets and the service's `own`, and
/// records `jobstack_build_info`; later calls return the same handle. Must be called inside a
/// Tokio runtime (it spawns the histogram upkeep).
pub fn install(service: &str, own: &[Buckets]) -> PrometheusHandle {
    let handle = HANDLE.get_or_init(|| {
        let builder = own.iter().try_fold(PrometheusBuilder::new(), |b, h| {
            b.set_buckets_for_metric(Matcher::Full(h.metric.into()), &h.bounds)
        });
        let handle = builder
            .and_then(|b| b.set_buckets_for_metric(Matcher::Prefix("http_".into()), HTTP_BUCKETS))
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Prefix("jobstack_job_".into()), JOB_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Prefix("jobstack_amqp_".into()), PUBLISH_BUCKETS)
            })
            .expect("bucket lists are non-empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        // install_recorder() spawns no upkeep: without it histograms grow without bound.
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        handle
    });
    metrics::gauge!("jobstack_build_info", "service" => service.to_owned(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    handle.clone()
}

/// The current metrics in Prometheus text format.
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// The `/metrics` handler: OpenMetrics (with exemplars) if `Accept` names it, else [`render`].
pub async fn serve(headers: HeaderMap) -> Response {
    let wants_openmetrics = headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    });
    if wants_openmetrics {
        (
            [(header::CONTENT_TYPE, openmetrics::CONTENT_TYPE)],
            openmetrics::convert(&render()),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            render(),
        )
            .into_response()
    }
}
