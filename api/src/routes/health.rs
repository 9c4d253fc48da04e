//! `/healthz` (the process serves) and `/readyz` (its dependencies answer).

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;

use shared::readiness::{self, Check, Need};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;

/// The routes, each documented where it is registered.
pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "the process serves")))]
pub(super) async fn healthz() -> Response {
    shared::admin::alive().await
}

/// Readiness: PostgreSQL answers a query. The broker's state is reported but does not fail
/// readiness: a job accepted while RabbitMQ is down is committed, and the outbox relay publishes
/// it once the broker is back (see `shared::readiness`).
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "PostgreSQL answers; `status` is `degraded` and `rabbitmq` is `down` while the broker is unreachable (jobs are still accepted)"),
    (status = 503, description = "PostgreSQL does not answer; the body names each dependency's state", body = crate::error::Problem, content_type = "application/problem+json"),
))]
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let query = sqlx::query("SELECT 1").execute(&state.db);
    let postgres = matches!(
        tokio::time::timeout(Duration::from_secs(1), query).await,
        Ok(Ok(_))
    );
    readiness::answer(&[
        Check {
            name: "postgres",
            up: postgres,
            need: Need::Required,
        },
        Check {
            name: "rabbitmq",
            up: state.broker.status.is_up(),
            need: Need::Degrading,
        },
    ])
}
