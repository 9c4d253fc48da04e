//! `/jobs`: accept, read, list and cancel jobs.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use jobs_contract::messages::ControlMessage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::amqp::{Outgoing, producer_span};
use shared::telemetry::propagation;
use tracing::Instrument as _;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::state::Status;
use crate::store::{self, Cancel, Cursor, Job};

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

/// The routes, each documented where it is registered.
pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read))
        .routes(routes!(cancel))
}

/// A job to run. In the OpenAPI document this is a `oneOf` by `kind`, each with its payload's
/// schema from the contract (see `openapi.rs`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateJob {
    /// The kind of job.
    kind: String,
    /// The kind's input.
    #[schema(value_type = Object)]
    payload: Value,
}

/// Accepts a job. The 202 means the job is committed to PostgreSQL and will run, even if
/// RabbitMQ is down right now.
#[utoipa::path(post, path = "/jobs", tag = "jobs", operation_id = "createJob", request_body = CreateJob, responses(
    (status = 202, description = "accepted; `Location` names the job", body = Job),
    (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
    (status = 413, description = "body over the limit", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "not JSON", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "unknown kind or invalid payload", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn create(
    State(state): State<AppState>,
    body: Result<Json<CreateJob>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(req) = body?;
    if !state.kinds.contains(&req.kind) {
        let known: Vec<_> = state.kinds.names().collect();
        return Err(ApiError::Unprocessable(format!(
            "unknown kind {:?}; known kinds: {}",
            req.kind,
            known.join(", ")
        )));
    }
    state
        .kinds
        .validate(&req.kind, &req.payload)
        .map_err(|e| ApiError::Unprocessable(format!("invalid payload for {}: {e}", req.kind)))?;

    let span = tracing::Span::current();
    let trace_id = propagation::trace_id(&span).unwrap_or_default();
    let traceparent = propagation::traceparent(&span);
    let job = store::insert(
        &state.db,
        &req.kind,
        &req.payload,
        &trace_id,
        traceparent.as_deref(),
    )
    .await?;
    // Committed: from here the relay owns publishing it.
    state.broker.wake_relay.notify_one();
    metrics::counter!("jobstack_jobs_created_total", "kind" => job.kind.clone()).increment(1);
    tracing::info!(job.id = %job.id, job.kind = %job.kind, "job accepted");
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/jobs/{}", job.id)) {
        headers.insert(header::LOCATION, v);
    }
    Ok((StatusCode::ACCEPTED, headers, Json(job)))
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::BadRequest(format!("{raw:?} is not a job id (a UUID)")))
}

/// One job.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", operation_id = "getJob", params(("id" = Uuid, Path, description = "job id")), responses(
    (status = 200, body = Job),
    (status = 400, description = "malformed id", body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = parse_id(&id)?;
    store::get(&state.db, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
}

/// Filters and paging for the job list.
#[derive(Debug, Deserialize, IntoParams)]
pub(super) struct ListQuery {
    /// Only jobs in this status.
    status: Option<String>,
    /// Only jobs of this kind.
    kind: Option<String>,
    /// Page size, 1–100 (default 20).
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobPage {
    items: Vec<Job>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Lists jobs, newest first, with cursor pagination.
#[utoipa::path(get, path = "/jobs", tag = "jobs", operation_id = "listJobs", params(ListQuery), responses(
    (status = 200, body = JobPage),
    (status = 400, description = "bad filter, limit or cursor", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(q) = query?;
    let status = q
        .status
        .map(|s| {
            Status::parse(&s).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "unknown status {s:?}; expected one of {}",
                    Status::ALL.map(Status::as_str).join(", ")
                ))
            })
        })
        .transpose()?;
    if let Some(k) = &q.kind
        && !state.kinds.contains(k)
    {
        return Err(ApiError::BadRequest(format!("unknown kind {k:?}")));
    }
    let limit = match q.limit {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit must be a number from 1 to {MAX_LIMIT}"))
            })?,
    };
    let cursor = q
        .cursor
        .map(|c| Cursor::decode(&c).ok_or_else(|| ApiError::BadRequest("malformed cursor".into())))
        .transpose()?;
    let (items, next) = store::list(&state.db, status, q.kind.as_deref(), cursor, limit).await?;
    Ok(Json(JobPage {
        items,
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// Cancels a job: a queued job is cancelled at once; a running one stops at its next step.
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs", operation_id = "cancelJob", params(("id" = Uuid, Path, description = "job id")), responses(
    (status = 202, description = "it will be (or is) cancelled", body = Job),
    (status = 400, description = "malformed id", body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "already finished", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let job = match store::cancel(&state.db, id).await? {
        Cancel::NotFound => return Err(ApiError::NotFound(format!("no job {id}"))),
        Cancel::AlreadyFinal(job) => {
            return Err(ApiError::Conflict(format!(
                "job {id} already {}",
                job.status
            )));
        }
        Cancel::Accepted(job) => job,
    };
    broadcast_cancel(&state, id).await;
    tracing::info!(job.id = %id, status = %job.status, "cancel accepted");
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Tells every worker; best effort, since the row already records the request and a job that
/// was not running is cancelled in PostgreSQL already.
async fn broadcast_cancel(state: &AppState, id: Uuid) {
    let Some(publisher) = state.broker.publisher() else {
        tracing::warn!(job.id = %id, "RabbitMQ unavailable; a running job will finish its attempt");
        return;
    };
    let exchange = state.config.amqp.topology.control_exchange();
    let body = serde_json::to_vec(&ControlMessage::Cancel { job_id: id }).expect("serializes");
    let span = producer_span(&exchange, "", &id.to_string());
    let msg = Outgoing::new(&exchange, "", body, &id.to_string(), &span);
    if let Err(e) = publisher.publish(msg).instrument(span).await {
        // Returned as unroutable means no worker is running: nothing to stop.
        tracing::warn!(job.id = %id, error = %e, "cancel broadcast not delivered");
    }
}
