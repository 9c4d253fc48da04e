//! The two calls the generator makes: `POST /jobs` and `GET /jobs/{id}`, each in its own trace.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::telemetry::ClientSpan;

/// How a request ended: an HTTP status, or no response at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// No response within the timeout.
    Timeout,
    /// Connection refused or reset, or another transport error.
    Transport,
}

impl Outcome {
    /// The label used in status counts: `202`, `timeout`, `transport`.
    pub fn label(self) -> String {
        match self {
            Self::Status(code) => code.to_string(),
            Self::Timeout => "timeout".into(),
            Self::Transport => "transport".into(),
        }
    }

    /// Whether the job was accepted.
    pub fn accepted(self) -> bool {
        self == Self::Status(202)
    }
}

/// The fields of a job the tracker needs.
#[derive(Debug, Clone, Deserialize)]
pub struct JobView {
    /// queued, running, succeeded, failed, cancelled.
    pub status: String,
    /// When it reached its end state (RFC 3339).
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A client for one api.
#[derive(Debug, Clone)]
pub struct Api {
    client: reqwest::Client,
    jobs: String,
    /// Where this run's `Idempotency-Key`s come from, when it sends them.
    keys: Option<Arc<Keys>>,
}

/// Distinct `Idempotency-Key`s: this run's own prefix (its start, so two runs never share a
/// key), then a count.
#[derive(Debug)]
struct Keys {
    run: String,
    next: AtomicU64,
}

impl Keys {
    fn next(&self) -> String {
        format!("{}-{}", self.run, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

impl Api {
    /// A client for the api at `base` (e.g. `http://127.0.0.1:8080`) that sends `key`.
    pub fn new(
        base: &str,
        key: Option<&str>,
        timeout: Duration,
        pool: usize,
    ) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base).map_err(|e| anyhow::anyhow!("--url {base}: {e}"))?;
        anyhow::ensure!(
            parsed.scheme() == "http",
            "--url {base}: only http:// is supported"
        );
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = key {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| anyhow::anyhow!("--api-key: not a valid header value"))?;
            // Kept out of reqwest's debug output.
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            client,
            jobs: format!("{base}/jobs"),
            keys: None,
        })
    }

    /// Sends a distinct `Idempotency-Key` with every `POST /jobs` (when `on`).
    pub fn with_idempotency_keys(self, on: bool) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            keys: on.then(|| {
                Arc::new(Keys {
                    run: format!("loadgen-{:x}", started.as_nanos()),
                    next: AtomicU64::new(0),
                })
            }),
            ..self
        }
    }

    /// `POST /jobs`; on 202 also returns the new job's id (from `Location`).
    pub async fn create(&self, body: &Value) -> (Outcome, Option<String>) {
        let span = ClientSpan::start("POST", "/jobs", &self.jobs);
        let mut req = self.client.post(&self.jobs).json(body);
        if let Some(keys) = &self.keys {
            req = req.header("idempotency-key", keys.next());
        }
        for (k, v) in &span.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let (outcome, id) = match req.send().await {
            Ok(resp) => {
                let code = resp.status().as_u16();
                let id = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| l.rsplit('/').next())
                    .map(str::to_owned);
                // Read the body so the connection goes back to the pool.
                match resp.bytes().await {
                    Ok(_) => (Outcome::Status(code), id.filter(|_| code == 202)),
                    Err(e) => (failure(&e), None),
                }
            }
            Err(e) => (failure(&e), None),
        };
        span.end(match outcome {
            Outcome::Status(code) => Ok(code),
            Outcome::Timeout => Err("timeout"),
            Outcome::Transport => Err("transport"),
        });
        (outcome, id)
    }

    /// `GET /jobs/{id}`: `Ok(None)` on 404.
    pub async fn job(&self, id: &str) -> Result<Option<JobView>, Outcome> {
        let url = format!("{}/{id}", self.jobs);
        let span = ClientSpan::start("GET", "/jobs/{id}", &url);
        let mut req = self.client.get(&url);
        for (k, v) in &span.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let result = match req.send().await {
            Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => Ok(None),
            Ok(resp) if resp.status().is_success() => match resp.json::<JobView>().await {
                Ok(job) => Ok(Some(job)),
                Err(e) => Err(failure(&e)),
            },
            Ok(resp) => Err(Outcome::Status(resp.status().as_u16())),
            Err(e) => Err(failure(&e)),
        };
        span.end(match result {
            Ok(Some(_)) => Ok(200),
            Ok(None) => Ok(404),
            Err(Outcome::Status(code)) => Ok(code),
            Err(_) => Err("transport"),
        });
        result
    }
}

fn failure(e: &reqwest::Error) -> Outcome {
    if e.is_timeout() {
        Outcome::Timeout
    } else {
        Outcome::Transport
    }
}
