//! Reading jobs: one by id, or a page of them, newest first, with a keyset cursor.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{JobRow, job_columns};
use crate::lifecycle::Status;

/// One job, on the pool or inside a transaction.
pub async fn get<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Why a job's outbox entry waits past its `run_at`, if it does: `concurrency`, `rate` or
/// `paused` (see migration 0008).
pub async fn held<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT held FROM outbox WHERE job_id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
        .map(Option::flatten)
}

/// How many dependencies a workflow's job still waits for (0 for any other job).
pub async fn waiting_on(db: &PgPool, id: Uuid) -> sqlx::Result<i32> {
    sqlx::query_scalar("SELECT pending_deps FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
        .map(Option::unwrap_or_default)
}

/// How many jobs `filter` takes (at most `cap`: a count is for a confirmation, not a census).
pub async fn count(db: &PgPool, filter: Filter<'_>, cap: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM jobs \
         WHERE ($1::job_status IS NULL OR status = $1) AND ($2::text IS NULL OR kind = $2) \
           AND ($3::text IS NULL OR schedule_name = $3) AND ($4::text IS NULL OR client = $4) \
           AND ($5::uuid IS NULL OR workflow_id = $5) AND ($6::timestamptz IS NULL OR created_at >= $6) \
         LIMIT $7) AS matching",
    )
    .bind(filter.status)
    .bind(filter.kind)
    .bind(filter.schedule)
    .bind(filter.client)
    .bind(filter.workflow)
    .bind(filter.since)
    .bind(cap)
    .fetch_one(db)
    .await
}

/// A job known to exist (its row is locked or referenced in this transaction).
pub(super) async fn fetch(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> sqlx::Result<JobRow> {
    get(&mut **tx, id).await?.ok_or(sqlx::Error::RowNotFound)
}

/// Jobs known to exist (referenced in this transaction), in no particular order.
pub(super) async fn fetch_many(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(&mut **tx)
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

/// Which jobs a list takes (each filter given narrows it).
#[derive(Debug, Default, Clone, Copy)]
pub struct Filter<'a> {
    /// In this status.
    pub status: Option<Status>,
    /// Of this kind.
    pub kind: Option<&'a str>,
    /// Made by this schedule.
    pub schedule: Option<&'a str>,
    /// Submitted by this client.
    pub client: Option<&'a str>,
    /// Of this workflow.
    pub workflow: Option<Uuid>,
    /// Created at or after this time.
    pub since: Option<DateTime<Utc>>,
}

/// A page of jobs, newest first, and the cursor of the next page.
pub async fn list(
    db: &PgPool,
    filter: Filter<'_>,
    after: Option<Cursor>,
    limit: u32,
) -> sqlx::Result<(Vec<JobRow>, Option<Cursor>)> {
    let mut jobs: Vec<JobRow> = sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs \
         WHERE ($1::job_status IS NULL OR status = $1) AND ($2::text IS NULL OR kind = $2) \
           AND ($6::text IS NULL OR schedule_name = $6) AND ($7::text IS NULL OR client = $7) \
           AND ($8::uuid IS NULL OR workflow_id = $8) AND ($9::timestamptz IS NULL OR created_at >= $9) \
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
         ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(filter.status)
    .bind(filter.kind)
    .bind(after.map(|c| c.created_at))
    .bind(after.map(|c| c.id))
    .bind(i64::from(limit) + 1)
    .bind(filter.schedule)
    .bind(filter.client)
    .bind(filter.workflow)
    .bind(filter.since)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_garbage_is_refused() {
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "12", "x_y", "12_not-a-uuid", "_0190a6f8"] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }
}
