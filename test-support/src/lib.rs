//! Helpers every test suite of the workspace uses (a dev-dependency only).
//!
//! - [`services`]: where the test PostgreSQL and RabbitMQ are (`TEST_DATABASE_URL`,
//!   `TEST_AMQP_URL`), and URLs that reach them through a local port.
//! - [`net`]: a free port, and a TCP [`net::Proxy`] in front of a real server that a test can cut.
//! - [`cleanup`]: removing a test's queues, exchanges and database — also from `Drop`, so a
//!   failed assertion leaves nothing behind.
//! - [`wait_until`]: wait on a condition, never a fixed sleep.
//! - [`queues`]: draining a queue (the dead letters) to look at it.
//! - [`metrics`]: reading `/metrics` strictly, and requiring a process per test.
//! - [`otlp`]: an OTLP trace receiver (gRPC and HTTP/protobuf) that keeps what it is sent.

pub mod cleanup;
pub mod metrics;
pub mod net;
pub mod otlp;
pub mod queues;
pub mod services;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `binary healthcheck` as compose's health check does: nothing in its environment but
/// `listen_var=listen`, and bounded by compose's `timeout` (panics past it).
pub async fn healthcheck(binary: &str, listen_var: &str, listen: &str) -> std::process::Output {
    let run = tokio::process::Command::new(binary)
        .arg("healthcheck")
        .env_clear()
        .env(listen_var, listen)
        .output();
    tokio::time::timeout(shared::probe::COMPOSE_TIMEOUT, run)
        .await
        .expect("the probe answers within compose's health check timeout")
        .expect("the binary runs")
}
