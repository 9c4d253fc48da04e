//! HTTP middleware: the server span (continuing the caller's W3C trace), the `traceparent`
//! response header, RED metrics by route template, and problem+json for errors raised outside
//! the handlers.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use shared::telemetry::propagation;
use tracing::{Instrument as _, field::Empty};

use crate::error::problem;

/// Wraps every routed request (and the 404 fallback) in a server span and records its metrics.
pub async fn observe(req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    // The route template, never the raw path: ids in labels would make series unbounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "http.request",
        otel.name = match &route {
            Some(r) => format!("{method} {r}"),
            None => method.to_owned(),
        },
        otel.kind = "server",
        http.request.method = method,
        http.route = Empty,
        url.path = req.uri().path(),
        http.response.status_code = Empty,
    );
    if let Some(r) = &route {
        span.record("http.route", r.as_str());
    }
    propagation::set_parent(&span, propagation::extract_http(req.headers()));

    let active = metrics::gauge!("http_server_active_requests");
    active.increment(1.0);
    let start = Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    active.decrement(1.0);

    let status = res.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        propagation::record_error(&span, status.canonical_reason().unwrap_or("server error"));
    }
    if let Some(tp) = propagation::traceparent(&span).and_then(|t| HeaderValue::from_str(&t).ok()) {
        res.headers_mut().insert("traceparent", tp);
    }
    shared::metrics::exemplars::observe(
        "http_server_request_duration_seconds",
        &[
            ("method", method),
            ("route", route.as_deref().unwrap_or("unmatched")),
            ("status", status.as_str()),
        ],
        start.elapsed().as_secs_f64(),
        &span,
    );
    res
}

/// Known methods as themselves, anything else as `_OTHER` (the OTel convention), so a client
/// inventing methods cannot create series.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "_OTHER",
    }
}

/// Rewrites error responses that are not problem+json yet (axum's 404/405, the timeout's 408, a
/// caught panic's 500) into problem+json, so clients parse one error shape.
pub async fn problem_bodies(res: Response) -> Response {
    let status = res.status();
    // A problem already, or a console page (HTML for people, e.g. a refused login).
    let is_problem = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().starts_with(b"application/problem+json")
            || v.as_bytes().starts_with(b"text/html")
    });
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return res;
    }
    let detail = match status.as_u16() {
        404 => "no such route; see /openapi.json",
        405 => "method not allowed on this route; see /openapi.json",
        408 => "the request took too long",
        413 => "request body is over the size limit",
        _ => "the request failed",
    };
    let mut fresh = problem(status, detail.to_owned());
    if let Some(allow) = res.headers().get(header::ALLOW) {
        fresh.headers_mut().insert(header::ALLOW, allow.clone());
    }
    fresh
}
