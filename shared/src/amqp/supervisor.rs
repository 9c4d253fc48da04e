//! Keeps a service connected: connect with backoff, run a session on the connection until it
//! fails, then start over — without a process restart. Readiness follows the session.
//!
//! lapin 4 has its own auto-recovery, but it does not recreate channels, consumers or topology
//! after the broker lost them; rebuilding the whole session is simpler and always correct.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff;
use crate::config::redact_url;

/// Whether the service currently has a working broker session; read by `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct BrokerStatus(Arc<AtomicBool>);

impl BrokerStatus {
    /// True while a session is up (connected, topology declared, consuming).
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Called by the session once it is ready, and by the supervisor when it ends.
    pub fn set_up(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
        metrics::gauge!("jobstack_amqp_connected").set(if up { 1.0 } else { 0.0 });
    }
}

/// Runs `session` on fresh connections until `shutdown` is cancelled. A session returns
/// `Ok(())` only once it has shut down cleanly; an error means "reconnect".
pub async fn supervise<F, Fut>(
    settings: &super::Settings,
    name: &str,
    status: BrokerStatus,
    shutdown: CancellationToken,
    mut session: F,
) where
    F: FnMut(lapin::Connection) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let url = &settings.url;
    let policy = backoff::Policy {
        base: Duration::from_millis(200),
        max: Duration::from_secs(10),
    };
    let mut sessions = 0u32;
    status.set_up(false);
    loop {
        let connect = || async {
            // A connect that hangs (a broker that accepts and never speaks) yields to shutdown.
            tokio::select! {
                c = super::connect(settings, name) => c.map(Some),
                () = shutdown.cancelled() => Ok(None),
            }
        };
        let warn = |e: &lapin::Error, _| {
            tracing::warn!(url = %redact_url(url), error = %e, "cannot connect to RabbitMQ; retrying");
        };
        let Some(Some(conn)) = backoff::retry(policy, &shutdown, connect, warn).await else {
            return;
        };
        if sessions > 0 {
            metrics::counter!("jobstack_amqp_reconnects_total").increment(1);
        }
        sessions += 1;
        tracing::info!(url = %redact_url(url), "connected to RabbitMQ");
        let outcome = session(conn).await;
        status.set_up(false);
        match outcome {
            Ok(()) => return,
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "broker session ended; reconnecting"
            ),
        }
        // A session that fails at once (e.g. topology refused) must not spin: pause before the
        // next connect like after a failed one.
        tokio::select! {
            () = tokio::time::sleep(backoff::jittered(policy.base, policy.max, 1)) => {},
            () = shutdown.cancelled() => return,
        }
    }
}
