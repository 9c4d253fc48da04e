//! Accepting jobs: a job row and its outbox entry in one transaction, so that the commit is what
//! makes a 202 durable. Grouped ([`insert`], the group commit's batches) or with an
//! `Idempotency-Key` ([`insert_keyed`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobs_contract::request::Schedule;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{JobRow, job_columns, read};
use crate::lifecycle::Status;

/// A job to store.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its kind.
    pub kind: String,
    /// Its payload, validated.
    pub payload: Value,
    /// The version of the kind's payload it is written in.
    pub payload_version: u32,
    /// When it may run.
    pub schedule: Schedule,
    /// The accepting request's trace id.
    pub trace_id: String,
    /// The accepting request's trace context, for the relay's publish span.
    pub traceparent: Option<String>,
    /// The schedule fire that made it, if one did.
    pub fire: Option<Fire>,
}

/// A schedule's fire: at most one job per schedule and fire time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// The schedule's name.
    pub schedule: String,
    /// The fire time.
    pub at: DateTime<Utc>,
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
    Created(JobRow),
    /// The key's job, created by an earlier request with the same body.
    Replayed(JobRow),
    /// The key was used with a different body.
    KeyReused,
}

/// Inserts jobs in one transaction (one statement), each with its outbox entry; the rows come
/// back in the order given.
pub async fn insert(db: &PgPool, jobs: &[NewJob]) -> sqlx::Result<Vec<JobRow>> {
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
        return Ok(Inserted::Replayed(read::fetch(&mut tx, job_id).await?));
    }
    let job = insert_rows(&mut tx, &[id], std::slice::from_ref(job))
        .await?
        .pop()
        .expect("one row inserted");
    tx.commit().await?;
    Ok(Inserted::Created(job))
}

/// Inserts the jobs of schedule fires in `tx`, each with its outbox entry; a fire that already
/// made its job makes nothing (the rows returned are the new ones).
pub async fn insert_fired(
    tx: &mut Transaction<'_, Postgres>,
    jobs: &[NewJob],
) -> sqlx::Result<Vec<JobRow>> {
    let ids: Vec<Uuid> = jobs.iter().map(|_| Uuid::now_v7()).collect();
    insert_rows(tx, &ids, jobs).await
}

/// The one INSERT of jobs: a row per element of the arrays (`unnest`), its `run_at` resolved
/// against the database's clock (a past time runs now) and `scheduled` if that is still ahead.
/// A second job for a schedule's fire time is not inserted (`jobs_schedule_fire`).
async fn insert_rows(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
    jobs: &[NewJob],
) -> sqlx::Result<Vec<JobRow>> {
    let mut kinds = Vec::with_capacity(jobs.len());
    let mut payloads = Vec::with_capacity(jobs.len());
    let mut versions: Vec<i32> = Vec::with_capacity(jobs.len());
    let mut trace_ids = Vec::with_capacity(jobs.len());
    let mut traceparents = Vec::with_capacity(jobs.len());
    let mut run_ats: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(jobs.len());
    let mut delays: Vec<Option<f64>> = Vec::with_capacity(jobs.len());
    let mut schedules: Vec<Option<&str>> = Vec::with_capacity(jobs.len());
    let mut fire_ats: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        schedules.push(job.fire.as_ref().map(|f| f.schedule.as_str()));
        fire_ats.push(job.fire.as_ref().map(|f| f.at));
        kinds.push(job.kind.as_str());
        payloads.push(&job.payload);
        versions.push(job.payload_version as i32);
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
             INSERT INTO jobs (id, kind, payload, payload_version, trace_id, traceparent, run_at, \
                               status, schedule_name, fire_at) \
             SELECT id, kind, payload, payload_version, trace_id, traceparent, due, \
                    CASE WHEN due > now() THEN $8 ELSE $9 END, schedule_name, fire_at \
             FROM (SELECT *, GREATEST(now(), COALESCE(run_at, now() + make_interval(secs => delay))) AS due \
                   FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[], \
                               $6::timestamptz[], $7::float8[], $10::int4[], $11::text[], \
                               $12::timestamptz[]) \
                        AS i(id, kind, payload, trace_id, traceparent, run_at, delay, payload_version, \
                             schedule_name, fire_at)) AS i \
             ON CONFLICT (schedule_name, fire_at) WHERE schedule_name IS NOT NULL DO NOTHING \
             RETURNING *), \
         queued AS (INSERT INTO outbox (job_id, run_at) SELECT id, run_at FROM ins) \
         SELECT ",
        job_columns!(),
        " FROM ins"
    ))
    .bind(ids)
    .bind(&kinds)
    .bind(&payloads)
    .bind(&trace_ids)
    .bind(&traceparents)
    .bind(&run_ats)
    .bind(&delays)
    .bind(Status::Scheduled)
    .bind(Status::Queued)
    .bind(&versions)
    .bind(&schedules)
    .bind(&fire_ats)
    .fetch_all(&mut **tx)
    .await
}
