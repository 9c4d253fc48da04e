//! Bad input gets a clear problem+json 4xx and changes nothing.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Options, TestApp};

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    detail_has: &'static str,
}

fn case(
    name: &'static str,
    path: &'static str,
    body: &str,
    status: u16,
    detail_has: &'static str,
) -> Case {
    Case {
        name,
        method: "POST",
        path,
        content_type: Some("application/json"),
        body: body.as_bytes().to_vec(),
        status,
        detail_has,
    }
}

fn get(name: &'static str, path: &'static str, status: u16, detail_has: &'static str) -> Case {
    Case {
        name,
        method: "GET",
        path,
        content_type: None,
        body: Vec::new(),
        status,
        detail_has,
    }
}

#[tokio::test]
async fn every_bad_request_is_a_problem_and_stores_nothing() {
    let app = TestApp::with(Options {
        worker: false,
        body_limit: 4096,
        ..Default::default()
    })
    .await;
    let big = format!(
        r#"{{"kind":"sleep","payload":{{"pad":"{}"}}}}"#,
        "x".repeat(5000)
    );
    let deep = format!(
        r#"{{"kind":"sleep","payload":{}{}}}"#,
        "[".repeat(1500),
        "]".repeat(1500)
    );
    let unknown = "/jobs/00000000-0000-0000-0000-000000000000";
    let cases = vec![
        case(
            "malformed JSON",
            "/jobs",
            r#"{"kind": "sleep", "payload": "#,
            400,
            "malformed JSON",
        ),
        case("not an object", "/jobs", "[1,2]", 422, "invalid job"),
        case("empty body", "/jobs", "", 400, "malformed JSON"),
        case(
            "kind of wrong type",
            "/jobs",
            r#"{"kind": 5, "payload": {}}"#,
            422,
            "invalid type",
        ),
        case(
            "missing kind",
            "/jobs",
            r#"{"payload": {}}"#,
            422,
            "missing field `kind`",
        ),
        case(
            "missing payload",
            "/jobs",
            r#"{"kind": "sleep"}"#,
            422,
            "missing field `payload`",
        ),
        case(
            "unknown top-level field",
            "/jobs",
            r#"{"kind":"hash","payload":{"rounds":1},"x":1}"#,
            422,
            "unknown field `x`",
        ),
        case(
            "unknown kind",
            "/jobs",
            r#"{"kind": "mine", "payload": {}}"#,
            422,
            "unknown kind \"mine\"",
        ),
        case(
            "sleep without steps",
            "/jobs",
            r#"{"kind":"sleep","payload":{"duration_ms":5}}"#,
            422,
            "missing field `steps`",
        ),
        case(
            "sleep too long",
            "/jobs",
            r#"{"kind":"sleep","payload":{"duration_ms":604800001,"steps":1}}"#,
            422,
            "duration_ms must be at most",
        ),
        case(
            "sleep zero steps",
            "/jobs",
            r#"{"kind":"sleep","payload":{"duration_ms":5,"steps":0}}"#,
            422,
            "steps must be between",
        ),
        case(
            "negative duration",
            "/jobs",
            r#"{"kind":"sleep","payload":{"duration_ms":-5,"steps":1}}"#,
            422,
            "invalid value",
        ),
        case(
            "number overflow",
            "/jobs",
            r#"{"kind":"hash","payload":{"rounds":18446744073709551616}}"#,
            422,
            "invalid payload for hash",
        ),
        case(
            "hash rounds as string",
            "/jobs",
            r#"{"kind":"hash","payload":{"rounds":"9"}}"#,
            422,
            "invalid type",
        ),
        case(
            "hash zero rounds",
            "/jobs",
            r#"{"kind":"hash","payload":{"rounds":0}}"#,
            422,
            "rounds must be between",
        ),
        case(
            "fail without transient",
            "/jobs",
            r#"{"kind":"fail","payload":{}}"#,
            422,
            "missing field `transient`",
        ),
        case(
            "payload is an array",
            "/jobs",
            r#"{"kind":"fail","payload":[]}"#,
            422,
            "invalid payload for fail",
        ),
        // serde alone reads a struct from an array of its fields: `[1]` would be rounds 1.
        case(
            "payload as an array of its fields",
            "/jobs",
            r#"{"kind":"hash","payload":[1]}"#,
            422,
            "expected a JSON object",
        ),
        case(
            "job as an array of its fields",
            "/jobs",
            r#"["hash",{"rounds":1}]"#,
            422,
            "expected a JSON object",
        ),
        case("deep nesting", "/jobs", &deep, 400, "recursion limit"),
        case("body over the limit", "/jobs", &big, 413, "size limit"),
        case(
            "replacement character",
            "/jobs",
            "{\"kind\":\"\u{fffd}\",\"payload\":{}}",
            422,
            "unknown kind",
        ),
        Case {
            content_type: Some("text/plain"),
            ..case(
                "wrong content type",
                "/jobs",
                r#"{"kind":"hash","payload":{"rounds":1}}"#,
                415,
                "application/json",
            )
        },
        Case {
            content_type: None,
            ..case(
                "no content type",
                "/jobs",
                r#"{"kind":"hash","payload":{"rounds":1}}"#,
                415,
                "application/json",
            )
        },
        Case {
            body: vec![b'{', 0xff, 0xfe, b'}'],
            ..case("raw invalid bytes", "/jobs", "", 400, "malformed JSON")
        },
        get("unknown id", unknown, 404, "no job"),
        get("malformed id", "/jobs/not-a-uuid", 400, "is not a job id"),
        case(
            "cancel unknown id",
            "/jobs/00000000-0000-0000-0000-000000000000/cancel",
            "",
            404,
            "no job",
        ),
        case(
            "cancel malformed id",
            "/jobs/123/cancel",
            "",
            400,
            "is not a job id",
        ),
        get(
            "bad status filter",
            "/jobs?status=done",
            400,
            "status: unknown variant `done`",
        ),
        get("bad kind filter", "/jobs?kind=mine", 400, "unknown kind"),
        get("limit zero", "/jobs?limit=0", 400, "limit must be"),
        get("limit too big", "/jobs?limit=101", 400, "limit must be"),
        get(
            "limit not a number",
            "/jobs?limit=ten",
            400,
            "limit: invalid digit",
        ),
        get("bad cursor", "/jobs?cursor=abc", 400, "malformed cursor"),
        get(
            "bad cursor id",
            "/jobs?cursor=1_zz",
            400,
            "malformed cursor",
        ),
        // Off the documented pattern, though a UUID parser would take it.
        get(
            "cursor with a hyphenated id",
            "/jobs?cursor=1_00000000-0000-0000-0000-000000000000",
            400,
            "malformed cursor",
        ),
        get(
            "cursor in upper case",
            "/jobs?cursor=1_0000000000000000000000000000000A",
            400,
            "malformed cursor",
        ),
        get("empty cursor", "/jobs?cursor=", 400, "malformed cursor"),
        get("unknown route", "/nope", 404, "no such route"),
        Case {
            method: "DELETE",
            ..get("wrong method", "/jobs", 405, "method not allowed")
        },
        Case {
            method: "PUT",
            ..get("wrong method on a job", unknown, 405, "method not allowed")
        },
    ];
    let total = cases.len();
    let mut failures = Vec::new();
    for c in cases {
        let mut req = app
            .http
            .request(c.method.parse().unwrap(), format!("{}{}", app.url, c.path))
            .body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let ct = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = res.json().await.unwrap_or(Value::Null);
        let ok = status.as_u16() == c.status
            && ct.as_deref() == Some("application/problem+json")
            && body["status"] == c.status
            && body["title"].is_string()
            && body["detail"]
                .as_str()
                .is_some_and(|d| d.contains(c.detail_has));
        if !ok {
            failures.push(format!("{}: {status} {ct:?} {body}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(app.count_jobs().await, 0, "nothing was stored");

    // 1 000 requests to unknown paths add no series: one `unmatched` label value.
    for i in 0..1000 {
        let res = app
            .http
            .get(format!("{}/random/{i}/{}", app.url, uuid::Uuid::new_v4()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    let metrics = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("/random/"),
        "raw paths never become labels"
    );
    let unmatched = metrics
        .lines()
        .filter(|l| {
            l.starts_with("http_server_request_duration_seconds_count")
                && l.contains("route=\"unmatched\"")
        })
        .count();
    assert!(
        (1..=4).contains(&unmatched),
        "one series per method/status: {unmatched}"
    );
    app.stop().await;
}
