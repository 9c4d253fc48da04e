//! Accepting jobs: a job row and its outbox entry in one transaction, so that the commit is what
//! makes a 202 durable: the group commit's batches ([`insert`]), with their `Idempotency-Key`s,
//! and schedules' fires ([`insert_fired`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobs_contract::request::Schedule;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
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
    /// 0–9, higher first.
    pub priority: u8,
    /// What its kind's per-key limits count it under.
    pub concurrency_key: Option<String>,
    /// Its claim, if it is unique.
    pub unique: Option<Claim>,
    /// The client that submitted it.
    pub client: Option<String>,
}

impl NewJob {
    /// A job of `kind` to run now, with no flow settings.
    pub fn now(kind: &str, payload: Value, payload_version: u32) -> Self {
        Self {
            kind: kind.to_owned(),
            payload,
            payload_version,
            schedule: Schedule::Now,
            trace_id: String::new(),
            traceparent: None,
            fire: None,
            priority: 0,
            concurrency_key: None,
            unique: None,
            client: None,
        }
    }
}

/// A unique job's claim: no other job with the same `key` is inserted while the claim holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// `<kind>:<unique key or digest>`.
    pub key: String,
    /// Held this long from creation, whatever the job's state; `None`: while it is unfinished.
    pub within: Option<Duration>,
}

/// What an insert made of a job.
#[derive(Debug)]
pub enum Stored {
    /// A new job.
    New(JobRow),
    /// The unfinished job that holds the same unique claim: nothing was inserted.
    Duplicate(JobRow),
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
#[derive(Debug, Clone)]
pub struct Key {
    /// The key as stored (scoped to its client).
    pub key: String,
    /// A digest of the request it came with.
    pub fingerprint: String,
    /// How long it answers with its job.
    pub ttl: Duration,
}

/// A job to accept, and the `Idempotency-Key` it came with, if any.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The job.
    pub job: NewJob,
    /// Its key.
    pub key: Option<Key>,
}

/// What accepting a submission did.
#[derive(Debug)]
pub enum Inserted {
    /// A new job, or the duplicate a unique claim answered with.
    Created(Stored),
    /// The key's job, created by an earlier request with the same body.
    Replayed(JobRow),
    /// The key was used with a different body.
    KeyReused,
}

