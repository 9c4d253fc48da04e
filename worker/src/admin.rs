//! The worker's small HTTP server: liveness, readiness (connected and consuming) and metrics.

use axum::Router;
use shared::amqp::BrokerStatus;
use shared::readiness::{Check, Need};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The admin routes: ready while connected and consuming (a worker without its broker can do
/// nothing).
pub fn router(status: BrokerStatus) -> Router {
    shared::admin::router(move || {
        let up = status.is_up();
        async move {
            vec![Check {
                name: "rabbitmq",
                up,
                need: Need::Required,
            }]
        }
    })
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
