//! The api's settings, from the environment (see README "Configuration").

use std::net::SocketAddr;
use std::time::Duration;

use jobs_contract::Topology;

use crate::relay::Dispatch;
use shared::amqp;

/// The longest back-off before a retry, however many attempts failed.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);
use shared::config::{self, ConfigError};

/// Everything the api can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `DB_MAX_CONNECTIONS`.
    pub db_max_connections: u32,
    /// `AMQP_URL`, `AMQP_PREFIX`, `PUBLISH_TIMEOUT_MS`.
    pub amqp: amqp::Settings,
    /// `RETRY_BASE_MS`: the back-off before an attempt's first retry; it doubles at each further
    /// one, up to [`MAX_RETRY_DELAY`], and each delay is drawn at random below that step.
    pub retry_base: Duration,
    /// `MAX_ATTEMPTS`: attempts a job gets in a generation before it fails; every failure counts,
    /// a lapsed lease too, an attempt handed back at a shutdown does not.
    pub max_attempts: u32,
    /// `JOB_LEASE_SECS`: how long a running attempt may go without a sign of life (a heartbeat or
    /// an event) before the api gives it up and runs the job again. Workers heartbeat at a sixth
    /// of it and stop an attempt themselves after half of it without a confirmed heartbeat.
    pub lease: Duration,
    /// `API_LISTEN`.
    pub listen: SocketAddr,
    /// `BODY_LIMIT_BYTES`: larger request bodies get 413.
    pub body_limit: usize,
    /// `REQUEST_TIMEOUT_SECS`: a request still running after this gets 408.
    pub request_timeout: Duration,
    /// `RELAY_INTERVAL_MS`: how often the relay looks for unpublished jobs when not woken.
    pub relay_interval: Duration,
    /// `SHUTDOWN_GRACE_SECS`: how long in-flight requests may finish after a signal.
    pub grace: Duration,
    /// `JOB_RETENTION`: finished jobs older than this are deleted; `None` (`0`) keeps them.
    pub retention: Option<Duration>,
    /// `RETENTION_INTERVAL_SECS`: how often one api replica prunes.
    pub retention_interval: Duration,
    /// `IDEMPOTENCY_KEY_TTL`: how long an `Idempotency-Key` answers with the job it created.
    pub idempotency_ttl: Duration,
    /// `SCHEDULE_MISFIRE_GRACE_SECS`: how late a schedule's fire time may be and still run as on
    /// time; a later one was missed, and its schedule's `missed` policy says what it does.
    pub misfire_grace: Duration,
    /// `JOB_LIMITS`: overrides of the kinds' declared limits and uniqueness (see
    /// `flow::settings`); checked against the kinds at start-up.
    pub job_limits: Vec<crate::flow::Override>,
    /// `API_AUTH`: `keys` (the default) or `off` (local development only).
    pub auth: crate::access::Mode,
    /// `API_DEMO_KEY`: an admin key registered at start-up (the loopback demo's; unset it in a
    /// deployment). Never logged.
    pub demo_key: Option<String>,
    /// `FAULTS_TOKEN`: guards `PUT /admin/faults` (the demo's fault injection); unset, no route.
    pub faults_token: Option<shared::faults::Token>,
    /// `CLIENT_SUBMIT_RATE` and `CLIENT_MAX_IN_FLIGHT`: each client's quota unless its key sets
    /// its own; `0` is unlimited.
    pub client_quota: crate::access::quota::Defaults,
    /// `CONSOLE_JAEGER_URL` and `CONSOLE_GRAFANA_URL`: where the console's job pages link to
    /// the job's trace and its logs.
    pub console: crate::console::Links,
}

