//! The broker settings every service reads, once, the same way.

use std::time::Duration;

use super::Topology;
use crate::config::{self, ConfigError};

/// `AMQP_URL`, `AMQP_PREFIX`, `MAX_ATTEMPTS`, `RETRY_BASE_MS` and `PUBLISH_TIMEOUT_MS`: what a
/// service needs to reach the broker and agree with the others on names and retries.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `AMQP_URL` (`amqp://` only; printed with the password redacted).
    pub url: String,
    /// `AMQP_PREFIX`, `MAX_ATTEMPTS`, `RETRY_BASE_MS`: the names both services agree on.
    pub topology: Topology,
    /// `PUBLISH_TIMEOUT_MS`: how long to wait for a broker confirm.
    pub publish_timeout: Duration,
}

impl Settings {
    /// Reads and checks the variables; the error names the first bad one.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            url: config::amqp_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")?,
            topology: Topology::new(
                &config::string("AMQP_PREFIX", "jobstack"),
                config::ranged("MAX_ATTEMPTS", 3, 1, 100)?,
                config::millis("RETRY_BASE_MS", 1000, 1)?,
            ),
            publish_timeout: config::millis("PUBLISH_TIMEOUT_MS", 5000, 10)?,
        })
    }
}
