//! Every SQL statement the api runs, over the `jobs` table.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
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
    /// queued, running, succeeded, failed or cancelled.
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
    /// When its first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The trace that created it (32 hex).
    pub trace_id: String,
}

/// The columns of [`Job`], for `concat!` (sqlx only takes static SQL).
macro_rules! columns {
    () => {
        "id, kind, payload, status, progress, attempts, result, error, \
         created_at, started_at, finished_at, trace_id"
    };
}

/// Inserts a new job; with `outbox = true` by default, the row is its own outbox entry, so
/// the single-row commit is what makes the 202 durable.
pub async fn insert(
    db: &PgPool,
    kind: &str,
    payload: &Value,
    trace_id: &str,
    traceparent: Option<&str>,
) -> sqlx::Result<Job> {
    sqlx::query_as(concat!(
        "INSERT INTO jobs (id, kind, payload, trace_id, traceparent) VALUES ($1, $2, $3, $4, $5) \
         RETURNING ",
        columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(kind)
    .bind(payload)
    .bind(trace_id)
    .bind(traceparent)
    .fetch_one(db)
    .await
}

/// One job.
pub async fn get(db: &PgPool, id: Uuid) -> sqlx::Result<Option<Job>> {
    sqlx::query_as(concat!("SELECT ", columns!(), " FROM jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
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

/// Cancels a queued job at once (and takes it out of the outbox); flags a running one so the
/// worker stops it at its next step.
pub async fn cancel(db: &PgPool, id: Uuid) -> sqlx::Result<Cancel> {
    let mut tx = db.begin().await?;
    let Some(cur) = lock(&mut tx, id).await? else {
        return Ok(Cancel::NotFound);
    };
    let job: Job = if cur.status.is_final() {
        let job = sqlx::query_as(concat!("SELECT ", columns!(), " FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        return Ok(Cancel::AlreadyFinal(job));
    } else if cur.status == Status::Queued {
        sqlx::query_as(concat!(
            "UPDATE jobs SET status = 'cancelled', finished_at = now(), outbox = false, \
             cancel_requested = true WHERE id = $1 RETURNING ",
            columns!()
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?
    } else {
        sqlx::query_as(concat!(
            "UPDATE jobs SET cancel_requested = true WHERE id = $1 RETURNING ",
            columns!()
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?
    };
    tx.commit().await?;
    Ok(Cancel::Accepted(job))
}

/// The state machine's columns of a row, as locked by [`lock`] and [`apply_events`].
type StateRow = (String, i32, f64, bool);

fn current((status, attempts, progress, cancel_requested): StateRow) -> Current {
    Current {
        status: Status::parse(&status).unwrap_or(Status::Queued),
        attempts: attempts.max(0) as u32,
        progress,
        cancel_requested,
    }
}

async fn lock(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> sqlx::Result<Option<Current>> {
    let row: Option<StateRow> = sqlx::query_as(
        "SELECT status, attempts, progress, cancel_requested FROM jobs WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(current))
}

/// Applies workers' events, in order, to their jobs through the state machine, in one
/// transaction: one lock query, one update and one commit for the whole batch. Returns, per
/// event, whether it changed anything (false for duplicates, stale events and unknown jobs).
pub async fn apply_events(db: &PgPool, events: &[JobEvent]) -> sqlx::Result<Vec<bool>> {
    let mut tx = db.begin().await?;
    let ids: Vec<Uuid> = events.iter().map(|e| e.job_id).collect();
    // Locked in id order, so two batches sharing jobs could never deadlock.
    let rows: Vec<(Uuid, String, i32, f64, bool)> = sqlx::query_as(
        "SELECT id, status, attempts, progress, cancel_requested FROM jobs \
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut jobs: HashMap<Uuid, (Current, Option<state::Update>)> = rows
        .into_iter()
        .map(|(id, status, attempts, progress, cancel)| {
            (id, (current((status, attempts, progress, cancel)), None))
        })
        .collect();

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
    if updates.is_empty() {
        return Ok(applied);
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
    sqlx::query(
        "UPDATE jobs AS j SET status = u.status, attempts = u.attempts, progress = u.progress, \
         started_at = COALESCE(j.started_at, u.started_at), \
         finished_at = COALESCE(j.finished_at, u.finished_at), \
         result = COALESCE(u.result, j.result), error = COALESCE(u.error, j.error), \
         outbox = CASE WHEN u.status IN ('succeeded', 'failed', 'cancelled') THEN false \
                  ELSE j.outbox END \
         FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::float8[], $5::timestamptz[], \
                     $6::timestamptz[], $7::jsonb[], $8::text[]) \
              AS u(id, status, attempts, progress, started_at, finished_at, result, error) \
         WHERE j.id = u.id",
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
    Ok(applied)
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
    /// When it was accepted (the first attempt is available from then).
    pub created_at: DateTime<Utc>,
    /// The accepting request's trace context.
    pub traceparent: Option<String>,
}

/// Locks up to `limit` outbox entries, oldest first, skipping those another api replica holds.
pub async fn lock_outbox(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> sqlx::Result<Vec<Unpublished>> {
    sqlx::query_as(
        "SELECT id, kind, payload, created_at, traceparent FROM jobs WHERE outbox \
         ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

/// Takes published jobs out of the outbox.
pub async fn mark_published(tx: &mut Transaction<'_, Postgres>, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET outbox = false WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await
        .map(drop)
}

/// How many jobs wait in the outbox.
pub async fn outbox_backlog(db: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE outbox")
        .fetch_one(db)
        .await
}
