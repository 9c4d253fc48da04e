//! The broker settings every service reads, once, the same way.

use std::time::Duration;

use crate::config::{self, ConfigError};

/// `AMQP_URL`, `AMQP_CA_FILE`, `AMQP_PREFIX` and `PUBLISH_TIMEOUT_MS`: what a service needs to
/// reach the broker and find the others' queues.
#[derive(Clone)]
pub struct Settings {
    /// `AMQP_URL`: `amqp://`, or `amqps://` for TLS (never printed with its password).
    pub url: String,
    /// The PEM of `AMQP_CA_FILE`: certificate authorities trusted for `amqps://` besides the
    /// public roots (a cluster's own CA, as cert-manager issues it).
    pub ca: Option<String>,
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
            ca: config::pem_certificates("AMQP_CA_FILE")?,
            prefix: config::string("AMQP_PREFIX", "jobstack"),
            publish_timeout: config::millis("PUBLISH_TIMEOUT_MS", 5000, 10)?,
        })
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &config::redact_url(&self.url))
            .field("ca", &self.ca.as_ref().map(|_| "PEM"))
            .field("prefix", &self.prefix)
            .field("publish_timeout", &self.publish_timeout)
            .finish()
    }
}
