//! Start-up and shutdown: what runs beside the HTTP server, in what order it starts, and how
//! it stops within its budget.
//!
//! Start: metrics, the PostgreSQL pool (created and migrated, retried until it answers), the
//! declared schedules synced, the group committer, the broker session (relay + event consumer,
//! reconnecting on its own), retention and the scheduler; then the server. Stop (the token is cancelled): the server stops taking requests
//! and finishes the open ones within the grace period; then the committer answers what it was
//! handed, and the broker session, retention and the scheduler stop, within [`TEARDOWN`].
//! Whatever is still unpublished stays in the outbox for the next start. So the whole stop takes
//! at most `SHUTDOWN_GRACE_SECS` + [`TEARDOWN`] + the span flush
//! ([`shared::telemetry::FLUSH_TIMEOUT`]): deploy/k8s's check holds the pod's grace period to that
//! sum, and a process test measures it with PostgreSQL stalled.

use std::future::IntoFuture as _;
use std::sync::Arc;
use std::time::Duration;

use jobs_contract::Catalog;

/// How long the background tasks get to stop once the server has: the committer's last group is
/// one transaction, the broker session's close is bounded by [`shared::amqp::CLOSE_TIMEOUT`].
/// A stalled dependency cannot stretch it: what is cut stays in the outbox.
pub const TEARDOWN: Duration = Duration::from_secs(5);
use shared::amqp::supervise;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::accept::{self, Closer, Committer};
use crate::scheduler::{self, Scheduler};
use crate::schedules::{ScheduleRequest, declared};
use crate::{AppState, Config, access, broker, db, relay, retention, routes, store};

/// Serves the contract's kinds and the declared schedules on `listener` until `shutdown` is
/// cancelled, then stops everything it started.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let kinds = jobs_contract::kinds::catalog();
    run_with(listener, config, kinds, declared::declared(), shutdown).await
}

/// [`run`] with the kinds of `kinds` and the schedules of `schedules` (a service that embeds its
/// own, or a test). An invalid declared schedule stops the start with its name and field.
pub async fn run_with(
    listener: TcpListener,
    config: Config,
    kinds: Catalog,
    schedules: Vec<ScheduleRequest>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    init_metrics(&kinds);
    // Checked before anything starts, so a bad one stops the start at once; their first fire
    // times are counted once PostgreSQL answers (it may take a while).
    check_declared(&schedules, &kinds)?;
    let flow = config.flow(&kinds)?;
    let grace = config.grace;
    let (state, background) = start(config, kinds, flow, &schedules, &shutdown).await?;
    serve(listener, state, &shutdown, grace).await?;
    // Jobs handed over before this are committed and answered; a request still open gets 503.
    // Whatever is still waiting after TEARDOWN is dropped: the outbox keeps what the relay did
    // not publish.
    match tokio::time::timeout(TEARDOWN, background.stop()).await {
        Ok(stopped) => stopped,
        Err(_) => {
            tracing::warn!(
                teardown_secs = TEARDOWN.as_secs(),
                "shutdown still waiting after its teardown budget; exiting"
            );
            Ok(())
        }
    }
}

/// The declared schedules, checked against the kinds, with their first fire times from now.
fn check_declared(
    schedules: &[ScheduleRequest],
    kinds: &Catalog,
) -> anyhow::Result<Vec<crate::schedules::NewSchedule>> {
    let now = chrono::Utc::now();
    schedules
        .iter()
        .map(|s| {
            s.check(kinds, now)
                .map_err(|e| anyhow::anyhow!("declared schedule {:?}: {e}", s.name))
        })
        .collect()
}

/// Every series at zero from the start, so `rate()` sees the first increment.
fn init_metrics(kinds: &Catalog) {
    shared::metrics::install(
        "api",
        &[accept::batch_buckets(), scheduler::lateness_buckets()],
    );
    for kind in kinds.names() {
        metrics::counter!("jobstack_jobs_created_total", "kind" => kind).absolute(0);
        metrics::counter!("jobstack_jobs_redriven_total", "kind" => kind).absolute(0);
        metrics::counter!("jobstack_job_leases_lapsed_total", "kind" => kind).absolute(0);
        metrics::counter!("jobstack_jobs_deduplicated_total", "kind" => kind).absolute(0);
        for reason in ["concurrency", "rate", "paused"] {
            metrics::counter!("jobstack_jobs_held_total", "kind" => kind, "reason" => reason)
                .absolute(0);
        }
    }
    metrics::counter!("jobstack_heartbeats_total").absolute(0);
    for event in jobs_contract::messages::JobChange::NAMES {
        for result in ["applied", "ignored"] {
            metrics::counter!("jobstack_job_events_total", "event" => event, "result" => result)
                .absolute(0);
        }
    }
    metrics::counter!("jobstack_outbox_published_total").absolute(0);
    metrics::counter!("jobstack_cancels_published_total").absolute(0);
    metrics::counter!("jobstack_amqp_reconnects_total").absolute(0);
    metrics::gauge!("jobstack_schedules_late").set(0.0);
    metrics::counter!("jobstack_workflows_created_total").absolute(0);
    for status in ["running", "succeeded", "failed", "cancelled"] {
        metrics::gauge!("jobstack_workflows", "status" => status).set(0.0);
    }
}

