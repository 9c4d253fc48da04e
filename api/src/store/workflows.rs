//! Workflows: a DAG stored in one transaction (the workflow, its jobs, their dependencies and the
//! roots' outbox entries), read back with each job's state, listed, cancelled. What releases a
//! job when its dependencies end is the trigger of migration 0007, not code here.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{JobRow, job_columns};
use crate::access::Audit;
use crate::lifecycle::Status;
use crate::workflows::NewWorkflow;

/// A workflow's own row, with its status derived from its jobs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkflowRow {
    /// Its id.
    pub id: Uuid,
    /// Its name.
    pub name: Option<String>,
    /// The trace of the request that created it.
    pub trace_id: String,
    /// The client that submitted it.
    pub client: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// `running`, `succeeded`, `failed` or `cancelled` (see [`STATUS`]).
    pub status: String,
    /// Its jobs.
    pub jobs: i64,
    /// Its jobs that succeeded.
    pub succeeded: i64,
    /// Its jobs not final yet.
    pub unfinished: i64,
}

/// A workflow's status from its jobs: `running` while one is not final; then `cancelled` if the
/// workflow was cancelled, `failed` if a job failed or was cancelled and no dependent ignores it
/// (a failure every dependent ignores does not fail the workflow), `succeeded` otherwise.
const STATUS: &str = "SELECT w.id, w.name, w.trace_id, w.client, w.created_at, \
        count(j.id) AS jobs, \
        count(j.id) FILTER (WHERE j.status = 'succeeded') AS succeeded, \
        count(j.id) FILTER (WHERE j.status NOT IN ('succeeded', 'failed', 'cancelled')) AS unfinished, \
        CASE WHEN count(j.id) FILTER (WHERE j.status NOT IN ('succeeded', 'failed', 'cancelled')) > 0 \
               THEN 'running' \
             WHEN w.cancel_requested THEN 'cancelled' \
             WHEN count(j.id) FILTER (WHERE j.status IN ('failed', 'cancelled') AND NOT ( \
                    EXISTS (SELECT 1 FROM job_dependencies AS d WHERE d.depends_on = j.id AND d.on_failure = 'ignore') \
                    AND NOT EXISTS (SELECT 1 FROM job_dependencies AS d WHERE d.depends_on = j.id AND d.on_failure = 'fail'))) > 0 \
               THEN 'failed' \
             ELSE 'succeeded' END AS status \
    FROM workflows AS w LEFT JOIN jobs AS j ON j.workflow_id = w.id";

/// Stores a workflow in one transaction: its row, every job (those without dependencies queued,
/// with their outbox entries; the others waiting), every dependency. Returns its id.
pub async fn insert(
    db: &PgPool,
    workflow: &NewWorkflow,
    trace_id: &str,
    traceparent: Option<&str>,
    client: Option<&str>,
) -> sqlx::Result<Uuid> {
    let id = Uuid::now_v7();
    let ids: Vec<Uuid> = workflow.jobs.iter().map(|_| Uuid::now_v7()).collect();
    let by_key: std::collections::HashMap<&str, Uuid> = workflow
        .jobs
        .iter()
        .zip(&ids)
        .map(|(j, id)| (j.key.as_str(), *id))
        .collect();
    let (mut from, mut to, mut policy) = (Vec::new(), Vec::new(), Vec::new());
    for (job, job_id) in workflow.jobs.iter().zip(&ids) {
        for (key, on_failure) in &job.depends_on {
            from.push(*job_id);
            to.push(by_key[key.as_str()]);
            policy.push(on_failure.as_str());
        }
    }
    let keys: Vec<&str> = workflow.jobs.iter().map(|j| j.key.as_str()).collect();
    let kinds: Vec<&str> = workflow.jobs.iter().map(|j| j.kind.as_str()).collect();
    let payloads: Vec<&serde_json::Value> = workflow.jobs.iter().map(|j| &j.payload).collect();
    let versions: Vec<i32> = workflow
        .jobs
        .iter()
        .map(|j| j.payload_version as i32)
        .collect();
    let pending: Vec<i32> = workflow
        .jobs
        .iter()
        .map(|j| j.depends_on.len() as i32)
        .collect();

    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO workflows (id, name, trace_id, client) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(&workflow.name)
        .bind(trace_id)
        .bind(client)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "WITH ins AS ( \
             INSERT INTO jobs (id, kind, payload, payload_version, trace_id, traceparent, run_at, \
                               status, workflow_id, workflow_key, pending_deps, client) \
             SELECT i.id, i.kind, i.payload, i.payload_version, $6, $7, now(), \
                    CASE WHEN i.pending > 0 THEN $9 ELSE $10 END, $8, i.key, i.pending, $12 \
             FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::int4[], $5::text[], $11::int4[]) \
                  AS i(id, kind, payload, payload_version, key, pending) \
             RETURNING id, run_at, pending_deps) \
         INSERT INTO outbox (job_id, run_at) SELECT id, run_at FROM ins WHERE pending_deps = 0",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&payloads)
    .bind(&versions)
    .bind(&keys)
    .bind(trace_id)
    .bind(traceparent)
    .bind(id)
    .bind(Status::Scheduled)
    .bind(Status::Queued)
    .bind(&pending)
    .bind(client)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO job_dependencies (job_id, depends_on, on_failure) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[])",
    )
    .bind(&from)
    .bind(&to)
    .bind(&policy)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// A job of a workflow, as read with it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkflowJobRow {
    /// Its key in the workflow.
    pub workflow_key: String,
    /// Dependencies it still waits for.
    pub pending_deps: i32,
    /// The keys it runs after.
    pub depends_on: Vec<String>,
    /// The job.
    #[sqlx(flatten)]
    pub job: JobRow,
}