impl Config {
    /// Reads and checks every variable; the error names the first bad one.
    pub fn from_env() -> Result<Self, ConfigError> {
        let database_url = config::string(
            "DATABASE_URL",
            "postgres://postgres:postgres@127.0.0.1:5432/jobstack",
        );
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError {
                var: "DATABASE_URL",
                value: config::redact_url(&database_url),
                reason: "expected a postgres:// URL".into(),
            });
        }
        Self::check_postgres_tls()?;
        Ok(Self {
            database_url,
            db_max_connections: config::ranged("DB_MAX_CONNECTIONS", 10, 1, 1000)?,
            amqp: amqp::Settings::from_env()?,
            retry_base: config::millis("RETRY_BASE_MS", 1000, 1)?,
            max_attempts: config::ranged("MAX_ATTEMPTS", 3, 1, 100)?,
            lease: config::seconds("JOB_LEASE_SECS", 60)?,
            listen: Self::listen()?,
            body_limit: config::ranged("BODY_LIMIT_BYTES", 1 << 20, 64, 64 << 20)?,
            request_timeout: config::seconds("REQUEST_TIMEOUT_SECS", 10)?,
            relay_interval: config::millis("RELAY_INTERVAL_MS", 1000, 10)?,
            grace: shared::shutdown::grace_from_env()?,
            retention: config::span("JOB_RETENTION", "7d", true)?,
            retention_interval: config::seconds("RETENTION_INTERVAL_SECS", 60)?,
            idempotency_ttl: config::span("IDEMPOTENCY_KEY_TTL", "24h", false)?
                .expect("zero is refused"),
            misfire_grace: config::seconds("SCHEDULE_MISFIRE_GRACE_SECS", 60)?,
            job_limits: Self::job_limits()?,
            auth: Self::auth()?,
            demo_key: Self::demo_key()?,
            faults_token: shared::faults::Token::from_env()?,
            client_quota: crate::access::quota::Defaults {
                submit_rate: Some(config::ranged("CLIENT_SUBMIT_RATE", 2000.0, 0.0, 1e6)?)
                    .filter(|r| *r > 0.0),
                max_in_flight: Some(config::ranged("CLIENT_MAX_IN_FLIGHT", 256, 0, 100_000)?)
                    .filter(|n| *n > 0),
            },
            console: crate::console::Links {
                jaeger: Self::http_url("CONSOLE_JAEGER_URL", "http://127.0.0.1:16686")?,
                grafana: Self::http_url("CONSOLE_GRAFANA_URL", "http://127.0.0.1:3000")?,
            },
        })
    }

    /// `PGSSLMODE` and `PGSSLROOTCERT`, the libpq variables sqlx reads for TLS to PostgreSQL
    /// (`sslmode` / `sslrootcert` in `DATABASE_URL` say the same and win). sqlx ignores a mode
    /// it cannot parse and fails every connection on an unreadable root file: refused here.
    fn check_postgres_tls() -> Result<(), ConfigError> {
        let mode = config::string("PGSSLMODE", "prefer");
        if mode.parse::<sqlx::postgres::PgSslMode>().is_err() {
            return Err(ConfigError {
                var: "PGSSLMODE",
                value: mode,
                reason: "expected disable, allow, prefer, require, verify-ca or verify-full".into(),
            });
        }
        config::pem_certificates("PGSSLROOTCERT").map(drop)
    }

    fn http_url(var: &'static str, default: &str) -> Result<String, ConfigError> {
        let url = config::string(var, default);
        if url.starts_with("http://") || url.starts_with("https://") {
            Ok(url)
        } else {
            Err(ConfigError {
                var,
                value: url,
                reason: "expected an http:// or https:// URL".into(),
            })
        }
    }

    fn auth() -> Result<crate::access::Mode, ConfigError> {
        use crate::access::Mode;
        match config::string("API_AUTH", "keys").as_str() {
            "keys" => Ok(Mode::Keys),
            "off" => Ok(Mode::Off),
            other => Err(ConfigError {
                var: "API_AUTH",
                value: other.to_owned(),
                reason: "expected `keys`, or `off` for local development".into(),
            }),
        }
    }

    fn demo_key() -> Result<Option<String>, ConfigError> {
        let key = config::string("API_DEMO_KEY", "");
        if key.is_empty() {
            return Ok(None);
        }
        if !crate::access::keys::well_formed(&key) {
            return Err(ConfigError {
                var: "API_DEMO_KEY",
                // A near-miss of a real key is still a secret.
                value: "<redacted>".into(),
                reason: "expected `jsk_` and 64 lowercase hex digits (`make api-key` prints one)"
                    .into(),
            });
        }
        Ok(Some(key))
    }

    /// The exchanges and queues, under `AMQP_PREFIX`.
    pub fn topology(&self) -> Topology {
        Topology::new(&self.amqp.prefix)
    }

    /// How long a job waits before the retry of its `failures`-th failure (1 for the first).
    pub fn retry_delay(&self, failures: u32) -> Duration {
        shared::backoff::full_jitter(self.retry_base, MAX_RETRY_DELAY, failures)
    }

    /// Where jobs go and what each attempt is told.
    pub fn dispatch(&self) -> Dispatch {
        Dispatch {
            topology: self.topology(),
            max_attempts: self.max_attempts,
            lease: self.lease,
        }
    }

    fn job_limits() -> Result<Vec<crate::flow::Override>, ConfigError> {
        let raw = config::string("JOB_LIMITS", "");
        crate::flow::settings::parse(&raw).map_err(|reason| ConfigError {
            var: "JOB_LIMITS",
            value: raw,
            reason,
        })
    }

    /// Every kind's limits and uniqueness: `kinds`' declarations with `JOB_LIMITS` applied; an
    /// override of a kind `kinds` does not have is an error naming the variable.
    pub fn flow(&self, kinds: &jobs_contract::Catalog) -> Result<crate::flow::Flow, ConfigError> {
        crate::flow::Flow::new(kinds, &self.job_limits).map_err(|reason| ConfigError {
            var: "JOB_LIMITS",
            value: config::string("JOB_LIMITS", ""),
            reason,
        })
    }

    fn listen() -> Result<SocketAddr, ConfigError> {
        config::listen("API_LISTEN", "0.0.0.0:8080")
    }

    /// The listen address, for `api healthcheck` (falls back to the default when unset or bad).
    pub fn listen_addr() -> SocketAddr {
        Self::listen().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}
