//! Who may do what. Every request to a documented route is checked against [`RULES`]: the route's
//! [`Access`], the caller's [`Role`] from its API key, and the caller's quota. One table both
//! enforces and documents: the OpenAPI document's `security` and 401/403 answers are written
//! from it (`routes::openapi`), and a route missing from it is refused to everyone.
//!
//! - [`keys`]: API keys: their secrets, digests, and the cache of verified ones.
//! - [`quota`]: per-client submit rates and in-flight caps, in memory, before the database.
//! - [`audit`]: the record every mutating action writes in its own transaction.
//! - [`cli`]: `api create-key`, for a deployment's first key.

pub mod audit;
pub mod cli;
pub mod keys;
pub mod quota;

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::problem;

pub use audit::Audit;
pub use keys::Keys;
pub use quota::Quotas;

/// What a key may do. Each role is named for its job, not ranked: a `submitter` submits and reads
/// its own jobs; a `viewer` reads everything and changes nothing; an `operator` reads, submits
/// and acts on jobs, kinds and schedules; an `admin` also manages keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Role {
    /// Submits jobs and workflows; reads only what it submitted.
    Submitter,
    /// Reads everything (jobs, schedules, workflows, kinds, the audit trail).
    Viewer,
    /// A viewer that also submits, cancels, re-drives, pauses kinds and manages schedules.
    Operator,
    /// An operator that also creates and revokes API keys.
    Admin,
}

impl Role {
    /// Every role, in the order the document lists them.
    pub const ALL: [Role; 4] = [Role::Submitter, Role::Viewer, Role::Operator, Role::Admin];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submitter => "submitter",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses [`Role::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role may use a route of `access`.
    pub fn may(self, access: Access) -> bool {
        use Role::*;
        match access {
            Access::Public => true,
            Access::Submit => matches!(self, Submitter | Operator | Admin),
            Access::ReadOwn => true,
            Access::Read => matches!(self, Viewer | Operator | Admin),
            Access::Operate => matches!(self, Operator | Admin),
            Access::Admin => self == Admin,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, no credential (probes, metrics, the document).
    Public,
    /// Creates jobs: submitter, operator, admin.
    Submit,
    /// Reads jobs or workflows: every role, a submitter only its own.
    ReadOwn,
    /// Reads everything else: viewer, operator, admin.
    Read,
    /// Changes jobs, kinds or schedules: operator, admin.
    Operate,
    /// Manages keys: admin.
    Admin,
}

impl Access {
    /// The roles this access admits, for the document.
    pub fn roles(self) -> Vec<Role> {
        Role::ALL.into_iter().filter(|r| r.may(self)).collect()
    }
}

/// Every route and what it asks. A documented route not listed here answers 403 to everyone
/// (and a unit test fails), so a new endpoint cannot ship open by mistake.
pub const RULES: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Access::Public),
    ("GET", "/readyz", Access::Public),
    ("GET", "/metrics", Access::Public),
    ("GET", "/openapi.json", Access::Public),
    ("POST", "/jobs", Access::Submit),
    ("GET", "/jobs", Access::ReadOwn),
    ("GET", "/jobs/{id}", Access::ReadOwn),
    ("POST", "/jobs/{id}/cancel", Access::Operate),
    ("POST", "/jobs/{id}/redrive", Access::Operate),
    ("POST", "/jobs/redrive", Access::Operate),
    ("POST", "/workflows", Access::Submit),
    ("GET", "/workflows", Access::ReadOwn),
    ("GET", "/workflows/{id}", Access::ReadOwn),
    ("POST", "/workflows/{id}/cancel", Access::Operate),
    ("GET", "/kinds", Access::Read),
    ("POST", "/kinds/{kind}/pause", Access::Operate),
    ("POST", "/kinds/{kind}/resume", Access::Operate),
    ("GET", "/schedules", Access::Read),
    ("POST", "/schedules", Access::Operate),
    ("GET", "/schedules/{name}", Access::Read),
    ("PATCH", "/schedules/{name}", Access::Operate),
    ("DELETE", "/schedules/{name}", Access::Operate),
    ("POST", "/schedules/{name}/pause", Access::Operate),
    ("POST", "/schedules/{name}/resume", Access::Operate),
    ("GET", "/audit", Access::Read),
    ("GET", "/keys", Access::Admin),
    ("POST", "/keys", Access::Admin),
    ("DELETE", "/keys/{id}", Access::Admin),
];

/// The access a route asks for; `None` for a route [`RULES`] does not list. HEAD is served by
/// a route's GET handler (axum), so it asks what GET asks. A scan of a few dozen entries, no
/// allocation: cheaper per request than hashing owned keys.
pub fn rule(method: &Method, path: &str) -> Option<Access> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    RULES
        .iter()
        .find(|(m, p, _)| *p == path && *m == method)
        .map(|(_, _, a)| *a)
}

/// Whether the api checks credentials (`API_AUTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `keys` (the default): every route but the public ones needs an API key.
    Keys,
    /// `off`: for local development only; every caller is an anonymous admin.
    Off,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// The key's id (`None` with `API_AUTH=off`).
    pub key_id: Option<Uuid>,
    /// The client the key speaks for (the key's name).
    pub client: String,
    /// What it may do.
    pub role: Role,
    /// Its submit rate per second, if its key sets one.
    pub submit_rate: Option<f64>,
    /// Its in-flight cap, if its key sets one.
    pub max_in_flight: Option<u32>,
}

impl Caller {
    /// Everyone, with authentication off.
    pub fn anonymous() -> Self {
        Self {
            key_id: None,
            client: "anonymous".into(),
            role: Role::Admin,
            submit_rate: None,
            max_in_flight: None,
        }
    }