/// Accepts `subs` atomically: each job with its outbox entry and its key, if it has
/// one; what became of each comes back in the order given, as if each had been alone.
///
/// A key is claimed by the first submission that brings it while it is free (new, or
/// expired); every other submission with that key (later in this batch, or in a later one)
/// answers with the claimant's job if its body is the same, and is refused if not. Keys are
/// claimed in key order, so two batches sharing keys wait for each other and never deadlock;
/// a batch that meets a key another transaction holds waits for that one's end, then sees its
/// job.
pub async fn insert(db: &PgPool, subs: &[Submission]) -> sqlx::Result<Vec<Inserted>> {
    let ids: Vec<Uuid> = subs.iter().map(|_| Uuid::now_v7()).collect();
    // The first submission of each key, in key order.
    let mut firsts: BTreeMap<&str, (usize, &Key)> = BTreeMap::new();
    for (i, sub) in subs.iter().enumerate() {
        if let Some(key) = &sub.key {
            firsts.entry(key.key.as_str()).or_insert((i, key));
        }
    }
    if firsts.is_empty() && subs.iter().all(|sub| sub.job.unique.is_none()) {
        // No key to claim and no unique claim to read back: the insert is one statement,
        // atomic by itself, so it needs no transaction around it (one round trip to
        // PostgreSQL instead of three, which a busy machine makes each cost a wake-up).
        let jobs: Vec<NewJob> = subs.iter().map(|sub| sub.job.clone()).collect();
        let stored = insert_unique(&mut *db.acquire().await?, &ids, &jobs).await?;
        return Ok(stored.into_iter().map(Inserted::Created).collect());
    }
    let mut tx = db.begin().await?;
    let claimed = claim_keys(&mut tx, &firsts, &ids).await?;
    // Who inserts a job: a submission without a key, and the one that claimed its key.
    let inserts: Vec<bool> = subs
        .iter()
        .enumerate()
        .map(|(i, sub)| match &sub.key {
            None => true,
            Some(key) => claimed.contains(&key.key) && firsts[key.key.as_str()].0 == i,
        })
        .collect();
    let (job_ids, jobs): (Vec<Uuid>, Vec<NewJob>) = subs
        .iter()
        .zip(&ids)
        .zip(&inserts)
        .filter(|(_, inserts)| **inserts)
        .map(|((sub, id), _)| (*id, sub.job.clone()))
        .unzip();
    let stored = insert_unique(&mut tx, &job_ids, &jobs).await?;

    // What each key answers with from now on: its claimant's fingerprint, and its job.
    let mut records: HashMap<&str, (String, JobRow)> = HashMap::new();
    let mut duplicated: (Vec<&str>, Vec<Uuid>) = (Vec::new(), Vec::new());
    let claimants = subs.iter().zip(&inserts).filter(|(_, inserts)| **inserts);
    for ((sub, _), stored) in claimants.zip(&stored) {
        let Some(key) = &sub.key else { continue };
        let row = match stored {
            Stored::New(row) => row,
            Stored::Duplicate(holder) => {
                // No job was made: the key answers with the unique job it duplicates.
                duplicated.0.push(key.key.as_str());
                duplicated.1.push(holder.id);
                holder
            }
        };
        records.insert(&key.key, (key.fingerprint.clone(), row.clone()));
    }
    if !duplicated.0.is_empty() {
        sqlx::query(
            "UPDATE idempotency_keys AS k SET job_id = d.job_id \
             FROM unnest($1::text[], $2::uuid[]) AS d(key, job_id) WHERE k.key = d.key",
        )
        .bind(&duplicated.0)
        .bind(&duplicated.1)
        .execute(&mut *tx)
        .await?;
    }
    let held: Vec<&str> = firsts
        .keys()
        .copied()
        .filter(|key| !claimed.contains(*key))
        .collect();
    if !held.is_empty() {
        let found: Vec<(String, String, Uuid)> = sqlx::query_as(
            "SELECT key, fingerprint, job_id FROM idempotency_keys WHERE key = ANY($1)",
        )
        .bind(&held)
        .fetch_all(&mut *tx)
        .await?;
        let job_ids: Vec<Uuid> = found.iter().map(|(_, _, id)| *id).collect();
        let rows = read::fetch_many(&mut tx, &job_ids).await?;
        for (key, fingerprint, job_id) in found {
            let key = held
                .iter()
                .copied()
                .find(|k| *k == key)
                .ok_or(sqlx::Error::RowNotFound)?;
            // A key's job is there: deleting a job deletes its keys (`ON DELETE CASCADE`).
            let row = rows
                .iter()
                .find(|r| r.id == job_id)
                .ok_or(sqlx::Error::RowNotFound)?;
            records.insert(key, (fingerprint, row.clone()));
        }
    }
    tx.commit().await?;

    let mut stored = stored.into_iter();
    subs.iter()
        .zip(inserts)
        .map(|(sub, inserted)| match &sub.key {
            Some(key) if !inserted => {
                let (fingerprint, row) = records
                    .get(key.key.as_str())
                    .ok_or(sqlx::Error::RowNotFound)?;
                Ok(if *fingerprint == key.fingerprint {
                    Inserted::Replayed(row.clone())
                } else {
                    Inserted::KeyReused
                })
            }
            _ => stored
                .next()
                .map(Inserted::Created)
                .ok_or(sqlx::Error::RowNotFound),
        })
        .collect()
}

/// Claims each key of `firsts` that is free (new, or expired) for the job its first
/// submission will insert; returns the keys claimed. In key order, row lock by row lock: a key
/// another transaction holds waits for that one to end.
async fn claim_keys(
    tx: &mut Transaction<'_, Postgres>,
    firsts: &BTreeMap<&str, (usize, &Key)>,
    ids: &[Uuid],
) -> sqlx::Result<HashSet<String>> {
    if firsts.is_empty() {
        return Ok(HashSet::new());
    }
    let keys: Vec<&str> = firsts.keys().copied().collect();
    let fingerprints: Vec<&str> = firsts
        .values()
        .map(|(_, k)| k.fingerprint.as_str())
        .collect();
    let job_ids: Vec<Uuid> = firsts.values().map(|(i, _)| ids[*i]).collect();
    let ttls: Vec<f64> = firsts.values().map(|(_, k)| k.ttl.as_secs_f64()).collect();
    // Checked at commit (the foreign key is deferred): the key goes in before its job.
    let claimed: Vec<String> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (key, fingerprint, job_id, expires_at) \
         SELECT key, fingerprint, job_id, now() + make_interval(secs => ttl) \
         FROM unnest($1::text[], $2::text[], $3::uuid[], $4::float8[]) \
              WITH ORDINALITY AS k(key, fingerprint, job_id, ttl, n) ORDER BY n \
         ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
             job_id = EXCLUDED.job_id, expires_at = EXCLUDED.expires_at \
         WHERE idempotency_keys.expires_at <= now() \
         RETURNING key",
    )
    .bind(&keys)
    .bind(&fingerprints)
    .bind(&job_ids)
    .bind(&ttls)
    .fetch_all(&mut **tx)
    .await?;
    Ok(claimed.into_iter().collect())
}

