//! Periodic schedules against the real services: one job per fire time with two api replicas,
//! the missed-fire policies across an api stop, pause and resume, the declared schedules' sync,
//! and bad input.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp};

/// The jobs a schedule made: (fire time, when the job was made), by fire time.
async fn fires(app: &TestApp, schedule: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let db = app.db().await;
    let rows = sqlx::query_as(
        "SELECT fire_at, created_at FROM jobs WHERE schedule_name = $1 ORDER BY fire_at",
    )
    .bind(schedule)
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    rows
}

async fn create(app: &TestApp, body: Value) -> Value {
    let (status, created) = app.send(Method::POST, "/schedules", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

fn every(name: &str, secs: u64, missed: &str) -> Value {
    json!({ "name": name, "kind": "hash", "payload": {"rounds": 1},
            "interval_secs": secs, "missed": missed })
}

fn secs(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

#[tokio::test]
async fn two_replicas_make_exactly_one_job_per_fire_time() {
    let app = TestApp::with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let replica = app.replica().await;
    let created = create(&app, every("tick", 1, "all")).await;
    let first: DateTime<Utc> = created["next_fire_at"].as_str().unwrap().parse().unwrap();
    app.wait_until(Duration::from_secs(30), "six fire times", || async {
        fires(&app, "tick").await.len() >= 6
    })
    .await;
    replica.stop().await;
    app.send(Method::POST, "/schedules/tick/pause", None).await;
    let made = fires(&app, "tick").await;
    // Every fire time from the first, each once, none skipped.
    for (i, (at, _)) in made.iter().enumerate() {
        assert_eq!(*at, first + chrono::Duration::seconds(i as i64), "{made:?}");
    }
    let (_, schedule) = app.get("/schedules/tick").await;
    assert_eq!(
        schedule["fires"].as_u64(),
        Some(made.len() as u64),
        "{schedule}"
    );
    app.stop().await;
}

#[tokio::test]
async fn missed_fire_times_follow_each_policy_across_an_api_stop() {
    let mut app = TestApp::with(Options {
        worker: false,
        misfire_grace: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let period = chrono::Duration::seconds(4);
    let mut grids = Vec::new(); // each schedule's first fire time: its grid's anchor
    for missed in ["skip", "one", "all"] {
        let created = create(&app, every(missed, 4, missed)).await;
        let first: DateTime<Utc> = created["next_fire_at"].as_str().unwrap().parse().unwrap();
        grids.push((missed, first));
    }
    app.wait_until(Duration::from_secs(30), "a fire of each", || async {
        for missed in ["skip", "one", "all"] {
            if fires(&app, missed).await.is_empty() {
                return false;
            }
        }
        true
    })
    .await;
    app.stop_api().await;
    let stopped = Utc::now();
    // Down across two fire times at least, and back 1.5 s after one: the latest due fire time is
    // then later than the 1 s grace, and the next one 2.5 s away.
    let anchor = grids[1].1;
    let mut back = anchor;
    while back < stopped + chrono::Duration::seconds(8) {
        back += period;
    }
    let back = back + chrono::Duration::milliseconds(1500);
    tokio::time::sleep((back - Utc::now()).to_std().unwrap_or_default()).await;
    app.start_api().await;
    app.wait_until(
        Duration::from_secs(30),
        "a fire of each after the restart",
        || async {
            for missed in ["skip", "one", "all"] {
                if !fires(&app, missed).await.iter().any(|(at, _)| *at > back) {
                    return false;
                }
            }
            true
        },
    )
    .await;

    for (missed, first) in grids {
        // The schedule's fire times while the api was down.
        let mut due = Vec::new();
        let mut at = first;
        while at <= back {
            if at > stopped {
                due.push(at);
            }
            at += period;
        }
        assert!(
            due.len() >= 2,
            "{missed}: the stop spans two fire times: {due:?}"
        );
        let made: Vec<_> = fires(&app, missed)
            .await
            .into_iter()
            .map(|(at, _)| at)
            .filter(|at| *at > stopped && *at <= back)
            .collect();
        let expected = match missed {
            "skip" => vec![],
            "one" => vec![*due.last().unwrap()],
            _ => due.clone(),
        };
        assert_eq!(made, expected, "{missed}: jobs for the fire times {due:?}");
    }
    let (_, skipped) = app.get("/schedules/skip").await;
    let (_, kept) = app.get("/schedules/all").await;
    assert!(
        skipped["fires"].as_u64() < kept["fires"].as_u64(),
        "{skipped} {kept}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_paused_schedule_fires_nothing_until_resumed_and_its_jobs_run() {
    let app = TestApp::spawn().await;
    create(&app, every("beat", 1, "all")).await;
    app.wait_until(Duration::from_secs(30), "a fire", || async {
        !fires(&app, "beat").await.is_empty()
    })
    .await;
    let (status, paused) = app.send(Method::POST, "/schedules/beat/pause", None).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(
        (paused["enabled"].clone(), paused["next_fire_at"].clone()),
        (json!(false), Value::Null)
    );
    let before = fires(&app, "beat").await.len();
    let paused_at = Utc::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fires(&app, "beat").await.len(),
        before,
        "a paused schedule fired"
    );
    let (status, resumed) = app.send(Method::POST, "/schedules/beat/resume", None).await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    app.wait_until(
        Duration::from_secs(30),
        "a fire after the resume",
        || async { fires(&app, "beat").await.len() > before },
    )
    .await;
    app.send(Method::POST, "/schedules/beat/pause", None).await;
    let made = fires(&app, "beat").await;
    let resumed_at = made[before].0;
    assert!(
        secs(resumed_at - paused_at) >= 3.0,
        "the paused fire times were not run: {made:?}"
    );

    // The jobs it made run, and say which schedule made them.
    let (_, page) = app.get("/jobs?schedule=beat&limit=100").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), made.len(), "{page}");
    let id = items[0]["id"].as_str().unwrap();
    let job = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["fired_by"]["schedule"], "beat", "{job}");
    assert!(
        job["result"]["digest"].is_string(),
        "hash returns its digest: {job}"
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_schedules_are_refused_naming_the_field_and_store_nothing() {
    let app = TestApp::api_only().await;
    let ok =
        || json!({"name": "n", "kind": "hash", "payload": {"rounds": 1}, "cron": "*/5 * * * *"});
    let with = |k: &str, v: Value| {
        let mut b = ok();
        b[k] = v;
        b
    };
    for (body, field) in [
        (with("cron", json!("61 * * * *")), "cron:"),
        (with("cron", json!("0 0 30 2 *")), "cron:"),
        (with("time_zone", json!("Mars/Olympus_Mons")), "time_zone:"),
        (with("kind", json!("nope")), "kind:"),
        (with("payload", json!({"rounds": 0})), "payload:"),
        (with("payload_version", json!(7)), "payload_version:"),
        (with("interval_secs", json!(60)), "cron:"),
        (with("name", json!("a b")), "name:"),
        (
            with("missed", json!("sometimes")),
            "invalid schedule: missed",
        ),
    ] {
        let (status, problem) = app
            .send(Method::POST, "/schedules", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.starts_with(field), "{field}: {detail}");
    }
    let (_, all) = app.get("/schedules").await;
    assert_eq!(all, json!([]), "nothing stored");

    create(&app, ok()).await;
    let (status, _) = app.send(Method::POST, "/schedules", Some(ok())).await;
    assert_eq!(status, StatusCode::CONFLICT, "a name is unique");
    let (status, problem) = app
        .send(
            Method::PATCH,
            "/schedules/n",
            Some(json!({"time_zone": "Nowhere/Land"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let (_, kept) = app.get("/schedules/n").await;
    assert_eq!(kept["time_zone"], "UTC", "a refused change changes nothing");
    let (status, changed) = app
        .send(
            Method::PATCH,
            "/schedules/n",
            Some(json!({"interval_secs": 3600})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(
        (changed["cron"].clone(), changed["interval_secs"].clone()),
        (Value::Null, json!(3600))
    );
    for (method, path) in [
        (Method::GET, "/schedules/none"),
        (Method::PATCH, "/schedules/none"),
        (Method::DELETE, "/schedules/none"),
        (Method::POST, "/schedules/none/pause"),
        (Method::GET, "/schedules/a%00b"), // a name no schedule may have is not looked up
    ] {
        let body = (method == Method::PATCH).then(|| json!({}));
        let (status, _) = app.send(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    assert_eq!(
        app.get("/jobs?schedule=a%00b").await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, _) = app.send(Method::DELETE, "/schedules/n", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/schedules/n").await.0, StatusCode::NOT_FOUND);
    app.stop().await;
}

fn declared(interval_secs: u64, rounds: u64) -> api::schedules::ScheduleRequest {
    serde_json::from_value(json!({
        "name": "code", "kind": "hash", "payload": {"rounds": rounds},
        "interval_secs": interval_secs, "missed": "skip"
    }))
    .unwrap()
}

#[tokio::test]
async fn declared_schedules_sync_at_start_and_keep_their_next_fire_time_across_restarts() {
    let mut app = TestApp::with(Options {
        worker: false,
        schedules: vec![declared(3600, 1)],
        ..Default::default()
    })
    .await;
    let (_, first) = app.get("/schedules/code").await;
    assert_eq!(first["declared"], true, "{first}");
    // Changed only in the code; paused and resumed here.
    let (status, _) = app
        .send(
            Method::PATCH,
            "/schedules/code",
            Some(json!({"missed": "all"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        app.send(Method::DELETE, "/schedules/code", None).await.0,
        StatusCode::CONFLICT
    );

    // A restart does not move the next fire time (river#791 lost long intervals this way).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.restart_api().await;
    let (_, again) = app.get("/schedules/code").await;
    assert_eq!(again["next_fire_at"], first["next_fire_at"], "{again}");

    // A new payload keeps it too; a pause survives a deploy.
    app.send(Method::POST, "/schedules/code/pause", None).await;
    app.schedules = vec![declared(3600, 2)];
    app.restart_api().await;
    let (_, changed) = app.get("/schedules/code").await;
    assert_eq!(
        (
            changed["payload"]["rounds"].clone(),
            changed["enabled"].clone()
        ),
        (json!(2), json!(false)),
        "{changed}"
    );
    let db = app.db().await;
    let next: DateTime<Utc> =
        sqlx::query_scalar("SELECT next_fire_at FROM schedules WHERE name = 'code'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(json!(next), first["next_fire_at"]);

    // A new timing counts from now; a schedule no longer declared goes.
    app.send(Method::POST, "/schedules/code/resume", None).await;
    app.schedules = vec![declared(7200, 2)];
    app.restart_api().await;
    let (_, retimed) = app.get("/schedules/code").await;
    let at: DateTime<Utc> = retimed["next_fire_at"].as_str().unwrap().parse().unwrap();
    assert!(secs(at - Utc::now()) > 3600.0, "{retimed}");
    app.schedules = vec![];
    app.restart_api().await;
    assert_eq!(app.get("/schedules/code").await.0, StatusCode::NOT_FOUND);
    db.close().await;
    app.stop().await;
}
