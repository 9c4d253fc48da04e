//! `POST /jobs/{id}/cancel`, `POST /jobs/{id}/redrive` and `POST /jobs/redrive`: stopping a job,
//! and running failed or cancelled ones again.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::ToSchema;

use super::parse_id;
use super::view::{Job, Redriven};
use crate::AppState;
use crate::access::{Audit, Caller};
use crate::error::{ApiError, Problem};
use crate::lifecycle::Status;
use crate::routes::body::{Body, Named};
use crate::store::{self, Cancel, JobRow, Redrive, RedriveOne};

/// Most jobs one bulk re-drive takes.
const MAX_REDRIVE: u32 = 1000;

/// Cancels a job: a scheduled or queued job is cancelled at once and never reaches a handler,
/// whenever workers start; a running one stops at its next step.
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs", operation_id = "cancelJob",
    params(("id" = uuid::Uuid, Path, description = "job id")),
    responses(
    (status = 202, description = "it will be (or is) cancelled", body = Job),
    (status = 400, description = "malformed id", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "no such job", body = Problem, content_type = "application/problem+json"),
    (status = 408, description = "not answered within `REQUEST_TIMEOUT_SECS`; it may have taken effect all the same: read the job", body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "already finished", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let audit = Audit::new(&caller, "job.cancel", id.to_string());
    let job = match store::cancel(&state.db, id, &audit).await? {
        Cancel::NotFound => return Err(ApiError::NotFound(format!("no job {id}"))),
        Cancel::AlreadyFinal(job) => {
            return Err(ApiError::Conflict(format!(
                "job {id} already {}",
                job.status
            )));
        }
        Cancel::Accepted(job) => job,
    };
    // Committed: the relay broadcasts it if a worker may hold the job.
    state
        .broker
        .broadcast_cancels(state.config.amqp.publish_timeout)
        .await;
    audit.logged(1);
    tracing::info!(job.id = %id, status = %job.status, "cancel accepted");
    Ok((StatusCode::ACCEPTED, Json(Job::from(job))))
}

/// Re-drives a `failed` (dead-lettered) or `cancelled` job: it runs again as its next
/// generation, attempts from 1. How the previous generation ended is kept in the job's
/// `history`; a dead-lettered message stays in the dead-letter queue as a record, and is never
/// run again.
#[utoipa::path(post, path = "/jobs/{id}/redrive", tag = "jobs", operation_id = "redriveJob",
    params(("id" = uuid::Uuid, Path, description = "job id")),
    responses(
    (status = 202, description = "queued again, as its next generation", body = Job),
    (status = 400, description = "malformed id", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "no such job", body = Problem, content_type = "application/problem+json"),
    (status = 408, description = "not answered within `REQUEST_TIMEOUT_SECS`; it may have taken effect all the same: read the job", body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "not failed or cancelled; its cancel not yet delivered to the workers; or another request is re-driving or cancelling it right now (ask again)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn redrive(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let audit = Audit::new(&caller, "job.redrive", id.to_string());
    let job = match store::redrive_one(&state.db, id, &audit).await? {
        RedriveOne::NotFound => return Err(ApiError::NotFound(format!("no job {id}"))),
        RedriveOne::Refused(job) => {
            return Err(ApiError::Conflict(format!(
                "job {id} is {}; only failed or cancelled jobs can be re-driven",
                job.status
            )));
        }
        RedriveOne::CancelPending(_) => {
            return Err(ApiError::Conflict(format!(
                "job {id}'s cancel is not yet delivered to the workers (is RabbitMQ down?); \
                 re-drive it once it is"
            )));
        }
        RedriveOne::Busy(_) => {
            return Err(ApiError::Conflict(format!(
                "another request is re-driving or cancelling job {id} right now; \
                 read it, and ask again if it is still failed or cancelled"
            )));
        }
        RedriveOne::Requeued(job) => job,
    };
    state.broker.wake_relay.notify_one();
    audit.logged(1);
    log_redrive(&job);
    Ok((StatusCode::ACCEPTED, Json(Job::from(job))))
}

/// The statuses a re-drive takes.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Redrivable {
    /// Failed jobs (dead-lettered).
    Failed,
    /// Cancelled jobs.
    Cancelled,
}

impl From<Redrivable> for Status {
    fn from(s: Redrivable) -> Self {
        match s {
            Redrivable::Failed => Status::Failed,
            Redrivable::Cancelled => Status::Cancelled,
        }
    }
}

/// Which jobs a bulk re-drive takes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedriveMany {
    /// Jobs in this status.
    status: Redrivable,
    /// Only jobs of this kind.
    kind: Option<String>,
    /// At most this many, most recently finished first (default 100).
    #[schema(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

impl Named for RedriveMany {
    const WHAT: &'static str = "re-drive request";
}

/// Re-drives failed or cancelled jobs in bulk, for an incident: up to `limit` of them, of a
/// kind if given. Run it again until `requeued` is 0 to take them all.
#[utoipa::path(post, path = "/jobs/redrive", tag = "jobs", operation_id = "redriveJobs",
    request_body = RedriveMany,
    responses(
    (status = 200, description = "how many were queued again", body = Redriven),
    (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
    (status = 408, description = "not answered within `REQUEST_TIMEOUT_SECS`; some jobs may have been queued again all the same", body = Problem, content_type = "application/problem+json"),
    (status = 413, description = "body over the limit", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "not JSON", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "bad status, kind or limit", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn redrive_many(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<RedriveMany>,
) -> Result<Json<Redriven>, ApiError> {
    if let Some(k) = &req.kind
        && !state.kinds.contains(k)
    {
        return Err(ApiError::Unprocessable(format!("unknown kind {k:?}")));
    }
    let limit = req.limit.unwrap_or(100);
    if !(1..=MAX_REDRIVE).contains(&limit) {
        return Err(ApiError::Unprocessable(format!(
            "limit must be from 1 to {MAX_REDRIVE}"
        )));
    }
    let status = Status::from(req.status);
    let which = Redrive::Many {
        status,
        kind: req.kind.as_deref(),
        limit,
    };
    let target = format!(
        "status={status} kind={}",
        req.kind.as_deref().unwrap_or("*")
    );
    let audit = Audit::new(&caller, "jobs.redrive", target)
        .with(serde_json::json!({ "status": status, "kind": req.kind, "limit": limit }));
    let jobs = store::redrive(&state.db, which, &audit).await?;
    if !jobs.is_empty() {
        state.broker.wake_relay.notify_one();
        audit.logged(jobs.len());
    }
    jobs.iter().for_each(log_redrive);
    tracing::info!(requeued = jobs.len(), %status, kind = req.kind.as_deref().unwrap_or("*"), "bulk re-drive");
    Ok(Json(Redriven {
        requeued: jobs.len(),
        ids: jobs.iter().map(|j| j.id).collect(),
    }))
}

/// The log line and metric of a re-drive, with how the previous generation ended.
fn log_redrive(job: &JobRow) {
    let previous = job.history.last();
    let error = previous.and_then(|p| p.error.as_deref()).unwrap_or("");
    let status = previous.map_or("", |p| p.status.as_str());
    tracing::info!(job.id = %job.id, job.kind = %job.kind, generation = job.generation, previous_status = status, previous_error = error, "job re-driven");
    metrics::counter!("jobstack_jobs_redriven_total", "kind" => job.kind.clone()).increment(1);
}
