//! The jobstack worker: consumes jobs from RabbitMQ, runs their handlers, reports what happens
//! as job events and heartbeats, and dead-letters what fails for good. It speaks only AMQP (no
//! database).
//!
//! # Layout
//! - [`config`]: settings from the environment.
//! - [`kinds`]: the job handlers and their registry (one file per kind of the contract).
//! - [`context`]: what a running handler sees (`JobContext`, `JobError`).
//! - [`session`]: one broker connection's life: topology, consumers, shutdown.
//! - [`runner`]: one delivery from decode to its outcome.
//! - [`attempts`]: the attempts running here (their stops and leases) and the cancelled jobs.
//! - [`heartbeat`]: renewing the leases of running attempts, and stopping those it cannot.
//! - [`link`]: the current session's publisher, for jobs that outlive their session, and the
//!   coalescing of every job's events into few messages.
//! - [`intake`]: how many job messages to take: as many as the slots long jobs leave free.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`.

pub mod admin;
pub mod attempts;
pub mod config;
pub mod context;
pub mod heartbeat;
pub mod intake;
pub mod kinds;
pub mod link;
pub mod runner;
pub mod session;

use std::sync::Arc;

use shared::amqp::{BrokerStatus, supervise};
use shared::faults::Faults;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

use attempts::Attempts;
use jobs_contract::Topology;
use kinds::Registry;
use link::Link;

/// What every job task needs, for the life of the process.
#[derive(Debug)]
pub struct WorkerState {
    /// The worker's settings.
    pub config: Config,
    /// The exchanges and queues, under `AMQP_PREFIX`.
    pub topology: Topology,
    /// The job kinds.
    pub registry: Registry,
    /// The attempts running here, and the jobs the api cancelled.
    pub attempts: Attempts,
    /// The current session's publisher.
    pub link: Link,
    /// `WORKER_CONCURRENCY` slots: the handlers running at once, across sessions (a job whose
    /// message is acked outlives the session it came on).
    pub slots: Arc<Semaphore>,
    /// The demo's injected faults (a slow consumer, failing handlers), all off unless switched.
    pub faults: Faults,
}

impl WorkerState {
    /// Bundles the settings and kinds.
    pub fn new(config: Config, registry: Registry) -> Self {
        let topology = config.topology();
        Self {
            slots: Arc::new(Semaphore::new(usize::from(config.concurrency))),
            link: Link::new(topology.events_exchange()),
            topology,
            config,
            registry,
            attempts: Attempts::default(),
            faults: Faults::default(),
        }
    }
}

/// Runs the worker with the kinds of [`kinds::registry`] until `shutdown` is cancelled: the
/// admin server on `listener`, the heartbeat, and the broker session, reconnecting as needed.
/// Returns once in-flight jobs are done or handed back.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(listener, config, kinds::registry(), shutdown).await
}

/// [`run`] with the handlers of `registry` (a service that embeds its own kinds, or a test).
pub async fn run_with(
    listener: TcpListener,
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    shared::metrics::install("worker", &[]);
    metrics::gauge!("jobstack_worker_concurrency").set(f64::from(config.concurrency));
    let status = BrokerStatus::default();
    describe_metrics(&registry);
    let token = config.faults_token.clone();
    let state = Arc::new(WorkerState::new(config, registry));
    let admin = tokio::spawn(admin::serve(
        listener,
        status.clone(),
        state.faults.clone(),
        token,
        shutdown.clone(),
    ));
    // The heartbeat outlives the session's drain at shutdown: the attempts finishing (or saving
    // their checkpoints) then still need their leases.
    let beat_stop = CancellationToken::new();
    let beat = tokio::spawn(heartbeat::run(state.clone(), beat_stop.clone()));
    let tracker = TaskTracker::new();
    let amqp = state.config.amqp.clone();
    supervise(&amqp, "worker", status.clone(), shutdown.clone(), |conn| {
        session::run(
            conn,
            state.clone(),
            status.clone(),
            tracker.clone(),
            shutdown.clone(),
        )
    })
    .await;
    beat_stop.cancel();
    let _ = beat.await;
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
        for outcome in ["succeeded", "failed", "cancelled", "released", "snoozed"] {
            metrics::counter!("jobstack_jobs_finished_total", "kind" => kind, "outcome" => outcome)
                .absolute(0);
        }
        for reason in ["exhausted", "permanent", "version"] {
            metrics::counter!("jobstack_jobs_dead_lettered_total", "kind" => kind, "reason" => reason)
                .absolute(0);
        }
    }
    metrics::counter!("jobstack_jobs_dead_lettered_total", "kind" => "unknown", "reason" => "undecodable")
        .absolute(0);
    metrics::counter!("jobstack_amqp_reconnects_total").absolute(0);
    for result in ["confirmed", "failed"] {
        metrics::counter!("jobstack_worker_heartbeats_total", "result" => result).absolute(0);
    }
}