    /// The client a list or read must be narrowed to: its own, for a submitter.
    pub fn only_own(&self) -> Option<&str> {
        (self.role == Role::Submitter).then_some(self.client.as_str())
    }
}

/// What the access layer needs, shared by every request.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Keys and their cache.
    pub keys: Arc<Keys>,
    /// Quotas per client.
    pub quotas: Arc<Quotas>,
    /// `API_AUTH`.
    pub mode: Mode,
}

impl Guard {
    /// A guard over `keys` and `quotas`.
    pub fn new(keys: Keys, quotas: Quotas, mode: Mode) -> Self {
        Self {
            keys: Arc::new(keys),
            quotas: Arc::new(quotas),
            mode,
        }
    }
}

/// Why a request was refused before its handler ran.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// 401: no credential, or not a valid one.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// 403: a valid credential whose role may not do this.
    #[error("role {role} may not {method} {route}")]
    Forbidden {
        /// The caller's role.
        role: Role,
        /// The request's method.
        method: Method,
        /// The route template.
        route: String,
    },
    /// 429: over the client's quota.
    #[error("{0}")]
    OverQuota(quota::Over),
    /// 503: the key store cannot be read.
    #[error("PostgreSQL unavailable: cannot check the API key")]
    Unavailable(#[source] sqlx::Error),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Unauthenticated(why) => {
                let mut res = problem(StatusCode::UNAUTHORIZED, why.to_owned());
                res.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="jobstack""#),
                );
                res
            }
            Refused::Forbidden { .. } => problem(StatusCode::FORBIDDEN, self.to_string()),
            Refused::OverQuota(over) => over.into_response(),
            Refused::Unavailable(e) => crate::error::ApiError::Unavailable {
                detail: "PostgreSQL unavailable: cannot check the API key; send the request again \
                         after `Retry-After`"
                    .into(),
                cause: Some(e.into()),
            }
            .into_response(),
        }
    }
}

/// The access layer: authenticates the caller, checks its role against the route's rule, takes
/// its quota, and hands the handler a [`Caller`]. Refusals happen before any handler runs, so a
/// refused request changes nothing.
pub async fn check(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let guard = &state.guard;
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let access = rule(req.method(), &route);
    // A method the route does not serve: the router answers 405 (every served method has a
    // rule: a test holds the document to the table).
    let other_method = access.is_none() && RULES.iter().any(|(_, p, _)| *p == route);
    if access == Some(Access::Public) || other_method {
        return next.run(req).await;
    }
    let caller = match guard.mode {
        Mode::Off => Caller::anonymous(),
        Mode::Keys => match authenticate(guard, req.headers()).await {
            Ok(caller) => caller,
            Err(refused) => return refused.into_response(),
        },
    };
    let allowed = access.is_some_and(|a| caller.role.may(a));
    if !allowed {
        let refused = Refused::Forbidden {
            role: caller.role,
            method: req.method().clone(),
            route,
        };
        // Debug, not info: a client hammering a route it may not use must not flood the logs
        // (the request metric counts every 403 by route).
        tracing::debug!(client = %caller.client, role = %caller.role, "refused: {refused}");
        return refused.into_response();
    }
    let submits = access == Some(Access::Submit);
    let _permit = match guard.quotas.take(&caller, submits) {
        Ok(permit) => permit,
        Err(over) => {
            // Debug for the same reason: a flood is counted, not logged line by line.
            tracing::debug!(client = %caller.client, "over quota: {over}");
            return Refused::OverQuota(over).into_response();
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The caller a bearer API key names.
async fn authenticate(guard: &Guard, headers: &axum::http::HeaderMap) -> Result<Caller, Refused> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Refused::Unauthenticated(
            "this route needs an API key: send `Authorization: Bearer <key>`",
        ));
    };
    let secret = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(Refused::Unauthenticated(
            "the Authorization header is not `Bearer <key>`",
        ))?;
    guard.keys.verify(secret).await
}
