//! One broker connection's life: declare the topology, consume jobs and cancel broadcasts,
//! and on shutdown stop intake, let in-flight jobs finish within the grace period, then close
//! (the broker requeues whatever is still unacked).

use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use jobs_contract::messages::ControlMessage;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use shared::amqp::{BrokerStatus, Publisher};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Config;
use crate::cancellations::Cancellations;
use crate::kinds::Registry;
use crate::runner;

/// What every job task needs, for the life of the process.
#[derive(Debug)]
pub struct Deps {
    /// The worker's settings.
    pub config: Config,
    /// The job kinds.
    pub registry: Registry,
    /// Cancel requests received.
    pub cancellations: Cancellations,
}

impl Deps {
    /// Bundles the settings and kinds.
    pub fn new(config: Config, registry: Registry) -> Self {
        Self {
            config,
            registry,
            cancellations: Cancellations::default(),
        }
    }
}

/// Consumes until `shutdown` (then drains and returns `Ok`) or until the connection fails.
pub async fn run(
    conn: lapin::Connection,
    deps: Arc<Deps>,
    status: BrokerStatus,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topology = &deps.config.amqp.topology;
    let publisher = Publisher::open(&conn, deps.config.amqp.publish_timeout).await?;
    topology
        .declare(publisher.channel())
        .await
        .context("declaring the topology")?;

    // Consume on a channel of its own: prefetch = concurrency bounds the jobs in flight.
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(deps.config.concurrency, BasicQosOptions::default())
        .await?;
    let mut jobs = channel
        .basic_consume(
            topology.jobs_queue().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let jobs_tag = jobs.tag();

    // Cancel broadcasts reach every worker through an exclusive queue of its own.
    let control_queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            control_queue.name().clone(),
            topology.control_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut control = channel
        .basic_consume(
            control_queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;

    status.set_up(true);
    tracing::info!(queue = %topology.jobs_queue(), prefetch = deps.config.concurrency, "consuming jobs");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            delivery = jobs.next() => {
                let delivery = delivery.context("job consumer closed")??;
                tracker.spawn(runner::handle(delivery, publisher.clone(), deps.clone()));
            }
            delivery = control.next() => {
                let delivery = delivery.context("control consumer closed")??;
                match serde_json::from_slice::<ControlMessage>(&delivery.data) {
                    Ok(ControlMessage::Cancel { job_id }) => {
                        tracing::info!(job.id = %job_id, "cancel requested");
                        deps.cancellations.cancel(job_id);
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring an unreadable control message"),
                }
            }
        }
    }

    // Stop intake first, so no new job starts while we drain.
    status.set_up(false);
    let _ = channel
        .basic_cancel(jobs_tag, BasicCancelOptions::default())
        .await;
    tracker.close();
    let in_flight = tracker.len();
    tracing::info!(
        in_flight,
        grace_s = deps.config.grace.as_secs(),
        "draining in-flight jobs"
    );
    if tokio::time::timeout(deps.config.grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            unfinished = tracker.len(),
            "grace period over; unfinished jobs go back to the queue"
        );
    }
    // Closing the connection hands every unacked delivery back to the broker.
    let _ = conn.close(200, "worker shutting down".into()).await;
    Ok(())
}
