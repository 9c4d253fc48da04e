//! Every kind to its end state; retries, dead-lettering, panics, deadlines, cancellation.

use std::time::Duration;

use jobs_contract::messages::{
    BatchedEvent, EVENTS_ROUTING_KEY, EventBatch, JobChange, JobEvent, JobMessage,
};
use lapin::BasicProperties;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, assert_never_ran, wait_metric};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn sleep_job_goes_queued_running_succeeded_with_rising_progress() {
    let app = TestApp::spawn().await;
    let (status, headers, job) = app
        .post(json!({"kind": "sleep", "payload": {"duration_ms": 600, "steps": 3}}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = job["id"].as_str().unwrap();
    assert_eq!(headers["location"], format!("/jobs/{id}").as_str());
    let traceparent = headers["traceparent"].to_str().unwrap();
    assert_eq!(job["status"], "queued");
    assert_eq!(
        job["trace_id"].as_str().unwrap(),
        &traceparent[3..35],
        "job keeps its trace"
    );

    let seen = app.wait_for(id, LONG, |j| j["status"] == "succeeded").await;
    let progress: Vec<f64> = seen
        .iter()
        .filter(|j| j["status"] == "running")
        .map(|j| j["progress"].as_f64().unwrap())
        .collect();
    assert!(!progress.is_empty(), "saw it running: {seen:?}");
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress rises: {progress:?}"
    );
    let done = seen.last().unwrap();
    assert_eq!(done["progress"], 1.0);
    assert_eq!(done["attempts"], 1);
    assert_eq!(
        done["result"],
        json!({"slept_ms": 600, "steps": 3, "resumed_at_step": 0})
    );
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(done[field].is_string(), "{field} set: {done}");
    }
    assert!(done["started_at"].as_str() <= done["finished_at"].as_str());
    app.stop().await;
}

/// A job's state changes (started, progress, ended) are HOT updates (migration 0011): they
/// change no indexed column and find room on the row's page, so PostgreSQL adds no index entry
/// for them. An index on `status`, or on any column an event changes, makes them all non-HOT.
/// And a job is in the `running` table exactly while its status is running.
#[tokio::test]
async fn state_changes_are_hot_updates_and_running_holds_the_running_jobs() {
    let app = TestApp::spawn().await;
    let n = 200;
    let posts = (0..n)
        .map(|_| app.post(json!({"kind": "sleep", "payload": {"duration_ms": 300, "steps": 3}})));
    let ids: Vec<String> = futures_util::future::join_all(posts)
        .await
        .into_iter()
        .map(|(status, _, job)| {
            assert_eq!(status, StatusCode::ACCEPTED, "{job}");
            job["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let db = app.db().await;
    // One statement, so both counts come from one snapshot.
    let running = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT (SELECT count(*) FROM running), \
                    (SELECT count(*) FROM jobs WHERE status = 'running')",
        )
        .fetch_one(&db)
        .await
        .unwrap()
    };
    app.wait_until(LONG, "jobs running", || async {
        let (listed, running) = running().await;
        assert_eq!(listed, running, "the running table holds the running jobs");
        running > 0
    })
    .await;
    for id in &ids {
        assert_eq!(app.wait_final(id, LONG).await["status"], "succeeded");
    }
    assert_eq!(running().await, (0, 0), "ended jobs left the running table");

    // A backend hands its counters to the statistics shortly after it goes idle: wait until
    // they hold at least one update per job.
    let counts = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'jobs'",
        )
        .fetch_one(&db)
        .await
        .unwrap()
    };
    app.wait_until(LONG, "the jobs' updates in the statistics", || async {
        counts().await.0 >= n
    })
    .await;
    let (updates, hot) = counts().await;
    assert!(
        hot as f64 >= 0.8 * updates as f64,
        "{hot} of {updates} updates of jobs were HOT"
    );
    app.stop().await;
}

#[tokio::test]
async fn hash_job_returns_a_digest() {
    let app = TestApp::spawn().await;
    let id = app.create("hash", json!({"rounds": 20000})).await;
    let job = app.wait_final(&id, LONG).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["rounds"], 20000);
    assert_eq!(job["result"]["digest"].as_str().unwrap().len(), 64);
    app.stop().await;
}

#[tokio::test]
async fn transient_failure_retries_then_dead_letters() {
    let app = TestApp::spawn().await;
    let id = app.create("fail", json!({"transient": true})).await;
    // Between attempts the job waits `scheduled`, its next attempt due within the back-off step
    // (50 ms, then 100 ms, jittered below that).
    let seen = app.wait_for(&id, LONG, |j| j["status"] == "failed").await;
    let waits: Vec<&Value> = seen.iter().filter(|j| j["status"] == "scheduled").collect();
    for wait in &waits {
        assert_eq!(wait["error"], "simulated transient failure", "{wait}");
        assert!(wait["finished_at"].is_null(), "{wait}");
    }
    let job = seen.last().unwrap().clone();
    assert_eq!(job["status"], "failed");
    assert_eq!(job["attempts"], 3, "MAX_ATTEMPTS attempts: {job}");
    assert_eq!(job["error"], "simulated transient failure");
    let dead = app.drain_dead().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "exhausted");
    assert_eq!(dead[0].1["id"], id.as_str());
    assert_eq!(dead[0].1["attempt"], 3);
    app.stop().await;
}