/// Inserts `jobs` as `ids`; a job whose unique claim another job holds is not inserted and
/// answers with that job. In the order given.
///
/// Optimistic: the insert comes first, and only the jobs it left out pay for the rest. Their
/// claims that lapsed (the job holding it ended, or its period passed) are given up and those
/// jobs inserted again; the others answer with the claim's holder. Two requests racing for one
/// lapsed claim: the second's insert waits for the first's transaction and then conflicts with
/// the first one's new job, which holds the claim from then on. With a unique claim among
/// `jobs`, `conn` must be in a transaction; without one, the insert is the only statement.
async fn insert_unique(
    conn: &mut PgConnection,
    ids: &[Uuid],
    jobs: &[NewJob],
) -> sqlx::Result<Vec<Stored>> {
    let mut rows = insert_rows(conn, ids, jobs).await?;
    if rows.len() < jobs.len() {
        let (left_ids, left_jobs): (Vec<Uuid>, Vec<NewJob>) = ids
            .iter()
            .zip(jobs)
            .filter(|(id, _)| !rows.iter().any(|r| r.id == **id))
            .map(|(id, job)| (*id, job.clone()))
            .unzip();
        let claims: Vec<&str> = left_jobs
            .iter()
            .filter_map(|j| j.unique.as_ref().map(|c| c.key.as_str()))
            .collect();
        let released: u64 = sqlx::query(
            "UPDATE jobs SET unique_key = NULL WHERE unique_key = ANY($1) \
             AND CASE WHEN unique_until IS NULL THEN status = ANY($2) ELSE unique_until <= now() END",
        )
        .bind(&claims)
        .bind(&Status::FINAL[..])
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if released > 0 {
            rows.extend(insert_rows(conn, &left_ids, &left_jobs).await?);
        }
    }
    let claims: Vec<&str> = ids
        .iter()
        .zip(jobs)
        .filter(|(id, _)| !rows.iter().any(|r| r.id == **id))
        .filter_map(|(_, j)| j.unique.as_ref().map(|c| c.key.as_str()))
        .collect();
    let holders: Vec<JobRow> = if claims.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE unique_key = ANY($1)"
        ))
        .bind(&claims)
        .fetch_all(&mut *conn)
        .await?
    };
    // RETURNING promises no order: put the rows back in the order asked.
    let mut stored = Vec::with_capacity(ids.len());
    for (id, job) in ids.iter().zip(jobs) {
        if let Some(at) = rows.iter().position(|j| j.id == *id) {
            stored.push(Stored::New(rows.swap_remove(at)));
            continue;
        }
        let claim = job.unique.as_ref().map(|c| c.key.as_str());
        match holders.iter().find(|h| h.unique_key.as_deref() == claim) {
            Some(row) => stored.push(Stored::Duplicate(row.clone())),
            // Only a unique claim leaves a job of these out, and its holder is committed.
            None => return Err(sqlx::Error::RowNotFound),
        }
    }
    Ok(stored)
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
/// A second job for a schedule's fire time (`jobs_schedule_fire`) or for a held unique claim
/// (`jobs_unique`) is not inserted.
async fn insert_rows(
    conn: &mut PgConnection,
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
    let mut priorities: Vec<i16> = Vec::with_capacity(jobs.len());
    let mut keys: Vec<Option<&str>> = Vec::with_capacity(jobs.len());
    let mut claims: Vec<Option<&str>> = Vec::with_capacity(jobs.len());
    let mut claim_secs: Vec<Option<f64>> = Vec::with_capacity(jobs.len());
    let mut clients: Vec<Option<&str>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        clients.push(job.client.as_deref());
        priorities.push(i16::from(job.priority));
        keys.push(job.concurrency_key.as_deref());
        claims.push(job.unique.as_ref().map(|c| c.key.as_str()));
        claim_secs.push(
            job.unique
                .as_ref()
                .and_then(|c| c.within.map(|d| d.as_secs_f64())),
        );
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
                               status, schedule_name, fire_at, priority, concurrency_key, \
                               unique_key, unique_until, client) \
             SELECT id, kind, payload, payload_version, trace_id, traceparent, due, \
                    CASE WHEN due > now() THEN $8 ELSE $9 END, schedule_name, fire_at, priority, \
                    concurrency_key, unique_key, now() + make_interval(secs => unique_secs), \
                    client \
             FROM (SELECT *, GREATEST(now(), COALESCE(run_at, now() + make_interval(secs => delay))) AS due \
                   FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[], \
                               $6::timestamptz[], $7::float8[], $10::int4[], $11::text[], \
                               $12::timestamptz[], $13::int2[], $14::text[], $15::text[], \
                               $16::float8[], $17::text[]) \
                        AS i(id, kind, payload, trace_id, traceparent, run_at, delay, payload_version, \
                             schedule_name, fire_at, priority, concurrency_key, unique_key, \
                             unique_secs, client)) AS i \
             ON CONFLICT DO NOTHING \
             RETURNING *), \
         queued AS (INSERT INTO outbox (job_id, run_at, priority) SELECT id, run_at, priority FROM ins) \
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
    .bind(&priorities)
    .bind(&keys)
    .bind(&claims)
    .bind(&claim_secs)
    .bind(&clients)
    .fetch_all(conn)
    .await
}
