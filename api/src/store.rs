//! Every SQL statement the api runs, over the `jobs` table.

use std::collections::HashMap;

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobs_contract::request::Schedule;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::state::{self, Current, Status};
use jobs_contract::messages::{JobChange, JobEvent};

/// A job, as stored and as answered.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Job {
    /// The job's id.
    pub id: Uuid,
    /// Which handler runs it.
    pub kind: String,
    /// The handler's input.
    pub payload: Value,
    /// scheduled, queued, running, succeeded, failed or cancelled.
    pub status: String,
    /// 0.0–1.0.
    pub progress: f64,
    /// Attempts started so far.
    pub attempts: i32,
    /// The handler's output, once succeeded.
    pub result: Option<Value>,
    /// The last error, if any.
    pub error: Option<String>,
    /// When the api accepted it.
    pub created_at: DateTime<Utc>,
    /// When it may run: `created_at`, or later for a delayed job (status `scheduled` until then).
    pub run_at: DateTime<Utc>,
    /// When its first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The trace that created it (32 hex).
    pub trace_id: String,
    /// How each earlier series of attempts ended, oldest first: one entry per re-drive.
    #[schema(value_type = Vec<Object>)]
    pub history: Value,
}

/// The columns of [`Job`], for `concat!` (sqlx only takes static SQL).
macro_rules! columns {
    () => {
        "id, kind, payload, status, progress, attempts, result, error, \
         created_at, run_at, started_at, finished_at, trace_id, history"
    };
}

/// A job to store.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its kind.
    pub kind: String,
    /// Its payload, validated.
    pub payload: Value,
    /// When it may run.
    pub schedule: Schedule,
    /// The accepting request's trace id.
    pub trace_id: String,
    /// The accepting request's trace context, for the relay's publish span.
    pub traceparent: Option<String>,
}

/// An `Idempotency-Key` and what it stands for.
#[derive(Debug)]
pub struct Key<'a> {
    /// The key as sent.
    pub key: &'a str,
    /// A digest of the request it came with.
    pub fingerprint: &'a str,
    /// How long it answers with its job.
    pub ttl: Duration,
}

/// What an insert with a key did.
#[derive(Debug)]
pub enum Inserted {
    /// A new job.
    Created(Job),
    /// The key's job, created by an earlier request with the same body.
    Replayed(Job),
    /// The key was used with a different body.
    KeyReused,
}

/// Inserts jobs in one transaction (one statement), in the order given, each with its outbox
/// entry: the commit is what makes the 202s durable.
pub async fn insert(db: &PgPool, jobs: &[NewJob]) -> sqlx::Result<Vec<Job>> {
    let ids: Vec<Uuid> = jobs.iter().map(|_| Uuid::now_v7()).collect();
    let mut tx = db.begin().await?;
    let mut rows = insert_rows(&mut tx, &ids, jobs).await?;
    tx.commit().await?;
    // RETURNING promises no order: put the rows back in the order asked.
    let mut ordered = Vec::with_capacity(ids.len());
    for id in ids {
        let at = rows
            .iter()
            .position(|j| j.id == id)
            .expect("one row per id");
        ordered.push(rows.swap_remove(at));
    }
    Ok(ordered)
}

/// Inserts a job and its idempotency key in one transaction, or finds the key's job. A
/// concurrent request with the same key waits on the first one's row lock, then finds its job.
pub async fn insert_keyed(db: &PgPool, job: &NewJob, key: &Key<'_>) -> sqlx::Result<Inserted> {
    let id = Uuid::now_v7();
    let mut tx = db.begin().await?;
    let claimed: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (key, fingerprint, job_id, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(secs => $4)) \
         ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
             job_id = EXCLUDED.job_id, expires_at = EXCLUDED.expires_at \
         WHERE idempotency_keys.expires_at <= now() \
         RETURNING job_id",
    )
    .bind(key.key)
    .bind(key.fingerprint)
    .bind(id)
    .bind(key.ttl.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    if claimed.is_none() {
        let (fingerprint, job_id): (String, Uuid) =
            sqlx::query_as("SELECT fingerprint, job_id FROM idempotency_keys WHERE key = $1")
                .bind(key.key)
                .fetch_one(&mut *tx)
                .await?;
        if fingerprint != key.fingerprint {
            return Ok(Inserted::KeyReused);
        }
        return Ok(Inserted::Replayed(fetch(&mut tx, job_id).await?));
    }
    let job = insert_rows(&mut tx, &[id], std::slice::from_ref(job))
        .await?
        .pop()
        .expect("one row inserted");
    tx.commit().await?;
    Ok(Inserted::Created(job))
}

