//! The operator console under `/ui`: server-rendered pages (askama templates in `api/templates`,
//! escaped by default) with htmx for live parts, served by the api itself, so there is nothing
//! to build or deploy beside it. It reads and acts through the same store functions, roles and
//! audit trail as the JSON api.
//!
//! A login trades an API key for a session: a random token in an `HttpOnly`, `SameSite=Strict`
//! cookie (`Secure` unless the console is reached on loopback), whose digest is stored with the
//! key it was opened with; revoking the key ends it. Every form carries the session's CSRF token
//! as well, so a cross-site page can neither send the cookie nor know the token.
//!
//! - [`session`]: login, logout, the session extractor and the CSRF check.
//! - [`pages`]: what is shown; [`actions`]: what is done.
//! - [`why`]: why a job is not running, in words.

mod actions;
mod pages;
mod session;
pub mod why;

use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};

use crate::AppState;

pub use session::Session;

/// The console's routes, under `/ui`.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/jobs") }))
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/jobs", get(pages::jobs).post(actions::submit))
        .route("/ui/jobs/table", get(pages::jobs_table))
        .route("/ui/jobs/bulk", post(actions::bulk))
        .route("/ui/jobs/{id}", get(pages::job))
        .route("/ui/jobs/{id}/live", get(pages::job_live))
        .route("/ui/jobs/{id}/cancel", post(actions::cancel))
        .route("/ui/jobs/{id}/redrive", post(actions::redrive))
        .route("/ui/kinds", get(pages::kinds))
        .route("/ui/kinds/{kind}/{verb}", post(actions::kind))
        .route("/ui/schedules", get(pages::schedules))
        .route("/ui/schedules/{name}/{verb}", post(actions::schedule))
        .route("/ui/workflows", get(pages::workflows))
        .route("/ui/workflows/{id}", get(pages::workflow))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/static/htmx-2.0.11.min.js", get(htmx))
        .route("/ui/static/console.css", get(css))
        .layer(middleware::map_response(headers))
        .with_state(state)
}

/// Renders a template, or a plain 500 (a template that fails to render is a bug).
fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be drawn",
            )
                .into_response()
        }
    }
}

/// Every console answer: not cached (pages show live state and a CSRF token), not framed (no
/// clickjacking of the action buttons), scripts only from the api itself.
async fn headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.entry(header::CACHE_CONTROL)
        .or_insert(header::HeaderValue::from_static("no-store"));
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'",
        ),
    );
    res
}

async fn htmx() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        include_str!("../../static/htmx-2.0.11.min.js"),
    )
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../../static/console.css"),
    )
}

/// The Jaeger and Grafana addresses a job page links to.
#[derive(Debug, Clone)]
pub struct Links {
    /// `CONSOLE_JAEGER_URL`.
    pub jaeger: String,
    /// `CONSOLE_GRAFANA_URL`.
    pub grafana: String,
}

impl Links {
    /// The trace in Jaeger.
    pub fn trace(&self, trace_id: &str) -> String {
        format!("{}/trace/{trace_id}", self.jaeger.trim_end_matches('/'))
    }

    /// Every log line of the trace, of every service, in Grafana's Explore (Loki).
    pub fn logs(&self, trace_id: &str) -> String {
        let panes = serde_json::json!({ "logs": {
            "datasource": "loki",
            "queries": [{ "refId": "A", "datasource": { "type": "loki", "uid": "loki" },
                          "expr": format!("{{service=~\".+\"}} |= `{trace_id}`"),
                          "queryType": "range" }],
            "range": { "from": "now-24h", "to": "now" },
        }});
        format!(
            "{}/explore?schemaVersion=1&orgId=1&panes={}",
            self.grafana.trim_end_matches('/'),
            encode(&panes.to_string())
        )
    }
}

/// RFC 3986's unreserved characters: everything else is percent-encoded.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but unreserved characters, for a query string's value.
pub(crate) fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_name_the_trace_and_encode_the_query() {
        let links = Links {
            jaeger: "http://127.0.0.1:16686/".into(),
            grafana: "http://127.0.0.1:3000".into(),
        };
        assert_eq!(links.trace("ab12"), "http://127.0.0.1:16686/trace/ab12");
        let logs = links.logs("ab12");
        assert!(
            logs.starts_with("http://127.0.0.1:3000/explore?schemaVersion=1&orgId=1&panes=%7B")
        );
        assert!(logs.contains("ab12"), "{logs}");
        assert!(
            !logs.contains('{') && !logs.contains(' ') && !logs.contains('`'),
            "{logs}"
        );
        assert_eq!(encode("a b/{c}"), "a%20b%2F%7Bc%7D");
    }
}
