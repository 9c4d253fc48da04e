//! The HTTP app: each module owns its routes; [`app`] assembles them with the middleware.

mod audit;
mod body;
mod health;
mod jobs;
mod keys;
pub(crate) mod kinds;
mod openapi;
mod schedules;
mod workflows;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::{Router, middleware, routing::get};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::{AppState, observe};

pub use openapi::ApiDoc;

/// Checks a job request against the contract (the console submits through it too).
pub(crate) use jobs::validate as validate_job;

/// Every documented route: a route is registered here, with its documentation, or not at all.
fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(jobs::router())
        .merge(schedules::router())
        .merge(workflows::router())
        .merge(kinds::router())
        .merge(keys::router())
        .merge(audit::router())
        .merge(health::router())
}

/// The OpenAPI document of the routes `app` serves, with the job contract's kinds.
pub fn openapi(kinds: &jobs_contract::Catalog) -> serde_json::Value {
    let (_, paths) = documented().split_for_parts();
    openapi::document(paths, kinds)
}

/// The whole app, without a socket, so tests can call it directly.
pub fn app(state: AppState) -> Router {
    let body_limit = state.config.body_limit;
    let timeout = state.config.request_timeout;
    let (routes, paths) = documented().split_for_parts();
    // Serialized once: the document only changes with the binary.
    let doc = Bytes::from(
        serde_json::to_vec(&openapi::document(paths, &state.kinds)).expect("documents serialize"),
    );
    routes
        // After routing, so it sees the route template its rule is written for.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::access::check,
        ))
        .route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc) }),
        )
        // The console: its own sessions and CSRF checks, the same roles and audit trail.
        .merge(crate::console::router(state.clone()))
        // The demo's fault switches: behind FAULTS_TOKEN, not an API key; absent without one.
        .merge(shared::faults::router(
            state.faults.clone(),
            state.config.faults_token.clone(),
        ))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(DefaultBodyLimit::max(body_limit))
        // Layers run outside-in from the last one: observe sees the final status of everything.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(CatchPanicLayer::new())
        .layer(middleware::map_response(observe::problem_bodies))
        .layer(middleware::from_fn(observe::observe))
        // Added after the layers: scrapes make no spans and no latency samples.
        .route("/metrics", get(shared::metrics::serve))
        .with_state(state)
}
