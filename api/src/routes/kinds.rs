//! `/kinds`: each kind's flow control (its limits, whether it is paused, what runs and what
//! waits), and pausing and resuming a kind. Paused, a kind's accepted jobs stay in the outbox
//! and its running ones finish; resumed, they flow again, in priority order.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Extension, Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::access::{Audit, Caller};
use crate::error::{ApiError, Problem};
use crate::store::flow::{self as store, Usage};

/// The routes, each documented where it is registered.
pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(pause))
        .routes(routes!(resume))
}

/// A kind's flow control right now.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KindStatus {
    /// The kind.
    pub(crate) kind: String,
    /// Whether it is paused, and since when.
    pub(crate) paused_at: Option<DateTime<Utc>>,
    /// Most of its jobs running at once, across every worker.
    pub(crate) concurrency: Option<u32>,
    /// Most of one key's jobs running at once.
    pub(crate) concurrency_per_key: Option<u32>,
    /// Most jobs started per period (`<count>/<seconds>s`).
    pub(crate) rate: Option<String>,
    /// Most of one key's jobs started per period.
    pub(crate) rate_per_key: Option<String>,
    /// What makes two of its jobs the same job: payload fields (empty: the whole payload).
    pub(crate) unique_fields: Option<Vec<String>>,
    /// Jobs holding a concurrency slot (published, not ended).
    pub(crate) running: i64,
    /// Due jobs waiting: `concurrency` (no free slot), `rate` (a turn reserved), `paused`.
    pub(crate) held: HashMap<String, i64>,
    /// The keys with the most jobs waiting, most first (at most 10).
    pub(crate) top_keys: Vec<KeyHeld>,
}

/// A key's waiting jobs.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyHeld {
    /// The `concurrency_key` (`""`: jobs without one).
    pub(crate) key: String,
    /// Its jobs waiting.
    pub(crate) held: i64,
}

/// Every kind's (or `only` one's) flow control right now (also the console's kinds page).
pub(crate) async fn status(
    state: &AppState,
    only: Option<&str>,
) -> Result<Vec<KindStatus>, ApiError> {
    let paused: HashMap<String, DateTime<Utc>> =
        store::paused(&state.db).await?.into_iter().collect();
    let mut usage = store::usage(&state.db).await?;
    let mut keys = store::top_keys(&state.db).await?;
    Ok(state
        .flow
        .iter()
        .filter(|(kind, _)| only.is_none_or(|o| o == *kind))
        .map(|(kind, flow)| {
            let u = usage.remove(kind).unwrap_or_else(Usage::default);
            KindStatus {
                kind: kind.to_owned(),
                paused_at: paused.get(kind).copied(),
                concurrency: flow.limits.concurrency,
                concurrency_per_key: flow.limits.concurrency_per_key,
                rate: flow.limits.rate.map(|r| r.to_string()),
                rate_per_key: flow.limits.rate_per_key.map(|r| r.to_string()),
                unique_fields: flow.unique.as_ref().map(|u| u.fields.clone()),
                running: u.running,
                held: u.held,
                top_keys: keys
                    .remove(kind)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(key, held)| KeyHeld { key, held })
                    .collect(),
            }
        })
        .collect())
}

fn known(state: &AppState, kind: &str) -> Result<(), ApiError> {
    if state.kinds.contains(kind) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("no kind {kind:?}")))
    }
}

/// Every kind's limits, pause and what runs and waits.
#[utoipa::path(get, path = "/kinds", tag = "kinds", operation_id = "listKinds",
    responses(
    (status = 200, description = "every kind", body = Vec<KindStatus>),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Vec<KindStatus>>, ApiError> {
    Ok(Json(status(&state, None).await?))
}

/// Pauses a kind: its accepted jobs wait in PostgreSQL (also those accepted from now on), its
/// running ones finish. Jobs the relay had already handed to the broker still run.
#[utoipa::path(post, path = "/kinds/{kind}/pause", tag = "kinds", operation_id = "pauseKind",
    params(("kind" = String, Path, description = "a job kind", example = "hash")),
    responses(
    (status = 200, description = "paused (or already paused)", body = KindStatus),
    (status = 404, description = "no such kind", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(kind): Path<String>,
) -> Result<Json<KindStatus>, ApiError> {
    known(&state, &kind)?;
    let audit = Audit::new(&caller, "kind.pause", kind.clone());
    if store::pause(&state.db, &kind, &audit).await? {
        audit.logged(0);
        tracing::info!(job.kind = %kind, "kind paused");
    }
    one(&state, &kind).await
}

/// Resumes a paused kind: its waiting jobs flow again, highest priority first.
#[utoipa::path(post, path = "/kinds/{kind}/resume", tag = "kinds", operation_id = "resumeKind",
    params(("kind" = String, Path, description = "a job kind", example = "hash")),
    responses(
    (status = 200, description = "resumed (or was not paused)", body = KindStatus),
    (status = 404, description = "no such kind", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(kind): Path<String>,
) -> Result<Json<KindStatus>, ApiError> {
    known(&state, &kind)?;
    let audit = Audit::new(&caller, "kind.resume", kind.clone());
    if store::resume(&state.db, &kind, &audit).await? {
        audit.logged(0);
        tracing::info!(job.kind = %kind, "kind resumed");
    }
    state.broker.wake_relay.notify_one();
    one(&state, &kind).await
}

async fn one(state: &AppState, kind: &str) -> Result<Json<KindStatus>, ApiError> {
    let mut all = status(state, Some(kind)).await?;
    all.pop()
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no kind {kind:?}")))
}
