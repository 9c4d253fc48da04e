//! The jobstack api: accepts jobs over HTTP, keeps their state in PostgreSQL, relays them to
//! RabbitMQ through a transactional outbox, and applies the workers' job events.
//!
//! # Layout
//! - [`startup`]: what starts, in what order, and how it all stops ([`run`]).
//! - [`config`]: settings from the environment.
//! - [`routes`]: the HTTP app; [`observe`] its telemetry middleware; [`error`] its error type and
//!   the one place where domain errors become HTTP answers; [`idempotency`] the
//!   `Idempotency-Key` header.
//! - [`accept`]: group commit of accepted jobs.
//! - [`lifecycle`]: a job's statuses and the state machine events go through.
//! - [`store`]: every SQL statement, one module per use; [`db`]: pool + migrations.
//! - [`broker`]: the RabbitMQ session, running [`relay`] (outbox → broker), [`events`]
//!   (broker → job rows) and [`leases`] (running attempts whose worker went silent).
//! - [`retention`]: deletes old finished jobs and expired idempotency keys.
//! - [`schedules`]: periodic schedules; [`scheduler`] fires them.
//! - [`workflows`]: jobs that run after other jobs (a DAG in one request).
//! - [`access`]: API keys, roles, per-client quotas and the audit trail; [`console`]: the
//!   operator console under `/ui`.
//! - [`flow`]: priorities, concurrency and rate limits, unique jobs, paused kinds: what the
//!   relay holds back, and why.

pub mod accept;
pub mod access;
pub mod broker;
pub mod config;
pub mod console;
pub mod db;
pub mod error;
pub mod events;
pub mod flow;
pub mod idempotency;
pub mod leases;
pub mod lifecycle;
pub mod observe;
pub mod relay;
pub mod retention;
pub mod routes;
pub mod scheduler;
pub mod schedules;
pub mod startup;
pub mod store;
pub mod workflows;

use std::sync::Arc;

use jobs_contract::Catalog;
use sqlx::PgPool;

pub use config::Config;
pub use startup::{run, run_with};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Settings.
    pub config: Arc<Config>,
    /// The PostgreSQL pool.
    pub db: PgPool,
    /// The broker session's status, and the relay's wake-up.
    pub broker: broker::Broker,
    /// The job kinds, to validate payloads before anything is stored (shared: the state is
    /// cloned for every request).
    pub kinds: Arc<Catalog>,
    /// Every kind's limits and uniqueness in this deployment.
    pub flow: Arc<flow::Flow>,
    /// Commits accepted jobs in groups.
    pub committer: accept::Committer,
    /// Wakes the scheduler when a schedule changes.
    pub schedules_changed: Arc<tokio::sync::Notify>,
    /// Who may do what: keys, roles, quotas.
    pub guard: access::Guard,
    /// The demo's injected faults (latency before each database connection), off unless switched.
    pub faults: shared::faults::Faults,
}
