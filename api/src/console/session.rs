//! Console login: an API key traded for a session cookie, the extractor every page takes, and
//! the CSRF check every form passes.

use askama::Template;
use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;

use super::render;
use crate::AppState;
use crate::access::{Access, Caller, keys};
use crate::store;

/// The cookie's name.
const COOKIE: &str = "jobstack_session";

/// How long a session lasts.
const LIFETIME: chrono::Duration = chrono::Duration::hours(8);

/// A logged-in operator (or viewer, or submitter): the key's caller and the session's CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who, with the key's role.
    pub caller: Caller,
    /// What every form must carry.
    pub csrf: String,
}

impl Session {
    /// Whether this session's role may do what `access` asks.
    pub fn may(&self, access: Access) -> bool {
        self.caller.role.may(access)
    }

    /// Refuses a form without this session's token (403), or a role that may not (403): the
    /// console hides what a role may not do, and this refuses it anyway.
    pub fn allow(&self, csrf: &str, access: Access) -> Result<(), Forbidden> {
        if !shared::secret::matches(csrf, &self.csrf) {
            return Err(Forbidden("this form is stale; reload the page".into()));
        }
        if !self.may(access) {
            return Err(Forbidden(format!(
                "role {} may not do this",
                self.caller.role
            )));
        }
        Ok(())
    }
}

/// A console form refused: 403 with why.
#[derive(Debug)]
pub struct Forbidden(pub(super) String);

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, self.0).into_response()
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let away = || {
            if parts.headers.contains_key("hx-request") {
                // htmx follows this instead of swapping a login page into a fragment.
                let mut res = StatusCode::UNAUTHORIZED.into_response();
                res.headers_mut()
                    .insert("hx-redirect", HeaderValue::from_static("/ui/login"));
                res
            } else {
                Redirect::to("/ui/login").into_response()
            }
        };
        let Some(token) = cookie(&parts.headers) else {
            return Err(away());
        };
        let row = store::keys::session(&state.db, &keys::digest(token))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "console session lookup failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "PostgreSQL unavailable; try again",
                )
                    .into_response()
            })?
            .ok_or_else(away)?;
        Ok(Session {
            caller: row.key.caller(),
            csrf: row.csrf,
        })
    }
}

/// The session token of the request's cookie.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Whether the console is reached on loopback (the demo): there, the cookie cannot be `Secure`
/// (plain http); anywhere else it must be.
fn loopback(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    matches!(name, "localhost" | "127.0.0.1" | "[::1]")
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
}

pub(super) async fn login_page() -> Response {
    render(&LoginPage { error: None })
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    key: String,
}

/// Checks the key and opens a session.
pub(super) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let refused = |why: &str| {
        let mut res = render(&LoginPage {
            error: Some(why.to_owned()),
        });
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        res
    };
    let caller = match state.guard.keys.verify(form.key.trim()).await {
        Ok(caller) => caller,
        Err(crate::access::Refused::Unavailable(_)) => {
            return refused("PostgreSQL is unavailable; try again shortly");
        }
        Err(_) => return refused("that key is not valid (unknown, revoked or expired)"),
    };
    let Some(key_id) = caller.key_id else {
        return refused("that key is not valid");
    };
    let token = keys::generate();
    let csrf = keys::generate();
    if let Err(e) = store::keys::open_session(
        &state.db,
        &keys::digest(&token),
        key_id,
        &csrf[keys::PREFIX.len()..],
        Utc::now() + LIFETIME,
    )
    .await
    {
        tracing::warn!(error = %e, "console session not opened");
        return refused("PostgreSQL is unavailable; try again shortly");
    }
    tracing::info!(client = %caller.client, role = %caller.role, "console login");
    let secure = if loopback(&headers) { "" } else { "; Secure" };
    let cookie = format!(
        "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        LIFETIME.num_seconds()
    );
    let mut res = Redirect::to("/ui/jobs").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

#[derive(Deserialize)]
pub(super) struct LogoutForm {
    csrf: String,
}

/// Ends the session.
pub(super) async fn logout(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if let Err(refused) = session.allow(&form.csrf, Access::ReadOwn) {
        return refused.into_response();
    }
    if let Some(token) = cookie(&headers)
        && let Err(e) = store::keys::close_session(&state.db, &keys::digest(token)).await
    {
        tracing::warn!(error = %e, "console session not closed");
    }
    let mut res = Redirect::to("/ui/login").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "jobstack_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; jobstack_session=tok; b=2")]);
        assert_eq!(cookie(&h), Some("tok"));
        assert_eq!(cookie(&headers(&[("cookie", "jobstack_sessionx=1")])), None);
        assert_eq!(cookie(&HeaderMap::new()), None);
    }

    #[test]
    fn only_loopback_hosts_go_without_secure() {
        for host in [
            "localhost:8080",
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
        ] {
            assert!(loopback(&headers(&[("host", host)])), "{host}");
        }
        for host in [
            "jobs.example.com",
            "10.0.0.7:8080",
            "127.0.0.1.evil.com",
            "",
        ] {
            assert!(!loopback(&headers(&[("host", host)])), "{host}");
        }
    }

    #[test]
    fn a_form_needs_the_token_and_the_role() {
        let session = Session {
            caller: Caller {
                role: crate::access::Role::Viewer,
                ..Caller::anonymous()
            },
            csrf: "abc".into(),
        };
        assert!(session.allow("abc", Access::Read).is_ok());
        assert!(session.allow("abd", Access::Read).is_err());
        assert!(session.allow("", Access::Read).is_err());
        assert!(session.allow("abc", Access::Operate).is_err());
    }
}