/// The one INSERT of jobs: a row per element of the arrays (`unnest`), its `run_at` resolved
/// against the database's clock (a past time runs now) and `scheduled` if that is still ahead.
async fn insert_rows(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
    jobs: &[NewJob],
) -> sqlx::Result<Vec<Job>> {
    let mut kinds = Vec::with_capacity(jobs.len());
    let mut payloads = Vec::with_capacity(jobs.len());
    let mut trace_ids = Vec::with_capacity(jobs.len());
    let mut traceparents = Vec::with_capacity(jobs.len());
    let mut run_ats: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(jobs.len());
    let mut delays: Vec<Option<f64>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        kinds.push(job.kind.as_str());
        payloads.push(&job.payload);
        trace_ids.push(job.trace_id.as_str());
        traceparents.push(job.traceparent.as_deref());
        let (run_at, delay) = match job.schedule {
            Schedule::Now => (None, None),
            Schedule::At(at) => (Some(at), None),
            Schedule::After(d) => (None, Some(d.as_secs_f64())),
        };
        run_ats.push(run_at);
        delays.push(delay);
    }
    sqlx::query_as(concat!(
        "WITH ins AS ( \
             INSERT INTO jobs (id, kind, payload, trace_id, traceparent, run_at, status) \
             SELECT id, kind, payload, trace_id, traceparent, due, \
                    CASE WHEN due > now() THEN 'scheduled' ELSE 'queued' END \
             FROM (SELECT *, GREATEST(now(), COALESCE(run_at, now() + make_interval(secs => delay))) AS due \
                   FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[], \
                               $6::timestamptz[], $7::float8[]) \
                        AS i(id, kind, payload, trace_id, traceparent, run_at, delay)) AS i \
             RETURNING *), \
         queued AS (INSERT INTO outbox (job_id, run_at) SELECT id, run_at FROM ins) \
         SELECT ",
        columns!(),
        " FROM ins"
    ))
    .bind(ids)
    .bind(&kinds)
    .bind(&payloads)
    .bind(&trace_ids)
    .bind(&traceparents)
    .bind(&run_ats)
    .bind(&delays)
    .fetch_all(&mut **tx)
    .await
}

