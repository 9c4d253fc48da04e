//! `GET /jobs`: filters, newest first, cursor pagination.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn pages_newest_first_without_gaps_or_repeats() {
    let app = TestApp::api_only().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            app.create("sleep", json!({"duration_ms": i, "steps": 1}))
                .await,
        );
    }
    created.push(app.create("hash", json!({"rounds": 1})).await);

    let mut seen = Vec::new();
    let mut path = "/jobs?limit=2".to_owned();
    loop {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/jobs?limit=2&cursor={c}"),
            None => break,
        }
    }
    created.reverse();
    assert_eq!(seen, created, "all six, newest first");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 6);

    let (_, page) = app.get("/jobs?kind=hash").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let (_, page) = app.get("/jobs?status=queued&kind=sleep&limit=100").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    assert!(page["next_cursor"].is_null());
    let (_, page) = app.get("/jobs?status=succeeded").await;
    assert_eq!(page["items"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let app = TestApp::api_only().await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/jobs", "post"),
        ("/jobs", "get"),
        ("/jobs/{id}", "get"),
        ("/jobs/{id}/cancel", "post"),
        ("/jobs/{id}/redrive", "post"),
        ("/jobs/redrive", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} documented"
        );
    }
    for schema in [
        "Job",
        "CreateJob",
        "JobPage",
        "Problem",
        "RedriveMany",
        "Redriven",
        "Status",
        "PastGeneration",
        "Kind",
        "Alive",
        "Ready",
        "NotReady",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} schema"
        );
    }
    app.stop().await;
}
