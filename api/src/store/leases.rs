//! Leases of running attempts: renewed by workers' heartbeats, and given up when they lapse.
//!
//! A worker acks a job's message once it has reported the attempt started; from then on the
//! attempt lives on its lease (`jobs.lease_expires_at`), which every event of the attempt and
//! every heartbeat of its worker renews. An attempt whose lease lapsed is superseded (nothing
//! it reports later changes the job) and counts as a failure; the job runs again from its last
//! checkpoint after its back-off (see `lifecycle::expire`). Running attempts are found through
//! the `running` table (migration 0011), not an index on `jobs.status`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobs_contract::messages::Lease;
use sqlx::PgPool;
use uuid::Uuid;

use super::events::{Timing, write};
use super::{StateRow, state_columns};
use crate::lifecycle::{self, Status};

/// Renews the lease of each of `running` that is still the running attempt of its job: one
/// statement for a whole heartbeat. Returns how many were renewed; the others (finished,
/// superseded, or of an earlier generation) change nothing.
pub async fn renew(db: &PgPool, running: &[Lease], lease: Duration) -> sqlx::Result<u64> {
    if running.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = running.iter().map(|l| l.job_id).collect();
    let attempts: Vec<i32> = running.iter().map(|l| l.attempt as i32).collect();
    let generations: Vec<i32> = running.iter().map(|l| l.generation as i32).collect();
    // Not worth a WAL flush: a heartbeat lost to a crash is the next heartbeat's to make up.
    let mut tx = db.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit TO off")
        .execute(&mut *tx)
        .await?;
    let renewed = sqlx::query(
        "UPDATE jobs AS j SET heartbeat_at = now(), \
             lease_expires_at = now() + make_interval(secs => $4) \
         FROM unnest($1::uuid[], $2::int4[], $3::int4[]) AS l(id, attempt, generation) \
         WHERE j.id = l.id AND j.attempts = l.attempt AND j.generation = l.generation \
           AND j.superseded < l.attempt AND j.status = $5",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&generations)
    .bind(lease.as_secs_f64())
    .bind(Status::Running)
    // Planned afresh each time, as `events::write` is (it says why).
    .persistent(false)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(renewed)
}

/// An attempt given up because its lease lapsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Expired {
    /// The job.
    pub id: Uuid,
    /// Its kind.
    pub kind: String,
    /// The attempt given up.
    pub attempt: u32,
    /// What the job became: scheduled (retried), failed (no attempts left) or cancelled.
    pub status: Status,
}

/// Gives up up to `limit` running attempts whose lease lapsed before `before` (skipping rows
/// another transaction holds), through `lifecycle::expire`, in one transaction.
pub async fn expire(
    db: &PgPool,
    max_attempts: u32,
    timing: &Timing<'_>,
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<Expired>> {
    let mut tx = db.begin().await?;
    let rows: Vec<(StateRow, String)> = sqlx::query_as::<_, StateRowWithKind>(concat!(
        "SELECT ",
        state_columns!(),
        ", kind FROM running JOIN jobs ON id = job_id WHERE status = $1 \
           AND lease_expires_at < least(now(), $3) \
         ORDER BY lease_expires_at LIMIT $2 FOR UPDATE OF jobs SKIP LOCKED"
    ))
    .bind(Status::Running)
    .bind(limit)
    .bind(before)
    // Planned afresh each time, with the sizes of both tables as they are now: from the few
    // rows of `running`, never by scanning `jobs`.
    .persistent(false)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.state, r.kind))
    .collect();
    let now = Utc::now();
    let mut updates = Vec::with_capacity(rows.len());
    let mut expired = Vec::with_capacity(rows.len());
    for (row, kind) in rows {
        let cur = row.current();
        if let Some(u) = lifecycle::expire(cur, max_attempts, timing.lease, now) {
            expired.push(Expired {
                id: row.id,
                kind,
                attempt: cur.attempts,
                status: u.status,
            });
            updates.push((row.id, cur.status, u));
        }
    }
    write(&mut tx, &updates, timing).await?;
    tx.commit().await?;
    Ok(expired)
}

#[derive(sqlx::FromRow)]
struct StateRowWithKind {
    #[sqlx(flatten)]
    state: StateRow,
    kind: String,
}

/// Running attempts, by kind: how many, and the oldest sign of life among them.
pub async fn running(db: &PgPool) -> sqlx::Result<HashMap<String, (i64, Option<DateTime<Utc>>)>> {
    let rows: Vec<(String, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT kind, count(*), min(heartbeat_at) FROM running JOIN jobs ON id = job_id \
         WHERE status = $1 GROUP BY kind",
    )
    .bind(Status::Running)
    .persistent(false)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, n, oldest)| (kind, (n, oldest)))
        .collect())
}
