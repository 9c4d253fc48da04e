//! Long jobs: attempts that outlive the broker's consumer timeout, leases that hand a dead
//! worker's job to another one (and never a live one's), checkpoints that survive crashes and
//! deploys, and payloads that evolve between an api and its workers.

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp};

const LONG: Duration = Duration::from_secs(60);

fn at(job: &Value, field: &str) -> DateTime<Utc> {
    job[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{field} of {job}"))
}

/// The broker's consumer timeout set to `ms` until dropped, then restored: `consumer_timeout`,
/// and `channel_tick_interval`, how often each channel checks it (a minute by default, so a
/// short timeout would only fire after a minute; RabbitMQ's own consumer-timeout tests shorten it
/// the same way). Node-wide settings on RabbitMQ 3.10 (the timeout read by each channel when it
/// opens, the interval each time a channel re-arms its tick), set through `rabbitmqctl eval` (`TEST_RABBITMQCTL` names another command, e.g. `docker compose
/// exec -T rabbitmq rabbitmqctl`). The test that uses it runs alone (`.config/nextest.toml`):
/// every channel opened meanwhile gets it.
struct ConsumerTimeout(Vec<(&'static str, String)>);

impl ConsumerTimeout {
    fn set(ms: u64) -> Self {
        let mut before = Vec::new();
        for (key, value) in [("consumer_timeout", ms), ("channel_tick_interval", 200)] {
            let now = rabbitmqctl(&format!("application:get_env(rabbit, {key})."));
            let now = now
                .trim()
                .strip_prefix("{ok,")
                .and_then(|v| v.strip_suffix('}'))
                .map(str::to_owned);
            rabbitmqctl(&format!("application:set_env(rabbit, {key}, {value})."));
            before.push((key, now.unwrap_or_else(|| "undefined".into())));
        }
        Self(before)
    }
}

impl Drop for ConsumerTimeout {
    fn drop(&mut self) {
        for (key, value) in &self.0 {
            let expr = match value.as_str() {
                "undefined" => format!("application:unset_env(rabbit, {key})."),
                v => format!("application:set_env(rabbit, {key}, {v})."),
            };
            rabbitmqctl(&expr);
        }
    }
}

fn rabbitmqctl(expr: &str) -> String {
    let command = std::env::var("TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let mut words = command.split_whitespace();
    let program = words.next().expect("a command");
    let out = Command::new(program)
        .args(words)
        .args(["eval", expr])
        .output()
        .unwrap_or_else(|e| {
            panic!("running {command} (set TEST_RABBITMQCTL to reach the test broker): {e}")
        });
    assert!(out.status.success(), "{command} eval {expr}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_job_several_times_longer_than_the_brokers_consumer_timeout_succeeds_once() {
    // Every channel the worker opens gets a 2 s consumer timeout: a worker that held a job's
    // message for the whole run would lose its channel after 2 s, and the job would be
    // delivered (and run) again.
    let _timeout = ConsumerTimeout::set(2_000);
    let app = TestApp::spawn().await;
    let id = app
        .create("sleep", json!({"duration_ms": 8000, "steps": 8}))
        .await;
    let job = app.wait_final(&id, LONG).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "one attempt: {job}");
    assert_eq!(
        app.metric_sum("jobstack_jobs_started_total", r#"kind="sleep""#)
            .await,
        1.0,
        "the handler ran once"
    );
    assert_eq!(
        app.metric_sum("jobstack_amqp_reconnects_total", "").await,
        0.0,
        "no channel was closed under the worker"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_killed_workers_job_runs_again_after_its_lease_from_its_last_checkpoint() {
    let lease = Duration::from_secs(3);
    let mut app = TestApp::with(Options {
        lease,
        ..Default::default()
    })
    .await;
    // 20 steps of 500 ms: a checkpoint about every second.
    let id = app
        .create("sleep", json!({"duration_ms": 10_000, "steps": 20}))
        .await;
    let before = app
        .wait_for(&id, LONG, |j| {
            j["checkpoint"]["attempt"] == 1 && j["progress"].as_f64() >= Some(0.2)
        })
        .await
        .pop()
        .unwrap();
    app.kill_worker();
    app.start_worker().await;
    // Not before the lease had lapsed: the api waited for it.
    app.wait_for(&id, LONG, |j| j["attempts"] == 2).await;
    let lapsed = at(&before, "heartbeat_at") + chrono::Duration::from_std(lease).unwrap();
    assert!(
        Utc::now() >= lapsed,
        "attempt 2 started before the lease of attempt 1 lapsed ({lapsed})"
    );
    let job = app.wait_final(&id, LONG).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "retried once: {job}");
    assert!(
        job["error"].as_str().unwrap().contains("attempt 1 lost"),
        "the lost attempt is on record: {job}"
    );
    // Resumed from the checkpoint, not from zero (the one seen before the kill, or a later one).
    let resumed = job["result"]["resumed_at_step"].as_u64().unwrap();
    let progress_then = before["progress"].as_f64().unwrap();
    assert!(
        resumed as f64 >= (progress_then * 20.0).floor() - 1.0 && resumed > 0,
        "resumed at step {resumed}, the job was at {progress_then} before the kill: {job}"
    );
    assert_eq!(
        app.metric_sum("jobstack_job_leases_lapsed_total", r#"kind="sleep""#)
            .await,
        1.0
    );
    assert_eq!(
        app.metric_sum(
            "jobstack_jobs_finished_total",
            r#"kind="sleep",outcome="succeeded""#
        )
        .await,
        1.0,
        "succeeded once"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_live_attempt_is_not_run_again_while_the_api_cannot_hear_its_heartbeats() {
    let lease = Duration::from_secs(3);
    let mut app = TestApp::with(Options {
        lease,
        ..Default::default()
    })
    .await;
    let id = app
        .create("sleep", json!({"duration_ms": 14_000, "steps": 14}))
        .await;
    app.wait_for(&id, LONG, |j| {
        j["status"] == "running" && !j["heartbeat_at"].is_null()
    })
    .await;
    // Longer than a heartbeat interval (500 ms), shorter than the lease; then twice the lease:
    // the worker's heartbeats wait in the queue, and the api applies them before it judges any
    // lease.
    app.pause_api(Duration::from_secs(2)).await;
    app.pause_api(lease * 2).await;
    let job = app.wait_final(&id, LONG).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "never run again: {job}");
    assert_eq!(
        app.metric_sum("jobstack_jobs_started_total", r#"kind="sleep""#)
            .await,
        1.0
    );
    assert_eq!(
        app.metric_sum("jobstack_job_leases_lapsed_total", r#"kind="sleep""#)
            .await,
        0.0
    );
    app.stop().await;
}

#[tokio::test]
async fn sigterm_with_a_hundred_long_jobs_running_resumes_them_all_on_the_next_worker_once() {
    let mut app = TestApp::with(Options {
        concurrency: 100,
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(
            app.create("sleep", json!({"duration_ms": 6000, "steps": 6}))
                .await,
        );
    }
    for id in &ids {
        app.wait_for(id, LONG, |j| j["checkpoint"]["attempt"] == 1)
            .await;
    }
    let took = app.stop_worker().await;
    assert!(
        took < app.worker_config.grace,
        "within the grace period: {took:?}"
    );
    app.start_worker().await;
    for id in &ids {
        let job = app.wait_final(id, LONG).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 2, "resumed as its next attempt: {job}");
        assert!(
            job["result"]["resumed_at_step"].as_u64() >= Some(1),
            "from its checkpoint, not from zero: {job}"
        );
    }
    assert_eq!(
        app.metric_sum(
            "jobstack_jobs_finished_total",
            r#"kind="sleep",outcome="succeeded""#
        )
        .await,
        100.0,
        "none twice to success"
    );
    assert_eq!(
        app.metric_sum(
            "jobstack_jobs_finished_total",
            r#"kind="sleep",outcome="released""#
        )
        .await,
        100.0,
        "every one handed back at the SIGTERM"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_cancel_holds_across_a_resume_and_stops_the_job_mid_step() {
    let mut app = TestApp::spawn().await;
    let id = app
        .create("sleep", json!({"duration_ms": 30_000, "steps": 30}))
        .await;
    app.wait_for(&id, LONG, |j| j["checkpoint"]["attempt"] == 1)
        .await;
    app.stop_worker().await;
    app.start_worker().await;
    app.wait_for(&id, LONG, |j| {
        j["attempts"] == 2 && j["status"] == "running"
    })
    .await;
    let (status, _) = app.cancel(&id).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Long before its end (its steps are a second each, 28 to go): it stopped where it was.
    let job = app.wait_final(&id, Duration::from_secs(5)).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(job["progress"].as_f64() < Some(0.5), "{job}");
    app.stop().await;
}

/// A kind whose payload changed: version 1 named a person in one field, version 2 in two.
mod greet {
    use std::time::Duration;

    use jobs_contract::JobKind;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};
    use serde_json::{Value, json};
    use worker::context::{JobContext, JobError};
    use worker::kinds::Handler;

    /// Version 1: `{"name": "Ada Lovelace"}`.
    pub(crate) struct V1;
    /// Version 2: `{"first": "Ada", "last": "Lovelace"}`, upgraded from version 1.
    pub(crate) struct V2;

    #[derive(Debug, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Name {
        name: String,
    }

    #[derive(Debug, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Names {
        first: String,
        last: String,
    }

    impl JobKind for V1 {
        const NAME: &'static str = "greet";
        type Payload = Name;
        fn validate(_: &Name) -> Result<(), String> {
            Ok(())
        }
        fn example() -> Name {
            Name {
                name: "Ada Lovelace".into(),
            }
        }
    }

    impl JobKind for V2 {
        const NAME: &'static str = "greet";
        const VERSION: u32 = 2;
        type Payload = Names;
        fn validate(p: &Names) -> Result<(), String> {
            if p.first.is_empty() {
                return Err("first: must not be empty".into());
            }
            Ok(())
        }
        fn example() -> Names {
            Names {
                first: "Ada".into(),
                last: "Lovelace".into(),
            }
        }
        fn upgrade(from: u32, payload: Value) -> Result<Value, String> {
            match from {
                1 => {
                    let name = payload["name"].as_str().ok_or("name: missing")?;
                    let (first, last) = name.split_once(' ').unwrap_or((name, ""));
                    Ok(json!({ "first": first, "last": last }))
                }
                other => Err(format!("no upgrade from version {other}")),
            }
        }
    }

    impl Handler for V1 {
        type Kind = V1;
        const DEADLINE: Option<Duration> = None;
        async fn run(_: JobContext, p: Name) -> Result<Value, JobError> {
            Ok(json!({ "hello": p.name }))
        }
    }

    impl Handler for V2 {
        type Kind = V2;
        const DEADLINE: Option<Duration> = None;
        async fn run(_: JobContext, p: Names) -> Result<Value, JobError> {
            Ok(json!({ "hello": format!("{} {}", p.first, p.last) }))
        }
    }
}

fn greet_at<K: jobs_contract::JobKind, H: worker::kinds::Handler>()
-> (jobs_contract::Catalog, worker::kinds::Registry) {
    (
        jobs_contract::Catalog::default().with::<K>(),
        worker::kinds::Registry::default().register::<H>(),
    )
}

#[tokio::test]
async fn jobs_accepted_under_version_1_finish_on_a_worker_at_version_2() {
    let (v1, _) = greet_at::<greet::V1, greet::V1>();
    let (_, worker_v2) = greet_at::<greet::V2, greet::V2>();
    let mut app = TestApp::with(Options {
        worker: false,
        catalog: Some(v1),
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    for name in ["Ada Lovelace", "Grace Hopper", "Barbara Liskov"] {
        ids.push((name, app.create("greet", json!({ "name": name })).await));
    }
    assert_eq!(app.job(&ids[0].1).await["payload_version"], 1);
    // The deploy: workers at version 2, with the upgrade.
    app.registry = worker_v2;
    app.start_worker().await;
    for (name, id) in &ids {
        let job = app.wait_final(id, LONG).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["result"]["hello"], *name, "{job}");
        assert_eq!(job["payload_version"], 1, "stored as accepted");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_payload_version_the_worker_cannot_read_is_dead_lettered_with_its_reason() {
    let (v2, _) = greet_at::<greet::V2, greet::V2>();
    let (_, worker_v1) = greet_at::<greet::V1, greet::V1>();
    let mut app = TestApp::with(Options {
        worker: false,
        catalog: Some(v2),
        ..Default::default()
    })
    .await;
    // The api at version 2 refuses a version it does not know, and takes a version-1 payload
    // it can upgrade.
    let stored = app.count_jobs().await;
    for (body, status, says) in [
        (
            json!({"kind": "greet", "payload": {"first": "Ada", "last": "L"}, "payload_version": 3}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "payload_version: payload version 3 cannot be read",
        ),
        (
            json!({"kind": "greet", "payload": {"nom": "Ada"}, "payload_version": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name: missing",
        ),
        (
            json!({"kind": "greet", "payload": {"first": "", "last": "L"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "first: must not be empty",
        ),
    ] {
        let (got, _, problem) = app.post(body.clone()).await;
        assert_eq!(got, status, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{problem}"
        );
    }
    assert_eq!(app.count_jobs().await, stored, "refusals store nothing");
    let (got, _, old) = app
        .post(json!({"kind": "greet", "payload": {"name": "Ada Lovelace"}, "payload_version": 1}))
        .await;
    assert_eq!(got, StatusCode::ACCEPTED, "{old}");
    // An old worker, still at version 1, meets a version-2 job: never run with the wrong shape.
    let id = app
        .create("greet", json!({"first": "Grace", "last": "Hopper"}))
        .await;
    app.registry = worker_v1;
    app.start_worker().await;
    let job = app.wait_final(&id, LONG).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("payload version 2 cannot be read (the kind is at version 1)"),
        "{job}"
    );
    let dead = app.drain_dead().await;
    assert!(
        dead.iter()
            .any(|(reason, body)| reason == "version" && body["id"] == id.as_str()),
        "{dead:?}"
    );
    // And the version-1 one runs on it.
    let old = app.wait_final(old["id"].as_str().unwrap(), LONG).await;
    assert_eq!(old["result"]["hello"], "Ada Lovelace", "{old}");
    app.stop().await;
}

#[tokio::test]
async fn a_worker_whose_slots_long_jobs_hold_leaves_the_next_job_in_the_queue() {
    let app = TestApp::with(Options {
        concurrency: 2,
        ..Default::default()
    })
    .await;
    let long: Vec<String> = futures_util::future::join_all(
        (0..2).map(|_| app.create("sleep", json!({"duration_ms": 4000, "steps": 4}))),
    )
    .await;
    for id in &long {
        app.wait_for(id, LONG, |j| !j["heartbeat_at"].is_null())
            .await;
    }
    // Both slots are held by jobs whose messages are acked: this one is not taken (and so not
    // held from other workers, nor past the broker's consumer timeout); it waits, ready.
    let next = app
        .create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    let ch = app.channel().await;
    let queue = app.api_config.topology().jobs_queue();
    app.wait_until(LONG, "the next job ready in the queue", || async {
        let q = ch
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        q.message_count() == 1
    })
    .await;
    assert_eq!(app.job(&next).await["status"], "queued");
    // A slot frees: the worker takes it.
    let job = app.wait_final(&next, LONG).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    app.stop().await;
}

/// A kind that counts to `items` with a checkpoint after each, and fails on purpose once, at
/// `fail_at`, in the first generation only (this test process's first run past it).
mod tally {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use jobs_contract::JobKind;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};
    use serde_json::{Value, json};
    use worker::context::{JobContext, JobError};
    use worker::kinds::Handler;

    pub(crate) struct Tally;

    static FAILED: AtomicBool = AtomicBool::new(false);

    #[derive(Debug, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Count {
        items: u32,
        fail_at: u32,
    }

    impl JobKind for Tally {
        const NAME: &'static str = "tally";
        type Payload = Count;
        fn validate(_: &Count) -> Result<(), String> {
            Ok(())
        }
        fn example() -> Count {
            Count {
                items: 3,
                fail_at: 2,
            }
        }
    }

    impl Handler for Tally {
        type Kind = Tally;
        const DEADLINE: Option<Duration> = None;
        async fn run(ctx: JobContext, p: Count) -> Result<Value, JobError> {
            let done: u32 = ctx.resume()?.unwrap_or(0);
            for i in done + 1..=p.items {
                ctx.check_cancelled()?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                if i == p.fail_at && !FAILED.swap(true, Ordering::SeqCst) {
                    return Err(JobError::Permanent(format!("item {i} failed")));
                }
                ctx.checkpoint(&i).await?;
                ctx.progress(f64::from(i) / f64::from(p.items));
            }
            Ok(json!({ "resumed_after": done }))
        }
    }
}

#[tokio::test]
async fn a_redriven_job_resumes_from_its_checkpoint_with_a_fresh_budget() {
    let (catalog, registry) = greet_at::<tally::Tally, tally::Tally>();
    let mut app = TestApp::with(Options {
        worker: false,
        catalog: Some(catalog),
        ..Default::default()
    })
    .await;
    app.registry = registry;
    app.start_worker().await;
    let id = app.create("tally", json!({"items": 8, "fail_at": 5})).await;
    // A deploy first: the worker stops with the job running and hands it back (its attempt is
    // superseded, not counted), and the next worker resumes it.
    app.wait_for(&id, LONG, |j| j["checkpoint"]["attempt"] == 1)
        .await;
    app.stop_worker().await;
    app.start_worker().await;
    let failed = app.wait_final(&id, LONG).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("item 5 failed"),
        "{failed}"
    );
    assert_eq!(failed["attempts"], 2, "released, then failed: {failed}");

    let (status, body) = app.post_path(&format!("/jobs/{id}/redrive"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job = app.wait_final(&id, LONG).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["generation"], 1, "{job}");
    assert_eq!(
        job["attempts"], 1,
        "the new generation counts from 1: {job}"
    );
    // It resumed after item 4, the last one the failed attempt saved.
    assert_eq!(job["result"]["resumed_after"], 4, "{job}");
    app.stop().await;
}
