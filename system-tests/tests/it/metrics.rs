//! `/metrics` after some jobs has every documented series, with bounded labels.

use std::time::Duration;

use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn metrics_after_jobs_have_the_documented_series() {
    let app = TestApp::spawn().await;
    let ok = app
        .create("sleep", json!({"duration_ms": 20, "steps": 2}))
        .await;
    let bad = app.create("fail", json!({"transient": true})).await;
    for id in [&ok, &bad] {
        app.wait_final(id, Duration::from_secs(30)).await;
    }
    app.get(&format!("/jobs/{ok}")).await;
    let p = &app.api_config.topology();
    let expected = [
        r#"http_server_request_duration_seconds_bucket{method="POST",route="/jobs",status="202",le="0.001"}"#.to_owned(),
        r#"http_server_request_duration_seconds_count{method="GET",route="/jobs/{id}",status="200"}"#.to_owned(),
        "http_server_active_requests".to_owned(),
        r#"jobstack_jobs_created_total{kind="sleep"} 1"#.to_owned(),
        r#"jobstack_jobs_created_total{kind="fail"} 1"#.to_owned(),
        r#"jobstack_jobs_started_total{kind="fail"} 3"#.to_owned(),
        r#"jobstack_jobs_finished_total{kind="sleep",outcome="succeeded"} 1"#.to_owned(),
        r#"jobstack_jobs_finished_total{kind="fail",outcome="failed"} 1"#.to_owned(),
        r#"jobstack_job_retries_total{kind="fail"} 2"#.to_owned(),
        r#"jobstack_jobs_dead_lettered_total{kind="fail",reason="exhausted"} 1"#.to_owned(),
        r#"jobstack_job_duration_seconds_bucket{kind="sleep",outcome="succeeded",le="600"} 1"#.to_owned(),
        r#"jobstack_job_duration_seconds_count{kind="fail",outcome="retried"} 2"#.to_owned(),
        r#"jobstack_job_queue_wait_seconds_count{kind="fail"} 3"#.to_owned(),
        r#"jobstack_jobs_in_flight{kind="sleep"} 0"#.to_owned(),
        r#"jobstack_job_events_total{event="succeeded",result="applied"} 1"#.to_owned(),
        "jobstack_outbox_backlog 0".to_owned(),
        // Two jobs, and the fail job's two retries, each published by the api's relay.
        "jobstack_outbox_published_total 4".to_owned(),
        format!(r#"jobstack_amqp_publish_duration_seconds_count{{exchange="{}"}} 4"#, p.jobs_exchange()),
        // The accept batches, in buckets up to a full batch.
        r#"jobstack_accept_batch_size_bucket{le="128"} 2"#.to_owned(),
        format!(r#"jobstack_amqp_publish_duration_seconds_count{{exchange="{}"}}"#, p.events_exchange()),
        "jobstack_amqp_connected 1".to_owned(),
        format!(r#"jobstack_build_info{{service="api",version="{}"}} 1"#, env!("CARGO_PKG_VERSION")),
        format!(r#"jobstack_build_info{{service="worker",version="{}"}} 1"#, env!("CARGO_PKG_VERSION")),
        "jobstack_worker_concurrency 4".to_owned(),
    ];
    // Some series lag the jobs' end (the relay samples its backlog after each pass): wait
    // until every one is there, or report those still missing.
    let scrape = || async {
        let res = app.http.get(format!("{}/metrics", app.url)).send().await;
        res.unwrap().text().await.unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape().await;
        let missing: Vec<_> = expected
            .iter()
            .filter(|e| !text.contains(e.as_str()))
            .collect();
        if missing.is_empty() {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "missing series: {missing:#?}\n\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !text.contains(&ok) && !text.contains(&bad),
        "no job id is ever a label"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        // A `_count` is a histogram's (it has buckets), never a counter's.
        let histogram = name
            .strip_suffix("_count")
            .is_none_or(|base| text.contains(&format!("{base}_bucket{{")));
        assert!(histogram, "counters end in _total: {line}");
    }
    app.stop().await;
}
