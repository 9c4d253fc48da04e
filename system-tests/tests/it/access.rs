//! Who may do what: every route against every role (and no key, a bad key, a revoked and an
//! expired one), a submitter's own jobs, the audit trail in the transaction of each action, and
//! per-client quotas.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, authorized};

/// The roles, as the api names them.
const ROLES: [&str; 4] = ["submitter", "viewer", "operator", "admin"];

/// Makes a key with `body` (as the test's admin) and returns the answer.
async fn make_key(app: &TestApp, body: Value) -> Value {
    let (status, key) = app.post_path("/keys", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    key
}

/// A key of `role` named `name`, and its secret.
async fn key(app: &TestApp, name: &str, role: &str) -> (String, String) {
    let key = make_key(app, json!({ "name": name, "role": role })).await;
    (
        key["id"].as_str().unwrap().to_owned(),
        key["secret"].as_str().unwrap().to_owned(),
    )
}

/// What a refused request may not change: every table a route writes (the outbox aside: the
/// relay takes from it meanwhile).
async fn footprint(app: &TestApp) -> Vec<(String, String)> {
    let db = app.db().await;
    let mut rows = Vec::new();
    for (table, what) in [
        (
            "jobs",
            "string_agg(id::text || status::text || generation || cancel_requested, ',' ORDER BY id)",
        ),
        ("audit", "count(*)::text"),
        (
            "schedules",
            "string_agg(name || enabled, ',' ORDER BY name)",
        ),
        ("paused_kinds", "string_agg(kind, ',' ORDER BY kind)"),
        (
            "api_keys",
            "string_agg(id::text || coalesce(revoked_at::text, ''), ',' ORDER BY id)",
        ),
        (
            "workflows",
            "string_agg(id::text || cancel_requested, ',' ORDER BY id)",
        ),
        ("idempotency_keys", "count(*)::text"),
    ] {
        let value: Option<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {what} FROM {table}")))
                .fetch_one(&db)
                .await
                .unwrap();
        rows.push((table.to_owned(), value.unwrap_or_default()));
    }
    db.close().await;
    rows
}

/// One concrete request for each route of `api::access::RULES`, on real objects, so that a
/// request let through by mistake would change something.
struct Fixture {
    job: String,
    workflow: String,
    key: String,
}

impl Fixture {
    async fn new(app: &TestApp) -> Self {
        let job = app.create("hash", json!({ "rounds": 1 })).await;
        let (status, wf) = app
            .post_path(
                "/workflows",
                Some(
                    json!({ "jobs": [{ "key": "a", "kind": "hash", "payload": { "rounds": 1 } }] }),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{wf}");
        let (status, s) = app
            .post_path(
                "/schedules",
                Some(
                    json!({ "name": "nightly", "kind": "hash", "payload": { "rounds": 1 },
                             "cron": "0 3 * * *" }),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{s}");
        let (key, _) = key(app, "victim", "viewer").await;
        Self {
            job,
            workflow: wf["id"].as_str().unwrap().to_owned(),
            key,
        }
    }

    /// The request for a rule's method and route template.
    fn request(&self, method: &str, route: &str) -> (Method, String, Option<Value>) {
        let path = route
            .replace(
                "{id}",
                if route.starts_with("/workflows") {
                    &self.workflow
                } else if route.starts_with("/keys") {
                    &self.key
                } else {
                    &self.job
                },
            )
            .replace("{kind}", "hash")
            .replace("{name}", "nightly");
        let body = match (method, route) {
            ("POST", "/jobs") => Some(json!({ "kind": "hash", "payload": { "rounds": 1 } })),
            ("POST", "/jobs/redrive") => Some(json!({ "status": "cancelled" })),
            ("POST", "/workflows") => Some(
                json!({ "jobs": [{ "key": "b", "kind": "hash", "payload": { "rounds": 1 } }] }),
            ),
            ("POST", "/schedules") => Some(json!({ "name": "hourly", "kind": "hash",
                "payload": { "rounds": 1 }, "cron": "0 * * * *" })),
            ("PATCH", "/schedules/{name}") => Some(json!({ "enabled": false })),
            ("POST", "/keys") => Some(json!({ "name": "another", "role": "viewer" })),
            _ => None,
        };
        (Method::from_bytes(method.as_bytes()).unwrap(), path, body)
    }
}

async fn send(
    app: &TestApp,
    http: &reqwest::Client,
    (method, path, body): &(Method, String, Option<Value>),
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = http.request(method.clone(), format!("{}{path}", app.url));
    if let Some(body) = body {
        req = req.json(body);
    }
    let res = req.send().await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    (status, headers, res.json().await.unwrap_or(Value::Null))
}

fn is_problem(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"))
}

#[tokio::test]
async fn every_route_refuses_every_role_it_does_not_admit_and_refusals_change_nothing() {
    let app = TestApp::api_only().await;
    let fixture = Fixture::new(&app).await;
    let mut clients = Vec::new();
    for role in ROLES {
        let (_, secret) = key(&app, &format!("a-{role}"), role).await;
        clients.push((role, authorized(&secret)));
    }
    let anonymous = reqwest::Client::new();
    let forged = authorized(&api::access::keys::generate());
    let garbage = authorized("not-a-key");

    // Every refusal first, on objects that exist: nothing may change.
    let before = footprint(&app).await;
    let mut refusals = 0;
    for (method, route, access) in api::access::RULES {
        let request = fixture.request(method, route);
        if *access == api::access::Access::Public {
            let (status, _, body) = send(&app, &anonymous, &request).await;
            assert!(
                status.is_success(),
                "{method} {route} without a key: {status} {body}"
            );
            continue;
        }
        for (who, http) in [
            ("no key", &anonymous),
            ("an unknown key", &forged),
            ("garbage", &garbage),
        ] {
            let (status, headers, body) = send(&app, http, &request).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {route} with {who}: {body}"
            );
            assert!(is_problem(&headers), "{method} {route}: {headers:?}");
            assert!(
                headers.get("www-authenticate").is_some(),
                "{method} {route}"
            );
            refusals += 1;
        }
        for (role, http) in &clients {
            let admitted = api::access::Role::parse(role).unwrap().may(*access);
            if admitted {
                continue;
            }
            let (status, headers, body) = send(&app, http, &request).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{method} {route} as {role}: {body}"
            );
            assert!(is_problem(&headers), "{method} {route}: {headers:?}");
            assert!(body["detail"].as_str().unwrap().contains(role), "{body}");
            refusals += 1;
        }
    }
    assert!(refusals > 80, "only {refusals} refusals were tried");
    assert_eq!(
        footprint(&app).await,
        before,
        "a refused request changed something"
    );

    // Then every admitted one: past the access layer (whatever the handler then answers).
    for (method, route, access) in api::access::RULES {
        for (role, http) in &clients {
            if !api::access::Role::parse(role).unwrap().may(*access) {
                continue;
            }
            let request = fixture.request(method, route);
            let (status, _, body) = send(&app, http, &request).await;
            assert!(
                ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&status)
                    && !status.is_server_error(),
                "{method} {route} as {role}: {status} {body}"
            );
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn every_documented_operation_has_a_rule_and_declares_its_roles() {
    let doc = api::routes::openapi(&jobs_contract::kinds::catalog());
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let verb = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let access = api::access::rule(&verb, path)
                .unwrap_or_else(|| panic!("{method} {path} has no rule"));
            let declared: Vec<&str> = op["security"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|req| req["apiKey"].as_array().unwrap())
                .map(|r| r.as_str().unwrap())
                .collect();
            let roles: Vec<&str> = match access {
                api::access::Access::Public => Vec::new(),
                _ => access.roles().iter().map(|r| r.as_str()).collect(),
            };
            assert_eq!(declared, roles, "{method} {path}");
            if access != api::access::Access::Public {
                assert!(op["responses"]["401"].is_object(), "{method} {path}");
            }
            operations += 1;
        }
    }
    assert_eq!(
        operations,
        api::access::RULES.len(),
        "a rule names no documented route"
    );
}

#[tokio::test]
async fn a_revoked_key_and_an_expired_key_are_refused() {
    let app = TestApp::api_only().await;
    let (id, secret) = key(&app, "soon-gone", "viewer").await;
    let viewer = authorized(&secret);
    let jobs = format!("{}/jobs", app.url);
    assert_eq!(
        viewer.get(&jobs).send().await.unwrap().status(),
        StatusCode::OK
    );
    let res = app
        .http
        .delete(format!("{}/keys/{id}", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // Revoked on this replica at once.
    let res = viewer.get(&jobs).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let key = make_key(
        &app,
        json!({ "name": "brief", "role": "viewer", "expires_in_secs": 60 }),
    )
    .await;
    let expires =
        chrono::DateTime::parse_from_rfc3339(key["expires_at"].as_str().unwrap()).unwrap();
    let ahead = expires
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    assert!((55..=60).contains(&ahead), "expires in {ahead}s");
    let brief = authorized(key["secret"].as_str().unwrap());
    assert_eq!(
        brief.get(&jobs).send().await.unwrap().status(),
        StatusCode::OK
    );
    // Its minute passes (moved in the database, not waited for): refused once this replica's
    // cache of verified keys (api::access::keys::CACHE_FOR) asks the database again.
    let db = app.db().await;
    sqlx::query(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE name = 'brief'",
    )
    .execute(&db)
    .await
    .unwrap();
    tokio::time::sleep(api::access::keys::CACHE_FOR + Duration::from_millis(500)).await;
    assert_eq!(
        brief.get(&jobs).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // The list shows both, and never a secret.
    let (status, keys) = app.get("/keys").await;
    assert_eq!(status, StatusCode::OK);
    let text = keys.to_string();
    assert!(
        !text.contains(&secret) && !text.contains("secret"),
        "{text}"
    );
    let revoked = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert!(revoked["revoked_at"].is_string(), "{revoked}");

    // Bad keys to make: each a 422 naming its field, nothing made.
    let count = keys.as_array().unwrap().len();
    for (body, field) in [
        (json!({ "name": "has space", "role": "viewer" }), "name"),
        (
            json!({ "name": "x", "role": "viewer", "expires_in_secs": 59 }),
            "expires_in_secs",
        ),
        (
            json!({ "name": "x", "role": "viewer", "submit_rate": 0 }),
            "submit_rate",
        ),
        (
            json!({ "name": "x", "role": "viewer", "submit_rate": 5e-324 }),
            "submit_rate",
        ),
        (
            json!({ "name": "x", "role": "viewer", "max_in_flight": 0 }),
            "max_in_flight",
        ),
    ] {
        let (status, problem) = app.post_path("/keys", Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().starts_with(field),
            "{problem}"
        );
    }
    let (status, problem) = app
        .post_path("/keys", Some(json!({ "name": "x", "role": "root" })))
        .await;
    assert!(status.is_client_error(), "{status} {problem}");
    assert_eq!(app.get("/keys").await.1.as_array().unwrap().len(), count);
    app.stop().await;
}

#[tokio::test]
async fn a_submitter_sees_only_its_own_jobs_and_every_job_names_its_client() {
    let app = TestApp::api_only().await;
    let (_, a) = key(&app, "team-a", "submitter").await;
    let (_, b) = key(&app, "team-b", "submitter").await;
    let (_, v) = key(&app, "auditor", "viewer").await;
    let (a, b, viewer) = (authorized(&a), authorized(&b), authorized(&v));
    let post = |http: &reqwest::Client, key: &str| {
        http.post(format!("{}/jobs", app.url))
            .header("Idempotency-Key", key)
            .json(&json!({ "kind": "hash", "payload": { "rounds": 1 } }))
            .send()
    };
    let ja: Value = post(&a, "same-key").await.unwrap().json().await.unwrap();
    // The same Idempotency-Key from another client is another request.
    let jb: Value = post(&b, "same-key").await.unwrap().json().await.unwrap();
    assert_ne!(ja["id"], jb["id"]);
    assert_eq!(ja["client"], "team-a");
    assert_eq!(jb["client"], "team-b");

    let read = |http: &reqwest::Client, path: String| {
        let http = http.clone();
        let url = format!("{}{path}", app.url);
        async move {
            let res = http.get(url).send().await.unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }
    };
    let (status, _) = read(&b, format!("/jobs/{}", ja["id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "team-b read team-a's job");
    let (_, page) = read(&b, "/jobs?client=team-a".into()).await;
    let ids: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| &j["id"])
        .collect();
    assert_eq!(
        ids,
        vec![&jb["id"]],
        "a submitter's list is its own, whatever it filters"
    );
    let (_, page) = read(&viewer, "/jobs?client=team-a".into()).await;
    let ids: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| &j["id"])
        .collect();
    assert_eq!(ids, vec![&ja["id"]]);
    let (status, _) = read(&viewer, "/jobs?client=bad%20name".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn each_action_is_audited_with_its_trace_and_jobs_and_a_failed_one_is_not() {
    let app = TestApp::api_only().await;
    let (_, op) = key(&app, "night-shift", "operator").await;
    let op = authorized(&op);
    let id = app.create("hash", json!({ "rounds": 1 })).await;
    let res = op
        .post(format!("{}/jobs/{id}/cancel", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let trace = res.headers()["traceparent"]
        .to_str()
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap()
        .to_owned();
    // A cancel that changes nothing (already final) records nothing.
    let res = op
        .post(format!("{}/jobs/{id}/cancel", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    // The bulk re-drive takes the job once its cancel is out to the workers.
    app.wait_until(Duration::from_secs(20), "the job re-driven", || async {
        let res = op
            .post(format!("{}/jobs/redrive", app.url))
            .json(&json!({ "status": "cancelled" }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json::<Value>().await.unwrap()["requeued"] == 1
    })
    .await;
    let res = op
        .post(format!("{}/kinds/sleep/pause", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let (status, trail) = app.get("/audit").await;
    assert_eq!(status, StatusCode::OK, "{trail}");
    let trail = trail.as_array().unwrap();
    let actions: Vec<&str> = trail
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    // The test's own key was made by no caller; the fixture's key by the demo admin.
    assert_eq!(
        actions,
        ["kind.pause", "jobs.redrive", "job.cancel", "key.create"],
        "{trail:?}"
    );
    let cancel = &trail[2];
    assert_eq!(cancel["actor"], "night-shift");
    assert_eq!(cancel["role"], "operator");
    assert_eq!(cancel["target"], id.as_str());
    assert_eq!(cancel["jobs"], json!([id]));
    assert_eq!(cancel["trace_id"], trace.as_str());
    assert_eq!(
        trail[1]["jobs"],
        json!([id]),
        "the bulk re-drive names what it took"
    );
    assert_eq!(trail[3]["actor"], "demo");
    let (_, only) = app.get("/audit?action=job.cancel").await;
    assert_eq!(only.as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_client_over_its_quota_gets_429_with_retry_after_and_another_client_does_not() {
    let app = TestApp::api_only().await;
    let noisy = make_key(
        &app,
        json!({ "name": "noisy", "role": "submitter", "submit_rate": 2 }),
    )
    .await;
    let (_, calm) = key(&app, "calm", "submitter").await;
    let (noisy, calm) = (
        authorized(noisy["secret"].as_str().unwrap()),
        authorized(&calm),
    );
    let submit = |http: &reqwest::Client| {
        http.post(format!("{}/jobs", app.url))
            .json(&json!({ "kind": "hash", "payload": { "rounds": 1 } }))
            .send()
    };
    let before = app.count_jobs().await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..10 {
        let res = submit(&noisy).await.unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = res
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = res.json().await.unwrap();
            assert!(body["detail"].as_str().unwrap().contains("noisy"), "{body}");
            statuses.push(429);
        } else {
            statuses.push(res.status().as_u16());
        }
    }
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    // A burst of one second's worth (2), maybe a third if a token came back meanwhile.
    assert!((2..=3).contains(&accepted), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(
        app.count_jobs().await - before,
        accepted as i64,
        "a refused submit stored a job"
    );
    // Reads are not submits, and another client has its own tokens.
    let res = noisy.get(format!("{}/jobs", app.url)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    for _ in 0..5 {
        assert_eq!(submit(&calm).await.unwrap().status(), StatusCode::ACCEPTED);
    }
    let refused = app
        .metric_sum("jobstack_client_quota_refusals_total", r#"reason="rate""#)
        .await;
    assert!(refused >= 7.0, "{refused}");
    app.stop().await;
}

#[tokio::test]
async fn with_auth_off_every_caller_is_an_anonymous_admin() {
    let app = TestApp::with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    // The same app, restarted with API_AUTH=off.
    let mut app = app;
    app.api_config.auth = api::access::Mode::Off;
    app.restart_api().await;
    let res = reqwest::Client::new()
        .post(format!("{}/kinds/hash/pause", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (_, trail) = app.get("/audit?action=kind.pause").await;
    assert_eq!(trail[0]["actor"], "anonymous");
    app.stop().await;
}
