//! Group commit: concurrent `POST /jobs` share transactions, and each is answered by what
//! happened to its own row.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, postgres_addr, wait_metric};

/// `n` requests at once, the `i`-th with `duration_ms` `i` (so an answer can be told apart);
/// the answers in the order of the requests.
async fn post_many(app: &TestApp, n: usize) -> Vec<(StatusCode, Value)> {
    let posts = (0..n).map(|i| async move {
        let body = json!({"kind": "sleep", "payload": {"duration_ms": i, "steps": 1}});
        let (status, _, job) = app.post(body).await;
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
    for (i, (_, job)) in answers.iter().enumerate() {
        assert_eq!(
            job["payload"]["duration_ms"], i,
            "request {i} answered with another's job"
        );
    }
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

/// Keyed requests go through the same batches: a hundred keys, each sent twice at once (in
/// opposite orders, so concurrent batches meet the same keys in different orders).
#[tokio::test]
async fn keyed_requests_share_transactions_and_each_key_makes_one_job() {
    let app = TestApp::api_only().await;
    let body = json!({"kind": "sleep", "payload": {"duration_ms": 10, "steps": 1}});
    // Each key once in order, then again in reverse.
    let keys: Vec<String> = (0..100)
        .chain((0..100).rev())
        .map(|i| format!("k-{i}"))
        .collect();
    let (app_ref, body) = (&app, &body);
    let posts = keys.iter().map(|key| async move {
        let res = app_ref
            .http
            .post(format!("{}/jobs", app_ref.url))
            .header("idempotency-key", key.as_str())
            .json(body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        (key, status, res.json::<Value>().await.unwrap())
    });
    let answers = futures_util::future::join_all(posts).await;
    let mut by_key: std::collections::HashMap<&String, HashSet<String>> = Default::default();
    for (key, status, job) in &answers {
        assert_eq!(*status, StatusCode::ACCEPTED, "{job}");
        by_key
            .entry(key)
            .or_default()
            .insert(job["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(by_key.len(), 100);
    assert!(by_key.values().all(|ids| ids.len() == 1), "one job per key");
    assert_eq!(app.count_jobs().await, 100);
    let batches = app.metric_sum("jobstack_accept_batch_size_count", "").await;
    let requests = app.metric_sum("jobstack_accept_batch_size_sum", "").await;
    assert_eq!(requests, 200.0);
    assert!(
        batches < 200.0,
        "{batches} transactions for 200 keyed requests"
    );
    app.stop().await;
}

/// One batch holding every case a key can meet is answered as each request would be alone.
#[tokio::test]
async fn a_batch_answers_each_keyed_request_as_if_it_were_alone() {
    use api::store::{Claim, Inserted, Key, NewJob, Stored, Submission};
    let app = TestApp::api_only().await;
    let db = app.db().await;
    let sub = |key: Option<(&str, &str)>, unique: Option<&str>| Submission {
        job: NewJob {
            unique: unique.map(|u| Claim {
                key: u.to_owned(),
                within: None,
            }),
            ..NewJob::now("sleep", json!({"duration_ms": 10, "steps": 1}), 1)
        },
        key: key.map(|(key, fingerprint)| Key {
            key: key.to_owned(),
            fingerprint: fingerprint.to_owned(),
            ttl: Duration::from_secs(600),
        }),
    };
    let created = |answer: &Inserted| match answer {
        Inserted::Created(Stored::New(row)) => row.id,
        other => panic!("not a new job: {other:?}"),
    };
    let before = api::store::insert(
        &db,
        &[sub(Some(("k-old", "f1")), None), sub(None, Some("u"))],
    )
    .await
    .unwrap();
    let (old, unique) = (created(&before[0]), created(&before[1]));

    let answers = api::store::insert(
        &db,
        &[
            sub(None, None),
            sub(Some(("k-new", "f")), None),
            sub(Some(("k-new", "f")), None),
            sub(Some(("k-new", "g")), None),
            sub(Some(("k-old", "f1")), None),
            sub(Some(("k-old", "zz")), None),
            sub(Some(("k-dup", "f")), Some("u")),
            sub(Some(("k-dup", "f")), Some("u")),
            sub(Some(("a-first", "f")), None),
        ],
    )
    .await
    .unwrap();
    created(&answers[0]);
    let new = created(&answers[1]);
    let replayed = |answer: &Inserted| match answer {
        Inserted::Replayed(row) => row.id,
        other => panic!("not a replay: {other:?}"),
    };
    assert_eq!(
        replayed(&answers[2]),
        new,
        "a second request with the key, in the batch"
    );
    assert!(
        matches!(answers[3], Inserted::KeyReused),
        "{:?}",
        answers[3]
    );
    assert_eq!(replayed(&answers[4]), old, "a key of an earlier batch");
    assert!(
        matches!(answers[5], Inserted::KeyReused),
        "{:?}",
        answers[5]
    );
    match &answers[6] {
        Inserted::Created(Stored::Duplicate(row)) => assert_eq!(row.id, unique),
        other => panic!("not the unique job: {other:?}"),
    }
    assert_eq!(
        replayed(&answers[7]),
        unique,
        "the key answers with the unique job"
    );
    let first = created(&answers[8]);
    assert_eq!(app.count_jobs().await, 5, "2 before, then 3 new jobs");
    let mut keys: Vec<(String, uuid::Uuid)> =
        sqlx::query_as("SELECT key, job_id FROM idempotency_keys ORDER BY key")
            .fetch_all(&db)
            .await
            .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            ("a-first".to_owned(), first),
            ("k-dup".to_owned(), unique),
            ("k-new".to_owned(), new),
            ("k-old".to_owned(), old),
        ]
    );
    // Each new job had its outbox entry, and nothing else did: the relay publishes five.
    wait_metric(&app, "jobstack_outbox_published_total", "", 5.0).await;
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(outbox, 0);
    assert_eq!(
        app.metric_sum("jobstack_outbox_published_total", "").await,
        5.0
    );
    // And later, alone: the key of a duplicate still answers with the unique job.
    let later = api::store::insert(&db, &[sub(Some(("k-dup", "f")), None)])
        .await
        .unwrap();
    assert_eq!(replayed(&later[0]), unique);
    app.stop().await;
}