/// One workflow and its jobs, dependencies first (by creation).
pub async fn get(
    db: &PgPool,
    id: Uuid,
) -> sqlx::Result<Option<(WorkflowRow, Vec<WorkflowJobRow>)>> {
    let Some(workflow) = sqlx::query_as::<_, WorkflowRow>(sqlx::AssertSqlSafe(format!(
        "{STATUS} WHERE w.id = $1 GROUP BY w.id"
    )))
    .bind(id)
    .fetch_optional(db)
    .await?
    else {
        return Ok(None);
    };
    let jobs = sqlx::query_as(concat!(
        "SELECT j.workflow_key, j.pending_deps, \
                COALESCE(ARRAY(SELECT p.workflow_key FROM job_dependencies AS d \
                               JOIN jobs AS p ON p.id = d.depends_on \
                               WHERE d.job_id = j.id ORDER BY p.workflow_key), '{}') AS depends_on, ",
        job_columns!(),
        " FROM jobs AS j WHERE j.workflow_id = $1 ORDER BY j.id"
    ))
    .bind(id)
    .fetch_all(db)
    .await?;
    Ok(Some((workflow, jobs)))
}

/// The newest `limit` workflows, in `status` and of `client` if given.
pub async fn list(
    db: &PgPool,
    status: Option<&str>,
    client: Option<&str>,
    limit: u32,
) -> sqlx::Result<Vec<WorkflowRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM ({STATUS} WHERE ($3::text IS NULL OR w.client = $3) GROUP BY w.id) AS w \
         WHERE ($1::text IS NULL OR w.status = $1) \
         ORDER BY w.created_at DESC, w.id DESC LIMIT $2"
    )))
    .bind(status)
    .bind(i64::from(limit))
    .bind(client)
    .fetch_all(db)
    .await
}

/// Marks a workflow cancelled and returns its jobs that are not final yet (the caller cancels
/// each, recorded by the same `audit`); `None` if there is no such workflow.
pub async fn cancel(db: &PgPool, id: Uuid, audit: &Audit) -> sqlx::Result<Option<Vec<Uuid>>> {
    let mut tx = db.begin().await?;
    let found = sqlx::query("UPDATE workflows SET cancel_requested = true WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if found == 0 {
        return Ok(None);
    }
    super::audit::record(&mut tx, audit, &[]).await?;
    tx.commit().await?;
    let ids = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE workflow_id = $1 AND status <> ALL($2) ORDER BY id",
    )
    .bind(id)
    .bind(&[Status::Succeeded, Status::Failed, Status::Cancelled][..])
    .fetch_all(db)
    .await?;
    Ok(Some(ids))
}

/// Workflows created in the last day, by status (for the gauges).
pub async fn counts(db: &PgPool) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT status, count(*) FROM ({STATUS} \
             WHERE w.created_at > now() - interval '1 day' GROUP BY w.id) AS w \
         GROUP BY status"
    )))
    .fetch_all(db)
    .await
}
