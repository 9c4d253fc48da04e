//! The broker settings every service reads, once, the same way.

use std::time::Duration;

use crate::config::{self, ConfigError};

/// `AMQP_URL`, `AMQP_PREFIX` and `PUBLISH_TIMEOUT_MS`: what a service needs to reach the broker
/// and find the others' queues.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `AMQP_URL` (`amqp://` only; printed with the password redacted).
    pub url: String,
    /// `AMQP_PREFIX`: every exchange and queue name starts with it.
    pub prefix: String,
    /// `PUBLISH_TIMEOUT_MS`: how long to wait for a broker confirm.
    pub publish_timeout: Duration,
}

impl Settings {
    /// Reads and checks the variables; the error names the first bad one.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            url: config::amqp_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")?,
            prefix: config::string("AMQP_PREFIX", "jobstack"),
            publish_timeout: config::millis("PUBLISH_TIMEOUT_MS", 5000, 10)?,
        })
    }
}
