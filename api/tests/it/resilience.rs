//! Nothing accepted is lost: a broker outage at accept time, a worker stopped mid-job.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{Options, TestApp};

/// A port with nothing listening (yet).
async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Forwards `port` to the local RabbitMQ: the broker "comes back" on that port.
pub(crate) async fn open_proxy(port: u16) -> Proxy {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let links = Arc::new(Mutex::new(Vec::<tokio::task::AbortHandle>::new()));
    let tracked = links.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let link = tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect("127.0.0.1:5672").await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
            tracked.lock().unwrap().push(link.abort_handle());
        }
    });
    Proxy { links }
}

/// A TCP forwarder in front of RabbitMQ whose connections the test can cut.
pub(crate) struct Proxy {
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    /// Drops every connection through the proxy, as a broker restart or a forced close does.
    fn cut(&self) -> usize {
        let links: Vec<_> = self.links.lock().unwrap().drain(..).collect();
        links.iter().for_each(tokio::task::AbortHandle::abort);
        links.len()
    }
}

#[tokio::test]
async fn a_job_accepted_while_rabbitmq_is_unreachable_runs_once_it_is_back() {
    let port = free_port().await;
    let app = TestApp::with(Options {
        amqp_url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        ..Default::default()
    })
    .await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["detail"], "not reachable: RabbitMQ");

    let id = app
        .create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.job(&id).await["status"],
        "queued",
        "durable, waiting for the broker"
    );

    let _proxy = open_proxy(port).await;
    let job = app.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded");
    app.wait_until(Duration::from_secs(10), "ready", || async {
        app.get("/readyz").await.0 == StatusCode::OK
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn stopping_a_worker_lets_its_in_flight_job_finish() {
    let mut app = TestApp::spawn().await;
    let id = app
        .create("sleep", json!({"duration_ms": 1500, "steps": 3}))
        .await;
    app.wait_for(&id, Duration::from_secs(30), |j| j["status"] == "running")
        .await;
    let took = app.stop_worker().await;
    assert!(
        took >= Duration::from_millis(500),
        "it waited for the job ({took:?})"
    );
    let job = app.wait_final(&id, Duration::from_secs(10)).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["attempts"], 1, "finished in place, not re-run");
    app.stop().await;
}

#[tokio::test]
async fn a_job_that_outlives_the_grace_period_goes_back_to_the_queue() {
    let mut app = TestApp::with(Options {
        grace: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let id = app
        .create("sleep", json!({"duration_ms": 4000, "steps": 40}))
        .await;
    app.wait_for(&id, Duration::from_secs(30), |j| j["status"] == "running")
        .await;
    app.stop_worker().await;
    assert_ne!(app.job(&id).await["status"], "succeeded");
    app.start_worker().await;
    let job = app.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(
        job["status"], "succeeded",
        "redelivered and run to the end: {job}"
    );
    app.stop().await;
}

#[tokio::test]
async fn both_services_reconnect_after_losing_the_broker_and_readiness_follows() {
    let port = free_port().await;
    let proxy = open_proxy(port).await;
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let app = TestApp::with(Options {
        amqp_url: url.clone(),
        worker_amqp_url: url,
        ..Default::default()
    })
    .await;
    app.wait_until(Duration::from_secs(10), "api ready", || async {
        app.get("/readyz").await.0 == StatusCode::OK
    })
    .await;
    let before = app
        .create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    assert_eq!(
        app.wait_final(&before, Duration::from_secs(30)).await["status"],
        "succeeded"
    );

    assert!(
        proxy.cut() >= 2,
        "the api and the worker were connected through the proxy"
    );
    // Readiness drops only for the ~0.1–0.2 s backoff (the broker is really there); the
    // reconnect counter is the durable evidence that both sessions were rebuilt.
    app.wait_until(
        Duration::from_secs(10),
        "both services to reconnect",
        || async {
            let metrics = app
                .http
                .get(format!("{}/metrics", app.url))
                .send()
                .await
                .unwrap();
            metrics
                .text()
                .await
                .unwrap()
                .contains("jobstack_amqp_reconnects_total 2")
        },
    )
    .await;
    // Accepted while the session is down, run once both have reconnected on their own.
    let during = app
        .create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    let job = app.wait_final(&during, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded");
    app.wait_until(Duration::from_secs(10), "ready again", || async {
        app.get("/readyz").await.0 == StatusCode::OK
    })
    .await;
    app.stop().await;
}
