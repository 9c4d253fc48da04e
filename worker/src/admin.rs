//! The worker's small HTTP server: liveness, readiness (connected and consuming) and metrics.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Router, extract::State, routing::get};
use shared::amqp::BrokerStatus;
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

async fn readyz(State(status): State<BrokerStatus>) -> impl IntoResponse {
    if status.is_up() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not consuming: RabbitMQ unreachable",
        )
    }
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
