//! Re-driving failed or cancelled jobs: each runs again as its next generation.

use sqlx::PgPool;
use uuid::Uuid;

use super::{JobRow, audit, job_columns, read};
use crate::access::Audit;
use crate::lifecycle::Status;

/// Which jobs to re-drive.
#[derive(Debug, Clone, Copy)]
pub enum Redrive<'a> {
    /// This one.
    One(Uuid),
    /// These (the ones among them that are failed or cancelled).
    Ids(&'a [Uuid]),
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
    Refused(JobRow),
    /// Cancelled, but the cancel is not broadcast yet: nothing changed.
    CancelPending(JobRow),
    /// Another request is re-driving (or cancelling) it right now: nothing changed here.
    Busy(JobRow),
    /// Back in the outbox as its next generation.
    Requeued(JobRow),
}

/// The statuses a re-drive takes.
pub const REDRIVABLE: [Status; 2] = [Status::Failed, Status::Cancelled];

/// Puts failed or cancelled jobs back in the outbox as their next generation (attempts from 1,
/// the whole budget of failures, nothing superseded), recording how the previous generation
/// ended in `history`. The checkpoint stays: the new generation resumes from it.
///
/// The outbox entry is an upsert, not `DO NOTHING`: the relay that published the previous
/// generation deletes its entry only when its batch commits, and a fast job can fail and be
/// re-driven before that. `DO NOTHING` saw that entry, inserted nothing, and the relay's delete
/// then left the new generation queued forever; `DO UPDATE` waits for the relay's lock, and
/// inserts anew once its delete commits. A job whose cancel is not
/// broadcast yet (the broker is down) is left alone: the cancel names the generation it stops,
/// and must reach the workers before the next one starts. Rows another transaction holds are
/// skipped, so a bulk re-drive never waits on one.
///
/// A workflow's job resumes its workflow: the jobs its failure cancelled (`blocked_by`, and
/// theirs) wait again for their dependencies. A bulk re-drive leaves those out (they resume
/// with the job that blocked them); re-driving one by its id runs it without them. When it
/// re-drove any, `audit` records it (and which) in the same transaction.
pub async fn redrive(db: &PgPool, which: Redrive<'_>, audit: &Audit) -> sqlx::Result<Vec<JobRow>> {
    let (ids, status, kind, limit) = match which {
        Redrive::One(id) => (Some(vec![id]), None, None, 1),
        Redrive::Ids(ids) => (Some(ids.to_vec()), None, None, ids.len() as i64),
        Redrive::Many {
            status,
            kind,
            limit,
        } => (None, Some(status), kind, i64::from(limit)),
    };
    let mut tx = db.begin().await?;
    let jobs: Vec<JobRow> = sqlx::query_as(concat!(
        "WITH RECURSIVE picked AS ( \
             SELECT id AS picked_id FROM jobs \
             WHERE status = ANY($5) AND NOT cancel_outbox \
               AND ($1::uuid[] IS NULL OR id = ANY($1)) AND ($1::uuid[] IS NOT NULL OR blocked_by IS NULL) \
               AND ($2::job_status IS NULL OR status = $2) AND ($3::text IS NULL OR kind = $3) \
             ORDER BY finished_at DESC NULLS LAST LIMIT $4 FOR UPDATE SKIP LOCKED), \
         up AS (UPDATE jobs AS j SET \
             history = j.history || jsonb_build_array(jsonb_build_object( \
                 'generation', j.generation, 'status', j.status, 'attempts', j.attempts, \
                 'error', j.error, 'started_at', j.started_at, 'finished_at', j.finished_at)), \
             generation = j.generation + 1, status = $6, attempts = 0, failures = 0, superseded = 0, \
             progress = 0, \
             result = NULL, error = NULL, started_at = NULL, finished_at = NULL, \
             cancel_requested = false, cancel_outbox = false, run_at = now() \
         FROM picked WHERE j.id = picked.picked_id RETURNING j.*), \
         queued AS (INSERT INTO outbox (job_id, run_at, priority) SELECT id, run_at, priority FROM up \
                    ON CONFLICT (job_id) DO UPDATE SET run_at = EXCLUDED.run_at, held = NULL), \
         blocked AS (SELECT id AS blocked_id FROM jobs WHERE blocked_by IN (SELECT id FROM up) \
                     UNION SELECT j.id FROM jobs AS j JOIN blocked AS b ON j.blocked_by = b.blocked_id), \
         resumed AS (UPDATE jobs AS j SET status = $7, finished_at = NULL, error = NULL, \
             blocked_by = NULL, pending_deps = ( \
                 SELECT count(*) FROM job_dependencies AS d JOIN jobs AS p ON p.id = d.depends_on \
                 WHERE d.job_id = j.id AND p.status <> $8 \
                   AND NOT (d.on_failure = 'ignore' AND p.status = ANY($5))) \
             FROM blocked WHERE j.id = blocked.blocked_id) \
         SELECT ",
        job_columns!(),
        " FROM up"
    ))
    .bind(ids)
    .bind(status)
    .bind(kind)
    .bind(limit)
    .bind(&REDRIVABLE[..])
    .bind(Status::Queued)
    .bind(Status::Scheduled)
    .bind(Status::Succeeded)
    .fetch_all(&mut *tx)
    .await?;
    if !jobs.is_empty() {
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
        audit::record(&mut tx, audit, &ids).await?;
    }
    tx.commit().await?;
    Ok(jobs)
}

/// Re-drives one job, telling a missing job from one in another state, one whose cancel is not
/// out yet, and one another request holds right now (it was skipped, not refused).
pub async fn redrive_one(db: &PgPool, id: Uuid, audit: &Audit) -> sqlx::Result<RedriveOne> {
    if let Some(job) = redrive(db, Redrive::One(id), audit).await?.pop() {
        return Ok(RedriveOne::Requeued(job));
    }
    // Why was it not taken? Looked at under the row's lock, without waiting for it: a row held
    // by another request is busy, whatever it reads as now.
    let mut tx = db.begin().await?;
    let locked: Option<(Status, bool)> = sqlx::query_as(
        "SELECT status, cancel_outbox FROM jobs WHERE id = $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(job) = read::get(&mut *tx, id).await? else {
        return Ok(RedriveOne::NotFound);
    };
    Ok(match locked {
        None => RedriveOne::Busy(job),
        Some((status, _)) if !REDRIVABLE.contains(&status) => RedriveOne::Refused(job),
        Some((_, true)) => RedriveOne::CancelPending(job),
        // Redrivable, its cancel out, and unlocked: it changed between the two statements
        // (e.g. another re-drive finished and it failed again at once). Report it as busy:
        // asking again will take it.
        Some(_) => RedriveOne::Busy(job),
    })
}
