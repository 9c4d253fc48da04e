//! Applying workers' events to their jobs, through the state machine, a batch at a time; and
//! the one statement that writes what the state machine decided (also for lapsed leases).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobs_contract::messages::{JobChange, JobEvent};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{StateRow, state_columns};
use crate::lifecycle::{self, Lease, Next, Status, Update};

/// What writing an update needs beyond the update: how long a retry waits, and how long a
/// renewed lease lasts.
pub struct Timing<'a> {
    /// The back-off before the retry of a job's `n`-th failure (it carries jitter).
    pub backoff: &'a (dyn Fn(u32) -> Duration + Sync),
    /// How long an attempt's lease lasts from its last sign of life.
    pub lease: Duration,
}

/// What [`apply_events`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    /// Per event, whether it changed anything (false for duplicates, stale events and unknown
    /// jobs).
    pub changed: Vec<bool>,
    /// Jobs whose cancel went back into the cancel outbox: a worker started them after the
    /// cancel was accepted (it raced the broadcast), so it is told again.
    pub recancelled: usize,
    /// Jobs put back in the outbox (a retry, or an attempt handed back).
    pub requeued: usize,
}

/// Applies workers' events, in order, to their jobs through the state machine, in one
/// transaction: one lock query, one update and one commit for the whole batch.
pub async fn apply_events(
    db: &PgPool,
    events: &[JobEvent],
    timing: &Timing<'_>,
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
        .filter(|e| matches!(e.change, JobChange::Started { .. }))
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
            updates.push((*id, cur.status, u));
        }
    }
    let done = Applied {
        changed,
        recancelled: recancel.len(),
        requeued: updates.iter().filter(|(_, _, u)| u.next.is_some()).count(),
    };
    if !updates.is_empty()
        && events
            .iter()
            .all(|e| matches!(e.change, JobChange::Progress { .. }))
    {
        // Losing progress to a PostgreSQL crash is harmless (a later event implies it), so it
        // need not wait for the WAL flush. Everything else does: `started` too, since the
        // worker acks the job's message once it is confirmed, and from then the running row
        // and its lease are all that brings the job back if the worker dies.
        sqlx::query("SET LOCAL synchronous_commit TO off")
            .execute(&mut *tx)
            .await?;
    }
    write(&mut tx, &updates, timing).await?;
    tx.commit().await?;
    Ok(done)
}

