//! The worker's small HTTP server: liveness, readiness (connected and consuming) and metrics.

use axum::response::Response;
use axum::{Router, extract::State, routing::get};
use shared::amqp::BrokerStatus;
use shared::readiness::{self, Check, Need};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The admin routes.
pub fn router(status: BrokerStatus) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|| async { shared::metrics::render() }))
        .with_state(status)
}

/// Ready while connected and consuming: a worker without its broker can do nothing.
async fn readyz(State(status): State<BrokerStatus>) -> Response {
    readiness::answer(&[Check {
        name: "rabbitmq",
        up: status.is_up(),
        need: Need::Required,
    }])
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    status: BrokerStatus,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(status))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
