//! The jobstack worker: consumes jobs from RabbitMQ, runs their handlers, reports what happens
//! as job events, and retries or dead-letters failures. It speaks only AMQP (no database).
//!
//! # Layout
//! - [`config`]: settings from the environment.
//! - [`kinds`]: the job handlers and their registry (one file per kind of the contract).
//! - [`context`]: what a running handler sees (`JobContext`, `JobError`).
//! - [`session`]: one broker connection's life: topology, consumers, shutdown.
//! - [`runner`]: one delivery from decode to ack.
//! - [`cancellations`]: which jobs the api asked to cancel.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`.

pub mod admin;
pub mod cancellations;
pub mod config;
pub mod context;
pub mod kinds;
pub mod runner;
pub mod session;

use std::sync::Arc;

use shared::amqp::{BrokerStatus, supervise};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

use cancellations::Cancellations;
use jobs_contract::Topology;
use kinds::Registry;

/// What every job task needs, for the life of the process.
#[derive(Debug)]
pub struct WorkerState {
    /// The worker's settings.
    pub config: Config,
    /// The exchanges and queues, under `AMQP_PREFIX`.
    pub topology: Topology,
    /// The job kinds.
    pub registry: Registry,
    /// Cancel requests received.
    pub cancellations: Cancellations,
}

impl WorkerState {
    /// Bundles the settings and kinds.
    pub fn new(config: Config, registry: Registry) -> Self {
        Self {
            topology: config.topology(),
            config,
            registry,
            cancellations: Cancellations::default(),
        }
    }
}

/// Runs the worker until `shutdown` is cancelled: the admin server on `listener`, and the
/// broker session, reconnecting as needed. Returns once in-flight jobs are done or handed back.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    shared::metrics::install("worker", &[]);
    metrics::gauge!("jobstack_worker_concurrency").set(f64::from(config.concurrency));
    let status = BrokerStatus::default();
    let admin = tokio::spawn(admin::serve(listener, status.clone(), shutdown.clone()));

    let registry = kinds::registry();
    describe_metrics(&registry);
    let state = Arc::new(WorkerState::new(config, registry));
    let tracker = TaskTracker::new();
    let url = state.config.amqp.url.clone();
    supervise(&url, "worker", status.clone(), shutdown.clone(), |conn| {
        session::run(
            conn,
            state.clone(),
            status.clone(),
            tracker.clone(),
            shutdown.clone(),
        )
    })
    .await;
    admin.await??;
    Ok(())
}

/// Creates every job series at zero, so that `rate()` sees the first increment of each kind and
/// outcome instead of a series that appears mid-burst.
fn describe_metrics(registry: &kinds::Registry) {
    for kind in registry.names() {
        metrics::counter!("jobstack_jobs_started_total", "kind" => kind).absolute(0);
        metrics::counter!("jobstack_job_retries_total", "kind" => kind).absolute(0);
        metrics::gauge!("jobstack_jobs_in_flight", "kind" => kind).set(0.0);
        for outcome in ["succeeded", "failed", "cancelled"] {
            metrics::counter!("jobstack_jobs_finished_total", "kind" => kind, "outcome" => outcome)
                .absolute(0);
        }
        for reason in ["exhausted", "permanent"] {
            metrics::counter!("jobstack_jobs_dead_lettered_total", "kind" => kind, "reason" => reason)
                .absolute(0);
        }
    }
    metrics::counter!("jobstack_jobs_dead_lettered_total", "kind" => "unknown", "reason" => "undecodable")
        .absolute(0);
    metrics::counter!("jobstack_amqp_reconnects_total").absolute(0);
}
