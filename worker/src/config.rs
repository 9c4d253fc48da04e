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
    /// `MAX_ATTEMPTS`: attempts a job gets; a transient failure of the last one is final (the
    /// job is dead-lettered and fails). The api schedules each retry, after its back-off.
    pub max_attempts: u32,
    /// `WORKER_LISTEN`: the admin server (`/healthz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
    /// `WORKER_CONCURRENCY`: jobs run at once, which is also the prefetch.
    pub concurrency: u16,
    /// `JOB_DEADLINE_SECS`: caps every kind's own deadline; keep RabbitMQ's consumer timeout
    /// above it.
    pub deadline: Duration,
    /// `SHUTDOWN_GRACE_SECS`: how long in-flight jobs may finish after a signal.
    pub grace: Duration,
}

impl Config {
    /// Reads and checks every variable; the error names the first bad one.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            amqp: amqp::Settings::from_env()?,
            max_attempts: config::ranged("MAX_ATTEMPTS", 3, 1, 100)?,
            listen: Self::listen()?,
            concurrency: config::ranged("WORKER_CONCURRENCY", 8, 1, 1000)?,
            deadline: config::seconds("JOB_DEADLINE_SECS", 600)?,
            grace: shared::shutdown::grace_from_env()?,
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