/// One job, on the pool or inside a transaction.
pub async fn get<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<Option<Job>> {
    sqlx::query_as(concat!("SELECT ", columns!(), " FROM jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// A job known to exist (its row is locked or referenced in this transaction).
async fn fetch(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> sqlx::Result<Job> {
    get(&mut **tx, id).await?.ok_or(sqlx::Error::RowNotFound)
}

/// Where a page starts: just after this (created_at, id), newest first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cursor {
    /// `created_at` of the last job of the previous page.
    pub created_at: DateTime<Utc>,
    /// Its id (breaks ties).
    pub id: Uuid,
}

impl Cursor {
    /// The opaque text form: `<unix micros>_<id>`.
    pub fn encode(&self) -> String {
        format!(
            "{}_{}",
            self.created_at.timestamp_micros(),
            self.id.simple()
        )
    }

    /// Parses [`Cursor::encode`]'s output.
    pub fn decode(s: &str) -> Option<Self> {
        let (micros, id) = s.split_once('_')?;
        Some(Self {
            created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

/// A page of jobs, newest first, and the cursor of the next page.
pub async fn list(
    db: &PgPool,
    status: Option<Status>,
    kind: Option<&str>,
    after: Option<Cursor>,
    limit: u32,
) -> sqlx::Result<(Vec<Job>, Option<Cursor>)> {
    let mut jobs: Vec<Job> = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM jobs \
         WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR kind = $2) \
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
         ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(status.map(Status::as_str))
    .bind(kind)
    .bind(after.map(|c| c.created_at))
    .bind(after.map(|c| c.id))
    .bind(i64::from(limit) + 1)
    .fetch_all(db)
    .await?;
    let next = if jobs.len() > limit as usize {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| Cursor {
            created_at: j.created_at,
            id: j.id,
        })
    } else {
        None
    };
    Ok((jobs, next))
}

/// What a cancel request did.
#[derive(Debug)]
pub enum Cancel {
    /// No such job.
    NotFound,
    /// Already final; nothing changed.
    AlreadyFinal(Job),
    /// Cancelled now (it had not started) or flagged for the worker to stop.
    Accepted(Job),
}

/// Cancels a job that has not started at once (a scheduled or still unpublished one also
/// leaves the outbox); flags a running one so the worker stops it at its next step. When the
/// job's message may be in the broker (it had left the outbox), the cancel goes into the cancel
/// outbox: the relay writes it to the control stream, which every worker reads before it takes
/// a job. A relay publishing the job right now holds its outbox entry: the delete waits for it.
/// The outbox entry is locked before the job row, in the relay's order, so the two never
/// deadlock (the relay updates a delayed job's row while it holds the entry).
pub async fn cancel(db: &PgPool, id: Uuid) -> sqlx::Result<Cancel> {
    let mut tx = db.begin().await?;
    let unpublished = sqlx::query("DELETE FROM outbox WHERE job_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        > 0;
    // Returning without a commit rolls the delete back.
    let Some(cur) = lock(&mut tx, id).await? else {
        return Ok(Cancel::NotFound);
    };
    if cur.status.is_final() {
        return Ok(Cancel::AlreadyFinal(fetch(&mut tx, id).await?));
    }
    let job: Job = sqlx::query_as(concat!(
        "UPDATE jobs SET cancel_requested = true, cancel_outbox = NOT $2, \
             status = CASE WHEN status = 'running' THEN status ELSE 'cancelled' END, \
             finished_at = CASE WHEN status = 'running' THEN NULL ELSE now() END \
         WHERE id = $1 RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(unpublished)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Cancel::Accepted(job))
}

/// The state machine's columns of a row, as locked by [`lock`] and [`apply_events`].
#[derive(sqlx::FromRow)]
struct StateRow {
    id: Uuid,
    status: String,
    attempts: i32,
    progress: f64,
    cancel_requested: bool,
    generation: i32,
}

impl StateRow {
    fn current(&self) -> Current {
        Current {
            status: Status::parse(&self.status).unwrap_or(Status::Queued),
            attempts: self.attempts.max(0) as u32,
            progress: self.progress,
            cancel_requested: self.cancel_requested,
            generation: self.generation.max(0) as u32,
        }
    }
}

macro_rules! state_columns {
    () => {
        "id, status, attempts, progress, cancel_requested, generation"
    };
}

async fn lock(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> sqlx::Result<Option<Current>> {
    let row: Option<StateRow> = sqlx::query_as(concat!(
        "SELECT ",
        state_columns!(),
        " FROM jobs WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.as_ref().map(StateRow::current))
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
}

/// Applies workers' events, in order, to their jobs through the state machine, in one
/// transaction: one lock query, one update and one commit for the whole batch.
pub async fn apply_events(db: &PgPool, events: &[JobEvent]) -> sqlx::Result<Applied> {
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
    let mut jobs: HashMap<Uuid, (Current, Option<state::Update>)> = rows
        .iter()
        .map(|row| (row.id, (row.current(), None)))
        .collect();

    let mut recancel: Vec<Uuid> = events
        .iter()
        .filter(|e| e.change == JobChange::Started)
        .filter(|e| {
            jobs.get(&e.job_id)
                .is_some_and(|(c, _)| c.cancel_requested && c.generation == e.generation)
        })
        .map(|e| e.job_id)
        .collect();
    recancel.dedup();
    if !recancel.is_empty() {
        sqlx::query("UPDATE jobs SET cancel_outbox = true WHERE id = ANY($1)")
            .bind(&recancel)
            .execute(&mut *tx)
            .await?;
    }

    let mut applied = Vec::with_capacity(events.len());
    for event in events {
        let change = jobs.get_mut(&event.job_id).and_then(|(cur, pending)| {
            let u = state::apply(*cur, event)?;
            *cur = cur.after(&u);
            *pending = Some(match pending.take() {
                Some(before) => before.then(u),
                None => u,
            });
            Some(())
        });
        applied.push(change.is_some());
    }

    let updates: Vec<(Uuid, state::Update)> = jobs
        .into_iter()
        .filter_map(|(id, (_, pending))| Some((id, pending?)))
        .collect();
    let done = Applied {
        changed: applied,
        recancelled: recancel.len(),
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
        // they need not wait for the WAL flush; final states always do.
        sqlx::query("SET LOCAL synchronous_commit TO off")
            .execute(&mut *tx)
            .await?;
    }
    let ids: Vec<Uuid> = updates.iter().map(|(id, _)| *id).collect();
    let statuses: Vec<&str> = updates.iter().map(|(_, u)| u.status.as_str()).collect();
    let attempts: Vec<i32> = updates.iter().map(|(_, u)| u.attempts as i32).collect();
    let progress: Vec<f64> = updates.iter().map(|(_, u)| u.progress).collect();
    let started: Vec<Option<DateTime<Utc>>> = updates.iter().map(|(_, u)| u.started_at).collect();
    let finished: Vec<Option<DateTime<Utc>>> = updates.iter().map(|(_, u)| u.finished_at).collect();
    let results: Vec<Option<Value>> = updates.iter().map(|(_, u)| u.result.clone()).collect();
    let errors: Vec<Option<String>> = updates.iter().map(|(_, u)| u.error.clone()).collect();
    // A job that is final has nothing left to publish: were its entry still in the outbox (the
    // relay crashed between the confirm and its commit), it must not run again.
    sqlx::query(
        "WITH u AS ( \
             UPDATE jobs AS j SET status = u.status, attempts = u.attempts, progress = u.progress, \
             started_at = COALESCE(j.started_at, u.started_at), \
             finished_at = COALESCE(j.finished_at, u.finished_at), \
             result = COALESCE(u.result, j.result), error = COALESCE(u.error, j.error) \
             FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::float8[], $5::timestamptz[], \
                         $6::timestamptz[], $7::jsonb[], $8::text[]) \
                  AS u(id, status, attempts, progress, started_at, finished_at, result, error) \
             WHERE j.id = u.id RETURNING j.id, j.status) \
         DELETE FROM outbox AS o USING u \
         WHERE o.job_id = u.id AND u.status IN ('succeeded', 'failed', 'cancelled')",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&attempts)
    .bind(&progress)
    .bind(&started)
    .bind(&finished)
    .bind(&results)
    .bind(&errors)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done)
}

/// A job waiting in the outbox.
#[derive(Debug, sqlx::FromRow)]
pub struct Unpublished {
    /// The job's id.
    pub id: Uuid,
    /// Its kind (the routing key).
    pub kind: String,
    /// Its payload.
    pub payload: Value,
    /// When it may run (its first attempt is available from then).
    pub run_at: DateTime<Utc>,
    /// Its series of attempts.
    pub generation: i32,
    /// The accepting request's trace context.
    pub traceparent: Option<String>,
    /// Whether it is a delayed job (status `scheduled`, queued once published).
    pub scheduled: bool,
}

/// Locks up to `limit` due outbox entries, oldest first, skipping those another api replica
/// holds; with their jobs.
pub async fn lock_outbox(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> sqlx::Result<Vec<Unpublished>> {
    sqlx::query_as(
        "SELECT j.id, j.kind, j.payload, j.run_at, j.generation, j.traceparent, \
                j.status = 'scheduled' AS scheduled \
         FROM outbox AS o JOIN jobs AS j ON j.id = o.job_id \
         WHERE o.run_at <= now() \
         ORDER BY o.run_at LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

/// Takes published jobs out of the outbox; the delayed ones among them are now queued.
pub async fn mark_published(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
    scheduled: &[Uuid],
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM outbox WHERE job_id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    if !scheduled.is_empty() {
        sqlx::query(
            "UPDATE jobs SET status = 'queued' WHERE id = ANY($1) AND status = 'scheduled'",
        )
        .bind(scheduled)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The outbox's state, for the gauges and the relay's next wake-up.
#[derive(Debug, sqlx::FromRow)]
pub struct OutboxState {
    /// Entries due now, not yet published.
    pub due: i64,
    /// Delayed jobs waiting for their `run_at`.
    pub scheduled: i64,
}

/// Counts the outbox.
pub async fn outbox_state(db: &PgPool) -> sqlx::Result<OutboxState> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE run_at <= now()) AS due, \
                count(*) FILTER (WHERE run_at > now()) AS scheduled \
         FROM outbox",
    )
    .fetch_one(db)
    .await
}

/// When the earliest scheduled job becomes due, if any.
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
    /// Its series of attempts.
    pub generation: i32,
    /// The trace that created the job, which the broadcast joins.
    pub traceparent: Option<String>,
}

/// Locks up to `limit` cancels not yet broadcast, skipping those another replica holds.
pub async fn lock_cancels(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> sqlx::Result<Vec<PendingCancel>> {
    sqlx::query_as(
        "SELECT id, generation, traceparent FROM jobs WHERE cancel_outbox \
         LIMIT $1 FOR UPDATE SKIP LOCKED",
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

/// Which jobs to re-drive.
#[derive(Debug, Clone, Copy)]
pub enum Redrive<'a> {
    /// This one.
    One(Uuid),
    /// Up to `limit` in `status`, of `kind` if given, most recently finished first.
    Many {
        /// `failed` or `cancelled`.
        status: Status,
        /// Only this kind.
        kind: Option<&'a str>,
        /// At most this many.
        limit: u32,
    },
}

/// What a single re-drive found.
#[derive(Debug)]
pub enum RedriveOne {
    /// No such job.
    NotFound,
    /// Not failed or cancelled: nothing changed.
    Refused(Job),
    /// Cancelled, but the cancel is not broadcast yet: nothing changed.
    CancelPending(Job),
    /// Back in the outbox as a new series of attempts.
    Requeued(Job),
}

/// The statuses a re-drive takes.
pub const REDRIVABLE: [Status; 2] = [Status::Failed, Status::Cancelled];

/// Puts failed or cancelled jobs back in the outbox as a new series of attempts (the next
/// generation, attempts from 1), recording how the previous series ended in `history`. A job
/// whose cancel is not broadcast yet (the broker is down) is left alone: the cancel names the
/// series it stops, and must reach the workers before a new series starts.
pub async fn redrive(db: &PgPool, which: Redrive<'_>) -> sqlx::Result<Vec<Job>> {
    let (id, status, kind, limit) = match which {
        Redrive::One(id) => (Some(id), None, None, 1),
        Redrive::Many {
            status,
            kind,
            limit,
        } => (None, Some(status), kind, i64::from(limit)),
    };
    sqlx::query_as(concat!(
        "WITH picked AS ( \
             SELECT id AS picked_id FROM jobs \
             WHERE status IN ('failed', 'cancelled') AND NOT cancel_outbox \
               AND ($1::uuid IS NULL OR id = $1) \
               AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR kind = $3) \
             ORDER BY finished_at DESC NULLS LAST LIMIT $4 FOR UPDATE SKIP LOCKED), \
         up AS (UPDATE jobs AS j SET \
             history = j.history || jsonb_build_array(jsonb_build_object( \
                 'generation', j.generation, 'status', j.status, 'attempts', j.attempts, \
                 'error', j.error, 'started_at', j.started_at, 'finished_at', j.finished_at)), \
             generation = j.generation + 1, status = 'queued', attempts = 0, progress = 0, \
             result = NULL, error = NULL, started_at = NULL, finished_at = NULL, \
             cancel_requested = false, cancel_outbox = false, run_at = now() \
         FROM picked WHERE j.id = picked.picked_id RETURNING j.*), \
         queued AS (INSERT INTO outbox (job_id, run_at) SELECT id, run_at FROM up \
                    ON CONFLICT (job_id) DO NOTHING) \
         SELECT ",
        columns!(),
        " FROM up"
    ))
    .bind(id)
    .bind(status.map(Status::as_str))
    .bind(kind)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Re-drives one job, telling apart a missing job from one in another state.
pub async fn redrive_one(db: &PgPool, id: Uuid) -> sqlx::Result<RedriveOne> {
    if let Some(job) = redrive(db, Redrive::One(id)).await?.pop() {
        return Ok(RedriveOne::Requeued(job));
    }
    Ok(match get(db, id).await? {
        None => RedriveOne::NotFound,
        Some(job) if REDRIVABLE.iter().any(|s| s.as_str() == job.status) => {
            RedriveOne::CancelPending(job)
        }
        Some(job) => RedriveOne::Refused(job),
    })
}

/// Rows deleted by one [`prune`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Finished jobs (their idempotency keys went with them).
    pub jobs: u64,
    /// Expired idempotency keys.
    pub keys: u64,
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
    (pruned.keys, _) = delete_batches(db, PRUNE_KEYS, Duration::ZERO, batch).await?;
    Ok(pruned)
}

const PRUNE_JOBS: &str = "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs \
     WHERE finished_at < now() - make_interval(secs => $1) \
       AND status IN ('succeeded', 'failed', 'cancelled') \
     ORDER BY finished_at LIMIT $2)";

const PRUNE_KEYS: &str = "DELETE FROM idempotency_keys WHERE key IN (SELECT key \
     FROM idempotency_keys WHERE expires_at < now() - make_interval(secs => $1) \
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
