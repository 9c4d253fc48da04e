//! Retention: every `RETENTION_INTERVAL_SECS`, finished jobs older than `JOB_RETENTION` and
//! expired idempotency keys are deleted in bounded batches, by one api replica at a time (a
//! PostgreSQL advisory lock, see [`store::prune`]). Without it the jobs table grows with every
//! job ever run.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store;

/// Rows per delete.
const BATCH: i64 = 1000;

/// Prunes until `shutdown`; a failed round (PostgreSQL down) is retried at the next one.
pub async fn run(
    db: PgPool,
    retention: Option<Duration>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    metrics::counter!("jobstack_retention_pruned_total", "table" => "jobs").absolute(0);
    metrics::counter!("jobstack_retention_pruned_total", "table" => "idempotency_keys").absolute(0);
    loop {
        // Dropping a round at shutdown rolls back only its current batch.
        let pruned = tokio::select! {
            () = shutdown.cancelled() => return,
            pruned = store::prune(&db, retention, BATCH) => pruned,
        };
        match pruned {
            Ok(pruned) => {
                metrics::counter!("jobstack_retention_pruned_total", "table" => "jobs")
                    .increment(pruned.jobs);
                metrics::counter!("jobstack_retention_pruned_total", "table" => "idempotency_keys")
                    .increment(pruned.keys);
                if pruned != store::Pruned::default() {
                    tracing::info!(jobs = pruned.jobs, idempotency_keys = pruned.keys, "pruned");
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention could not prune; will retry"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {},
        }
    }
}
