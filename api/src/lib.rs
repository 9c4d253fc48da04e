//! The jobstack api: accepts jobs over HTTP, keeps their state in PostgreSQL, relays them to
//! RabbitMQ through a transactional outbox, and applies the workers' job events.
//!
//! # Layout
//! - [`config`]: settings from the environment.
//! - [`accept`]: group commit of accepted jobs.
//! - [`routes`]: the HTTP app; [`observe`] its telemetry middleware; [`error`] its error type;
//!   [`idempotency`] the `Idempotency-Key` header.
//! - [`store`]: every SQL statement; [`state`]: the job state machine; [`db`]: pool + migrations.
//! - [`broker`]: the RabbitMQ session, running [`relay`] (outbox → broker) and [`events`]
//!   (broker → job rows).
//! - [`retention`]: deletes old finished jobs and expired idempotency keys.

pub mod accept;
pub mod broker;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod observe;
pub mod relay;
pub mod retention;
pub mod routes;
pub mod state;
pub mod store;

use std::future::IntoFuture as _;
use std::sync::Arc;

use jobs_contract::Catalog;
use shared::amqp::supervise;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Settings.
    pub config: Arc<Config>,
    /// The PostgreSQL pool.
    pub db: PgPool,
    /// The broker session's status, and the relay's wake-up.
    pub broker: broker::Broker,
    /// The job kinds, to validate payloads before anything is stored.
    pub kinds: Catalog,
    /// Commits accepted jobs in groups.
    pub committer: accept::Committer,
}

/// Serves on `listener` until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    shared::metrics::install("api");
    let kinds = jobs_contract::kinds::catalog();
    // Every series at zero from the start, so `rate()` sees the first increment.
    for kind in kinds.names() {
        metrics::counter!("jobstack_jobs_created_total", "kind" => kind).absolute(0);
        metrics::counter!("jobstack_jobs_redriven_total", "kind" => kind).absolute(0);
    }
    for event in ["started", "progress", "succeeded", "failed", "cancelled"] {
        for result in ["applied", "ignored"] {
            metrics::counter!("jobstack_job_events_total", "event" => event, "result" => result)
                .absolute(0);
        }
    }
    metrics::counter!("jobstack_outbox_published_total").absolute(0);
    metrics::counter!("jobstack_cancels_published_total").absolute(0);
    metrics::counter!("jobstack_amqp_reconnects_total").absolute(0);
    let db = db::connect(&config, &shutdown).await?;
    let broker = broker::Broker::default();
    let (committer, closer) = accept::Committer::start(db.clone(), broker.wake_relay.clone());
    let state = AppState {
        config: Arc::new(config),
        db,
        broker,
        kinds,
        committer,
    };
    let session = {
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let url = state.config.amqp.url.clone();
            let status = state.broker.status.clone();
            supervise(&url, "api", status, shutdown.clone(), |conn| {
                broker::session(conn, state.clone(), shutdown.clone())
            })
            .await;
        })
    };
    let retention = tokio::spawn(retention::run(
        state.db.clone(),
        state.config.retention,
        state.config.retention_interval,
        shutdown.clone(),
    ));
    let grace = state.config.grace;
    let server = axum::serve(listener, routes::app(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    // In-flight requests may finish within the grace period, and no longer: a client that never
    // completes its request must not keep the process from exiting.
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = server => served?,
        () = deadline => tracing::warn!(grace_secs = grace.as_secs(), "requests still open after the grace period; closing them"),
    }
    // Jobs handed over before this are committed and answered; a request still open gets 503.
    // The rest of the teardown is bounded too: whatever is still waiting after another grace
    // period is dropped (the outbox keeps what the relay did not publish).
    let teardown = async {
        closer.close().await;
        session.await?;
        retention.await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(grace, teardown).await {
        Ok(done) => done,
        Err(_) => {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "shutdown still waiting after the grace period; exiting"
            );
            Ok(())
        }
    }
}
