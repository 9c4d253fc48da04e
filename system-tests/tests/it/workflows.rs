//! Workflows against the real services: dependency order and results, a wide fan-in, the failure
//! policies, cancel, a re-drive that resumes, services killed mid-workflow, and bad graphs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp};

async fn submit(app: &TestApp, jobs: Value) -> Value {
    let (status, body) = app
        .send(
            Method::POST,
            "/workflows",
            Some(json!({ "name": "test", "jobs": jobs })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// The workflow once every job of it is final.
async fn wait_done(app: &TestApp, id: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        let (_, w) = app.get(&format!("/workflows/{id}")).await;
        if w["status"] != "running" {
            return w;
        }
        last = w;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("workflow {id} still running after {timeout:?}: {last}");
}

fn step<'a>(w: &'a Value, key: &str) -> &'a Value {
    w["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .unwrap_or_else(|| panic!("no step {key}: {w}"))
}

fn at(job: &Value, field: &str) -> DateTime<Utc> {
    job[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} of {job}"))
        .parse()
        .unwrap()
}

fn hash(key: &str, deps: Value) -> Value {
    json!({"key": key, "kind": "hash", "payload": {"rounds": 1000}, "depends_on": deps})
}

#[tokio::test]
async fn a_diamond_runs_in_dependency_order_and_the_last_job_reads_both_results() {
    let app = TestApp::spawn().await;
    let created = submit(
        &app,
        json!([
            hash("a", json!([])),
            hash("b", json!(["a"])),
            hash("c", json!(["a"])),
            hash("d", json!(["b", "c"]))
        ]),
    )
    .await;
    assert_eq!(step(&created, "d")["waiting_for"], 2, "{created}");
    let id = created["id"].as_str().unwrap();
    let w = wait_done(&app, id, Duration::from_secs(60)).await;
    assert_eq!(w["status"], "succeeded", "{w}");
    let job = |k| &step(&w, k)["job"];
    for k in ["b", "c"] {
        assert!(
            at(job(k), "started_at") >= at(job("a"), "finished_at"),
            "{k} after a: {w}"
        );
        assert!(
            at(job("d"), "started_at") >= at(job(k), "finished_at"),
            "d after {k}: {w}"
        );
    }
    assert_eq!(
        job("d")["result"]["from"],
        json!(["b", "c"]),
        "d read b's and c's digests: {w}"
    );
    assert_eq!(job("b")["result"]["from"], json!(["a"]), "{w}");
    // One trace for the whole workflow: every job joined the request's.
    for k in ["a", "b", "c", "d"] {
        assert_eq!(job(k)["trace_id"], w["trace_id"], "{k}: {w}");
        assert_eq!(job(k)["attempts"], 1, "{k} ran once: {w}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_fan_in_of_200_starts_its_parent_once_after_the_last_child() {
    let app = TestApp::with(Options {
        concurrency: 16,
        ..Default::default()
    })
    .await;
    let mut jobs: Vec<Value> = (0..200)
        .map(|i| json!({"key": format!("c{i}"), "kind": "sleep", "payload": {"duration_ms": 10, "steps": 1}}))
        .collect();
    let children: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
    jobs.push(hash("parent", json!(children)));
    let created = submit(&app, json!(jobs)).await;
    let w = wait_done(
        &app,
        created["id"].as_str().unwrap(),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(w["status"], "succeeded", "{}", w["status"]);
    let parent = &step(&w, "parent")["job"];
    assert_eq!(
        (parent["attempts"].clone(), parent["generation"].clone()),
        (json!(1), json!(0))
    );
    let last_child = w["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["key"] != "parent")
        .map(|s| at(&s["job"], "finished_at"))
        .max()
        .unwrap();
    assert!(at(parent, "started_at") >= last_child, "{parent}");
    assert_eq!(
        app.metric_sum("jobstack_jobs_started_total", r#"kind="hash""#)
            .await,
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failure_cancels_its_descendants_under_fail_and_not_under_ignore() {
    let app = TestApp::spawn().await;
    let fail = json!({"key": "a", "kind": "fail", "payload": {"transient": false}});
    let strict = submit(
        &app,
        json!([fail, hash("b", json!(["a"])), hash("c", json!(["b"]))]),
    )
    .await;
    let lenient = submit(
        &app,
        json!([
            fail,
            hash("b", json!([{"key": "a", "on_failure": "ignore"}])),
            hash("c", json!(["b"]))
        ]),
    )
    .await;
    let strict = wait_done(
        &app,
        strict["id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(strict["status"], "failed", "{strict}");
    for k in ["b", "c"] {
        let job = &step(&strict, k)["job"];
        assert_eq!(
            (job["status"].clone(), job["attempts"].clone()),
            (json!("cancelled"), json!(0)),
            "{k}: {job}"
        );
    }
    assert!(
        step(&strict, "b")["job"]["error"]
            .as_str()
            .unwrap()
            .contains("a was failed")
    );
    let lenient = wait_done(
        &app,
        lenient["id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        lenient["status"], "succeeded",
        "every dependent ignored a's failure: {lenient}"
    );
    assert_eq!(step(&lenient, "c")["job"]["status"], "succeeded");
    assert_eq!(
        step(&lenient, "b")["job"]["result"]["from"],
        json!([]),
        "a's result reads as null"
    );
    let (_, page) = app.get("/workflows?status=failed").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    app.stop().await;
}

#[tokio::test]
async fn a_redrive_of_the_failed_job_resumes_the_workflow_and_a_cancel_stops_it() {
    let app = TestApp::spawn().await;
    let slow = json!({"key": "a", "kind": "sleep", "payload": {"duration_ms": 2000, "steps": 4}});
    let created = submit(
        &app,
        json!([slow, hash("b", json!(["a"])), hash("c", json!(["b"]))]),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let a = step(&created, "a")["job"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_for(&a, Duration::from_secs(30), |j| j["status"] == "running")
        .await;
    assert_eq!(app.cancel(&a).await.0, StatusCode::ACCEPTED);
    let w = wait_done(&app, id, Duration::from_secs(30)).await;
    assert_eq!(
        w["status"], "failed",
        "a was cancelled, b and c with it: {w}"
    );
    assert_eq!(step(&w, "c")["job"]["status"], "cancelled");

    let (status, _) = app.post_path(&format!("/jobs/{a}/redrive"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let w = wait_done(&app, id, Duration::from_secs(60)).await;
    assert_eq!(
        w["status"], "succeeded",
        "the re-drive resumed b and c: {w}"
    );
    assert_eq!(step(&w, "c")["job"]["attempts"], 1);

    // A cancel of the whole workflow stops what has not run.
    let created = submit(&app, json!([slow, hash("b", json!(["a"]))])).await;
    let id = created["id"].as_str().unwrap();
    let (status, cancelled) = app
        .send(Method::POST, &format!("/workflows/{id}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{cancelled}");
    let w = wait_done(&app, id, Duration::from_secs(30)).await;
    assert_eq!(w["status"], "cancelled", "{w}");
    assert_eq!(step(&w, "b")["job"]["attempts"], 0, "b never ran");
    app.stop().await;
}

#[tokio::test]
async fn a_workflow_survives_the_api_and_the_worker_killed_midway_and_nothing_runs_twice() {
    let mut app = TestApp::with(Options {
        lease: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let sleep = |key: &str, deps: Value| json!({"key": key, "kind": "sleep", "payload": {"duration_ms": 1500, "steps": 3}, "depends_on": deps});
    let created = submit(
        &app,
        json!([
            sleep("a", json!([])),
            sleep("b", json!(["a"])),
            sleep("c", json!(["b"]))
        ]),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let b = step(&created, "b")["job"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_for(&b, Duration::from_secs(30), |j| j["status"] == "running")
        .await;
    app.kill_worker();
    app.restart_api().await;
    app.start_worker().await;
    let w = wait_done(&app, &id, Duration::from_secs(90)).await;
    assert_eq!(w["status"], "succeeded", "{w}");
    for k in ["a", "b", "c"] {
        let job = &step(&w, k)["job"];
        assert_eq!(
            (job["status"].clone(), job["generation"].clone()),
            (json!("succeeded"), json!(0)),
            "{k}"
        );
    }
    // Succeeded once each: one finished event per job reached the api.
    assert_eq!(
        app.metric_sum(
            "jobstack_job_events_total",
            r#"event="succeeded",result="applied""#
        )
        .await,
        3.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_bad_graph_is_refused_naming_the_field_and_stores_nothing() {
    let app = TestApp::api_only().await;
    for (jobs, field) in [
        (
            json!([hash("a", json!(["b"])), hash("b", json!(["a"]))]),
            "jobs[0].depends_on:",
        ),
        (
            json!([hash("a", json!(["nope"]))]),
            "jobs[0].depends_on[0]:",
        ),
        (
            json!([hash("a", json!([])), hash("a", json!([]))]),
            "jobs[1].key:",
        ),
        (
            json!([{"key": "a", "kind": "hash", "payload": {"rounds": 0}}]),
            "jobs[0].payload:",
        ),
        (json!([]), "jobs:"),
    ] {
        let (status, problem) = app
            .send(Method::POST, "/workflows", Some(json!({ "jobs": jobs })))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.starts_with(field), "{field}: {detail}");
    }
    assert_eq!(app.get("/workflows").await.1["items"], json!([]));
    assert_eq!(app.count_jobs().await, 0);
    assert_eq!(
        app.get("/workflows/not-a-uuid").await.0,
        StatusCode::BAD_REQUEST
    );
    let unknown = uuid::Uuid::now_v7();
    assert_eq!(
        app.get(&format!("/workflows/{unknown}")).await.0,
        StatusCode::NOT_FOUND
    );
    app.stop().await;
}