/// Writes what the state machine decided for each job (rows locked by the caller; each with
/// the status it had): one statement for all of them. A job that starts running enters the
/// `running` table, one that stops leaves it (migration 0011 says why it is a table). A job
/// that goes back in the outbox gets its entry, due after its back-off (a retry) or now (an
/// attempt handed back); a running attempt's lease is renewed from now, or ended. Nothing else here touches the outbox: an entry left behind by a relay
/// that crashed between the broker's confirm and its commit is the relay's to drop (it skips
/// entries of jobs that have started or ended), and taking the outbox's row locks here, after
/// the jobs' ones, would deadlock with the relay, which locks in the other order.
pub(super) async fn write(
    tx: &mut Transaction<'_, Postgres>,
    updates: &[(Uuid, Status, Update)],
    timing: &Timing<'_>,
) -> sqlx::Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = updates.iter().map(|(id, _, _)| *id).collect();
    let statuses: Vec<Status> = updates.iter().map(|(_, _, u)| u.status).collect();
    let attempts: Vec<i32> = updates.iter().map(|(_, _, u)| u.attempts as i32).collect();
    let failures: Vec<i32> = updates.iter().map(|(_, _, u)| u.failures as i32).collect();
    let superseded: Vec<i32> = updates
        .iter()
        .map(|(_, _, u)| u.superseded as i32)
        .collect();
    let progress: Vec<f64> = updates.iter().map(|(_, _, u)| u.progress).collect();
    let started: Vec<Option<DateTime<Utc>>> =
        updates.iter().map(|(_, _, u)| u.started_at).collect();
    let finished: Vec<Option<DateTime<Utc>>> =
        updates.iter().map(|(_, _, u)| u.finished_at).collect();
    let results: Vec<Option<Value>> = updates.iter().map(|(_, _, u)| u.result.clone()).collect();
    let errors: Vec<Option<String>> = updates.iter().map(|(_, _, u)| u.error.clone()).collect();
    let checkpoints: Vec<Option<Value>> = updates
        .iter()
        .map(|(_, _, u)| u.checkpoint.as_ref().map(|c| c.0.clone()))
        .collect();
    let checkpoint_attempts: Vec<Option<i32>> = updates
        .iter()
        .map(|(_, _, u)| u.checkpoint.as_ref().map(|c| c.1 as i32))
        .collect();
    let checkpoint_ats: Vec<Option<DateTime<Utc>>> = updates
        .iter()
        .map(|(_, _, u)| u.checkpoint.as_ref().map(|c| c.2))
        .collect();
    let spans: Vec<Option<String>> = updates
        .iter()
        .map(|(_, _, u)| u.attempt_span.clone())
        .collect();
    // The lease, in seconds from now: renewed for the lease period, or ended (NULL).
    let leases: Vec<Option<f64>> = updates
        .iter()
        .map(|(_, _, u)| (u.lease == Lease::Renew).then_some(timing.lease.as_secs_f64()))
        .collect();
    let due_in: Vec<Option<f64>> = updates
        .iter()
        .map(|(_, _, u)| match u.next {
            Some(Next::Retry) => Some((timing.backoff)(u.failures).as_secs_f64()),
            Some(Next::Now) => Some(0.0),
            Some(Next::At(at)) => {
                Some(((at - Utc::now()).num_milliseconds().max(0) as f64) / 1000.0)
            }
            None => None,
        })
        .collect();
    // +1 enters `running`, -1 leaves it, 0 neither.
    let running: Vec<i32> = updates
        .iter()
        .map(|(_, was, u)| {
            i32::from(u.status == Status::Running) - i32::from(*was == Status::Running)
        })
        .collect();
    let snoozed: Vec<i32> = updates
        .iter()
        .map(|(_, _, u)| i32::from(matches!(u.next, Some(Next::At(_)))))
        .collect();
    // Planned at each execution (an unnamed statement), never from a cached generic plan: one
    // made while the table was small joins by scanning it, and kept as it grows, each batch then
    // reads the whole table (a 600 s soak at 700 jobs/s slowed to a crawl). A fresh plan knows
    // the batch's size and the table's.
    sqlx::query(
        "WITH u AS ( \
             UPDATE jobs AS j SET status = u.status, attempts = u.attempts, \
             snoozes = j.snoozes + u.snoozed, \
             failures = u.failures, superseded = u.superseded, progress = u.progress, \
             started_at = COALESCE(j.started_at, u.started_at), \
             finished_at = COALESCE(j.finished_at, u.finished_at), \
             result = COALESCE(u.result, j.result), error = COALESCE(u.error, j.error), \
             checkpoint = COALESCE(u.checkpoint, j.checkpoint), \
             checkpoint_attempt = COALESCE(u.checkpoint_attempt, j.checkpoint_attempt), \
             checkpoint_at = COALESCE(u.checkpoint_at, j.checkpoint_at), \
             attempt_traceparent = COALESCE(u.span, j.attempt_traceparent), \
             heartbeat_at = CASE WHEN u.lease IS NULL THEN NULL ELSE now() END, \
             lease_expires_at = now() + make_interval(secs => u.lease), \
             run_at = COALESCE(now() + make_interval(secs => u.due_in), j.run_at) \
             FROM unnest($1::uuid[], $2::job_status[], $3::int4[], $4::int4[], $5::int4[], \
                         $6::float8[], $7::timestamptz[], $8::timestamptz[], $9::jsonb[], \
                         $10::text[], $11::jsonb[], $12::int4[], $13::timestamptz[], \
                         $14::text[], $15::float8[], $16::float8[], $17::int4[], $18::int4[]) \
                  AS u(id, status, attempts, failures, superseded, progress, started_at, \
                       finished_at, result, error, checkpoint, checkpoint_attempt, \
                       checkpoint_at, span, lease, due_in, snoozed, running) \
             WHERE j.id = u.id RETURNING j.id, j.run_at, j.priority, u.due_in, u.running), \
         entered AS (INSERT INTO running (job_id) SELECT id FROM u WHERE running > 0 \
                     ON CONFLICT (job_id) DO NOTHING), \
         left_ AS (DELETE FROM running WHERE job_id IN (SELECT id FROM u WHERE running < 0)) \
         INSERT INTO outbox (job_id, run_at, priority) SELECT id, run_at, priority FROM u \
         WHERE due_in IS NOT NULL \
         ON CONFLICT (job_id) DO UPDATE SET run_at = EXCLUDED.run_at, held = NULL",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&attempts)
    .bind(&failures)
    .bind(&superseded)
    .bind(&progress)
    .bind(&started)
    .bind(&finished)
    .bind(&results)
    .bind(&errors)
    .bind(&checkpoints)
    .bind(&checkpoint_attempts)
    .bind(&checkpoint_ats)
    .bind(&spans)
    .bind(&leases)
    .bind(&due_in)
    .bind(&snoozed)
    .bind(&running)
    .persistent(false)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
