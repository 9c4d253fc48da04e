//! `/jobs`: accept, read, list, cancel and re-drive jobs.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use chrono::Utc;
use jobs_contract::JobRequest;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::idempotency;
use crate::state::Status;
use crate::store::{self, Cancel, Cursor, Inserted, Job, NewJob, Redrive, RedriveOne};
use shared::telemetry::propagation;

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;
/// Most jobs one bulk re-drive takes.
const MAX_REDRIVE: u32 = 1000;

/// The routes, each documented where it is registered.
pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read))
        .routes(routes!(cancel))
        .routes(routes!(retry))
        .routes(routes!(retry_many))
}

/// Accepts a job. The 202 means the job is committed to PostgreSQL and will run, even if
/// RabbitMQ is down right now. The request body is a `CreateJob`: in the OpenAPI document a
/// `oneOf` by `kind`, each with its payload's schema from the contract (see `openapi.rs`).
#[utoipa::path(post, path = "/jobs", tag = "jobs", operation_id = "createJob",
    request_body(content = Object, description = "a `CreateJob`"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat a request safely: the same key with the same body answers with the job the first one created (for `IDEMPOTENCY_KEY_TTL`, 24 h by default), with `Idempotent-Replayed: true`. A Structured Field String (`\"...\"`) or bare printable ASCII, 1–255 characters.")),
    responses(
    (status = 202, description = "accepted (or replayed); `Location` names the job", body = Job),
    (status = 400, description = "malformed JSON or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
    (status = 413, description = "body over the limit", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "not JSON", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "unknown kind, invalid payload or schedule, or an Idempotency-Key already used with another body", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<JobRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let key = idempotency::key(&headers).map_err(ApiError::BadRequest)?;
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
    let schedule = req
        .schedule(Utc::now())
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;

    let span = tracing::Span::current();
    let trace_id = propagation::trace_id(&span).unwrap_or_default();
    let traceparent = propagation::traceparent(&span);
    let job = NewJob {
        kind: req.kind.clone(),
        payload: req.payload.clone(),
        schedule,
        trace_id,
        traceparent,
    };
    let (job, replayed) = match key {
        None => (state.committer.accept(job).await?, false),
        Some(key) => {
            let fingerprint = idempotency::fingerprint(&req);
            let key = store::Key {
                key: &key,
                fingerprint: &fingerprint,
                ttl: state.config.idempotency_ttl,
            };
            match store::insert_keyed(&state.db, &job, &key).await? {
                Inserted::Created(job) => {
                    state.broker.wake_relay.notify_one();
                    (job, false)
                }
                Inserted::Replayed(job) => (job, true),
                Inserted::KeyReused => {
                    return Err(ApiError::Unprocessable(
                        "this Idempotency-Key was already used with a different request body; \
                         use a new key for a new job"
                            .into(),
                    ));
                }
            }
        }
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/jobs/{}", job.id)) {
        headers.insert(header::LOCATION, v);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        tracing::info!(job.id = %job.id, job.kind = %job.kind, "job request replayed");
    } else {
        // Committed: from here the relay owns publishing it.
        metrics::counter!("jobstack_jobs_created_total", "kind" => job.kind.clone()).increment(1);
        tracing::info!(job.id = %job.id, job.kind = %job.kind, run_at = %job.run_at, "job accepted");
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

/// Cancels a job: a scheduled or queued job is cancelled at once and never reaches a handler,
/// whenever workers start; a running one stops at its next step.
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
    // Committed: the relay broadcasts it if a worker may hold the job.
    state.broker.wake_relay.notify_one();
    tracing::info!(job.id = %id, status = %job.status, "cancel accepted");
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Re-drives a `failed` (dead-lettered) or `cancelled` job: it runs again as a new series of
/// attempts. How the previous series ended is kept in the job's `history`; the dead-lettered
/// message stays in the dead-letter queue as a record, and is never run again.
#[utoipa::path(post, path = "/jobs/{id}/retry", tag = "jobs", operation_id = "retryJob", params(("id" = Uuid, Path, description = "job id")), responses(
    (status = 202, description = "queued again", body = Job),
    (status = 400, description = "malformed id", body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "not failed or cancelled, or its cancel not yet delivered", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let job = match store::redrive_one(&state.db, id).await? {
        RedriveOne::NotFound => return Err(ApiError::NotFound(format!("no job {id}"))),
        RedriveOne::Refused(job) => {
            return Err(ApiError::Conflict(format!(
                "job {id} is {}; only failed or cancelled jobs can be retried",
                job.status
            )));
        }
        RedriveOne::CancelPending(_) => {
            return Err(ApiError::Conflict(format!(
                "job {id}'s cancel is not yet delivered to the workers (is RabbitMQ down?); \
                 retry it once it is"
            )));
        }
        RedriveOne::Requeued(job) => job,
    };
    state.broker.wake_relay.notify_one();
    log_redrive(&job);
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Which jobs a bulk re-drive takes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryMany {
    /// `failed` or `cancelled`.
    status: String,
    /// Only jobs of this kind.
    kind: Option<String>,
    /// At most this many, most recently finished first: 1–1000 (default 100).
    limit: Option<u32>,
}

/// What a bulk re-drive did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Requeued {
    /// How many jobs were queued again.
    requeued: usize,
    /// Their ids.
    ids: Vec<Uuid>,
}

/// Re-drives failed or cancelled jobs in bulk, for an incident: up to `limit` of them, of a
/// kind if given. Run it again until `requeued` is 0 to take them all.
#[utoipa::path(post, path = "/jobs/retry", tag = "jobs", operation_id = "retryJobs", request_body = RetryMany, responses(
    (status = 200, description = "how many were queued again", body = Requeued),
    (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "bad status, kind or limit", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn retry_many(
    State(state): State<AppState>,
    body: Result<Json<RetryMany>, JsonRejection>,
) -> Result<Json<Requeued>, ApiError> {
    let Json(req) = body?;
    let status = Status::parse(&req.status)
        .filter(|s| store::REDRIVABLE.contains(s))
        .ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "status must be failed or cancelled, not {:?}",
                req.status
            ))
        })?;
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
    let which = Redrive::Many {
        status,
        kind: req.kind.as_deref(),
        limit,
    };
    let jobs = store::redrive(&state.db, which).await?;
    if !jobs.is_empty() {
        state.broker.wake_relay.notify_one();
    }
    jobs.iter().for_each(log_redrive);
    tracing::info!(requeued = jobs.len(), status = %req.status, kind = req.kind.as_deref().unwrap_or("*"), "bulk re-drive");
    Ok(Json(Requeued {
        requeued: jobs.len(),
        ids: jobs.iter().map(|j| j.id).collect(),
    }))
}

/// The log line of a re-drive, with the error it had.
fn log_redrive(job: &Job) {
    let previous = job.history.as_array().and_then(|h| h.last());
    let error = previous.and_then(|p| p["error"].as_str()).unwrap_or("");
    let status = previous.and_then(|p| p["status"].as_str()).unwrap_or("");
    tracing::info!(job.id = %job.id, job.kind = %job.kind, previous_status = status, previous_error = error, "job re-driven");
    metrics::counter!("jobstack_jobs_redriven_total", "kind" => job.kind.clone()).increment(1);
}
