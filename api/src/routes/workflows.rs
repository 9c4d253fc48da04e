//! `/workflows`: submit a DAG of jobs, read it, list them, cancel one. A bad graph (a cycle, an
//! unknown or repeated key, too many jobs, an invalid job) is a 422 naming the field and stores
//! nothing.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::telemetry::propagation;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::jobs::view::Job;
use crate::AppState;
use crate::access::{Audit, Caller};
use crate::error::{ApiError, Problem};
use crate::routes::body::{Body, Named};
use crate::store::{self, Cancel, workflows as store_wf};
use crate::workflows::WorkflowRequest;

/// The routes, each documented where it is registered.
pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read))
        .routes(routes!(cancel))
}

impl Named for WorkflowRequest {
    const WHAT: &'static str = "workflow";
}

/// Where a workflow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum WorkflowStatus {
    /// A job is not final yet.
    Running,
    /// Every job ended, none failed (or every failure was ignored by its dependents).
    Succeeded,
    /// A job failed or was cancelled, and a dependent did not ignore it (or it had none).
    Failed,
    /// Cancelled as a whole.
    Cancelled,
}

impl WorkflowStatus {
    fn from_stored(s: &str) -> Self {
        match s {
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => Self::Running,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A workflow, without its jobs.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WorkflowSummary {
    id: Uuid,
    name: Option<String>,
    status: WorkflowStatus,
    /// Its jobs.
    jobs: u32,
    /// Its jobs that succeeded.
    succeeded: u32,
    /// Its jobs not final yet.
    unfinished: u32,
    created_at: DateTime<Utc>,
    /// The trace of the request that created it: every job's spans are in it.
    trace_id: String,
}

impl From<store_wf::WorkflowRow> for WorkflowSummary {
    fn from(w: store_wf::WorkflowRow) -> Self {
        Self {
            id: w.id,
            name: w.name,
            status: WorkflowStatus::from_stored(&w.status),
            jobs: w.jobs.max(0) as u32,
            succeeded: w.succeeded.max(0) as u32,
            unfinished: w.unfinished.max(0) as u32,
            created_at: w.created_at,
            trace_id: w.trace_id,
        }
    }
}

/// A workflow and every job of it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Workflow {
    #[serde(flatten)]
    summary: WorkflowSummary,
    /// Its jobs, in the order they were accepted.
    steps: Vec<WorkflowStep>,
}

/// A job of a workflow.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WorkflowStep {
    /// Its key in the workflow.
    key: String,
    /// The keys it runs after.
    depends_on: Vec<String>,
    /// How many of them it still waits for (it is `scheduled` meanwhile).
    waiting_for: u32,
    /// The job.
    job: Job,
}

/// A page of workflows, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WorkflowPage {
    items: Vec<WorkflowSummary>,
}

/// A workflow as `caller` may see it: a submitter's view has only its own.
async fn workflow(state: &AppState, id: Uuid, caller: &Caller) -> Result<Workflow, ApiError> {
    let (row, jobs) = store_wf::get(&state.db, id)
        .await?
        .filter(|(row, _)| {
            caller
                .only_own()
                .is_none_or(|own| row.client.as_deref() == Some(own))
        })
        .ok_or_else(|| ApiError::NotFound(format!("no workflow {id}")))?;
    Ok(Workflow {
        summary: row.into(),
        steps: jobs
            .into_iter()
            .map(|j| WorkflowStep {
                key: j.workflow_key,
                depends_on: j.depends_on,
                waiting_for: j.pending_deps.max(0) as u32,
                job: j.job.into(),
            })
            .collect(),
    })
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::BadRequest(format!("{raw:?} is not a workflow id (a UUID)")))
}

/// Submits a workflow: jobs with keys and `depends_on`. Those with no dependency run at once;
/// each other job runs once every job it depends on has ended (succeeded, or failed under
/// `on_failure: ignore`), and reads their results. A failure under `fail` (the default) cancels
/// what depends on it; re-driving the failed job resumes them.
#[utoipa::path(post, path = "/workflows", tag = "workflows", operation_id = "createWorkflow",
    request_body = WorkflowRequest,
    responses(
    (status = 201, description = "stored; its first jobs are on their way", body = Workflow),
    (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
    (status = 413, description = "body over `BODY_LIMIT_BYTES`", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "not `application/json`", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "the field named is invalid: a cycle, an unknown or repeated key, too many jobs or dependencies, a job's kind or payload", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<WorkflowRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let new = req
        .check(&state.kinds)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let span = tracing::Span::current();
    let trace_id = propagation::trace_id(&span).unwrap_or_default();
    let id = store_wf::insert(
        &state.db,
        &new,
        &trace_id,
        propagation::traceparent(&span).as_deref(),
        Some(&caller.client),
    )
    .await?;
    state.broker.wake_relay.notify_one();
    metrics::counter!("jobstack_workflows_created_total").increment(1);
    tracing::info!(workflow.id = %id, jobs = new.jobs.len(), "workflow accepted");
    Ok((
        StatusCode::CREATED,
        Json(workflow(&state, id, &caller).await?),
    ))
}

/// Filters and paging for the workflow list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only workflows in this status.
    status: Option<WorkflowStatus>,
    /// How many (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

/// The newest workflows.
#[utoipa::path(get, path = "/workflows", tag = "workflows", operation_id = "listWorkflows", params(ListQuery),
    responses(
    (status = 200, description = "the newest workflows", body = WorkflowPage),
    (status = 400, description = "bad filter or limit", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<WorkflowPage>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be from 1 to 100".into()));
    }
    let status = q.status.map(WorkflowStatus::as_str);
    let rows = store_wf::list(&state.db, status, caller.only_own(), limit).await?;
    Ok(Json(WorkflowPage {
        items: rows.into_iter().map(WorkflowSummary::from).collect(),
    }))
}

/// A workflow and its jobs.
#[utoipa::path(get, path = "/workflows/{id}", tag = "workflows", operation_id = "getWorkflow",
    params(("id" = uuid::Uuid, Path, description = "workflow id")),
    responses(
    (status = 200, description = "the workflow", body = Workflow),
    (status = 400, description = "malformed id", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "no such workflow", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn read(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Workflow>, ApiError> {
    Ok(Json(workflow(&state, parse_id(&id)?, &caller).await?))
}

/// Cancels a workflow: every job of it not final yet is cancelled (a running one stops at its
/// next step).
#[utoipa::path(post, path = "/workflows/{id}/cancel", tag = "workflows", operation_id = "cancelWorkflow",
    params(("id" = uuid::Uuid, Path, description = "workflow id")),
    responses(
    (status = 202, description = "its unfinished jobs are (or will be) cancelled", body = Workflow),
    (status = 400, description = "malformed id", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "no such workflow", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let audit = Audit::new(&caller, "workflow.cancel", id.to_string());
    let jobs = store_wf::cancel(&state.db, id, &audit)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no workflow {id}")))?;
    let mut cancelled = 0;
    for job in &jobs {
        // One transaction per job, as a cancel of each would be; a job the trigger cancelled
        // meanwhile (its dependency was cancelled first) is already final.
        if let Cancel::Accepted(_) = store::cancel(&state.db, *job, &audit).await? {
            cancelled += 1;
        }
    }
    state
        .broker
        .broadcast_cancels(state.config.amqp.publish_timeout)
        .await;
    audit.logged(cancelled);
    tracing::info!(workflow.id = %id, cancelled, "workflow cancel accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(workflow(&state, id, &caller).await?),
    ))
}
