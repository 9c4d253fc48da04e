//! `/openapi.json`, generated from the handlers and types.

use axum::{Json, Router, routing::get};
use utoipa::OpenApi;

use crate::AppState;

/// The OpenAPI document of the api.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "jobstack api",
        description = "Accepts long-running jobs, keeps their state, reports their progress."
    ),
    paths(
        super::jobs::create,
        super::jobs::read,
        super::jobs::list,
        super::jobs::cancel,
        super::health::healthz,
        super::health::readyz
    ),
    components(schemas(
        crate::store::Job,
        super::jobs::CreateJob,
        super::jobs::JobPage,
        crate::error::Problem
    ))
)]
pub struct ApiDoc;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
