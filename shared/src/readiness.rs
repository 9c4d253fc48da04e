//! The `/readyz` answer both services give: one shape, naming each dependency's state.
//!
//! A dependency is either *required* (without it the service cannot do its job: the api's
//! PostgreSQL, the worker's RabbitMQ) or *degrading* (the service still keeps its promises
//! without it: the api accepts jobs durably while the broker is down, and the outbox publishes
//! them later). Only a required dependency turns readiness into a 503: a load balancer or a
//! Kubernetes readiness probe that dropped every api replica during a broker outage would turn a
//! degraded system into a dead one.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, json};

/// Whether the service can work without a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Down means not ready (503).
    Required,
    /// Down means ready but degraded (200, `"status": "degraded"`).
    Degrading,
}

/// One dependency's state as `/readyz` reports it.
#[derive(Clone, Copy, Debug)]
pub struct Check {
    /// The key in the answer (`postgres`, `rabbitmq`).
    pub name: &'static str,
    /// Whether it answered just now.
    pub up: bool,
    /// What its absence means.
    pub need: Need,
}

/// `200 {"status":"ready"|"degraded", "<name>":"up"|"down", …}`, or, when a required dependency
/// is down, `503` `application/problem+json` whose `detail` names it, with the same members.
pub fn answer(checks: &[Check]) -> Response {
    let states = checks
        .iter()
        .map(|c| (c.name.to_owned(), json!(if c.up { "up" } else { "down" })));
    let missing: Vec<&str> = checks
        .iter()
        .filter(|c| !c.up && c.need == Need::Required)
        .map(|c| c.name)
        .collect();
    let mut body = Map::new();
    if missing.is_empty() {
        let degraded = checks.iter().any(|c| !c.up);
        let status = if degraded { "degraded" } else { "ready" };
        body.insert("status".into(), json!(status));
        body.extend(states);
        return (StatusCode::OK, Json(body)).into_response();
    }
    let status = StatusCode::SERVICE_UNAVAILABLE;
    body.insert("type".into(), json!("about:blank"));
    body.insert("title".into(), json!("Service Unavailable"));
    body.insert("status".into(), json!(status.as_u16()));
    let detail = format!("not ready: {} down", missing.join(", "));
    body.insert("detail".into(), json!(detail));
    body.extend(states);
    let mut res = (status, Json(body)).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    async fn read(checks: &[Check]) -> (StatusCode, String, Value) {
        let res = answer(checks);
        let status = res.status();
        let ctype = res.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let bytes = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
        (status, ctype, serde_json::from_slice(&bytes).unwrap())
    }

    const fn check(name: &'static str, up: bool, need: Need) -> Check {
        Check { name, up, need }
    }

    #[tokio::test]
    async fn all_up_is_ready() {
        let (status, _, body) = read(&[
            check("postgres", true, Need::Required),
            check("rabbitmq", true, Need::Degrading),
        ])
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"status": "ready", "postgres": "up", "rabbitmq": "up"})
        );
    }

    #[tokio::test]
    async fn a_degrading_dependency_down_is_still_ready_and_named() {
        let (status, _, body) = read(&[
            check("postgres", true, Need::Required),
            check("rabbitmq", false, Need::Degrading),
        ])
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"status": "degraded", "postgres": "up", "rabbitmq": "down"})
        );
    }

    #[tokio::test]
    async fn a_required_dependency_down_is_a_503_problem_naming_it() {
        let (status, ctype, body) = read(&[
            check("postgres", false, Need::Required),
            check("rabbitmq", false, Need::Degrading),
        ])
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(body["detail"], "not ready: postgres down");
        assert_eq!(body["status"], 503);
        assert_eq!(body["postgres"], "down");
        assert_eq!(body["rabbitmq"], "down");
    }
}
