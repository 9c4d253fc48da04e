//! `/keys`: API keys, made and revoked by an admin. A key's secret is in the answer that made
//! it and nowhere else.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::AppState;
use crate::access::{Audit, Caller, Role, keys};
use crate::error::{ApiError, Problem};
use crate::routes::body::{Body, Named};
use crate::store::keys::{self as store, KeyRow, NewKey, Revoked};

/// The routes, each documented where it is registered.
pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
}

/// A key to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyRequest {
    /// The client it speaks for: its jobs carry this name, and its quota counts under it.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "billing-service")]
    name: String,
    /// What it may do.
    role: Role,
    /// Seconds from now until it stops working (1 minute to 10 years); none: until revoked.
    #[schema(minimum = 60, maximum = 315360000)]
    expires_in_secs: Option<u64>,
    /// Its own submit rate per second (default `CLIENT_SUBMIT_RATE`).
    #[schema(minimum = 0.001, maximum = 1000000.0)]
    submit_rate: Option<f64>,
    /// Its own cap on requests at once (default `CLIENT_MAX_IN_FLIGHT`).
    #[schema(minimum = 1, maximum = 100000)]
    max_in_flight: Option<u32>,
}

impl Named for KeyRequest {
    const WHAT: &'static str = "key";
}

/// A key, as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Key {
    /// Its id.
    id: Uuid,
    /// The client it speaks for.
    name: String,
    /// What it may do.
    role: Role,
    /// The secret's first characters, to tell keys apart.
    hint: String,
    /// Its own submit rate, if it has one.
    submit_rate: Option<f64>,
    /// Its own in-flight cap, if it has one.
    max_in_flight: Option<i32>,
    /// Who made it.
    created_by: String,
    /// When.
    created_at: DateTime<Utc>,
    /// When it stops working, if it does.
    expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    revoked_at: Option<DateTime<Utc>>,
}

impl From<KeyRow> for Key {
    fn from(r: KeyRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            role: r.role,
            hint: r.hint,
            submit_rate: r.submit_rate,
            max_in_flight: r.max_in_flight,
            created_by: r.created_by,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// A key just made, with its secret: shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NewKeyAnswer {
    /// The key.
    #[serde(flatten)]
    key: Key,
    /// The secret to send as `Authorization: Bearer <secret>`. It is not stored and cannot be
    /// shown again.
    #[schema(pattern = "^jsk_[0-9a-f]{64}$")]
    secret: String,
}

/// Makes an API key. Its secret is in this answer only.
#[utoipa::path(post, path = "/keys", tag = "keys", operation_id = "createKey",
    request_body = KeyRequest,
    responses(
    (status = 201, description = "made; `secret` is shown this once", body = NewKeyAnswer),
    (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
    (status = 413, description = "body over `BODY_LIMIT_BYTES`", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "not `application/json`", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "a field is invalid (the detail names it)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<KeyRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if !keys::valid_name(&req.name) {
        return Err(ApiError::Unprocessable(
            "name: 1-64 of A-Z a-z 0-9 . _ -".into(),
        ));
    }
    if req
        .expires_in_secs
        .is_some_and(|s| !(60..=315_360_000).contains(&s))
    {
        return Err(ApiError::Unprocessable(
            "expires_in_secs: must be from 60 (a minute) to 315360000 (ten years)".into(),
        ));
    }
    let expires_at = req
        .expires_in_secs
        .map(|s| Utc::now() + chrono::Duration::seconds(s as i64));
    if req.submit_rate.is_some_and(|r| !(0.001..=1e6).contains(&r)) {
        return Err(ApiError::Unprocessable(
            "submit_rate: must be from 0.001 to 1000000".into(),
        ));
    }
    if req
        .max_in_flight
        .is_some_and(|n| !(1..=100_000).contains(&n))
    {
        return Err(ApiError::Unprocessable(
            "max_in_flight: must be from 1 to 100000".into(),
        ));
    }
    let secret = keys::generate();
    let (digest, hint) = (keys::digest(&secret), keys::hint(&secret));
    let audit = Audit::new(&caller, "key.create", "");
    let row = store::create(
        &state.db,
        &NewKey {
            name: &req.name,
            role: req.role,
            digest: &digest,
            hint: &hint,
            submit_rate: req.submit_rate,
            max_in_flight: req.max_in_flight,
            expires_at,
            created_by: &caller.client,
        },
        Some(&audit),
    )
    .await?;
    Audit {
        target: row.id.to_string(),
        ..audit
    }
    .logged(0);
    Ok((
        StatusCode::CREATED,
        Json(NewKeyAnswer {
            key: row.into(),
            secret,
        }),
    ))
}

/// Every key, newest first, revoked and expired ones too.
#[utoipa::path(get, path = "/keys", tag = "keys", operation_id = "listKeys",
    responses(
    (status = 200, description = "every key, without secrets", body = Vec<Key>),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Vec<Key>>, ApiError> {
    let rows = store::list(&state.db).await?;
    Ok(Json(rows.into_iter().map(Key::from).collect()))
}

/// Revokes a key: it stops working at once on this replica and within seconds on the others,
/// and the console sessions it opened end.
#[utoipa::path(delete, path = "/keys/{id}", tag = "keys", operation_id = "revokeKey",
    params(("id" = uuid::Uuid, Path, description = "key id")),
    responses(
    (status = 204, description = "revoked (or was already)"),
    (status = 400, description = "malformed id", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "no such key", body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "the demo key, which `API_DEMO_KEY` owns: unset it instead", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable: try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a key id (a UUID)")))?;
    let audit = Audit::new(&caller, "key.revoke", id.to_string());
    match store::revoke(&state.db, id, &audit).await? {
        Revoked::NotFound => Err(ApiError::NotFound(format!("no key {id}"))),
        Revoked::Configured => Err(ApiError::Conflict(
            "this is the demo key of API_DEMO_KEY: unset the variable and restart instead".into(),
        )),
        Revoked::Already => Ok(StatusCode::NO_CONTENT),
        Revoked::Now => {
            state.guard.keys.forget();
            state.guard.quotas.forget();
            audit.logged(0);
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema's bound is exact, so the parse must be: serde_json's default float parsing is
    /// best-effort and read 1000000.0000000001 (the next double above the maximum, which a fuzzer
    /// sent) as 1000000, which then passed the bound; `float_roundtrip` reads it exactly.
    #[test]
    fn a_rate_just_over_the_maximum_is_read_as_over_it() {
        let req: KeyRequest = serde_json::from_str(
            r#"{"name": "x", "role": "admin", "submit_rate": 1000000.0000000001}"#,
        )
        .unwrap();
        assert!(req.submit_rate.unwrap() > 1e6, "{:?}", req.submit_rate);
    }
}
