//! The HTTP error type and its `application/problem+json` (RFC 9457) rendering.
//!
//! Policy: handlers return `Result<_, ApiError>`. Bad input is one of the 4xx variants with a
//! `detail` that tells the caller what to fix, and changes nothing. A dependency that is down,
//! restarting or failing over is `Unavailable` (503, with `Retry-After`): the request may be
//! sent again as it is. Anything else is `Internal`: logged with its cause chain, answered with a
//! generic 500 that leaks nothing. Domain modules return their own error types (e.g.
//! [`crate::accept::AcceptError`]); they become HTTP answers here, in one place. Errors from
//! layers outside the handlers (404 of an unknown route, 405, 408, 413) are rewritten to the same
//! shape by [`crate::observe::problem_bodies`], so every 4xx/5xx body is problem+json.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::accept::AcceptError;

/// An error answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed JSON, a bad query parameter, a malformed id.
    #[error("{0}")]
    BadRequest(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the job's state.
    #[error("{0}")]
    Conflict(String),
    /// 413.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed JSON that is not a valid job.
    #[error("{0}")]
    Unprocessable(String),
    /// 503: a dependency is unreachable; the same request may be sent again shortly.
    #[error("{detail}")]
    Unavailable {
        /// What the client is told.
        detail: String,
        /// What happened, for the log only.
        cause: Option<anyhow::Error>,
    },
    /// 500: a bug or an unexpected failure.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The RFC 9457 body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type; `about:blank` means "see `title`".
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP reason phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A problem+json response for `status` with `detail`.
pub fn problem(status: StatusCode, detail: String) -> Response {
    let body = Problem {
        kind: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("Error").into(),
        status: status.as_u16(),
        detail,
    };
    let mut res = (status, Json(body)).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    res
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match self {
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                "an unexpected error occurred; it has been logged".to_owned()
            }
            Self::Unavailable { detail, cause } => {
                match cause {
                    Some(cause) => tracing::warn!(
                        detail,
                        cause = format!("{cause:#}"),
                        "dependency unavailable"
                    ),
                    None => tracing::warn!(detail, "dependency unavailable"),
                }
                let mut res = problem(status, detail);
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return res;
            }
            other => other.to_string(),
        };
        problem(status, detail)
    }
}

impl ApiError {
    /// A 503 for `detail`, with no cause to log.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::Unavailable {
            detail: detail.into(),
            cause: None,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if postgres_unavailable(&e) {
            Self::Unavailable {
                detail: POSTGRES_UNAVAILABLE.into(),
                cause: Some(e.into()),
            }
        } else {
            Self::Internal(e.into())
        }
    }
}

impl From<AcceptError> for ApiError {
    fn from(e: AcceptError) -> Self {
        match e {
            AcceptError::ShuttingDown => Self::unavailable("the api is shutting down"),
            AcceptError::Store(ref batch) if postgres_unavailable(batch.cause()) => {
                Self::Unavailable {
                    detail: POSTGRES_UNAVAILABLE.into(),
                    cause: Some(e.into()),
                }
            }
            AcceptError::Store(_) => Self::Internal(e.into()),
        }
    }
}

const POSTGRES_UNAVAILABLE: &str = "PostgreSQL is unavailable; try again shortly";

/// Whether `e` means PostgreSQL cannot serve us right now, so that the same request may well
/// succeed in a moment: no connection (refused, reset, timed out, pool exhausted), a server
/// shutting down, restarting or failing over (SQLSTATE class 08, 57P01–57P03, what a fast
/// shutdown or a failover does to open sessions), too many connections (53300), and a
/// transaction the server chose to abort to resolve a conflict (class 40: deadlock,
/// serialization). Everything else is a bug or a broken invariant: a 500.
pub fn postgres_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("40")
                || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => {
                Self::UnsupportedMediaType("expected Content-Type: application/json".into())
            }
            JsonRejection::JsonSyntaxError(e) => {
                Self::BadRequest(format!("malformed JSON: {}", source_text(&e)))
            }
            JsonRejection::JsonDataError(e) => {
                Self::Unprocessable(format!("invalid job: {}", source_text(&e)))
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge("request body is over the size limit".into())
            }
            other => Self::BadRequest(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::BadRequest(format!("bad query string: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::BadRequest(r.body_text())
    }
}

/// serde's message without axum's "Failed to deserialize the JSON body into the target type: "
/// prefix.
fn source_text(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}
