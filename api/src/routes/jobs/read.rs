//! `GET /jobs/{id}` and `GET /jobs`: one job, or a page of them.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use serde::Deserialize;
use utoipa::IntoParams;

use super::parse_id;
use super::view::{Held, Job, JobPage};
use crate::AppState;
use crate::access::Caller;
use crate::error::{ApiError, Problem};
use crate::lifecycle::Status;
use crate::store::{self, Cursor};

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

/// One job.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", operation_id = "getJob",
    params(("id" = uuid::Uuid, Path, description = "job id")),
    responses(
    (status = 200, description = "the job", body = Job),
    (status = 400, description = "malformed id", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "no such job", body = Problem, content_type = "application/problem+json"),
    (status = 408, description = "not answered within `REQUEST_TIMEOUT_SECS`", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn read(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = parse_id(&id)?;
    // A submitter's view has only its own jobs: another client's is as absent as a missing one.
    let row = store::get(&state.db, id)
        .await?
        .filter(|row| {
            caller
                .only_own()
                .is_none_or(|own| row.client.as_deref() == Some(own))
        })
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    let mut job = Job::from(row);
    if !job.status.is_final() {
        job.held = store::held(&state.db, id)
            .await?
            .as_deref()
            .and_then(Held::parse);
    }
    Ok(Json(job))
}

/// Filters and paging for the job list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only jobs in this status.
    status: Option<Status>,
    /// Only jobs of this kind (one of the contract's kinds).
    kind: Option<String>,
    /// Only jobs made by this schedule's fires.
    #[param(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    schedule: Option<String>,
    /// Only jobs submitted by this client (an API key's name); a submitter sees only its own.
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    client: Option<String>,
    /// Only jobs of this workflow.
    workflow: Option<uuid::Uuid>,
    /// Only jobs created at or after this time (RFC 3339).
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Page size (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}_[0-9a-f]{32}$")]
    cursor: Option<String>,
}

/// A cursor as `next_cursor` writes it (the pattern above): whatever else `Cursor::decode` would
/// take, such as a hyphenated id, is refused like any string off the pattern.
fn cursor(raw: &str) -> Option<Cursor> {
    let (micros, id) = raw.split_once('_')?;
    let digits = (1..=18).contains(&micros.len()) && micros.bytes().all(|b| b.is_ascii_digit());
    let hex = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (digits && hex).then(|| Cursor::decode(raw)).flatten()
}

/// Lists jobs, newest first, with cursor pagination.
#[utoipa::path(get, path = "/jobs", tag = "jobs", operation_id = "listJobs", params(ListQuery),
    responses(
    (status = 200, description = "a page of jobs", body = JobPage),
    (status = 400, description = "bad filter, limit or cursor", body = Problem, content_type = "application/problem+json"),
    (status = 408, description = "not answered within `REQUEST_TIMEOUT_SECS`", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(q) = query?;
    if let Some(c) = &q.client
        && !crate::access::keys::valid_name(c)
    {
        return Err(ApiError::BadRequest(format!(
            "client {c:?}: an API key's name is 1-64 of A-Z a-z 0-9 . _ -"
        )));
    }
    if let Some(k) = &q.kind
        && !state.kinds.contains(k)
    {
        return Err(ApiError::BadRequest(format!("unknown kind {k:?}")));
    }
    if let Some(name) = &q.schedule {
        crate::schedules::check_name(name)
            .map_err(|e| ApiError::BadRequest(format!("schedule: {}", e.why)))?;
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be from 1 to {MAX_LIMIT}"
        )));
    }
    let cursor = q
        .cursor
        .map(|c| cursor(&c).ok_or_else(|| ApiError::BadRequest("malformed cursor".into())))
        .transpose()?;
    let filter = store::Filter {
        status: q.status,
        kind: q.kind.as_deref(),
        schedule: q.schedule.as_deref(),
        client: caller.only_own().or(q.client.as_deref()),
        workflow: q.workflow,
        since: q.since,
    };
    let (rows, next) = store::list(&state.db, filter, cursor, limit).await?;
    Ok(Json(JobPage {
        items: rows.into_iter().map(Job::from).collect(),
        next_cursor: next.map(|c| c.encode()),
    }))
}
