//! The worker's small HTTP server: liveness, readiness (connected and consuming) and metrics.

use axum::Router;
use shared::amqp::BrokerStatus;
use shared::faults::{Faults, Token};
use shared::readiness::{Check, Need};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The admin routes: ready while connected and consuming (a worker without its broker can do
/// nothing); `/admin/faults` with a token.
pub fn router(status: BrokerStatus, faults: Faults, token: Option<Token>) -> Router {
    let admin = shared::admin::router(move || {
        let up = status.is_up();
        async move {
            vec![Check {
                name: "rabbitmq",
                up,
                need: Need::Required,
            }]
        }
    });
    admin.merge(shared::faults::router(faults, token))
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    status: BrokerStatus,
    faults: Faults,
    token: Option<Token>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(status, faults, token))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
