//! The relay's side of the outboxes: jobs due to be published (table `outbox`) and cancels to
//! broadcast (`jobs.cancel_outbox`), locked a batch at a time and taken out once the broker
//! confirmed them.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::lifecycle::Status;

/// A job waiting in the outbox.
#[derive(Debug, sqlx::FromRow)]
pub struct Unpublished {
    /// The job's id.
    pub id: Uuid,
    /// Its kind (the routing key).
    pub kind: String,
    /// Its payload.
    pub payload: Value,
    /// When this attempt may run.
    pub run_at: DateTime<Utc>,
    /// The version of its kind's payload it was accepted under.
    pub payload_version: i32,
    /// The attempt to publish: one more than the attempts started so far.
    pub attempt: i32,
    /// Attempts of this generation that failed so far (the retry budget counts these).
    pub failures: i32,
    /// Its generation.
    pub generation: i32,
    /// The last checkpoint, if an earlier attempt saved one: its state, attempt and time.
    pub checkpoint: Option<Value>,
    /// The attempt that saved it.
    pub checkpoint_attempt: Option<i32>,
    /// When.
    pub checkpoint_at: Option<DateTime<Utc>>,
    /// The previous attempt's span, which this one links to.
    pub attempt_traceparent: Option<String>,
    /// The accepting request's trace context.
    pub traceparent: Option<String>,
    /// A workflow's job: its dependencies' results by key.
    pub inputs: Option<Value>,
    /// Whether it is waiting for its `run_at` (status `scheduled`: a delayed job or a retry),
    /// queued once published.
    pub scheduled: bool,
    /// Whether the entry outlived its publish: the job has started or ended since (the relay
    /// that published it crashed before it could take it out). Dropped, never published again.
    pub stale: bool,
    /// 0–9, higher first.
    pub priority: i16,
    /// What its kind's per-key limits count it under (`""` without a key).
    pub concurrency_key: String,
    /// Why it waited until now, if it was held (`rate`: its token is reserved for now).
    pub held: Option<String>,
    /// Its turn in its key's line, if it was held for a slot before.
    pub turn: Option<i32>,
    /// Whether its kind is paused.
    pub paused: bool,
    /// Times its handler snoozed it.
    pub snoozes: i32,
}

/// Locks up to `limit` due outbox entries, highest priority first and then oldest, skipping
/// those another api replica holds; with their jobs.
pub async fn lock_due(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> sqlx::Result<Vec<Unpublished>> {
    sqlx::query_as(
        "SELECT j.id, j.kind, j.payload, j.payload_version, j.run_at, j.attempts + 1 AS attempt, \
                j.failures, j.generation, j.checkpoint, j.checkpoint_attempt, j.checkpoint_at, \
                j.attempt_traceparent, j.traceparent, \
                (SELECT jsonb_object_agg(p.workflow_key, p.result) FROM job_dependencies AS d \
                 JOIN jobs AS p ON p.id = d.depends_on WHERE d.job_id = j.id) AS inputs, \
                j.status = $2 AS scheduled, j.status <> ALL($3) AS stale, \
                o.priority, COALESCE(j.concurrency_key, '') AS concurrency_key, o.held, o.turn, j.snoozes, \
                EXISTS (SELECT 1 FROM paused_kinds AS p WHERE p.kind = j.kind) AS paused \
         FROM outbox AS o JOIN jobs AS j ON j.id = o.job_id \
         WHERE o.run_at <= now() \
         ORDER BY o.priority DESC, o.run_at, o.turn LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
    )
    .bind(limit)
    .bind(Status::Scheduled)
    .bind(&[Status::Scheduled, Status::Queued][..])
    .fetch_all(&mut **tx)
    .await
}

/// Takes published (or stale) entries out of the outbox.
pub async fn take_out(tx: &mut Transaction<'_, Postgres>, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM outbox WHERE job_id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await
        .map(drop)
}

/// Marks published scheduled jobs queued, unless a worker has already reported them running.
/// Its own statement, after the outbox's transaction committed: that transaction then never
/// waits for a job's row lock, which the event consumer takes before the outbox's (to insert a
/// retry), so the two cannot deadlock. A crash in between leaves a published job `scheduled`
/// until it starts: cosmetic.
pub async fn mark_queued(db: &PgPool, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET status = $2 WHERE id = ANY($1) AND status = $3")
        .bind(ids)
        .bind(Status::Queued)
        .bind(Status::Scheduled)
        .execute(db)
        .await
        .map(drop)
}

/// The outbox's state, for the gauges and the relay's next wake-up.
#[derive(Debug, sqlx::FromRow)]
pub struct Backlog {
    /// Entries due now, not yet published.
    pub due: i64,
    /// Entries waiting for their `run_at` (delayed jobs, retries, snoozes); not those flow
    /// control holds (`jobstack_jobs_held` counts them).
    pub scheduled: i64,
}

/// Counts the outbox.
pub async fn backlog(db: &PgPool) -> sqlx::Result<Backlog> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE run_at <= now()) AS due, \
                count(*) FILTER (WHERE run_at > now() AND held IS NULL) AS scheduled \
         FROM outbox",
    )
    .fetch_one(db)
    .await
}

/// When the earliest scheduled entry becomes due, if any.
pub async fn next_due(db: &PgPool) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT min(run_at) FROM outbox WHERE run_at > now()")
        .fetch_one(db)
        .await
}

/// A cancel to broadcast.
#[derive(Debug, sqlx::FromRow)]
pub struct PendingCancel {
    /// The job.
    pub id: Uuid,
    /// Its generation.
    pub generation: i32,
    /// The trace that created the job, which the broadcast joins.
    pub traceparent: Option<String>,
}

/// Locks up to `limit` cancels not yet broadcast, skipping those another replica holds.
pub async fn lock_cancels(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> sqlx::Result<Vec<PendingCancel>> {
    // `ORDER BY id` is the partial index `jobs_cancel_outbox`'s order: without it, a jobs
    // table not yet analysed (a new deployment's first minutes, at thousands of jobs a second)
    // is scanned whole on every round of the relay (12 ms at 27,000 jobs, against 0.05).
    sqlx::query_as(
        "SELECT id, generation, traceparent FROM jobs WHERE cancel_outbox \
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

/// Takes broadcast cancels out of the cancel outbox.
pub async fn mark_cancels_published(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET cancel_outbox = false WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await
        .map(drop)
}
