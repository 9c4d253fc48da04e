//! The demo's fault switches (`/admin/faults` on the api and the worker): refused without
//! `FAULTS_TOKEN`, and each fault, once on, seen in the metrics and in the traces, then gone
//! once off.

use std::time::{Duration, Instant};

use opentelemetry::trace::Status;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::faults::Token;

use crate::helpers::{Options, cleanup, configs};
use crate::telemetry::{Isolated, attr, wait_until_serving};

const TOKEN: &str = "demo-faults-token-0123456789abcdef";

struct Demo {
    http: reqwest::Client,
    plain: reqwest::Client,
    api: String,
    exporter: InMemorySpanExporter,
}

impl Demo {
    async fn switch(&self, url: &str, body: Value) {
        let res = self
            .plain
            .put(url)
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "{url} {body}: {}",
            res.text().await.unwrap()
        );
    }

    async fn submit(&self, payload: Value) -> (String, String) {
        let job: Value = self
            .http
            .post(format!("{}/jobs", self.api))
            .json(&json!({"kind": "sleep", "payload": payload}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            job["id"].as_str().unwrap().to_owned(),
            job["trace_id"].as_str().unwrap().to_owned(),
        )
    }

    async fn final_status(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let j: Value = self
                .http
                .get(format!("{}/jobs/{id}", self.api))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if ["succeeded", "failed", "cancelled"]
                .contains(&j["status"].as_str().unwrap_or_default())
            {
                return j;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "job still {j}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The spans of `trace` once one named `until` (or, for `job.<event>`, the api's span
    /// applying that event) is exported.
    async fn trace(&self, trace: &str, until: &str) -> Vec<SpanData> {
        let event = until.strip_prefix("job.");
        let start = Instant::now();
        loop {
            let spans: Vec<SpanData> = self
                .exporter
                .get_finished_spans()
                .unwrap()
                .into_iter()
                .filter(|s| s.span_context.trace_id().to_string() == trace)
                .collect();
            if spans.iter().any(|s| match event {
                Some(e) => attr(s, "job.event").as_deref() == Some(e),
                None => s.name == until,
            }) {
                return spans;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {until:?} span in trace {trace}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /jobs/{id}` and the spans of the trace it made.
    async fn read_job_traced(&self, id: &str) -> Vec<SpanData> {
        let res = self
            .http
            .get(format!("{}/jobs/{id}", self.api))
            .send()
            .await
            .unwrap();
        let tp = res.headers()["traceparent"].to_str().unwrap().to_owned();
        self.trace(&tp[3..35], "GET /jobs/{id}").await
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = self
            .plain
            .get(format!("{}/metrics", self.api))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no series {series}"))
    }
}

fn faults_of(spans: &[SpanData], name: &str) -> Vec<Duration> {
    spans
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.end_time.duration_since(s.start_time).unwrap())
        .collect()
}

#[tokio::test]
async fn each_fault_switches_on_at_run_time_shows_in_metrics_and_traces_and_switches_off() {
    let exporter = InMemorySpanExporter::default();
    let (_, mut api_config, mut worker_config) = configs(&Options {
        max_attempts: 1,
        ..Options::default()
    });
    api_config.faults_token = Token::new(TOKEN);
    worker_config.faults_token = Token::new(TOKEN);
    let cfg = api_config.clone();
    let api = Isolated::spawn("api", exporter.clone(), move |l, stop| {
        api::run(l, cfg, stop)
    });
    let worker = Isolated::spawn("worker", exporter.clone(), move |l, stop| {
        worker::run(l, worker_config, stop)
    });
    let demo_key = api_config.demo_key.clone().unwrap();
    let demo = Demo {
        http: crate::helpers::authorized(&demo_key),
        plain: reqwest::Client::new(),
        api: format!("http://{}", api.addr),
        exporter: exporter.clone(),
    };
    wait_until_serving(&demo.http, &demo.api).await;
    let api_faults = format!("{}/admin/faults", demo.api);
    let worker_faults = format!("http://{}/admin/faults", worker.addr);
    let (warm, _) = demo.submit(json!({"duration_ms": 1, "steps": 1})).await;
    demo.final_status(&warm).await;

    // Without the token: 401 problem+json, and nothing switched (an admin API key is not it).
    for url in [&api_faults, &worker_faults] {
        for auth in [None, Some(format!("{TOKEN}x")), Some(demo_key.clone())] {
            let mut req = demo
                .plain
                .put(url.as_str())
                .json(&json!({"fail_percent": 100, "db_latency_ms": 5000}));
            if let Some(a) = &auth {
                req = req.bearer_auth(a);
            }
            let res = req.send().await.unwrap();
            assert_eq!(
                res.status(),
                StatusCode::UNAUTHORIZED,
                "{url} with {auth:?}"
            );
            assert_eq!(res.headers()["content-type"], "application/problem+json");
        }
        let res = demo
            .plain
            .put(url.as_str())
            .bearer_auth(TOKEN)
            .json(&json!({"fail_percent": 101}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "out of bounds"
        );
        let now: Value = demo
            .plain
            .get(url.as_str())
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            now,
            json!({"db_latency_ms": 0, "fail_percent": 0, "slow_consume_ms": 0}),
            "{url}"
        );
    }
    let (id, trace) = demo.submit(json!({"duration_ms": 1, "steps": 1})).await;
    assert_eq!(
        demo.final_status(&id).await["status"],
        "succeeded",
        "refused switches changed nothing"
    );
    assert!(faults_of(&demo.trace(&trace, "POST /jobs").await, "fault db_latency").is_empty());

    // 1. Latency on the api's database path: the request is slower by at least the delay, in
    //    its latency histogram and as a `fault db_latency` span of its trace.
    demo.switch(&api_faults, json!({"db_latency_ms": 400}))
        .await;
    let series =
        r#"http_server_request_duration_seconds_sum{method="GET",route="/jobs/{id}",status="200"}"#;
    let before = demo.metric(series).await;
    let spans = demo.read_job_traced(&id).await;
    let slow = demo.metric(series).await - before;
    assert!(
        slow >= 0.4,
        "the request took {slow} s with 400 ms on the database path"
    );
    let injected = faults_of(&spans, "fault db_latency");
    assert!(
        !injected.is_empty() && injected.iter().all(|d| *d >= Duration::from_millis(400)),
        "{injected:?}"
    );
    demo.switch(&api_faults, json!({})).await;
    let spans = demo.read_job_traced(&id).await;
    assert!(
        faults_of(&spans, "fault db_latency").is_empty(),
        "off: no injected latency"
    );

    // 2. Failing handlers: the attempt fails (one attempt allowed: the job fails), its span is an
    //    error naming the fault, the failures counter moves; off, the next job succeeds.
    let failed = r#"jobstack_jobs_finished_total{kind="sleep",outcome="failed"}"#;
    let before = demo.metric(failed).await;
    demo.switch(&worker_faults, json!({"fail_percent": 100}))
        .await;
    let (id, trace) = demo.submit(json!({"duration_ms": 1, "steps": 1})).await;
    let job = demo.final_status(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job.to_string().contains("injected fault"), "{job}");
    assert_eq!(demo.metric(failed).await - before, 1.0);
    let spans = demo.trace(&trace, "job.failed").await;
    assert!(
        spans.iter().any(|s| matches!(&s.status, Status::Error { description } if description.contains("injected fault"))),
        "the attempt's span is an error naming the fault"
    );
    demo.switch(&worker_faults, json!({})).await;
    let (id, _) = demo.submit(json!({"duration_ms": 1, "steps": 1})).await;
    assert_eq!(
        demo.final_status(&id).await["status"],
        "succeeded",
        "off: the next job succeeds"
    );

    // 3. A slow consumer: the wait before the job starts grows by the delay, in the queue-wait
    //    histogram and as a `fault slow_consume` span; off, no such span.
    let wait = r#"jobstack_job_queue_wait_seconds_sum{kind="sleep"}"#;
    let before = demo.metric(wait).await;
    demo.switch(&worker_faults, json!({"slow_consume_ms": 700}))
        .await;
    let (id, trace) = demo.submit(json!({"duration_ms": 1, "steps": 1})).await;
    assert_eq!(demo.final_status(&id).await["status"], "succeeded");
    assert!(
        demo.metric(wait).await - before >= 0.7,
        "queue wait includes the slow consumer"
    );
    let injected = faults_of(
        &demo.trace(&trace, "fault slow_consume").await,
        "fault slow_consume",
    );
    assert!(
        injected.len() == 1 && injected[0] >= Duration::from_millis(700),
        "{injected:?}"
    );
    demo.switch(&worker_faults, json!({})).await;
    let (id, trace) = demo.submit(json!({"duration_ms": 1, "steps": 1})).await;
    assert_eq!(demo.final_status(&id).await["status"], "succeeded");
    let spans = demo.trace(&trace, "job.succeeded").await;
    assert!(
        faults_of(&spans, "fault slow_consume").is_empty(),
        "off: no slow consumer"
    );

    api.stop().await;
    worker.stop().await;
    cleanup(&api_config).await;
}
