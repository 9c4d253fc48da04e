//! Nothing accepted is lost: a broker outage at accept time, a worker stopped mid-job.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use test_support::net::{Proxy, free_port};
use tokio::net::TcpStream;

use crate::helpers::{Options, TestApp, postgres_addr, rabbitmq_addr, rabbitmq_via};

/// Forwards `port` to the test RabbitMQ: the broker "comes back" on that port.
pub(crate) async fn open_proxy(port: u16) -> Proxy {
    test_support::net::open_proxy(port, rabbitmq_addr()).await
}

#[tokio::test]
async fn a_job_accepted_while_rabbitmq_is_unreachable_runs_once_it_is_back() {
    let port = free_port().await;
    let app = TestApp::with(Options {
        amqp_url: rabbitmq_via(port),
        ..Default::default()
    })
    .await;
    // Still ready: PostgreSQL answers, so jobs are accepted durably; the body names the broker.
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"status": "degraded", "postgres": "up", "rabbitmq": "down"})
    );

    let id = app
        .create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    // Committed while the broker is unreachable (a 202 is a commit); it runs once it is back.
    assert_eq!(
        app.job(&id).await["status"],
        "queued",
        "durable, waiting for the broker"
    );

    let _proxy = open_proxy(port).await;
    let job = app.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded");
    app.wait_until(Duration::from_secs(10), "broker up in /readyz", || async {
        app.get("/readyz").await.1["rabbitmq"] == "up"
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn stopping_a_worker_hands_its_job_back_and_the_next_worker_resumes_it() {
    let mut app = TestApp::spawn().await;
    // 6 steps of a second: a checkpoint after each (at most one a second).
    let id = app
        .create("sleep", json!({"duration_ms": 6000, "steps": 6}))
        .await;
    app.wait_for(&id, Duration::from_secs(30), |j| {
        j["checkpoint"]["attempt"] == 1 && j["progress"].as_f64() >= Some(0.3)
    })
    .await;
    let took = app.stop_worker().await;
    assert!(
        took < Duration::from_secs(5),
        "the job stopped at once instead of finishing ({took:?})"
    );
    // Handed back (its `released` event on its way to the api), to run as the next attempt.
    let job = app
        .wait_for(&id, Duration::from_secs(10), |j| j["status"] != "running")
        .await
        .pop()
        .unwrap();
    assert_eq!(job["status"], "queued", "handed back: {job}");
    let saved = job["checkpoint"].clone();
    app.start_worker().await;
    let done = app.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "resumed as the next attempt: {done}");
    let resumed = done["result"]["resumed_at_step"].as_u64().unwrap();
    assert!(
        resumed >= 2,
        "resumed after the steps saved, not from zero: {done} (saved {saved})"
    );
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
    let url = rabbitmq_via(port);
    let app = TestApp::with(Options {
        amqp_url: url.clone(),
        worker_amqp_url: url,
        ..Default::default()
    })
    .await;
    app.wait_until(Duration::from_secs(10), "api connected", || async {
        app.get("/readyz").await.1["status"] == "ready"
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
        app.get("/readyz").await.1["status"] == "ready"
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn readiness_follows_postgres_and_only_reports_the_broker() {
    let port = free_port().await;
    let postgres = test_support::net::open_proxy(port, postgres_addr()).await;
    let app = TestApp::with(Options {
        worker: false,
        postgres_via: Some(port),
        ..Default::default()
    })
    .await;
    app.wait_until(Duration::from_secs(10), "api connected", || async {
        app.get("/readyz").await.1["status"] == "ready"
    })
    .await;

    postgres.down();
    let res = app
        .http
        .get(format!("{}/readyz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "503s are problems like every other error"
    );
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["detail"], "not ready: postgres down");
    assert_eq!(body["postgres"], "down");
    assert_eq!(body["rabbitmq"], "up", "the broker is still named");
    app.stop().await;
}

#[tokio::test]
async fn a_request_that_never_completes_does_not_hold_shutdown_past_the_grace_period() {
    let app = TestApp::with(Options {
        worker: false,
        grace: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    // Headers complete, half the body: the handler is running, reading a body that never ends.
    let mut stalled = TcpStream::connect(app.url.trim_start_matches("http://"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, b"POST /jobs HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"kind\"")
        .await
        .unwrap();
    // Without the bound this takes REQUEST_TIMEOUT_SECS (10 s, then a 408).
    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("the api stops within its grace period (1 s) despite the stalled request");
}

#[tokio::test]
async fn a_broker_that_stops_answering_does_not_hold_shutdown() {
    let port = free_port().await;
    let proxy = open_proxy(port).await;
    let url = rabbitmq_via(port);
    let app = TestApp::with(Options {
        amqp_url: url.clone(),
        worker_amqp_url: url,
        grace: Duration::from_secs(120),
        ..Default::default()
    })
    .await;
    app.wait_until(Duration::from_secs(10), "api connected", || async {
        app.get("/readyz").await.1["status"] == "ready"
    })
    .await;
    // Every connection stays open and nothing comes back: no broker call can complete, in
    // whatever step of its session each service is (set-up, consuming, closing).
    proxy.freeze();
    tokio::time::timeout(Duration::from_secs(20), app.stop())
        .await
        .expect("the api and the worker stop although the broker never answers");
}

/// What a client saw of one request while PostgreSQL was killing the api's sessions.
#[derive(Debug)]
enum Answer {
    Accepted(String),
    Read,
    Unavailable,
}

#[tokio::test]
async fn postgres_killing_the_apis_sessions_mid_request_is_a_503_with_retry_after_never_a_500() {
    let app = TestApp::api_only().await;
    let admin = sqlx::PgPool::connect(&crate::helpers::database_url("postgres"))
        .await
        .unwrap();
    let database = app
        .api_config
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let known = app
        .create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    // What a fast shutdown or a failover does to open sessions (SQLSTATE 57P01), over and over,
    // while clients submit and read.
    let stop = tokio_util::sync::CancellationToken::new();
    let killer = {
        let (admin, database, stop) = (admin.clone(), database.clone(), stop.clone());
        tokio::spawn(async move {
            let mut killed = 0i64;
            while !stop.is_cancelled() {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&database)
                .fetch_one(&admin)
                .await
                .unwrap();
                killed += n;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            killed
        })
    };
    let client = |n: usize| {
        let (http, url, known) = (app.http.clone(), app.url.clone(), known.clone());
        async move {
            let mut answers = Vec::new();
            for i in 0..60 {
                let res = if (n + i).is_multiple_of(3) {
                    http.get(format!("{url}/jobs/{known}"))
                        .send()
                        .await
                        .unwrap()
                } else {
                    http.post(format!("{url}/jobs"))
                        .json(&json!({"kind": "sleep", "payload": {"duration_ms": 10, "steps": 1}}))
                        .send()
                        .await
                        .unwrap()
                };
                let status = res.status();
                let retry_after = res.headers().get("retry-after").is_some();
                let body: serde_json::Value = res.json().await.unwrap_or_default();
                answers.push(match status {
                    StatusCode::ACCEPTED => {
                        Answer::Accepted(body["id"].as_str().unwrap().to_owned())
                    }
                    StatusCode::OK => Answer::Read,
                    StatusCode::SERVICE_UNAVAILABLE => {
                        assert!(retry_after, "a 503 says when to come back: {body}");
                        // The session may die under the handler's query or under the access
                        // layer's lookup of the caller's key, which runs first: both say so.
                        let detail = body["detail"].as_str().unwrap_or_default();
                        assert!(
                            [
                                "PostgreSQL is unavailable; try again shortly",
                                "PostgreSQL unavailable: cannot check the API key; send the \
                                 request again after `Retry-After`",
                            ]
                            .contains(&detail),
                            "{body}"
                        );
                        Answer::Unavailable
                    }
                    other => panic!("{other} during the session kills: {body}"),
                });
            }
            answers
        }
    };
    let answers: Vec<Answer> = futures_util::future::join_all((0..8).map(client))
        .await
        .into_iter()
        .flatten()
        .collect();
    stop.cancel();
    let killed = killer.await.unwrap();
    let unavailable = answers
        .iter()
        .filter(|a| matches!(a, Answer::Unavailable))
        .count();
    assert!(killed > 0, "no session was killed: the test tested nothing");
    assert!(
        unavailable > 0,
        "no request met a killed session ({killed} killed): the test tested nothing"
    );
    // Every 202 is a committed job.
    for answer in &answers {
        if let Answer::Accepted(id) = answer {
            app.wait_until(
                Duration::from_secs(10),
                "the accepted job readable",
                || async { app.get(&format!("/jobs/{id}")).await.0 == StatusCode::OK },
            )
            .await;
        }
    }
    app.stop().await;
}

/// Under a steady stream of submits, the api restarts twice, one worker is killed and another
/// stopped: every job the api accepted ends `succeeded` exactly once in PostgreSQL (one applied
/// success each, a first generation), a retried submit (same Idempotency-Key, after a refused
/// connection) never makes a second job, and jobs cancelled mid-stream end cancelled, never
/// succeeded.
#[tokio::test]
async fn restarts_of_both_services_under_load_lose_nothing_and_finish_nothing_twice() {
    use std::sync::{Arc, RwLock};
    let mut app = TestApp::with(Options {
        lease: Duration::from_secs(3),
        concurrency: 16,
        ..Default::default()
    })
    .await;
    // Long enough to be running when cancelled, cancelled before the restarts.
    let mut cancelled = Vec::new();
    for _ in 0..5 {
        cancelled.push(
            app.create("sleep", json!({"duration_ms": 20_000, "steps": 40}))
                .await,
        );
    }
    let url = Arc::new(RwLock::new(app.url.clone()));
    let load = {
        let (http, url) = (app.http.clone(), url.clone());
        tokio::spawn(async move {
            let (mut accepted, mut retried) = (Vec::new(), 0);
            for i in 0..400 {
                let body = json!({"kind": "sleep", "payload": {"duration_ms": 20, "steps": 2}});
                let id = loop {
                    let base = url.read().unwrap().clone();
                    let res = http
                        .post(format!("{base}/jobs"))
                        .header("idempotency-key", format!("load-{i}"))
                        .json(&body)
                        .send()
                        .await;
                    if let Ok(res) = res
                        && matches!(res.status().as_u16(), 200 | 202)
                    {
                        let job: serde_json::Value = res.json().await.unwrap();
                        break job["id"].as_str().unwrap().to_owned();
                    }
                    // Down or restarting: the same request again, under the same key.
                    retried += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                accepted.push(id);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (accepted, retried)
        })
    };
    for id in &cancelled {
        app.wait_for(id, Duration::from_secs(30), |j| j["status"] == "running")
            .await;
        assert_eq!(app.cancel(id).await.0, StatusCode::ACCEPTED);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    app.restart_api().await;
    *url.write().unwrap() = app.url.clone();
    tokio::time::sleep(Duration::from_millis(800)).await;
    app.kill_worker();
    app.start_worker().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    app.stop_worker().await;
    app.start_worker().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    app.restart_api().await;
    *url.write().unwrap() = app.url.clone();
    let (accepted, retried) = load.await.unwrap();
    assert!(retried > 0, "the restarts happened while the load ran");

    let mut ids = accepted.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 400, "one job per Idempotency-Key");
    for id in &accepted {
        let job = app.wait_final(id, Duration::from_secs(90)).await;
        assert_eq!(
            (job["status"].clone(), job["generation"].clone()),
            (json!("succeeded"), json!(0)),
            "{job}"
        );
    }
    for id in &cancelled {
        let job = app.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(job["status"], "cancelled", "{job}");
    }
    assert_eq!(
        app.count_jobs().await,
        405,
        "nothing but the accepted jobs exists"
    );
    // Each accepted job's success applied exactly once; no cancelled job's at all.
    assert_eq!(
        app.metric_sum(
            "jobstack_job_events_total",
            r#"event="succeeded",result="applied""#
        )
        .await,
        400.0
    );
    // The killed worker's attempts were found through the running table (their leases
    // lapsed); every job has ended, so none is left in it.
    let running: i64 = sqlx::query_scalar("SELECT count(*) FROM running")
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(running, 0, "only running jobs are in the running table");
    app.stop().await;
}
