//! Job control: cancels that hold whenever workers start, idempotent submit, delayed jobs,
//! re-drive and retention.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, assert_never_ran, wait_metric};

const LONG: Duration = Duration::from_secs(30);

fn at(job: &Value, field: &str) -> DateTime<Utc> {
    job[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{field} of {job}"))
}

#[tokio::test]
async fn a_job_cancelled_while_no_worker_runs_never_reaches_a_handler() {
    let mut app = TestApp::api_only().await;
    let id = app.create("hash", json!({"rounds": 1000})).await;
    // Published: its message waits in the queue, where the old broadcast could not reach it.
    wait_metric(&app, "jobstack_outbox_published_total", "", 1.0).await;
    let (status, job) = app.cancel(&id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["status"], "cancelled");
    wait_metric(&app, "jobstack_cancels_published_total", "", 1.0).await;

    app.start_worker().await;
    assert_never_ran(&app, "hash", "the cancelled job's handler never ran").await;
    assert_eq!(
        app.metric_sum(
            "jobstack_jobs_finished_total",
            r#"kind="hash",outcome="cancelled""#
        )
        .await,
        1.0,
        "the worker skipped it as cancelled"
    );
    assert_eq!(app.job(&id).await["status"], "cancelled");
    // And a worker started after that one (a restart, a scale-out) knows it as well.
    app.stop_worker().await;
    app.start_worker().await;
    assert_never_ran(&app, "hash", "a worker started later skips it too").await;
    app.stop().await;
}

async fn post_keyed(app: &TestApp, key: &str, body: &Value) -> (StatusCode, String, Value) {
    let res = app
        .http
        .post(format!("{}/jobs", app.url))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let location = res
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, location, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_same_idempotency_key_twenty_times_at_once_makes_one_job() {
    let app = TestApp::api_only().await;
    let body = json!({"kind": "sleep", "payload": {"duration_ms": 10, "steps": 1}});
    let key = format!("\"order-{}\"", uuid::Uuid::new_v4());
    let answers =
        futures_util::future::join_all((0..20).map(|_| post_keyed(&app, &key, &body))).await;
    let (status, location, first) = &answers[0];
    assert_eq!(*status, StatusCode::ACCEPTED, "{first}");
    for (status, loc, job) in &answers {
        assert_eq!(*status, StatusCode::ACCEPTED, "{job}");
        assert_eq!(loc, location);
        assert_eq!(job["id"], first["id"]);
    }
    assert_eq!(app.count_jobs().await, 1);
    // The same body in another key order and spacing is the same request.
    let reordered: Value =
        serde_json::from_str(r#"{"payload": {"steps": 1, "duration_ms": 10}, "kind": "sleep"}"#)
            .unwrap();
    let (status, loc, _) = post_keyed(&app, &key, &reordered).await;
    assert_eq!((status, &loc), (StatusCode::ACCEPTED, location));
    wait_metric(&app, "jobstack_outbox_published_total", "", 1.0).await;

    // The same key with another body names the conflict and stores nothing.
    let other = json!({"kind": "sleep", "payload": {"duration_ms": 11, "steps": 1}});
    let (status, _, problem) = post_keyed(&app, &key, &other).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("already used with a different request body"),
        "{problem}"
    );
    // Malformed keys are refused and store nothing.
    for bad in ["\"unterminated", "two words", "\"\""] {
        let (status, _, problem) = post_keyed(&app, bad, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key")
        );
    }
    // Without a key nothing changes: two posts, two jobs.
    app.create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    app.create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    assert_eq!(app.count_jobs().await, 3);
    // Nothing was published twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.metric_sum("jobstack_outbox_published_total", "").await,
        3.0
    );
    app.stop().await;
}

#[tokio::test]
async fn an_expired_idempotency_key_makes_a_new_job() {
    let app = TestApp::api_only().await;
    let body = json!({"kind": "sleep", "payload": {"duration_ms": 10, "steps": 1}});
    let (_, _, first) = post_keyed(&app, "k-1", &body).await;
    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(&app.db().await)
        .await
        .unwrap();
    let (status, _, second) = post_keyed(&app, "k-1", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(first["id"], second["id"]);
    app.stop().await;
}

#[tokio::test]
async fn a_delayed_job_waits_survives_an_api_restart_and_then_runs() {
    let mut app = TestApp::spawn().await;
    let (status, _, job) = app
        .post(
            json!({"kind": "sleep", "payload": {"duration_ms": 10, "steps": 1}, "delay_ms": 3000}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["status"], "scheduled");
    let id = job["id"].as_str().unwrap().to_owned();
    let created = at(&job, "created_at");
    let run_at = at(&job, "run_at");
    assert!(
        run_at - created >= chrono::Duration::milliseconds(3000),
        "{job}"
    );
    wait_metric(&app, "jobstack_jobs_scheduled", "", 1.0).await;
    app.restart_api().await;
    assert_eq!(app.job(&id).await["status"], "scheduled");

    let done = app.wait_final(&id, LONG).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let started = at(&done, "started_at");
    assert!(
        started >= run_at && started - created >= chrono::Duration::milliseconds(3000),
        "started {started} for run_at {run_at}, created {created}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_scheduled_job_can_be_cancelled_and_bad_schedules_are_refused() {
    let app = TestApp::api_only().await;
    let in_an_hour = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (status, _, job) = app
        .post(json!({"kind": "sleep", "payload": {"duration_ms": 10, "steps": 1}, "run_at": in_an_hour}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["status"], "scheduled");
    let id = job["id"].as_str().unwrap();
    let (status, job) = app.cancel(id).await;
    assert_eq!(
        (status, job["status"].as_str()),
        (StatusCode::ACCEPTED, Some("cancelled"))
    );

    // A time in the past runs now.
    let (status, _, job) = app
        .post(json!({"kind": "sleep", "payload": {"duration_ms": 10, "steps": 1}, "run_at": "2001-01-01T00:00:00Z"}))
        .await;
    assert_eq!(
        (status, job["status"].as_str()),
        (StatusCode::ACCEPTED, Some("queued"))
    );
    assert!(at(&job, "run_at") >= at(&job, "created_at"));
    let stored = app.count_jobs().await;

    let far = (Utc::now() + chrono::Duration::days(31)).to_rfc3339();
    for (body, detail) in [
        (json!({"run_at": "tomorrow"}), "run_at"),
        (json!({"run_at": far}), "run_at is more than 30 days ahead"),
        (
            json!({"delay_ms": 2_592_000_001u64}),
            "delay_ms is more than 30 days ahead",
        ),
        (json!({"delay_ms": -1}), "delay_ms"),
        (json!({"delay_ms": 5, "run_at": in_an_hour}), "not both"),
    ] {
        let mut req = json!({"kind": "sleep", "payload": {"duration_ms": 10, "steps": 1}});
        req.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let (status, _, problem) = app.post(req.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{req}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(detail),
            "{req}: {problem}"
        );
    }
    assert_eq!(
        app.count_jobs().await,
        stored,
        "a refused request stores nothing"
    );
    // The scheduled-then-cancelled job was never published: only the one that ran now.
    wait_metric(&app, "jobstack_outbox_published_total", "", 1.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.metric_sum("jobstack_outbox_published_total", "").await,
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_dead_lettered_job_re_driven_runs_again_as_its_next_generation() {
    let app = TestApp::spawn().await;
    let id = app.create("fail", json!({"transient": false})).await;
    let failed = app.wait_final(&id, LONG).await;
    assert_eq!(failed["status"], "failed");
    let error = failed["error"].as_str().unwrap().to_owned();

    let (status, problem) = app.post_path("/jobs/not-an-id/redrive", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let (status, job) = app.post_path(&format!("/jobs/{id}/redrive"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["attempts"], 0);
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["history"][0]["status"], "failed");
    assert_eq!(job["history"][0]["error"], error.as_str());

    let again = app.wait_final(&id, LONG).await;
    assert_eq!(again["status"], "failed", "{again}");
    assert_eq!(again["attempts"], 1, "the next generation: attempts from 1");
    assert_eq!(again["generation"], 1);
    assert_eq!(
        app.metric_sum("jobstack_jobs_started_total", r#"kind="fail""#)
            .await,
        2.0,
        "the handler ran again"
    );
    // The first dead-letter copy stays in the dead-letter queue as a record; the second run
    // added its own. Re-drive never takes messages from that queue.
    let dead = app.drain_dead().await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead.iter()
            .all(|(reason, body)| reason == "permanent" && body["id"] == id.as_str())
    );
    assert_eq!(dead[0].1["generation"], 0);
    assert_eq!(dead[1].1["generation"], 1);

    // Only failed or cancelled jobs: a succeeded one is a conflict and stays as it is.
    let ok = app
        .create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    assert_eq!(app.wait_final(&ok, LONG).await["status"], "succeeded");
    let (status, problem) = app.post_path(&format!("/jobs/{ok}/redrive"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(app.job(&ok).await["status"], "succeeded");
    let (status, _) = app
        .post_path("/jobs/00000000-0000-0000-0000-000000000000/redrive", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn a_running_job_cannot_be_re_driven_and_a_cancelled_one_runs_again() {
    let mut app = TestApp::api_only().await;
    let cancelled = app
        .create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    wait_metric(&app, "jobstack_outbox_published_total", "", 1.0).await;
    app.cancel(&cancelled).await;
    wait_metric(&app, "jobstack_cancels_published_total", "", 1.0).await;
    app.start_worker().await;
    let running = app
        .create("sleep", json!({"duration_ms": 5000, "steps": 50}))
        .await;
    app.wait_for(&running, LONG, |j| j["status"] == "running")
        .await;
    let (status, problem) = app
        .post_path(&format!("/jobs/{running}/redrive"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("is running"));
    assert_eq!(app.job(&running).await["attempts"], 1);

    // The cancel named generation 0; generation 1 runs.
    let (status, job) = app
        .post_path(&format!("/jobs/{cancelled}/redrive"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(
        app.wait_final(&cancelled, LONG).await["status"],
        "succeeded"
    );
    app.cancel(&running).await;
    app.stop().await;
}

#[tokio::test]
async fn bulk_re_drive_takes_a_bounded_number_and_says_how_many() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.create("fail", json!({"transient": false})).await);
    }
    for id in &ids {
        assert_eq!(app.wait_final(id, LONG).await["status"], "failed");
    }
    for (body, status) in [
        (
            json!({"status": "running"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"status": "failed", "limit": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"status": "failed", "kind": "nope"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"status": "failed", "extra": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (got, problem) = app.post_path("/jobs/redrive", Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {problem}");
    }
    let (status, answer) = app
        .post_path(
            "/jobs/redrive",
            Some(json!({"status": "failed", "kind": "fail", "limit": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["requeued"], 2);
    let redriven: Vec<&str> = answer["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    assert_eq!(redriven.len(), 2);
    assert!(
        redriven.iter().all(|id| ids.iter().any(|i| i == id)),
        "{answer}"
    );
    let (_, none) = app
        .post_path(
            "/jobs/redrive",
            Some(json!({"status": "failed", "kind": "sleep"})),
        )
        .await;
    assert_eq!(none["requeued"], 0, "no failed sleep jobs");
    // Each re-driven job ran again (and failed again) as generation 1, with how generation 0
    // ended in its history; the third was left alone.
    for id in &redriven {
        let job = app
            .wait_for(id, LONG, |j| {
                j["generation"] == 1 && j["status"] == "failed"
            })
            .await
            .pop()
            .unwrap();
        let history = job["history"].as_array().unwrap();
        assert_eq!(history.len(), 1, "{job}");
        assert_eq!(history[0]["generation"], 0);
        assert_eq!(history[0]["status"], "failed");
    }
    let left = ids
        .iter()
        .find(|id| !redriven.contains(&id.as_str()))
        .unwrap();
    let job = app.job(left).await;
    assert_eq!(
        (job["generation"].as_u64(), job["status"].as_str()),
        (Some(0), Some("failed"))
    );
    app.stop().await;
}

#[tokio::test]
async fn retention_prunes_old_finished_jobs_and_keeps_running_ones() {
    let app = TestApp::with(Options {
        retention: Some(Duration::from_secs(86_400)),
        retention_interval: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let old = app
        .create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    let recent = app
        .create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    let running = app
        .create("sleep", json!({"duration_ms": 20000, "steps": 100}))
        .await;
    for id in [&old, &recent] {
        assert_eq!(app.wait_final(id, LONG).await["status"], "succeeded");
    }
    app.wait_for(&running, LONG, |j| j["status"] == "running")
        .await;
    let db = app.db().await;
    // Two days old: past the one-day retention. The running one is as old, but not finished;
    // the recent one as old, but finished just now (a long or delayed job).
    sqlx::query(
        "UPDATE jobs SET finished_at = now() - interval '2 days', \
             created_at = now() - interval '2 days' WHERE id = $1::uuid",
    )
    .bind(&old)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE jobs SET created_at = now() - interval '2 days' WHERE id = ANY($1::uuid[])",
    )
    .bind([&running, &recent])
    .execute(&db)
    .await
    .unwrap();
    wait_metric(
        &app,
        "jobstack_retention_pruned_total",
        r#"table="jobs""#,
        1.0,
    )
    .await;
    let (status, _) = app.get(&format!("/jobs/{old}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.job(&recent).await["status"], "succeeded");
    assert_eq!(app.job(&running).await["status"], "running");
    app.cancel(&running).await;
    app.stop().await;
}

/// Marks every job succeeded `days` ago (and created an hour before that, as a real job was).
async fn succeed_every_job(db: &sqlx::PgPool, days: i32) {
    sqlx::query(
        "UPDATE jobs SET status = 'succeeded', finished_at = now() - make_interval(days => $1), \
         created_at = now() - make_interval(days => $1, hours => 1)",
    )
    .bind(days)
    .execute(db)
    .await
    .unwrap();
}

#[tokio::test]
async fn retention_runs_in_one_replica_at_a_time_and_expires_keys() {
    let app = TestApp::api_only().await;
    let db = app.db().await;
    let key = json!({"kind": "sleep", "payload": {"duration_ms": 10, "steps": 1}});
    post_keyed(&app, "kept", &key).await;
    post_keyed(&app, "expired", &key).await;
    // Stored under the client's name: each client has its own keys.
    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 minute' WHERE key = 'demo/expired'")
        .execute(&db)
        .await
        .unwrap();
    let day = Some(Duration::from_secs(86_400));

    // Another replica holds the lock: this one prunes nothing.
    let mut other = db.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(api::store::RETENTION_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    let pruned = api::store::prune(&db, day, 1).await.unwrap();
    assert_eq!(pruned, api::store::Pruned::default());
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(api::store::RETENTION_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    drop(other);

    // The expired key goes; its job, recent, stays.
    let pruned = api::store::prune(&db, day, 1).await.unwrap();
    assert_eq!((pruned.jobs, pruned.keys), (0, 1));
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(keys, ["demo/kept"]);

    // Batches of one: both old jobs, and the key of one with it.
    succeed_every_job(&db, 2).await;
    let pruned = api::store::prune(&db, day, 1).await.unwrap();
    assert_eq!(pruned.jobs, 2);
    assert_eq!(app.count_jobs().await, 0);
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(keys, 0);
    // Keep forever: nothing is pruned however old.
    post_keyed(&app, "again", &key).await;
    succeed_every_job(&db, 3000).await;
    assert_eq!(api::store::prune(&db, None, 10).await.unwrap().jobs, 0);
    assert_eq!(app.count_jobs().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_cancel_accepted_while_the_broker_is_down_is_broadcast_when_it_is_back() {
    let port = test_support::net::free_port().await;
    let proxy = crate::resilience::open_proxy(port).await;
    let mut app = TestApp::with(Options {
        worker: false,
        amqp_url: crate::helpers::rabbitmq_via(port),
        ..Default::default()
    })
    .await;
    let id = app.create("hash", json!({"rounds": 1000})).await;
    wait_metric(&app, "jobstack_outbox_published_total", "", 1.0).await;
    drop(proxy);
    let (status, job) = app.cancel(&id).await;
    assert_eq!(
        (status, job["status"].as_str()),
        (StatusCode::ACCEPTED, Some("cancelled"))
    );
    // The cancel names the series it stops: no new series before it is out.
    let (status, problem) = app.post_path(&format!("/jobs/{id}/redrive"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not yet delivered")
    );

    let _proxy = crate::resilience::open_proxy(port).await;
    wait_metric(&app, "jobstack_cancels_published_total", "", 1.0).await;
    app.start_worker().await;
    assert_never_ran(
        &app,
        "hash",
        "the cancel reached the worker before the job did",
    )
    .await;
    let (status, job) = app.post_path(&format!("/jobs/{id}/redrive"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(app.wait_final(&id, LONG).await["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_re_drives_of_one_job_make_one_generation() {
    let app = TestApp::spawn().await;
    let id = app.create("fail", json!({"transient": false})).await;
    assert_eq!(app.wait_final(&id, LONG).await["status"], "failed");
    let path = format!("/jobs/{id}/redrive");
    let answers = futures_util::future::join_all((0..20).map(|_| app.post_path(&path, None))).await;
    let accepted: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(accepted.len(), 1, "exactly one re-drive wins: {answers:?}");
    assert_eq!(accepted[0]["generation"], 1);
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::ACCEPTED) {
        // The others were either held off by the winner's row lock, or came after it and found
        // the job queued or running again: a conflict that says which, never a 5xx.
        assert_eq!(*status, StatusCode::CONFLICT, "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains("right now") || detail.contains("only failed or cancelled"),
            "{detail}"
        );
        assert!(!detail.contains("cancel is not yet delivered"), "{detail}");
    }
    // One new generation, run once.
    let job = app
        .wait_for(&id, LONG, |j| {
            j["generation"] == 1 && j["status"] == "failed"
        })
        .await
        .pop()
        .unwrap();
    assert_eq!(job["history"].as_array().unwrap().len(), 1, "{job}");
    assert_eq!(
        app.metric_sum("jobstack_jobs_started_total", r#"kind="fail""#)
            .await,
        2.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_redrive_racing_the_relay_that_published_the_last_generation_is_not_lost() {
    // The relay deletes a job's outbox entry only once the broker confirmed its publish, in the
    // transaction that locked it; a fast job can fail, and be re-driven, before that commits.
    let app = TestApp::spawn().await;
    let id = app.create("fail", json!({"transient": false})).await;
    assert_eq!(app.wait_final(&id, LONG).await["status"], "failed");
    let db = app.db().await;
    let uuid: uuid::Uuid = id.parse().unwrap();
    // A relay in the middle of that batch: the entry is still there, locked. (Its `run_at`
    // keeps the test's real relay away from it.)
    sqlx::query("INSERT INTO outbox (job_id, run_at) VALUES ($1, now() + interval '1 hour')")
        .bind(uuid)
        .execute(&db)
        .await
        .unwrap();
    let mut relay = db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM outbox WHERE job_id = $1 FOR UPDATE")
        .bind(uuid)
        .execute(&mut *relay)
        .await
        .unwrap();
    let redrive = tokio::spawn({
        let (http, url) = (app.http.clone(), format!("{}/jobs/{id}/redrive", app.url));
        async move { http.post(url).send().await.unwrap().status() }
    });
    // Until the re-drive is either answered or waiting for the relay's lock.
    app.wait_until(
        LONG,
        "the re-drive answered or waiting for the entry",
        || async {
            redrive.is_finished()
                || sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO outbox%'",
                )
                .fetch_one(&db)
                .await
                .unwrap()
                    > 0
        },
    )
    .await;
    // The relay's batch commits: the old generation's entry is taken out.
    sqlx::query("DELETE FROM outbox WHERE job_id = $1")
        .bind(uuid)
        .execute(&mut *relay)
        .await
        .unwrap();
    relay.commit().await.unwrap();
    assert_eq!(redrive.await.unwrap(), StatusCode::ACCEPTED);
    let again = app.wait_final(&id, LONG).await;
    assert_eq!(again["generation"], 1, "{again}");
    assert_eq!(again["attempts"], 1, "the new generation ran: {again}");
    app.stop().await;
}
