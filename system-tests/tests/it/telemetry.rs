//! The telemetry contract: one trace per job across both services, JSON log lines that carry it,
//! OTLP export over gRPC and HTTP, and bounded metrics.
//!
//! The api and the worker run in-process here, each on its own thread and current-thread
//! runtime with a subscriber of its own (`service` field, tracer name), exporting to one
//! in-memory exporter — as two processes would to one collector.

use std::io::Write;
use std::net::TcpListener as StdListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, SpanKind};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::telemetry::{LogFormat, Settings};
use tokio_util::sync::CancellationToken;

use crate::helpers::{Options, cleanup, configs};

/// Log lines written by one service.
#[derive(Clone, Default)]
pub(crate) struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    pub(crate) fn parsed(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// A service on a thread of its own, with its own subscriber.
pub(crate) struct Isolated {
    pub(crate) addr: std::net::SocketAddr,
    stop: CancellationToken,
    thread: std::thread::JoinHandle<()>,
    lines: Lines,
}

impl Isolated {
    pub(crate) fn spawn<F, Fut>(
        service: &'static str,
        exporter: InMemorySpanExporter,
        run: F,
    ) -> Self
    where
        F: FnOnce(tokio::net::TcpListener, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let lines = Lines::default();
        let (token, sink) = (stop.clone(), lines.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(service).build())
                .build();
            let settings = Settings {
                service: service.to_owned(),
                log_format: LogFormat::Json,
                log_filter: "info,api=debug".to_owned(),
                export: None,
                sampler: Settings::from_env(service).unwrap().sampler,
                exemplars: true,
            };
            let writer = move || sink.clone();
            let _guard = tracing::subscriber::set_default(shared::telemetry::subscriber(
                &settings, writer, &provider,
            ));
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                run(listener, token).await.unwrap();
            });
        });
        Self {
            addr,
            stop,
            thread,
            lines,
        }
    }

    /// Stops the service and waits for its thread. Never a blocking join on the test's own
    /// runtime: the proxy in front of the broker runs there, and a service whose broker froze
    /// mid-shutdown is exactly what hung this test before.
    pub(crate) async fn stop(self) -> Lines {
        self.stop.cancel();
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        self.lines
    }
}

