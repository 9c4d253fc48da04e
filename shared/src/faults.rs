//! Fault injection for the demo: latency on the api's database path, a share of job handlers
//! that fail, a slow consumer. Switched at run time, without a restart, by `PUT /admin/faults`
//! on each service, behind `FAULTS_TOKEN`. Without the token (the default everywhere but the
//! loopback demo) the route does not exist and nothing can switch a fault on.
//!
//! Each injected fault leaves a span (`fault …`) in the trace it slows or fails, so it shows in
//! traces as well as in metrics and logs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument as _;

use crate::config::{self, ConfigError};

/// Upper bounds: a fault slows the demo, it must not wedge it.
const MAX_DB_LATENCY_MS: u32 = 10_000;
const MAX_SLOW_CONSUME_MS: u32 = 60_000;

/// The faults in effect. All off by default; `PUT /admin/faults` replaces them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Added before each database connection the api takes from its pool (0..=10000 ms).
    pub db_latency_ms: u32,
    /// Share of job attempts whose handler fails with a retryable error (0..=100 %).
    pub fail_percent: u32,
    /// Delay before the worker starts each job it received (0..=60000 ms).
    pub slow_consume_ms: u32,
}

impl Settings {
    fn check(&self) -> Result<(), String> {
        let over = |name: &str, value: u32, max: u32| {
            (value > max).then(|| format!("{name} is {value}; at most {max}"))
        };
        match over("db_latency_ms", self.db_latency_ms, MAX_DB_LATENCY_MS)
            .or_else(|| over("fail_percent", self.fail_percent, 100))
            .or_else(|| over("slow_consume_ms", self.slow_consume_ms, MAX_SLOW_CONSUME_MS))
        {
            Some(detail) => Err(detail),
            None => Ok(()),
        }
    }
}

/// The switches, shared by the route that sets them and the code paths that obey them.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Switches>);

#[derive(Debug, Default)]
struct Switches {
    db_latency_ms: AtomicU32,
    fail_percent: AtomicU32,
    slow_consume_ms: AtomicU32,
    /// Attempts seen while failing, so `fail_percent` is an exact share, not a dice roll.
    attempts: AtomicU64,
}

impl Faults {
    /// The faults in effect.
    pub fn settings(&self) -> Settings {
        Settings {
            db_latency_ms: self.0.db_latency_ms.load(Ordering::Relaxed),
            fail_percent: self.0.fail_percent.load(Ordering::Relaxed),
            slow_consume_ms: self.0.slow_consume_ms.load(Ordering::Relaxed),
        }
    }

    fn set(&self, s: Settings) {
        self.0
            .db_latency_ms
            .store(s.db_latency_ms, Ordering::Relaxed);
        self.0.fail_percent.store(s.fail_percent, Ordering::Relaxed);
        self.0
            .slow_consume_ms
            .store(s.slow_consume_ms, Ordering::Relaxed);
    }

    /// Waits `db_latency_ms`, in a `fault db_latency` span of the caller's trace.
    pub async fn db_latency(&self) {
        let ms = self.0.db_latency_ms.load(Ordering::Relaxed);
        delay("fault db_latency", ms).await;
    }

    /// Waits `slow_consume_ms`, in a `fault slow_consume` span of the caller's trace.
    pub async fn slow_consume(&self) {
        let ms = self.0.slow_consume_ms.load(Ordering::Relaxed);
        delay("fault slow_consume", ms).await;
    }

    /// Whether this attempt's handler is to fail: exactly `fail_percent` of the attempts, spread
    /// evenly (attempt n fails when ⌊(n+1)·p/100⌋ > ⌊n·p/100⌋).
    pub fn fails_now(&self) -> bool {
        let p = u64::from(self.0.fail_percent.load(Ordering::Relaxed));
        if p == 0 {
            return false;
        }
        let n = self.0.attempts.fetch_add(1, Ordering::Relaxed);
        (n + 1) * p / 100 > n * p / 100
    }
}

