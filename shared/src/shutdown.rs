//! The one shutdown token of a process: made in `main`, tripped by SIGINT or SIGTERM, passed down.

use tokio_util::sync::CancellationToken;

/// A token that is cancelled on the first SIGINT (Ctrl-C) or SIGTERM (`docker stop`).
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trip = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received, draining");
        trip.cancel();
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// `SHUTDOWN_GRACE_SECS` (default 25): how long in-flight work may finish after the signal.
/// Keep it below the orchestrator's kill timeout (compose `stop_grace_period: 30s`).
pub fn grace_from_env() -> Result<std::time::Duration, crate::config::ConfigError> {
    crate::config::seconds("SHUTDOWN_GRACE_SECS", 25)
}