#[tokio::test]
async fn a_retry_waits_scheduled_for_its_jittered_back_off_and_can_be_cancelled_there() {
    let app = TestApp::with(Options {
        retry_base: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let id = app.create("fail", json!({"transient": true})).await;
    let waiting = app
        .wait_for(&id, LONG, |j| j["status"] == "scheduled")
        .await
        .pop()
        .unwrap();
    assert_eq!(
        (waiting["attempts"].as_u64(), waiting["error"].as_str()),
        (Some(1), Some("simulated transient failure"))
    );
    // Due within the first step (3 s, drawn at random below it), from when the api scheduled it.
    let run_at: chrono::DateTime<chrono::Utc> =
        waiting["run_at"].as_str().unwrap().parse().unwrap();
    let started: chrono::DateTime<chrono::Utc> =
        waiting["started_at"].as_str().unwrap().parse().unwrap();
    assert!(run_at >= started, "{waiting}");
    assert!(
        run_at <= chrono::Utc::now() + chrono::Duration::seconds(3),
        "{waiting}"
    );
    // A cancel takes it out of the outbox at once: no second attempt ever starts.
    let (status, job) = app.cancel(&id).await;
    assert_eq!(
        (status, job["status"].as_str()),
        (StatusCode::ACCEPTED, Some("cancelled"))
    );
    let later = app
        .create("sleep", json!({"duration_ms": 3500, "steps": 1}))
        .await;
    assert_eq!(app.wait_final(&later, LONG).await["status"], "succeeded");
    assert_eq!(
        app.metric_sum("jobstack_jobs_started_total", r#"kind="fail""#)
            .await,
        1.0,
        "the cancelled retry never ran"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_permanent_failure_or_a_panic_fails_the_job_at_once_and_the_worker_carries_on() {
    let app = TestApp::spawn().await;
    for (payload, error) in [
        (json!({"transient": false}), "simulated permanent failure"),
        (
            json!({"transient": true, "panic": true}),
            "handler panicked",
        ),
    ] {
        let id = app.create("fail", payload).await;
        let job = app.wait_final(&id, LONG).await;
        assert_eq!(job["status"], "failed");
        assert_eq!(job["attempts"], 1, "no retry: {job}");
        assert!(job["error"].as_str().unwrap().contains(error), "{job}");
    }
    let id = app.create("hash", json!({"rounds": 10})).await;
    assert_eq!(app.wait_final(&id, LONG).await["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn an_attempt_past_its_deadline_fails_as_timed_out() {
    let app = TestApp::with(Options {
        deadline: Duration::from_secs(1),
        max_attempts: 2,
        ..Default::default()
    })
    .await;
    let id = app
        .create("sleep", json!({"duration_ms": 5000, "steps": 5}))
        .await;
    let job = app.wait_final(&id, LONG).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["attempts"], 2, "a timeout is transient: retried once");
    assert_eq!(job["error"], "timed out after 1s");
    app.stop().await;
}

#[tokio::test]
async fn cancel_a_queued_job() {
    let mut app = TestApp::api_only().await;
    let id = app.create("hash", json!({"rounds": 10})).await;
    // Its message is in the queue: only the broadcast cancel can stop a worker from running it.
    wait_metric(&app, "jobstack_outbox_published_total", "", 1.0).await;
    let db = app.db().await;
    let (status, job) = app.cancel(&id).await;
    // The 202 comes once the cancel is in the control stream (read at once, before anything
    // else: the relay, if it were still at work, would be a few milliseconds from done).
    let pending: bool = sqlx::query_scalar("SELECT cancel_outbox FROM jobs WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["status"], "cancelled");
    assert!(!pending, "the cancel was answered before it was broadcast");
    let (status, problem) = app.cancel(&id).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        problem["detail"],
        format!("job {id} already cancelled").as_str()
    );
    // So a worker arriving right after the answer never runs it.
    app.start_worker().await;
    assert_never_ran(&app, "hash", "the cancelled job reached a handler").await;
    assert_eq!(app.job(&id).await["status"], "cancelled");
    app.stop().await;
}

#[tokio::test]
async fn cancel_a_running_job_stops_it_between_steps() {
    let app = TestApp::spawn().await;
    let id = app
        .create("sleep", json!({"duration_ms": 5000, "steps": 50}))
        .await;
    app.wait_for(&id, LONG, |j| {
        j["status"] == "running" && j["progress"].as_f64() > Some(0.0)
    })
    .await;
    let (status, _) = app.cancel(&id).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let job = app.wait_final(&id, Duration::from_secs(4)).await;
    assert_eq!(job["status"], "cancelled");
    assert!(job["progress"].as_f64().unwrap() < 1.0, "{job}");
    app.stop().await;
}

#[tokio::test]
async fn duplicate_and_stale_events_change_nothing() {
    let app = TestApp::spawn().await;
    let id = app
        .create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    let done = app.wait_final(&id, LONG).await;
    assert_eq!(done["status"], "succeeded");
    let t = &app.api_config.topology();
    for (key, event) in [
        ("job.started", json!({"event": "started"})),
        (
            "job.progress",
            json!({"event": "progress", "progress": 0.5}),
        ),
        (
            "job.failed",
            json!({"event": "failed", "error": "late", "retrying": false}),
        ),
        (
            "job.succeeded",
            json!({"event": "succeeded", "result": "other"}),
        ),
    ] {
        for attempt in [0, 1, 2] {
            let mut e = event.clone();
            e["job_id"] = json!(id);
            e["attempt"] = json!(attempt);
            e["at"] = json!("2030-01-01T00:00:00Z");
            app.publish_raw(
                &t.events_exchange(),
                key,
                e.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
    }
    // Signal, not a sleep: all 12 stale events counted as ignored (nextest runs each test in a
    // process of its own, so the counter is this test's).
    app.wait_until(LONG, "12 ignored events", || async {
        app.metric_sum("jobstack_job_events_total", r#"result="ignored""#)
            .await
            >= 12.0
    })
    .await;
    assert_eq!(app.job(&id).await, done, "a finished job never changes");
    app.stop().await;
}

/// A busy worker sends the events of many jobs in one message: each is applied as if it had
/// come alone (in its job's order; a late one ignored), and the message is acked, so nothing of
/// it comes back once the api lets go of its deliveries.
#[tokio::test]
async fn a_batch_of_events_of_several_jobs_is_applied_as_each_alone_and_acked() {
    let mut app = TestApp::api_only().await;
    let a = app
        .create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    let b = app
        .create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    // The attempts as the relay published them (no worker takes them here).
    let ch = app.channel().await;
    let t = app.api_config.topology();
    let mut published: Vec<JobMessage> = Vec::new();
    let start = std::time::Instant::now();
    while published.len() < 2 {
        assert!(
            start.elapsed() < LONG,
            "only {} jobs published",
            published.len()
        );
        let got = ch
            .basic_get(
                t.jobs_queue().as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        match got {
            Some(m) => published.push(serde_json::from_slice(&m.delivery.data).unwrap()),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let event = |id: &str, change: JobChange| {
        let msg = published.iter().find(|m| m.id.to_string() == id).unwrap();
        let event = JobEvent {
            job_id: msg.id,
            attempt: msg.attempt,
            generation: msg.generation,
            at: chrono::Utc::now(),
            started_at: Some(chrono::Utc::now()),
            change,
        };
        serde_json::to_vec(&BatchedEvent {
            traceparent: None,
            event,
        })
        .unwrap()
    };
    let result = json!({"n": 1});
    let parts = [
        event(&b, JobChange::Started { traceparent: None }),
        event(
            &a,
            JobChange::Succeeded {
                result: result.clone(),
            },
        ),
        event(&b, JobChange::Progress { progress: 0.5 }),
        // After its success: ignored.
        event(
            &a,
            JobChange::Failed {
                error: "late".into(),
                retrying: false,
            },
        ),
    ];
    app.publish_raw(
        &t.events_exchange(),
        EVENTS_ROUTING_KEY,
        &EventBatch::body(parts.iter().map(Vec::as_slice)),
        BasicProperties::default(),
    )
    .await;
    app.wait_for(&a, LONG, |j| j["status"] == "succeeded").await;
    assert_eq!(app.job(&a).await["result"], result);
    app.wait_for(&b, LONG, |j| {
        j["status"] == "running" && j["progress"].as_f64() == Some(0.5)
    })
    .await;
    app.wait_until(LONG, "the late failure ignored", || async {
        app.metric_sum("jobstack_job_events_total", r#"result="ignored""#)
            .await
            >= 1.0
    })
    .await;
    assert_eq!(app.job(&a).await["status"], "succeeded");
    // With the api stopped, what it had not acked would be back in the queue.
    app.stop_api().await;
    let left = ch
        .queue_declare(
            t.events_queue().as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert_eq!(left, 0, "the batch was acked");
    app.start_api().await;
    app.stop().await;
}

#[tokio::test]
async fn a_test_that_fails_still_removes_its_database_and_queues() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let failed = tokio::spawn(async move {
        let app = TestApp::api_only().await;
        let _ = tx.send(app.api_config.clone());
        panic!("an assertion failed before stop()");
    })
    .await;
    assert!(failed.is_err(), "the test body panicked");
    let config = rx.await.unwrap();
    let pool = sqlx::PgPool::connect(&crate::helpers::database_url("postgres"))
        .await
        .unwrap();
    let database = config.database_url.rsplit('/').next().unwrap().to_owned();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&database)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "database {database} dropped");
    let conn = lapin::Connection::connect(&crate::helpers::RABBITMQ, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let queue = config.topology().jobs_queue();
    let declared = ch
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    assert!(declared.is_err(), "queue {queue} deleted");
}
