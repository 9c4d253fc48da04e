//! `/healthz` (the process serves) and `/readyz` (its dependencies answer).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::get};
use serde_json::json;

use crate::AppState;
use crate::error::problem;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "the process serves")))]
pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: PostgreSQL answers a query and the broker session is up.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "PostgreSQL and RabbitMQ are reachable"),
    (status = 503, description = "names what is not reachable", body = crate::error::Problem, content_type = "application/problem+json"),
))]
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let query = sqlx::query("SELECT 1").execute(&state.db);
    let postgres = matches!(
        tokio::time::timeout(Duration::from_secs(1), query).await,
        Ok(Ok(_))
    );
    let rabbitmq = state.broker.status.is_up();
    if postgres && rabbitmq {
        return Json(json!({ "postgres": "ok", "rabbitmq": "ok" })).into_response();
    }
    let down: Vec<&str> = [(postgres, "PostgreSQL"), (rabbitmq, "RabbitMQ")]
        .into_iter()
        .filter_map(|(up, name)| (!up).then_some(name))
        .collect();
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not reachable: {}", down.join(", ")),
    )
}
