//! Group commit: concurrent `POST /jobs` share transactions, and each is answered by what
//! happened to its own row.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, postgres_addr};

async fn post_many(app: &TestApp, n: usize) -> Vec<(StatusCode, Value)> {
    let body = json!({"kind": "sleep", "payload": {"duration_ms": 10, "steps": 1}});
    let posts = (0..n).map(|_| async {
        let (status, _, job) = app.post(body.clone()).await;
        (status, job)
    });
    futures_util::future::join_all(posts).await
}

#[tokio::test]
async fn concurrent_requests_share_transactions_and_each_gets_its_own_row() {
    let app = TestApp::api_only().await;
    let answers = post_many(&app, 300).await;
    let ids: HashSet<&str> = answers
        .iter()
        .map(|(status, job)| {
            assert_eq!(*status, StatusCode::ACCEPTED, "{job}");
            job["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 300, "one distinct job per request");
    assert_eq!(app.count_jobs().await, 300);
    for (_, job) in answers.iter().step_by(37) {
        let id = job["id"].as_str().unwrap();
        assert_eq!(app.job(id).await["id"], id, "the answer is the stored row");
    }
    let batches = app.metric_sum("jobstack_accept_batch_size_count", "").await;
    let rows = app.metric_sum("jobstack_accept_batch_size_sum", "").await;
    assert_eq!(rows, 300.0);
    assert!(batches < 300.0, "{batches} transactions for 300 jobs");
    app.stop().await;
}

#[tokio::test]
async fn a_batch_that_cannot_commit_answers_503_and_every_202_is_stored() {
    let port = test_support::net::free_port().await;
    let postgres = test_support::net::open_proxy(port, postgres_addr()).await;
    let app = TestApp::with(Options {
        worker: false,
        postgres_via: Some(port),
        ..Default::default()
    })
    .await;
    let (during, ()) = tokio::join!(post_many(&app, 200), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        postgres.down();
    });
    let accepted: Vec<&str> = during
        .iter()
        .filter(|(status, _)| *status == StatusCode::ACCEPTED)
        .map(|(_, job)| job["id"].as_str().unwrap())
        .collect();
    for (status, body) in &during {
        assert!(
            *status == StatusCode::ACCEPTED || *status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}: {body}"
        );
    }
    // Down for good: every request is refused, none stored.
    let before = accepted.len();
    for (status, body) in post_many(&app, 50).await {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body["detail"].as_str().unwrap().contains("PostgreSQL"));
    }
    let _back = test_support::net::open_proxy(port, postgres_addr()).await;
    let db = app.db().await;
    let stored: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_all(&db)
        .await
        .unwrap();
    for id in &accepted {
        assert!(
            stored.contains(&id.parse().unwrap()),
            "job {id} was answered 202 but is not stored"
        );
    }
    assert!(stored.len() >= before);
    app.stop().await;
}