async fn delay(name: &'static str, ms: u32) {
    if ms == 0 {
        return;
    }
    let span = tracing::info_span!("fault", otel.name = name, fault.delay_ms = ms);
    tokio::time::sleep(Duration::from_millis(u64::from(ms)))
        .instrument(span)
        .await;
}

/// `FAULTS_TOKEN`: the bearer token of `/admin/faults`, at least 32 characters; unset, the
/// route is not served.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads `FAULTS_TOKEN`; a value shorter than 32 characters stops start-up.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let raw = config::string("FAULTS_TOKEN", "");
        match raw.len() {
            0 => Ok(None),
            n if n < 32 => Err(ConfigError {
                var: "FAULTS_TOKEN",
                value: "<redacted>".into(),
                reason: format!("{n} characters; at least 32 (e.g. `openssl rand -hex 16`)"),
            }),
            _ => Ok(Some(Self(raw))),
        }
    }

    /// A token from a value (tests), under the same rule as [`Token::from_env`].
    pub fn new(value: &str) -> Option<Self> {
        (value.len() >= 32).then(|| Self(value.to_owned()))
    }

    /// Compares in constant time for a given length, so timing does not reveal a prefix.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        crate::secret::matches(given, &self.0)
    }
}

#[derive(Clone)]
struct Guarded {
    faults: Faults,
    token: Token,
}

/// `GET /admin/faults` (what is in effect) and `PUT /admin/faults` (replace it; `{}` switches
/// everything off), both behind `token`; an empty router without one.
pub fn router<S: Clone + Send + Sync + 'static>(faults: Faults, token: Option<Token>) -> Router<S> {
    let Some(token) = token else {
        return Router::new();
    };
    Router::new()
        .route("/admin/faults", get(read).put(replace))
        .with_state(Guarded { faults, token })
}

async fn read(State(g): State<Guarded>, headers: HeaderMap) -> Response {
    if !g.token.admits(&headers) {
        return unauthorized();
    }
    Json(g.faults.settings()).into_response()
}

async fn replace(
    State(g): State<Guarded>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !g.token.admits(&headers) {
        return unauthorized();
    }
    let settings: Settings = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    };
    if let Err(detail) = settings.check() {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, &detail);
    }
    g.faults.set(settings);
    tracing::warn!(
        db_latency_ms = settings.db_latency_ms,
        fail_percent = settings.fail_percent,
        slow_consume_ms = settings.slow_consume_ms,
        "faults switched"
    );
    Json(settings).into_response()
}

fn unauthorized() -> Response {
    let mut res = problem(
        StatusCode::UNAUTHORIZED,
        "send `Authorization: Bearer <FAULTS_TOKEN>`",
    );
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    res
}

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_percent_is_an_exact_share() {
        let f = Faults::default();
        for p in [0, 1, 25, 50, 100] {
            f.set(Settings {
                fail_percent: p,
                ..Settings::default()
            });
            f.0.attempts.store(0, Ordering::Relaxed);
            let failed = (0..1000).filter(|_| f.fails_now()).count();
            assert_eq!(failed, p as usize * 10, "{p} %");
        }
    }

    #[test]
    fn settings_are_bounded_and_unknown_fields_refused() {
        assert!(
            Settings {
                fail_percent: 101,
                ..Settings::default()
            }
            .check()
            .is_err()
        );
        assert!(
            Settings {
                db_latency_ms: 10_001,
                ..Settings::default()
            }
            .check()
            .is_err()
        );
        assert!(
            Settings {
                slow_consume_ms: 60_000,
                ..Settings::default()
            }
            .check()
            .is_ok()
        );
        assert!(serde_json::from_str::<Settings>(r#"{"fail":1}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Settings>("{}").unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn the_token_is_compared_whole_and_never_printed() {
        let t = Token::new(&"t".repeat(32)).unwrap();
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert!(t.admits(&with(&format!("Bearer {}", "t".repeat(32)))));
        assert!(!t.admits(&with(&format!("Bearer {}", "t".repeat(31)))));
        assert!(!t.admits(&with(&format!("Bearer {}x", "t".repeat(32)))));
        assert!(!t.admits(&HeaderMap::new()));
        assert!(Token::new("short").is_none());
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }
}
