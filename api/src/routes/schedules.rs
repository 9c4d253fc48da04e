//! `/schedules`: create, read, change, pause, resume and delete periodic schedules. Bad input is
//! a 422 naming the field and stores nothing; a schedule declared in the service's code can be
//! paused and resumed here, and changed only in the code.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::access::{Audit, Caller};
use crate::error::{ApiError, Problem};
use crate::routes::body::{Body, Named};
use crate::schedules::{Invalid, Missed, ScheduleRequest};
use crate::store::schedules::{self as store, Changed, ScheduleRow};

/// The routes, each documented where it is registered.
pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read, change, delete))
        .routes(routes!(pause))
        .routes(routes!(resume))
}

/// A periodic schedule.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Schedule {
    name: String,
    kind: String,
    payload: Value,
    payload_version: u32,
    /// Its cron expression (or `interval_secs`).
    cron: Option<String>,
    /// Its interval (or `cron`).
    interval_secs: Option<u64>,
    time_zone: String,
    missed: Missed,
    enabled: bool,
    /// Declared in the service's code: it can be paused and resumed here, changed only there.
    declared: bool,
    /// When it fires next; `null` while paused.
    next_fire_at: Option<DateTime<Utc>>,
    /// When it last made a job.
    last_fire_at: Option<DateTime<Utc>>,
    /// Jobs it made (`GET /jobs?schedule=` lists them).
    fires: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<ScheduleRow> for Schedule {
    fn from(row: ScheduleRow) -> Self {
        Self {
            missed: row.missed(),
            next_fire_at: row.enabled.then_some(row.next_fire_at),
            name: row.name,
            kind: row.kind,
            payload: row.payload,
            payload_version: row.payload_version.max(1) as u32,
            cron: row.cron,
            interval_secs: row.interval_secs.map(|i| i.max(0) as u64),
            time_zone: row.time_zone,
            enabled: row.enabled,
            declared: row.declared,
            last_fire_at: row.last_fire_at,
            fires: row.fires,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// A change to a schedule's timing: the fields given replace the schedule's; `cron` replaces
/// `interval_secs` and the other way round. A new timing, zone or a resume counts the next fire
/// time from now. What it runs (kind and payload) is its identity: to change it, make another
/// schedule.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchedulePatch {
    /// A new cron expression (it replaces `interval_secs`).
    cron: Option<String>,
    /// A new interval (it replaces `cron`).
    #[schema(minimum = 1, maximum = 31622400)]
    interval_secs: Option<u64>,
    /// A new IANA time zone for the cron expression.
    time_zone: Option<String>,
    /// A new missed-fire policy.
    missed: Option<Missed>,
    /// Pause (`false`) or resume (`true`).
    enabled: Option<bool>,
}

impl Named for ScheduleRequest {
    const WHAT: &'static str = "schedule";
}

impl Named for SchedulePatch {
    const WHAT: &'static str = "schedule change";
}

fn unprocessable(e: Invalid) -> ApiError {
    ApiError::Unprocessable(e.to_string())
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("no schedule {name:?}"))
}

/// A name from the path: one no schedule may have is not looked up (PostgreSQL refuses some
/// bytes, such as NUL, in text).
fn named(name: &str) -> Result<&str, ApiError> {
    crate::schedules::check_name(name).map_err(|_| not_found(name))?;
    Ok(name)
}

fn moved(name: &str) -> ApiError {
    ApiError::Conflict(format!(
        "schedule {name:?} changed while this request read it (a pause, a resume or another change): read it and ask again"
    ))
}

fn declared(name: &str) -> ApiError {
    ApiError::Conflict(format!(
        "schedule {name:?} is declared in the service's code: change it there (it can be paused and resumed here)"
    ))
}

/// Creates a schedule. Its first fire is the first time its cron expression matches after now,
/// or one interval from now.
#[utoipa::path(post, path = "/schedules", tag = "schedules", operation_id = "createSchedule",
    request_body = ScheduleRequest,
    responses(
    (status = 201, description = "created", body = Schedule),
    (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "a schedule of that name exists", body = Problem, content_type = "application/problem+json"),
    (status = 413, description = "body over `BODY_LIMIT_BYTES`", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "not `application/json`", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "a field is invalid (the detail names it): name, unknown kind, payload, cron expression, interval, time zone", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<ScheduleRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let new = req.check(&state.kinds, Utc::now()).map_err(unprocessable)?;
    let audit = Audit::new(&caller, "schedule.create", new.name.clone())
        .with(serde_json::json!({ "kind": new.kind, "cron": new.cron, "interval_secs": new.interval_secs }));
    let Some(row) = store::create(&state.db, &new, &audit).await? else {
        return Err(ApiError::Conflict(format!(
            "a schedule named {:?} exists",
            new.name
        )));
    };
    state.schedules_changed.notify_one();
    audit.logged(0);
    tracing::info!(schedule = %row.name, next_fire_at = %row.next_fire_at, "schedule created");
    Ok((StatusCode::CREATED, Json(Schedule::from(row))))
}

/// Every schedule, by name.
#[utoipa::path(get, path = "/schedules", tag = "schedules", operation_id = "listSchedules",
    responses(
    (status = 200, description = "every schedule, by name", body = Vec<Schedule>),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Vec<Schedule>>, ApiError> {
    let rows = store::list(&state.db).await?;
    Ok(Json(rows.into_iter().map(Schedule::from).collect()))
}

/// One schedule.
#[utoipa::path(get, path = "/schedules/{name}", tag = "schedules", operation_id = "getSchedule",
    params(("name" = String, Path, description = "schedule name", example = "nightly-hash")),
    responses(
    (status = 200, description = "the schedule", body = Schedule),
    (status = 404, description = "no such schedule", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn read(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    let row = store::get(&state.db, named(&name)?)
        .await?
        .ok_or_else(|| not_found(&name))?;
    Ok(Json(Schedule::from(row)))
}

/// Changes a schedule made through the api.
#[utoipa::path(patch, path = "/schedules/{name}", tag = "schedules", operation_id = "changeSchedule",
    params(("name" = String, Path, description = "schedule name", example = "nightly-hash")),
    request_body = SchedulePatch,
    responses(
    (status = 200, description = "changed", body = Schedule),
    (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "no such schedule", body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "declared in the service's code, or changed while this request read it (read it and ask again)", body = Problem, content_type = "application/problem+json"),
    (status = 413, description = "body over `BODY_LIMIT_BYTES`", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "not `application/json`", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "a field is invalid (the detail names it)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn change(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(patch): Body<SchedulePatch>,
) -> Result<Json<Schedule>, ApiError> {
    let row = store::get(&state.db, named(&name)?)
        .await?
        .ok_or_else(|| not_found(&name))?;
    if row.declared {
        return Err(declared(&name));
    }
    let (req, retimed) = merge(&row, patch);
    let new = req.check(&state.kinds, Utc::now()).map_err(unprocessable)?;
    let audit = Audit::new(&caller, "schedule.change", name.clone()).with(serde_json::json!({
        "cron": new.cron, "interval_secs": new.interval_secs, "time_zone": new.time_zone,
        "enabled": new.enabled,
    }));
    let row = match store::replace(&state.db, &new, retimed, row.updated_at, &audit).await? {
        Changed::Done(row) => *row,
        Changed::NotFound => return Err(not_found(&name)),
        Changed::Declared => return Err(declared(&name)),
        Changed::Moved => return Err(moved(&name)),
    };
    state.schedules_changed.notify_one();
    audit.logged(0);
    tracing::info!(schedule = %name, retimed, "schedule changed");
    Ok(Json(Schedule::from(row)))
}

/// `row` with `patch` applied, and whether its next fire time is to be counted from now.
fn merge(row: &ScheduleRow, patch: SchedulePatch) -> (ScheduleRequest, bool) {
    let (cron, interval_secs) = match (patch.cron, patch.interval_secs) {
        (None, None) => (row.cron.clone(), row.interval_secs.map(|i| i.max(0) as u64)),
        given => given,
    };
    let req = ScheduleRequest {
        name: row.name.clone(),
        kind: row.kind.clone(),
        payload: row.payload.clone(),
        payload_version: Some(row.payload_version.max(1) as u32),
        time_zone: Some(patch.time_zone.unwrap_or_else(|| row.time_zone.clone())),
        missed: Some(patch.missed.unwrap_or(row.missed())),
        enabled: Some(patch.enabled.unwrap_or(row.enabled)),
        cron,
        interval_secs,
    };
    // A zone moves a cron expression's fire times, not an interval's.
    let rezoned = req.cron.is_some() && req.time_zone.as_deref() != Some(row.time_zone.as_str());
    let retimed = req.cron != row.cron
        || req.interval_secs != row.interval_secs.map(|i| i.max(0) as u64)
        || rezoned
        || (req.enabled == Some(true) && !row.enabled);
    (req, retimed)
}

/// Deletes a schedule made through the api. The jobs it made stay.
#[utoipa::path(delete, path = "/schedules/{name}", tag = "schedules", operation_id = "deleteSchedule",
    params(("name" = String, Path, description = "schedule name", example = "nightly-hash")),
    responses(
    (status = 204, description = "deleted"),
    (status = 404, description = "no such schedule", body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "declared in the service's code", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let audit = Audit::new(&caller, "schedule.delete", name.clone());
    match store::delete(&state.db, named(&name)?, &audit).await? {
        Changed::Done(_) => {
            state.schedules_changed.notify_one();
            audit.logged(0);
            tracing::info!(schedule = %name, "schedule deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Changed::NotFound => Err(not_found(&name)),
        Changed::Declared => Err(declared(&name)),
        Changed::Moved => Err(moved(&name)),
    }
}

/// Pauses a schedule: it fires nothing until resumed.
#[utoipa::path(post, path = "/schedules/{name}/pause", tag = "schedules", operation_id = "pauseSchedule",
    params(("name" = String, Path, description = "schedule name", example = "nightly-hash")),
    responses(
    (status = 200, description = "paused (or already paused)", body = Schedule),
    (status = 404, description = "no such schedule", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    let audit = Audit::new(&caller, "schedule.pause", name.clone());
    let row = store::set_enabled(&state.db, named(&name)?, None, &audit)
        .await?
        .ok_or_else(|| not_found(&name))?;
    state.schedules_changed.notify_one();
    audit.logged(0);
    tracing::info!(schedule = %name, "schedule paused");
    Ok(Json(Schedule::from(row)))
}

/// Resumes a paused schedule from its next fire time after now: what it passed while paused is
/// not run.
#[utoipa::path(post, path = "/schedules/{name}/resume", tag = "schedules", operation_id = "resumeSchedule",
    params(("name" = String, Path, description = "schedule name", example = "nightly-hash")),
    responses(
    (status = 200, description = "resumed (or already running)", body = Schedule),
    (status = 404, description = "no such schedule", body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "it never fires again, or it changed while this request read it (ask again)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    let row = store::get(&state.db, named(&name)?)
        .await?
        .ok_or_else(|| not_found(&name))?;
    let next = row
        .timing()
        .ok()
        .and_then(|t| t.first(Utc::now()))
        .ok_or_else(|| ApiError::Conflict(format!("schedule {name:?} never fires again")))?;
    let audit = Audit::new(&caller, "schedule.resume", name.clone());
    let Some(row) =
        store::set_enabled(&state.db, &name, Some((next, row.updated_at)), &audit).await?
    else {
        return Err(match store::get(&state.db, &name).await? {
            Some(_) => moved(&name),
            None => not_found(&name),
        });
    };
    state.schedules_changed.notify_one();
    audit.logged(0);
    tracing::info!(schedule = %name, next_fire_at = %row.next_fire_at, "schedule resumed");
    Ok(Json(Schedule::from(row)))
}