pub(crate) fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn scope(span: &SpanData) -> &str {
    span.instrumentation_scope.name()
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_job_is_one_trace_from_the_request_through_the_worker_and_back() {
    check_one_trace(false).await;
}

#[tokio::test]
async fn a_job_accepted_while_the_broker_was_down_still_joins_its_request_trace() {
    check_one_trace(true).await;
}

async fn check_one_trace(broker_down_at_first: bool) {
    let exporter = InMemorySpanExporter::default();
    let proxy_port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_, mut api_config, worker_config) = configs(&Options::default());
    if broker_down_at_first {
        api_config.amqp.url = crate::helpers::rabbitmq_via(proxy_port);
    }
    let t = api_config.topology();

    let cfg = api_config.clone();
    let api = Isolated::spawn("api", exporter.clone(), move |l, stop| {
        api::run(l, cfg, stop)
    });
    let api_url = format!("http://{}", api.addr);
    let worker = Isolated::spawn("worker", exporter.clone(), move |l, stop| {
        worker::run(l, worker_config, stop)
    });
    let http = crate::helpers::authorized(api_config.demo_key.as_deref().unwrap());
    wait_until_serving(&http, &api_url).await;

    let res = http
        .post(format!("{api_url}/jobs"))
        .json(&json!({"kind": "sleep", "payload": {"duration_ms": 600, "steps": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let job: Value = res.json().await.unwrap();
    let (id, trace) = (
        job["id"].as_str().unwrap().to_owned(),
        job["trace_id"].as_str().unwrap().to_owned(),
    );
    // The broker "comes back" through the proxy, which lives until the test ends.
    let mut _proxy = None;
    if broker_down_at_first {
        tokio::time::sleep(Duration::from_millis(500)).await;
        _proxy = Some(crate::resilience::open_proxy(proxy_port).await);
    }
    let start = Instant::now();
    loop {
        let j: Value = http
            .get(format!("{api_url}/jobs/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if j["status"] == "succeeded" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "job still {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The job reads as succeeded once the api applied the final event; that event's span ends
    // just after, so wait for it.
    let spans = || -> Vec<SpanData> {
        exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.span_context.trace_id().to_string() == trace)
            .collect()
    };
    wait_until("the api's span for the succeeded event", || {
        spans()
            .iter()
            .any(|s| attr(s, "job.event").as_deref() == Some("succeeded"))
    })
    .await;
    let spans = spans();
    let by_name =
        |name: &str| -> Vec<&SpanData> { spans.iter().filter(|s| s.name == name).collect() };
    let one = |name: &str| -> &SpanData {
        let found = by_name(name);
        assert_eq!(
            found.len(),
            1,
            "one {name:?} span in {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        found[0]
    };

    let root = one("POST /jobs");
    assert_eq!(
        root.parent_span_id,
        SpanId::INVALID,
        "the HTTP span is the root"
    );
    assert_eq!(root.span_kind, SpanKind::Server);
    assert_eq!(scope(root), "api");
    assert_eq!(attr(root, "http.route").as_deref(), Some("/jobs"));
    assert_eq!(attr(root, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(
        attr(root, "http.response.status_code").as_deref(),
        Some("202")
    );

    let publish = one(&format!("publish {}", t.jobs_exchange()));
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(publish.parent_span_id, root.span_context.span_id());
    assert_eq!(
        attr(publish, "messaging.system").as_deref(),
        Some("rabbitmq")
    );
    assert_eq!(
        attr(publish, "messaging.destination.name"),
        Some(t.jobs_exchange())
    );
    assert_eq!(
        attr(publish, "messaging.rabbitmq.destination.routing_key").as_deref(),
        Some("sleep")
    );
    assert_eq!(
        attr(publish, "messaging.message.id").as_deref(),
        Some(id.as_str())
    );

    let process = one(&format!("process {}", t.jobs_queue()));
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(scope(process), "worker");
    assert_eq!(
        process.parent_span_id,
        publish.span_context.span_id(),
        "worker continues the relay's publish"
    );
    assert_eq!(
        attr(process, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(attr(process, "job.id").as_deref(), Some(id.as_str()));
    assert_eq!(attr(process, "job.kind").as_deref(), Some("sleep"));
    assert_eq!(attr(process, "job.attempt").as_deref(), Some("1"));

    for step in ["step 1", "step 2"] {
        assert_eq!(
            one(step).parent_span_id,
            process.span_context.span_id(),
            "{step} is a child of the process span"
        );
    }
    // A span per event that changes the job's state; progress is never a span (a job that runs
    // for hours would grow its trace without bound), but at most ten events on the attempt's.
    let mut event_publishes = by_name(&format!("publish {}", t.events_exchange()));
    event_publishes.sort_by_key(|s| s.start_time);
    let keys: Vec<String> = event_publishes
        .iter()
        .map(|s| attr(s, "messaging.rabbitmq.destination.routing_key").unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        ["job.started", "job.succeeded"],
        "started at 100 ms, then the outcome"
    );
    let marks = process
        .events
        .iter()
        .filter(|e| e.name == "job progress")
        .count();
    assert!(
        (1..=10).contains(&marks),
        "progress marks on the attempt's span: {marks}"
    );
    assert!(
        event_publishes
            .iter()
            .all(|s| s.parent_span_id == process.span_context.span_id())
    );

    let handled = by_name(&format!("process {}", t.events_queue()));
    assert_eq!(
        handled.len(),
        event_publishes.len(),
        "the api handled every event"
    );
    for h in &handled {
        assert_eq!(scope(h), "api");
        assert!(
            event_publishes
                .iter()
                .any(|p| p.span_context.span_id() == h.parent_span_id),
            "event handling is a child of the worker's event publish"
        );
    }

    let api_lines = api.stop().await;
    let worker_lines = worker.stop().await;
    check_log_lines(
        "api",
        &api_lines.parsed(),
        &id,
        &trace,
        &["job accepted", "job event"],
    );
    check_log_lines(
        "worker",
        &worker_lines.parsed(),
        &id,
        &trace,
        &["job started", "job succeeded"],
    );
    cleanup(&api_config).await;
}

/// Metric -> trace: the latency buckets carry exemplars in OpenMetrics, and each exemplar's
/// trace is the one in the JSON log lines of the request or job it measured.
#[tokio::test]
async fn latency_buckets_carry_the_trace_of_the_request_and_job_they_measured() {
    let exporter = InMemorySpanExporter::default();
    let (_, api_config, worker_config) = configs(&Options::default());
    let cfg = api_config.clone();
    let api = Isolated::spawn("api", exporter.clone(), move |l, stop| {
        api::run(l, cfg, stop)
    });
    let api_url = format!("http://{}", api.addr);
    let worker = Isolated::spawn("worker", exporter.clone(), move |l, stop| {
        worker::run(l, worker_config, stop)
    });
    let http = crate::helpers::authorized(api_config.demo_key.as_deref().unwrap());
    wait_until_serving(&http, &api_url).await;

    // 1.3 s: the job's duration falls in the (1, 2.5] bucket, alone there.
    let job: Value = http
        .post(format!("{api_url}/jobs"))
        .json(&json!({"kind": "sleep", "payload": {"duration_ms": 1300, "steps": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    while http
        .get(format!("{api_url}/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["status"]
        != "succeeded"
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "job {id} did not succeed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A request in a trace its caller did not sample: never an exemplar (it is never exported).
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let res = http
        .post(format!("{api_url}/jobs"))
        .header("traceparent", unsampled)
        .json(&json!({"kind": "sleep", "payload": {"duration_ms": 1, "steps": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);

    let scrape = |url: String, accept: &'static str| {
        let http = http.clone();
        async move {
            let res = http.get(url).header("accept", accept).send().await.unwrap();
            let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
            (ct, res.text().await.unwrap())
        }
    };
    let om = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (ct, api_om) = scrape(format!("{api_url}/metrics"), om).await;
    assert!(
        ct.starts_with("application/openmetrics-text; version=1.0.0"),
        "{ct}"
    );
    assert!(api_om.ends_with("# EOF\n"), "OpenMetrics ends in # EOF");
    let (ct, worker_om) = scrape(format!("http://{}/metrics", worker.addr), om).await;
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let (ct, plain) = scrape(format!("{api_url}/metrics"), "text/plain").await;
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert!(
        !plain.contains(" # {"),
        "the Prometheus text format has no exemplars"
    );

    let http_exemplars = exemplars(
        &api_om,
        r#"http_server_request_duration_seconds_bucket{method="POST",route="/jobs",status="202","#,
    );
    let job_exemplars = exemplars(
        &worker_om,
        r#"jobstack_job_duration_seconds_bucket{kind="sleep",outcome="succeeded","#,
    );
    assert_eq!(
        http_exemplars.len(),
        1,
        "one sampled POST /jobs, one exemplar: {http_exemplars:?}"
    );
    assert_eq!(
        job_exemplars.len(),
        1,
        "one sampled job, one exemplar: {job_exemplars:?}"
    );
    let (le, http_trace, http_span, value) = &http_exemplars[0];
    assert!(
        *value <= le.parse::<f64>().unwrap(),
        "the exemplar lies in its bucket"
    );
    let (le, job_trace, _, value) = &job_exemplars[0];
    assert_eq!(le, "2.5", "1.3 s falls in the 2.5 bucket");
    assert!((1.3..2.5).contains(value), "{value}");
    assert!(
        !api_om.contains("0af7651916cd43dd8448eb211c80319c"),
        "the unsampled trace is no exemplar"
    );

    // The request's span (read before the services stop: stopping empties the exporter), the
    // same request's log line, the same job's log lines.
    let root = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "POST /jobs" && s.span_context.trace_id().to_string() == *http_trace)
        .expect("the exemplar's trace was exported");
    assert_eq!(
        root.span_context.span_id().to_string(),
        *http_span,
        "the exemplar names the request's span"
    );
    let api_lines = api.stop().await.parsed();
    let worker_lines = worker.stop().await.parsed();
    let accepted = api_lines
        .iter()
        .find(|l| l["message"] == "job accepted" && l["job.id"] == id.as_str())
        .expect("the api logged the job's acceptance");
    assert_eq!(
        accepted["trace_id"].as_str(),
        Some(http_trace.as_str()),
        "exemplar trace = the request's log line"
    );
    let succeeded = worker_lines
        .iter()
        .find(|l| l["message"] == "job succeeded" && l["job.id"] == id.as_str())
        .expect("the worker logged the job's success");
    assert_eq!(
        succeeded["trace_id"].as_str(),
        Some(job_trace.as_str()),
        "exemplar trace = the job's log line"
    );
    cleanup(&api_config).await;
}

/// `(le, trace_id, span_id, value)` of each bucket line starting with `prefix` that has one
/// (`<series>{..,le="<le>"} <count> # {trace_id="..",span_id=".."} <value> <seconds.millis>`).
fn exemplars(text: &str, prefix: &str) -> Vec<(String, String, String, f64)> {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.split_once(" # {"))
        .map(|(sample, exemplar)| {
            let le = sample
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap();
            let (labels, rest) = exemplar
                .split_once("} ")
                .unwrap_or_else(|| panic!("exemplar {exemplar}"));
            let (trace, span) = labels
                .strip_prefix("trace_id=\"")
                .and_then(|r| r.split_once("\",span_id=\""))
                .and_then(|(t, s)| Some((t, s.strip_suffix('"')?)))
                .unwrap_or_else(|| panic!("exemplar labels {labels}"));
            assert!(hex(trace, 32) && hex(span, 16), "ids in W3C form: {labels}");
            let mut parts = rest.split(' ');
            let value: f64 = parts.next().unwrap().parse().unwrap();
            let at: f64 = parts.next().expect("a timestamp").parse().unwrap();
            assert!(
                at > 1.7e9 && parts.next().is_none(),
                "seconds since the epoch: {rest}"
            );
            (le.to_owned(), trace.to_owned(), span.to_owned(), value)
        })
        .collect()
}

pub(crate) async fn wait_until_serving(http: &reqwest::Client, url: &str) {
    let start = Instant::now();
    while http.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "api did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every line parses and has the contract's fields; the job's lines carry its trace.
fn check_log_lines(service: &str, lines: &[Value], job_id: &str, trace: &str, expected: &[&str]) {
    assert!(!lines.is_empty(), "{service} logged");
    for line in lines {
        for field in ["timestamp", "level", "target", "message", "service"] {
            assert!(
                line[field].is_string(),
                "{service} line without {field}: {line}"
            );
        }
        chrono::DateTime::parse_from_rfc3339(line["timestamp"].as_str().unwrap())
            .expect("RFC 3339 timestamp");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "UTC");
        assert!(
            ["trace", "debug", "info", "warn", "error"].contains(&line["level"].as_str().unwrap())
        );
        assert_eq!(line["service"], service);
        if let Some(t) = line["trace_id"].as_str() {
            assert!(
                t.len() == 32
                    && t.chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{line}"
            );
            let s = line["span_id"].as_str().expect("span_id beside trace_id");
            assert!(
                s.len() == 16
                    && s.chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{line}"
            );
        }
        let text = line.to_string();
        assert!(
            !text.contains("guest:guest"),
            "a password reached a log line: {line}"
        );
    }
    let about_job: Vec<&Value> = lines.iter().filter(|l| l["job.id"] == job_id).collect();
    for message in expected {
        assert!(
            about_job.iter().any(|l| l["message"] == *message),
            "{service} logged {message:?} about the job: {about_job:#?}"
        );
    }
    for line in &about_job {
        assert_eq!(
            line["trace_id"], trace,
            "{service} line about the job carries its trace: {line}"
        );
    }
}
