//! Cancelling a job: at once when it has not started, through the workers when it runs.

use sqlx::PgPool;
use uuid::Uuid;

use super::{JobRow, StateRow, audit, job_columns, read, state_columns};
use crate::access::Audit;
use crate::lifecycle::Status;

/// What a cancel request did.
#[derive(Debug)]
pub enum Cancel {
    /// No such job.
    NotFound,
    /// Already final; nothing changed.
    AlreadyFinal(JobRow),
    /// Cancelled now (it had not started) or flagged for the worker to stop.
    Accepted(JobRow),
}

/// Cancels a job that has not started at once (a scheduled or still unpublished one also
/// leaves the outbox); flags a running one so the worker stops it at its next step. When the
/// job's message may be in the broker (it had left the outbox), the cancel goes into the cancel
/// outbox: the relay writes it to the control stream, which every worker reads before it takes
/// a job. A relay publishing the job right now holds its outbox entry: the delete waits for it.
/// The outbox entry is locked before the job row, in the relay's order, so the two never
/// deadlock (the relay updates a delayed job's row while it holds the entry).
/// The cancel is recorded by `audit` in the same transaction.
pub async fn cancel(db: &PgPool, id: Uuid, audit: &Audit) -> sqlx::Result<Cancel> {
    let mut tx = db.begin().await?;
    let unpublished = sqlx::query("DELETE FROM outbox WHERE job_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        > 0;
    // Returning without a commit rolls the delete back.
    let row: Option<StateRow> = sqlx::query_as(concat!(
        "SELECT ",
        state_columns!(),
        " FROM jobs WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(Cancel::NotFound);
    };
    if row.status.is_final() {
        return Ok(Cancel::AlreadyFinal(read::fetch(&mut tx, id).await?));
    }
    // A running job stays running until its worker reports the cancel; anything else is
    // cancelled now.
    let job: JobRow = sqlx::query_as(concat!(
        "UPDATE jobs SET cancel_requested = true, cancel_outbox = NOT $2, \
             status = CASE WHEN status = $3 THEN status ELSE $4 END, \
             finished_at = CASE WHEN status = $3 THEN NULL ELSE now() END \
         WHERE id = $1 RETURNING ",
        job_columns!()
    ))
    .bind(id)
    .bind(unpublished)
    .bind(Status::Running)
    .bind(Status::Cancelled)
    .fetch_one(&mut *tx)
    .await?;
    audit::record(&mut tx, audit, &[id]).await?;
    tx.commit().await?;
    Ok(Cancel::Accepted(job))
}
