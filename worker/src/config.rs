//! The worker's settings, from the environment (see README "Configuration").

use std::net::SocketAddr;
use std::time::Duration;

use shared::amqp::Topology;
use shared::config::{self, ConfigError};

/// Everything the worker can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// `AMQP_URL`.
    pub amqp_url: String,
    /// `WORKER_LISTEN`: the admin server (`/healthz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
    /// `WORKER_CONCURRENCY`: jobs run at once, which is also the prefetch.
    pub concurrency: u16,
    /// `AMQP_PREFIX`, `MAX_ATTEMPTS`, `RETRY_BASE_MS`: names and retry policy.
    pub topology: Topology,
    /// `JOB_DEADLINE_SECS`: caps every kind's own deadline; keep RabbitMQ's consumer timeout
    /// above it.
    pub deadline: Duration,
    /// `SHUTDOWN_GRACE_SECS`: how long in-flight jobs may finish after a signal.
    pub grace: Duration,
    /// `PUBLISH_TIMEOUT_MS`: how long to wait for a broker confirm.
    pub publish_timeout: Duration,
}

impl Config {
    /// Reads and checks every variable; the error names the first bad one.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            amqp_url: config::amqp_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")?,
            listen: Self::listen()?,
            concurrency: config::ranged("WORKER_CONCURRENCY", 8, 1, 1000)?,
            topology: Topology::new(
                &config::string("AMQP_PREFIX", "jobstack"),
                config::ranged("MAX_ATTEMPTS", 3, 1, 100)?,
                config::millis("RETRY_BASE_MS", 1000, 1)?,
            ),
            deadline: config::seconds("JOB_DEADLINE_SECS", 600)?,
            grace: config::seconds("SHUTDOWN_GRACE_SECS", 25)?,
            publish_timeout: config::millis("PUBLISH_TIMEOUT_MS", 5000, 10)?,
        })
    }

    fn listen() -> Result<SocketAddr, ConfigError> {
        config::listen("WORKER_LISTEN", "0.0.0.0:8081")
    }

    /// The admin address, for `worker healthcheck` (falls back to the default when unset or bad).
    pub fn listen_addr() -> SocketAddr {
        Self::listen().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8081)))
    }
}
