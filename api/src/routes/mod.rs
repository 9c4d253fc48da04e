//! The HTTP app: each module owns its routes; [`app`] assembles them with the middleware.

mod health;
mod jobs;
mod openapi;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::{Router, middleware, routing::get};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use crate::{AppState, observe};

pub use openapi::ApiDoc;

/// The whole app, without a socket, so tests can call it directly.
pub fn app(state: AppState) -> Router {
    let body_limit = state.config.body_limit;
    let timeout = state.config.request_timeout;
    Router::new()
        .merge(jobs::router())
        .merge(health::router())
        .merge(openapi::router())
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
        .route("/metrics", get(|| async { shared::metrics::render() }))
        .with_state(state)
}
