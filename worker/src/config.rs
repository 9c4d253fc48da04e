//! The worker's settings, from the environment (see README "Configuration").

use std::net::SocketAddr;
use std::time::Duration;

use jobs_contract::Topology;
use shared::amqp;
use shared::config::{self, ConfigError};

/// Everything the worker can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// `AMQP_URL`, `AMQP_PREFIX`, `PUBLISH_TIMEOUT_MS`.
    pub amqp: amqp::Settings,
    /// `WORKER_LISTEN`: the admin server (`/healthz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
    /// `WORKER_CONCURRENCY`: handlers run at once (thousands are fine for jobs that mostly wait).
    pub concurrency: u16,
    /// `JOB_DEADLINE_SECS`: when set (not 0), caps every kind's own deadline; a kind without one
    /// runs as long as it takes. The broker's consumer timeout does not bound it: an attempt's
    /// message is acked once it has run for a moment.
    pub deadline: Option<Duration>,
    /// `SHUTDOWN_GRACE_SECS`: how long in-flight jobs may finish after a signal.
    pub grace: Duration,
    /// `FAULTS_TOKEN`: guards `PUT /admin/faults` (the demo's fault injection); unset, no route.
    pub faults_token: Option<shared::faults::Token>,
}

impl Config {
    /// Reads and checks every variable; the error names the first bad one.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            amqp: amqp::Settings::from_env()?,
            listen: Self::listen()?,
            concurrency: config::ranged("WORKER_CONCURRENCY", 8, 1, 50_000)?,
            deadline: match config::ranged("JOB_DEADLINE_SECS", 0u64, 0, 30 * 86_400)? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            grace: shared::shutdown::grace_from_env()?,
            faults_token: shared::faults::Token::from_env()?,
        })
    }

    /// The exchanges and queues, under `AMQP_PREFIX`.
    pub fn topology(&self) -> Topology {
        Topology::new(&self.amqp.prefix)
    }

    fn listen() -> Result<SocketAddr, ConfigError> {
        config::listen("WORKER_LISTEN", "0.0.0.0:8081")
    }

    /// The admin address, for `worker healthcheck` (falls back to the default when unset or bad).
    pub fn listen_addr() -> SocketAddr {
        Self::listen().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8081)))
    }
}
