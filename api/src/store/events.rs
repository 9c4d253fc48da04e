//! Applying workers' events to their jobs, through the state machine, a batch at a time.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobs_contract::messages::{JobChange, JobEvent};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{StateRow, state_columns};
use crate::lifecycle::{self, Status};

/// What [`apply_events`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    /// Per event, whether it changed anything (false for duplicates, stale events and unknown
    /// jobs).
    pub changed: Vec<bool>,
    /// Jobs whose cancel went back into the cancel outbox: a worker started them after the
    /// cancel was accepted (it raced the broadcast), so it is told again.
    pub recancelled: usize,
    /// Jobs put back in the outbox for their next attempt.
    pub retried: usize,
}

/// Applies workers' events, in order, to their jobs through the state machine, in one
/// transaction: one lock query, one update and one commit for the whole batch. A failed
/// attempt that is to be retried goes back in the outbox, due after `backoff(attempt)` (which
/// carries jitter: jobs failing together come back spread out); a job that ends leaves it.
pub async fn apply_events(
    db: &PgPool,
    events: &[JobEvent],
    backoff: impl Fn(u32) -> Duration,
) -> sqlx::Result<Applied> {
    let mut tx = db.begin().await?;
    let ids: Vec<Uuid> = events.iter().map(|e| e.job_id).collect();
    // Locked in id order, so two batches sharing jobs could never deadlock.
    let rows: Vec<StateRow> = sqlx::query_as(concat!(
        "SELECT ",
        state_columns!(),
        " FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let current: HashMap<Uuid, lifecycle::Current> =
        rows.iter().map(|row| (row.id, row.current())).collect();

    let mut recancel: Vec<Uuid> = events
        .iter()
        .filter(|e| e.change == JobChange::Started)
        .filter(|e| {
            current
                .get(&e.job_id)
                .is_some_and(|c| c.cancel_requested && c.generation == e.generation)
        })
        .map(|e| e.job_id)
        .collect();
    recancel.sort_unstable();
    recancel.dedup();
    if !recancel.is_empty() {
        sqlx::query("UPDATE jobs SET cancel_outbox = true WHERE id = ANY($1)")
            .bind(&recancel)
            .execute(&mut *tx)
            .await?;
    }

    // Each job's events in the order they came, folded into one write per job.
    let mut changed = vec![false; events.len()];
    let mut updates = Vec::new();
    for (id, cur) in &current {
        let mine: Vec<usize> = (0..events.len())
            .filter(|&i| events[i].job_id == *id)
            .collect();
        let folded = lifecycle::fold(*cur, mine.iter().map(|&i| &events[i]));
        for (i, c) in mine.into_iter().zip(folded.changed) {
            changed[i] = c;
        }
        if let Some(u) = folded.update {
            updates.push((*id, u));
        }
    }
    let done = Applied {
        changed,
        recancelled: recancel.len(),
        retried: updates.iter().filter(|(_, u)| u.retry).count(),
    };
    if updates.is_empty() {
        tx.commit().await?;
        return Ok(done);
    }
    if events
        .iter()
        .all(|e| matches!(e.change, JobChange::Started | JobChange::Progress { .. }))
    {
        // Losing these to a PostgreSQL crash is harmless (a later event implies them), so
        // they need not wait for the WAL flush; final states and retries always do.
        sqlx::query("SET LOCAL synchronous_commit TO off")
            .execute(&mut *tx)
            .await?;
    }
    let ids: Vec<Uuid> = updates.iter().map(|(id, _)| *id).collect();
    let statuses: Vec<Status> = updates.iter().map(|(_, u)| u.status).collect();
    let attempts: Vec<i32> = updates.iter().map(|(_, u)| u.attempts as i32).collect();
    let progress: Vec<f64> = updates.iter().map(|(_, u)| u.progress).collect();
    let started: Vec<Option<DateTime<Utc>>> = updates.iter().map(|(_, u)| u.started_at).collect();
    let finished: Vec<Option<DateTime<Utc>>> = updates.iter().map(|(_, u)| u.finished_at).collect();
    let results: Vec<Option<Value>> = updates.iter().map(|(_, u)| u.result.clone()).collect();
    let errors: Vec<Option<String>> = updates.iter().map(|(_, u)| u.error.clone()).collect();
    let retry_in: Vec<Option<f64>> = updates
        .iter()
        .map(|(_, u)| u.retry.then(|| backoff(u.attempts).as_secs_f64()))
        .collect();
    // A job to retry goes back in the outbox, due when its back-off is over. Nothing else here
    // touches the outbox: an entry left behind by a relay that crashed between the broker's
    // confirm and its commit is the relay's to drop (it skips entries of jobs that have started
    // or ended), and taking the outbox's row locks here, after the jobs' ones, would deadlock
    // with the relay, which locks in the other order.
    sqlx::query(
        "WITH u AS ( \
             UPDATE jobs AS j SET status = u.status, attempts = u.attempts, progress = u.progress, \
             started_at = COALESCE(j.started_at, u.started_at), \
             finished_at = COALESCE(j.finished_at, u.finished_at), \
             result = COALESCE(u.result, j.result), error = COALESCE(u.error, j.error), \
             run_at = COALESCE(now() + make_interval(secs => u.retry_in), j.run_at) \
             FROM unnest($1::uuid[], $2::job_status[], $3::int4[], $4::float8[], \
                         $5::timestamptz[], $6::timestamptz[], $7::jsonb[], $8::text[], \
                         $9::float8[]) \
                  AS u(id, status, attempts, progress, started_at, finished_at, result, error, \
                       retry_in) \
             WHERE j.id = u.id RETURNING j.id, j.run_at, u.retry_in) \
         INSERT INTO outbox (job_id, run_at) SELECT id, run_at FROM u \
         WHERE retry_in IS NOT NULL \
         ON CONFLICT (job_id) DO UPDATE SET run_at = EXCLUDED.run_at",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&attempts)
    .bind(&progress)
    .bind(&started)
    .bind(&finished)
    .bind(&results)
    .bind(&errors)
    .bind(&retry_in)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done)
}
