//! The admin routes every service serves: `/healthz` (the process serves), `/readyz` (its named
//! dependency checks, in the one shape of [`crate::readiness`]) and `/metrics`.

use std::future::Future;

use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::get};
use serde_json::json;

use crate::readiness::{self, Check};

/// `/healthz`, `/readyz` answering from `checks` (run on every request), and `/metrics`.
pub fn router<F, Fut>(checks: F) -> Router
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<Check>> + Send + 'static,
{
    Router::new()
        .route("/healthz", get(alive))
        .route(
            "/readyz",
            get(move || async move { readiness::answer(&checks().await) }),
        )
        .route("/metrics", get(crate::metrics::serve))
}

/// Liveness: `200 {"status":"ok"}` while the process serves.
pub async fn alive() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}
