//! Flow control against the real services: concurrency and rate limits across workers and api
//! replicas, keys taking turns, unique jobs, snooze, pausing a kind, priorities.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Options, TestApp};

/// Submits `n` sleep jobs of `ms` each with `extra` fields merged in; their ids, in order.
async fn submit(app: &TestApp, n: usize, ms: u64, extra: Value) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let mut body = json!({"kind": "sleep", "payload": {"duration_ms": ms, "steps": 1}});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, _, job) = app.post(body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Each job's (first start, end), as the worker's events recorded them.
async fn intervals(app: &TestApp, ids: &[String]) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let ids: Vec<Uuid> = ids.iter().map(|i| i.parse().unwrap()).collect();
    sqlx::query_as(
        "SELECT started_at, finished_at FROM jobs WHERE id = ANY($1) AND status = 'succeeded' \
         ORDER BY started_at",
    )
    .bind(&ids)
    .fetch_all(&app.db().await)
    .await
    .unwrap()
}

/// The most intervals that overlap at any instant.
fn most_at_once(spans: &[(DateTime<Utc>, DateTime<Utc>)]) -> usize {
    let mut edges: Vec<(DateTime<Utc>, i32)> = spans
        .iter()
        .flat_map(|(s, e)| [(*s, 1), (*e, -1)])
        .collect();
    // An end and a start at the same instant do not overlap.
    edges.sort_by_key(|(t, d)| (*t, *d));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

async fn wait_all_succeeded(app: &TestApp, ids: &[String], timeout: Duration) {
    for id in ids {
        assert_eq!(app.wait_final(id, timeout).await["status"], "succeeded");
    }
}

#[tokio::test]
async fn a_kind_limit_holds_across_three_workers_and_every_job_finishes() {
    let app = TestApp::with(Options {
        concurrency: 8,
        job_limits: "sleep:concurrency=2",
        ..Default::default()
    })
    .await;
    let w2 = app.extra_worker(8).await;
    let w3 = app.extra_worker(8).await;
    // A second api: both apply events and both relays hand out slots.
    let replica = app.replica().await;
    let ids = submit(&app, 50, 100, json!({})).await;
    let db = app.db().await;
    let mut saw_held = false;
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE kind = 'sleep' AND status = 'running'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        assert!(running <= 2, "{running} running at once");
        if !saw_held {
            let (_, kinds) = app.get("/kinds").await;
            let sleep = kinds
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kind"] == "sleep")
                .unwrap()
                .clone();
            assert_eq!(sleep["concurrency"], 2, "{sleep}");
            assert!(sleep["running"].as_i64().unwrap() <= 2, "{sleep}");
            saw_held = sleep["held"]["concurrency"].as_i64().unwrap_or(0) > 0;
        }
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE finished_at IS NULL")
            .fetch_one(&db)
            .await
            .unwrap();
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_all_succeeded(&app, &ids, Duration::from_secs(5)).await;
    assert!(saw_held, "/kinds showed jobs waiting for a slot");
    // Respected at every sample above, and used: two at once, by the workers' own clocks.
    assert_eq!(most_at_once(&intervals(&app, &ids).await), 2);
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM slots")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(slots, 0, "every slot given back");
    w2.stop().await;
    w3.stop().await;
    replica.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_job_waiting_for_a_slot_says_so() {
    let app = TestApp::with(Options {
        job_limits: "sleep:concurrency=1",
        ..Default::default()
    })
    .await;
    let first = submit(&app, 1, 2_000, json!({})).await;
    app.wait_for(&first[0], Duration::from_secs(10), |j| {
        j["status"] == "running"
    })
    .await;
    let second = submit(
        &app,
        1,
        10,
        json!({"priority": 3, "concurrency_key": "acme"}),
    )
    .await;
    let held = app
        .wait_for(&second[0], Duration::from_secs(10), |j| {
            j["held"] == "concurrency"
        })
        .await;
    let job = held.last().unwrap();
    assert_eq!(job["status"], "queued", "{job}");
    assert_eq!(job["priority"], 3);
    assert_eq!(job["concurrency_key"], "acme");
    let (_, kinds) = app.get("/kinds").await;
    let sleep = kinds
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "sleep")
        .unwrap();
    assert_eq!(
        sleep["top_keys"],
        json!([{"key": "acme", "held": 1}]),
        "{sleep}"
    );
    // The gauge counts it (the relay refreshes it at most once a second).
    app.wait_until(Duration::from_secs(10), "the held gauge at 1", || async {
        app.metric_sum(
            "jobstack_jobs_held",
            "kind=\"sleep\",reason=\"concurrency\"",
        )
        .await
            == 1.0
    })
    .await;
    wait_all_succeeded(&app, &second, Duration::from_secs(10)).await;
    assert_eq!(app.job(&second[0]).await["held"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn a_worker_killed_holding_a_slot_does_not_shrink_the_limit() {
    let mut app = TestApp::with(Options {
        job_limits: "sleep:concurrency=1",
        lease: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let long = submit(&app, 1, 3_000, json!({})).await;
    app.wait_for(&long[0], Duration::from_secs(10), |j| {
        j["status"] == "running"
    })
    .await;
    app.kill_worker();
    app.start_worker().await;
    // Its lease lapses, the attempt is given up, and with it the slot: the next ones run.
    let after = submit(&app, 4, 50, json!({})).await;
    wait_all_succeeded(&app, &after, Duration::from_secs(30)).await;
    wait_all_succeeded(&app, &long, Duration::from_secs(30)).await;
    let all: Vec<String> = long.iter().chain(&after).cloned().collect();
    let spans = intervals(&app, &after).await;
    assert_eq!(most_at_once(&spans), 1);
    assert_eq!(
        app.job(&long[0]).await["attempts"],
        2,
        "the lost attempt and a second one"
    );
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM slots")
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(slots, 0, "no slot leaked ({} jobs)", all.len());
    app.stop().await;
}

#[tokio::test]
async fn a_rate_limit_holds_across_two_api_replicas() {
    const RATE: usize = 200;
    const JOBS: usize = 600;
    let app = TestApp::with(Options {
        concurrency: 16,
        job_limits: "sleep:rate=200/s",
        ..Default::default()
    })
    .await;
    let replica = app.replica().await;
    // Accepted while the kind is paused, then resumed through both replicas at once: both
    // relays decide on batches of the same backlog at the same time (more than one batch of
    // 256 each), the race the kinds' lock exists for.
    let (status, _) = app.post_path("/kinds/sleep/pause", None).await;
    assert_eq!(status, StatusCode::OK);
    let body = json!({"kind": "sleep", "payload": {"duration_ms": 0, "steps": 1}});
    let mut ids = Vec::with_capacity(JOBS);
    for chunk in 0..JOBS / 50 {
        let posts = (0..50).map(|i| {
            let url = if (chunk + i) % 2 == 0 {
                &app.url
            } else {
                &replica.url
            };
            let (http, body) = (app.http.clone(), body.clone());
            let url = format!("{url}/jobs");
            async move {
                let res = http.post(url).json(&body).send().await.unwrap();
                assert_eq!(res.status(), StatusCode::ACCEPTED);
                res.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        });
        ids.extend(join_all(posts).await);
    }
    let resume = |url: &str| {
        let http = app.http.clone();
        let url = format!("{url}/kinds/sleep/resume");
        async move { http.post(url).send().await.unwrap().status() }
    };
    let (a, b) = tokio::join!(resume(&app.url), resume(&replica.url));
    assert_eq!((a, b), (StatusCode::OK, StatusCode::OK));
    wait_all_succeeded(&app, &ids, Duration::from_secs(60)).await;
    let starts: Vec<DateTime<Utc>> = intervals(&app, &ids)
        .await
        .into_iter()
        .map(|s| s.0)
        .collect();
    // GCRA at 200/s: a burst of 200, then one every 5 ms, so job i (from 0) starts no earlier
    // than (i - 199) × 5 ms after the first. Tolerance: 100 ms, for the workers' own delay,
    // which only ever makes a start later (the first one's too) and grows with the machine's
    // load. (That two relays cannot decide on the same turns is shown exactly by
    // `two_relays_deciding_at_once_wait_for_each_other_on_the_kinds_lock`.)
    let first = starts[0];
    for (i, at) in starts.iter().enumerate().skip(RATE) {
        let floor_ms = (i as i64 - (RATE as i64 - 1)) * 5 - 100;
        let after = (*at - first).num_milliseconds();
        assert!(
            after >= floor_ms,
            "job {i} started {after} ms after the first (floor {floor_ms} ms)"
        );
    }
    let took = (*starts.last().unwrap() - first).num_milliseconds();
    assert!(
        took <= 2 * (JOBS - RATE) as i64 * 5 + 2000,
        "held to the rate, not far below it: {took} ms"
    );
    replica.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn keys_sharing_a_kinds_limit_take_turns() {
    let app = TestApp::with(Options {
        job_limits: "sleep:concurrency=1",
        ..Default::default()
    })
    .await;
    // One slot: a noisy key's 16 jobs, then a quiet key's 3.
    let noisy = submit(&app, 16, 60, json!({"concurrency_key": "noisy"})).await;
    let quiet = submit(&app, 3, 60, json!({"concurrency_key": "quiet"})).await;
    let all: Vec<String> = noisy.iter().chain(&quiet).cloned().collect();
    wait_all_succeeded(&app, &all, Duration::from_secs(60)).await;
    let ends = |ids: &[String]| {
        let ids = ids.to_vec();
        let app = &app;
        async move {
            let mut ends: Vec<DateTime<Utc>> = intervals(app, &ids)
                .await
                .into_iter()
                .map(|s| s.1)
                .collect();
            ends.sort();
            ends
        }
    };
    let (noisy_ends, quiet_ends) = (ends(&noisy).await, ends(&quiet).await);
    // First come first served would run the quiet key's jobs after all 16 of the noisy key's.
    // Taking turns, each quiet job runs about one noisy job after the one before it.
    let before = noisy_ends.iter().filter(|e| **e < quiet_ends[2]).count();
    assert!(
        before <= 8,
        "{before} of the noisy key's jobs ended before the quiet key's last"
    );
    assert_eq!(most_at_once(&intervals(&app, &all).await), 1);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_duplicates_of_a_unique_job_make_one_job() {
    let app = TestApp::with(Options {
        job_limits: "hash:unique=rounds",
        ..Default::default()
    })
    .await;
    for body in [
        json!({"kind": "sleep", "payload": {"duration_ms": 300, "steps": 1}, "unique_key": "nightly"}),
        json!({"kind": "hash", "payload": {"rounds": 200000}}),
    ] {
        let answers = join_all((0..20).map(|_| app.post(body.clone()))).await;
        let created = answers
            .iter()
            .filter(|(s, _, _)| *s == StatusCode::ACCEPTED)
            .count();
        assert_eq!(created, 1, "one 202, the rest 200");
        let ids: std::collections::HashSet<&str> = answers
            .iter()
            .map(|(_, _, b)| b["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "every answer is the same job");
        for (status, headers, _) in &answers {
            let dup = headers.get("unique-duplicate").is_some();
            assert_eq!(dup, *status == StatusCode::OK);
        }
        let id = ids.into_iter().next().unwrap().to_owned();
        assert_eq!(
            app.wait_final(&id, Duration::from_secs(30)).await["status"],
            "succeeded"
        );
        // Finished, it no longer holds its claim: the same submit makes a new job.
        let (status, _, again) = app.post(body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{again}");
        assert_ne!(again["id"], id.as_str());
    }
    assert_eq!(app.count_jobs().await, 4);
    assert_eq!(
        app.metric_sum("jobstack_jobs_deduplicated_total", "").await,
        38.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_snoozed_job_runs_again_later_without_spending_an_attempt() {
    // One attempt in all: a snooze that spent it would leave none for the run after it.
    let app = TestApp::with(Options {
        max_attempts: 1,
        ..Default::default()
    })
    .await;
    let id = app
        .create(
            "sleep",
            json!({"duration_ms": 10, "steps": 1, "snooze_ms": 1500}),
        )
        .await;
    let seen = app
        .wait_for(&id, Duration::from_secs(30), |j| j["status"] == "succeeded")
        .await;
    let snoozed = seen
        .iter()
        .find(|j| j["status"] == "scheduled")
        .expect("it waited as scheduled");
    assert_eq!(snoozed["snoozes"], 1);
    let done = seen.last().unwrap();
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(done["snoozes"], 1);
    let ran_at: DateTime<Utc> = serde_json::from_value(done["finished_at"].clone()).unwrap();
    let run_at: DateTime<Utc> = serde_json::from_value(snoozed["run_at"].clone()).unwrap();
    let created: DateTime<Utc> = serde_json::from_value(done["created_at"].clone()).unwrap();
    assert!(
        run_at - created >= chrono::Duration::milliseconds(1400),
        "{snoozed}"
    );
    assert!(ran_at >= run_at, "ran at {ran_at}, due {run_at}");
    app.stop().await;
}

#[tokio::test]
async fn a_paused_kind_runs_nothing_until_resumed_then_the_highest_priority_first() {
    let app = TestApp::with(Options {
        concurrency: 1,
        ..Default::default()
    })
    .await;
    let (status, paused) = app.post_path("/kinds/sleep/pause", None).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert!(paused["paused_at"].is_string());
    let low = submit(&app, 4, 20, json!({"priority": 1})).await;
    let high = submit(&app, 4, 20, json!({"priority": 8})).await;
    let other = app.create("hash", json!({"rounds": 10})).await;
    assert_eq!(
        app.wait_final(&other, Duration::from_secs(30)).await["status"],
        "succeeded",
        "another kind runs"
    );
    let last = high.last().unwrap();
    app.wait_for(last, Duration::from_secs(10), |j| j["held"] == "paused")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.metric_sum("jobstack_jobs_started_total", "kind=\"sleep\"")
            .await,
        0.0,
        "nothing of a paused kind started"
    );
    // The relay refreshes the gauge at most once a second.
    app.wait_until(Duration::from_secs(10), "the paused gauge at 1", || async {
        app.metric_sum("jobstack_kind_paused", "kind=\"sleep\"")
            .await
            == 1.0
    })
    .await;
    let (status, resumed) = app.post_path("/kinds/sleep/resume", None).await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert!(resumed["paused_at"].is_null());
    let all: Vec<String> = low.iter().chain(&high).cloned().collect();
    wait_all_succeeded(&app, &all, Duration::from_secs(30)).await;
    let last_high = intervals(&app, &high).await.last().unwrap().0;
    let first_low = intervals(&app, &low).await[0].0;
    assert!(
        last_high <= first_low,
        "every priority-8 job started before any priority-1 one"
    );
    assert_eq!(app.count_jobs().await, 9, "nothing lost, nothing added");
    app.stop().await;
}

#[tokio::test]
async fn bad_flow_fields_are_422_and_store_nothing() {
    let app = TestApp::api_only().await;
    let payload = json!({"duration_ms": 1, "steps": 1});
    for (extra, says) in [
        (json!({"priority": 10}), "priority"),
        (json!({"priority": -1}), "priority"),
        (json!({"concurrency_key": ""}), "concurrency_key"),
        (json!({"unique_key": "x".repeat(256)}), "unique_key"),
        (json!({"concurrency_key": 5}), "concurrency_key"),
        (json!({"concurrency_key": "a\u{0}b"}), "concurrency_key"),
        (json!({"unique_key": "tab\there"}), "unique_key"),
    ] {
        let mut body = json!({"kind": "sleep", "payload": payload});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, headers, problem) = app.post(body).await;
        assert!(
            status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST,
            "{extra}: {status} {problem}"
        );
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{problem}"
        );
    }
    for path in ["/kinds/nope/pause", "/kinds/nope/resume"] {
        let (status, problem) = app.post_path(path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    }
    assert_eq!(app.count_jobs().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_idempotent_duplicate_of_a_unique_job_answers_with_that_job_every_time() {
    let app = TestApp::with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let body =
        json!({"kind": "sleep", "payload": {"duration_ms": 1, "steps": 1}, "unique_key": "u"});
    let (status, _, first) = app.post(body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let keyed = || {
        app.http
            .post(format!("{}/jobs", app.url))
            .header("idempotency-key", "k1")
            .json(&body)
            .send()
    };
    let dup = keyed().await.unwrap();
    assert_eq!(dup.status(), StatusCode::OK);
    assert_eq!(dup.headers()["unique-duplicate"], "true");
    assert_eq!(dup.json::<Value>().await.unwrap()["id"], first["id"]);
    let replay = keyed().await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap()["id"], first["id"]);
    assert_eq!(app.count_jobs().await, 1);
    app.stop().await;
}

/// A due outbox entry of a new `kind` job, as the relay reads it.
async fn entry(db: &sqlx::PgPool, kind: &str) -> api::store::outbox::Unpublished {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO jobs (id, kind, payload, trace_id) VALUES ($1, $2, '{}', '')")
        .bind(id)
        .bind(kind)
        .execute(db)
        .await
        .unwrap();
    api::store::outbox::Unpublished {
        id,
        kind: kind.into(),
        payload: json!({}),
        run_at: Utc::now(),
        payload_version: 1,
        attempt: 1,
        failures: 0,
        generation: 0,
        checkpoint: None,
        checkpoint_attempt: None,
        checkpoint_at: None,
        attempt_traceparent: None,
        traceparent: None,
        inputs: None,
        scheduled: false,
        stale: false,
        priority: 0,
        concurrency_key: String::new(),
        held: None,
        turn: None,
        paused: false,
        snoozes: 0,
    }
}

#[tokio::test]
async fn two_relays_deciding_at_once_wait_for_each_other_on_the_kinds_lock() {
    for limits in ["sleep:concurrency=1", "sleep:rate=1/s"] {
        let app = TestApp::with(Options {
            worker: false,
            job_limits: limits,
            ..Default::default()
        })
        .await;
        let flow = std::sync::Arc::new(app.api_config.flow(&app.catalog).unwrap());
        let db = app.db().await;
        // Relay A admits one job and has not committed yet (it is publishing).
        let mut a = db.begin().await.unwrap();
        let first = entry(&db, "sleep").await;
        let second = entry(&db, "sleep").await;
        let published = api::flow::gate::admit(&mut a, vec![first], &flow)
            .await
            .unwrap();
        assert_eq!(published.len(), 1, "{limits}: the first job goes");
        // Relay B decides meanwhile on another: it must wait for A's decision to be final.
        let b = tokio::spawn({
            let (db, flow) = (db.clone(), flow.clone());
            async move {
                let mut b = db.begin().await.unwrap();
                let published = api::flow::gate::admit(&mut b, vec![second], &flow)
                    .await
                    .unwrap();
                b.commit().await.unwrap();
                published.len()
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !b.is_finished(),
            "{limits}: B decided without waiting for A"
        );
        a.commit().await.unwrap();
        let b_published = tokio::time::timeout(Duration::from_secs(10), b)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            b_published, 0,
            "{limits}: B saw what A took, and held its job"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_job_kept_waiting_for_a_slot_rises_a_priority_each_recheck_and_one_woken_does_not() {
    let app = TestApp::with(Options {
        worker: false,
        job_limits: "sleep:concurrency=1",
        ..Default::default()
    })
    .await;
    let flow = app.api_config.flow(&app.catalog).unwrap();
    let db = app.db().await;
    // One job holds the kind's only slot.
    let running = entry(&db, "sleep").await;
    sqlx::query("INSERT INTO slots (job_id, kind) VALUES ($1, 'sleep')")
        .bind(running.id)
        .execute(&db)
        .await
        .unwrap();
    let mut rechecked = entry(&db, "sleep").await;
    let mut woken = entry(&db, "sleep").await;
    for (e, held) in [(&mut rechecked, Some("concurrency")), (&mut woken, None)] {
        e.held = held.map(str::to_owned);
        e.priority = 2;
        // Due in an hour: the api's own relay leaves these entries to the test.
        sqlx::query(
            "INSERT INTO outbox (job_id, run_at, priority, held) VALUES ($1, now() + interval '1 hour', 2, $2)",
        )
        .bind(e.id)
        .bind(held)
        .execute(&db)
        .await
        .unwrap();
    }
    let (rechecked_id, woken_id) = (rechecked.id, woken.id);
    let mut tx = db.begin().await.unwrap();
    let published = api::flow::gate::admit(&mut tx, vec![rechecked, woken], &flow)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(published.is_empty(), "the slot is taken");
    let priority = |id: Uuid| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i16>("SELECT priority FROM outbox WHERE job_id = $1")
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        priority(rechecked_id).await,
        3,
        "a whole recheck waited: one up"
    );
    assert_eq!(
        priority(woken_id).await,
        2,
        "woken by a freed slot: no change"
    );
    app.stop().await;
}