/// What runs beside the server, to stop after it.
struct Background {
    committer: Closer,
    session: JoinHandle<()>,
    retention: JoinHandle<()>,
    scheduler: JoinHandle<()>,
}

impl Background {
    async fn stop(self) -> anyhow::Result<()> {
        self.committer.close().await;
        self.session.await?;
        self.retention.await?;
        self.scheduler.await?;
        Ok(())
    }
}

/// Connects to PostgreSQL, syncs the declared schedules, and starts the committer, the broker
/// session, retention and the scheduler.
async fn start(
    config: Config,
    kinds: Catalog,
    flow: crate::flow::Flow,
    schedules: &[ScheduleRequest],
    shutdown: &CancellationToken,
) -> anyhow::Result<(AppState, Background)> {
    let faults = shared::faults::Faults::default();
    let db = db::connect(&config, &faults, shutdown).await?;
    let schedules = check_declared(schedules, &kinds)?;
    let synced = store::schedules::sync(&db, &schedules).await?;
    tracing::info!(
        declared = schedules.len(),
        upserted = synced.upserted,
        removed = synced.removed,
        "declared schedules synced"
    );
    let guard = guard(&config, &db).await?;
    relay::record_backlog(&db).await;
    relay::record_flow(&db, &flow).await;
    let broker = broker::Broker::default();
    let (committer, closer) = Committer::start(db.clone(), broker.wake_relay.clone());
    let state = AppState {
        config: Arc::new(config),
        db,
        broker,
        kinds: Arc::new(kinds),
        flow: Arc::new(flow),
        committer,
        schedules_changed: Arc::default(),
        guard,
        faults,
    };
    let session = {
        let (state, shutdown) = (state.clone(), shutdown.clone());
        tokio::spawn(async move {
            let amqp = state.config.amqp.clone();
            let status = state.broker.status.clone();
            supervise(&amqp, "api", status, shutdown.clone(), |conn| {
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
    let scheduler = Scheduler {
        db: state.db.clone(),
        grace: state.config.misfire_grace,
        kinds: state.kinds.clone(),
        wake_relay: state.broker.wake_relay.clone(),
        changed: state.schedules_changed.clone(),
    };
    let scheduler = tokio::spawn(scheduler.run(shutdown.clone()));
    let background = Background {
        committer: closer,
        session,
        retention,
        scheduler,
    };
    Ok((state, background))
}

/// The access layer: API keys (the demo key registered if there is one), or, with `API_AUTH=off`,
/// no checks at all, said once at start-up.
async fn guard(config: &Config, db: &sqlx::PgPool) -> anyhow::Result<access::Guard> {
    if config.auth == access::Mode::Off {
        tracing::warn!(
            "API_AUTH=off: authentication is disabled and every caller is an admin; \
             for local development only"
        );
    }
    if let Some(secret) = &config.demo_key {
        let digest = access::keys::digest(secret);
        let hint = access::keys::hint(secret);
        store::keys::ensure(
            db,
            &store::keys::NewKey {
                name: "demo",
                role: access::Role::Admin,
                digest: &digest,
                hint: &hint,
                submit_rate: None,
                max_in_flight: None,
                expires_at: None,
                created_by: store::keys::FROM_CONFIG,
            },
        )
        .await?;
        tracing::info!(key = %hint, "demo key registered (API_DEMO_KEY; unset it in a deployment)");
    }
    Ok(access::Guard::new(
        access::Keys::new(db.clone()),
        access::Quotas::new(config.client_quota),
        config.auth,
    ))
}

/// Serves until `shutdown`, then lets open requests finish within `grace`, and no longer: a
/// client that never completes its request must not keep the process from exiting.
async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: &CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let server = axum::serve(listener, routes::app(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = server => served?,
        () = deadline => tracing::warn!(
            grace_secs = grace.as_secs(),
            "requests still open after the grace period; closing them"
        ),
    }
    Ok(())
}
