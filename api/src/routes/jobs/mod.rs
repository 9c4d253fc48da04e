//! `/jobs`: submit, read, list, cancel and re-drive jobs. Each file holds its handlers and their
//! documentation; [`view`] holds what they answer.

mod control;
mod read;
mod submit;
pub(crate) mod view;

pub(crate) use submit::validate;

use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

/// The routes, each documented where it is registered.
pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit::submit, read::list))
        .routes(routes!(read::read))
        .routes(routes!(control::cancel))
        .routes(routes!(control::redrive))
        .routes(routes!(control::redrive_many))
}

/// A job id from the path; a malformed one is a 400 that says so.
fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::BadRequest(format!("{raw:?} is not a job id (a UUID)")))
}
