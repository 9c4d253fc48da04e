//! Retention: deleting finished jobs past their age, expired idempotency keys and expired
//! console sessions, in bounded batches, by one api replica at a time.

use std::time::Duration;

use sqlx::PgPool;

/// Rows deleted by one [`prune`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Finished jobs (their idempotency keys went with them).
    pub jobs: u64,
    /// Expired idempotency keys.
    pub keys: u64,
    /// Expired console sessions.
    pub sessions: u64,
}

/// Identifies the retention lock among PostgreSQL advisory locks (any constant would do; this
/// one is "jobstack" in ASCII).
pub const RETENTION_LOCK: i64 = 0x6a6f_6273_7461_636b;

/// Deletes finished jobs whose `finished_at` is older than `retention` (when given) and expired
/// idempotency keys, `batch` rows per transaction so no statement holds many locks for long.
/// Each transaction first takes a transaction-scoped advisory lock: while another api replica
/// prunes, this one stops at once and returns what it did so far.
pub async fn prune(db: &PgPool, retention: Option<Duration>, batch: i64) -> sqlx::Result<Pruned> {
    let mut pruned = Pruned::default();
    if let Some(retention) = retention {
        let (n, finished) = delete_batches(db, PRUNE_JOBS, retention, batch).await?;
        pruned.jobs = n;
        if !finished {
            return Ok(pruned);
        }
    }
    let finished;
    (pruned.keys, finished) = delete_batches(db, PRUNE_KEYS, Duration::ZERO, batch).await?;
    if finished {
        (pruned.sessions, _) = delete_batches(db, PRUNE_SESSIONS, Duration::ZERO, batch).await?;
    }
    Ok(pruned)
}

/// A job has a `finished_at` exactly when it is final (a constraint, `jobs_finished_iff_final`),
/// so the age alone selects finished jobs. No index holds `finished_at` (it would make the
/// update that ends a job a non-HOT one, migration 0011): a job finished before the cutoff was
/// created before it, so the oldest are found on `jobs_newest`.
const PRUNE_JOBS: &str = "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs \
     WHERE created_at < now() - make_interval(secs => $1) \
       AND finished_at < now() - make_interval(secs => $1) \
     ORDER BY created_at LIMIT $2)";

const PRUNE_KEYS: &str = "DELETE FROM idempotency_keys WHERE key IN (SELECT key \
     FROM idempotency_keys WHERE expires_at < now() - make_interval(secs => $1) \
     ORDER BY expires_at LIMIT $2)";

const PRUNE_SESSIONS: &str = "DELETE FROM sessions WHERE digest IN (SELECT digest \
     FROM sessions WHERE expires_at < now() - make_interval(secs => $1) \
     ORDER BY expires_at LIMIT $2)";

/// Runs `sql` (a bounded DELETE of rows older than `$1` seconds, at most `$2`) until a batch
/// comes back short. Returns the rows deleted, and false if another replica held the lock.
async fn delete_batches(
    db: &PgPool,
    sql: &'static str,
    age: Duration,
    batch: i64,
) -> sqlx::Result<(u64, bool)> {
    let mut deleted = 0;
    loop {
        let mut tx = db.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RETENTION_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok((deleted, false));
        }
        let n = sqlx::query(sql)
            .bind(age.as_secs_f64())
            .bind(batch)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        deleted += n;
        if n < batch as u64 {
            return Ok((deleted, true));
        }
    }
}
