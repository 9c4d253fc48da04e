//! `/healthz` (the process serves) and `/readyz` (its dependencies answer).

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;

use shared::readiness::{self, Check, Need};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;

/// The routes, each documented where it is registered.
pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "health", operation_id = "healthz", responses(
    (status = 200, description = "the process serves", body = Alive),
))]
pub(super) async fn healthz() -> Response {
    shared::admin::alive().await
}

/// Readiness: PostgreSQL answers a query. The broker's state is reported but does not fail
/// readiness: a job accepted while RabbitMQ is down is committed, and the outbox relay publishes
/// it once the broker is back.
// Why a broker outage only degrades: `shared::readiness`.
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "readyz", responses(
    (status = 200, description = "PostgreSQL answers; `status` is `degraded` and `rabbitmq` is `down` while the broker is unreachable (jobs are still accepted)", body = Ready),
    (status = 503, description = "PostgreSQL does not answer; the body names each dependency's state", body = NotReady, content_type = "application/problem+json"),
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

// What `shared::admin::alive` and `shared::readiness::answer` write, for the document only: they
// build their JSON themselves (the worker answers the same). The OpenAPI checks in `make test`
// read every answer against these.

/// `/healthz`'s answer.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Alive {
    /// Always `ok`.
    status: AliveStatus,
}

/// The one liveness answer.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum AliveStatus {
    Ok,
}

/// `/readyz`'s answer while the api can serve.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Ready {
    /// `ready`, or `degraded` while a dependency it can work without is down.
    status: Readiness,
    /// PostgreSQL answered a query within a second.
    postgres: Dependency,
    /// The broker connection is up.
    rabbitmq: Dependency,
}

/// `/readyz`'s answer while PostgreSQL does not answer: a problem that names each dependency's
/// state.
#[derive(ToSchema)]
#[allow(dead_code)]
struct NotReady {
    /// `about:blank`.
    #[schema(rename = "type")]
    kind: String,
    /// `Service Unavailable`.
    title: String,
    /// 503.
    status: u16,
    /// Which required dependencies are down.
    detail: String,
    /// `down`.
    postgres: Dependency,
    /// The broker connection's state.
    rabbitmq: Dependency,
}

/// Whether the api serves with every dependency up.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum Readiness {
    Ready,
    Degraded,
}

/// A dependency's state.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum Dependency {
    Up,
    Down,
}
