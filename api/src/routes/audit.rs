//! `GET /audit`: the audit trail, newest first.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::store::audit::{self as store, AuditRow};

/// The routes, each documented where it is registered.
pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// One recorded action.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditEntry {
    /// Its place in the trail (newer is higher).
    id: i64,
    /// When it took effect.
    at: DateTime<Utc>,
    /// Who: the key's client name.
    actor: String,
    /// With which role.
    role: String,
    /// With which key.
    key_id: Option<Uuid>,
    /// What, e.g. `job.cancel`, `jobs.redrive`, `kind.pause`, `schedule.create`, `key.revoke`.
    action: String,
    /// To what: a job or workflow id, a kind, a schedule's name, a key's id, a filter.
    target: String,
    /// The jobs it changed.
    jobs: Vec<Uuid>,
    /// The rest (a filter, a new setting).
    #[schema(value_type = Object)]
    detail: serde_json::Value,
    /// The request's trace id: its spans and log lines carry the same.
    trace_id: String,
}

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> Self {
        Self {
            id: r.id,
            at: r.at,
            actor: r.actor,
            role: r.role,
            key_id: r.key_id,
            action: r.action,
            target: r.target,
            jobs: r.jobs,
            detail: r.detail,
            trace_id: r.trace_id,
        }
    }
}

/// Filters and paging for the trail.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// Only this actor's actions.
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    actor: Option<String>,
    /// Only this action.
    #[param(pattern = r"^[a-z]{1,16}\.[a-z]{1,16}$")]
    action: Option<String>,
    /// Entries before this id (the last `id` of the previous page).
    #[param(minimum = 1)]
    before: Option<i64>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

/// The audit trail, newest first.
#[utoipa::path(get, path = "/audit", tag = "audit", operation_id = "listAudit", params(AuditQuery),
    responses(
    (status = 200, description = "entries, newest first", body = Vec<AuditEntry>),
    (status = 400, description = "bad filter or limit", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn list(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be from 1 to 200".into()));
    }
    if q.actor
        .as_deref()
        .is_some_and(|a| !crate::access::keys::valid_name(a))
    {
        return Err(ApiError::BadRequest(
            "actor: an API key's name is 1-64 of A-Z a-z 0-9 . _ -".into(),
        ));
    }
    let action_shape = |a: &str| {
        a.split_once('.').is_some_and(|(x, y)| {
            [x, y]
                .iter()
                .all(|p| (1..=16).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_lowercase()))
        })
    };
    if q.action.as_deref().is_some_and(|a| !action_shape(a)) {
        return Err(ApiError::BadRequest(
            "action: `<object>.<verb>`, e.g. job.cancel".into(),
        ));
    }
    if q.before.is_some_and(|b| b < 1) {
        return Err(ApiError::BadRequest("before must be at least 1".into()));
    }
    let rows = store::list(
        &state.db,
        q.actor.as_deref(),
        q.action.as_deref(),
        q.before,
        limit,
    )
    .await?;
    Ok(Json(rows.into_iter().map(AuditEntry::from).collect()))
}
