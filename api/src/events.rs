//! Applies job events from workers to the job rows.
//!
//! Events of one job must be applied in the order they were published, but different jobs are
//! independent: deliveries are spread over a few lanes by job id, each lane applying what has
//! queued up in it, in order, in one transaction. A lane that cannot reach PostgreSQL retries
//! the same batch with backoff (the prefetch bounds what waits behind it); an event is acked
//! only once applied or found useless. A `started` event of a job whose cancel was accepted
//! (a worker that raced the broadcast) puts the cancel back in its outbox, and a failed attempt
//! to be retried puts the job back in the outbox, due after its back-off; both wake the relay.

use std::time::Duration;

use futures_util::StreamExt as _;
use jobs_contract::messages::JobEvent;
use lapin::Consumer;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use shared::backoff::{self, Policy};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{AppState, store};

const LANES: usize = 8;
/// Unacked events the broker may push to us at once.
const PREFETCH: u16 = 512;
/// Most events one lane applies in one transaction.
const BATCH: usize = 64;

/// Starts consuming the api's events queue on a channel of its own.
pub async fn subscribe(conn: &lapin::Connection, queue: &str) -> lapin::Result<Consumer> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Applies what `consumer` delivers until `shutdown` or a broker failure.
pub async fn consume(
    mut consumer: Consumer,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let queue = state.config.topology().events_queue();
    let mut lanes = Vec::with_capacity(LANES);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..LANES {
        let (tx, rx) = mpsc::channel(usize::from(PREFETCH));
        lanes.push(tx);
        workers.spawn(lane(rx, queue.clone(), state.clone(), shutdown.clone()));
    }
    let result = loop {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            d = consumer.next() => d,
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => break Err(e.into()),
            None => break Err(anyhow::anyhow!("events consumer closed")),
        };
        match serde_json::from_slice::<JobEvent>(&delivery.data) {
            Ok(event) => {
                let lane = (event.job_id.as_u128() % LANES as u128) as usize;
                if lanes[lane].send((event, delivery)).await.is_err() {
                    break Ok(());
                }
            }
            Err(e) => {
                // Nothing can make this event readable later: drop it, loudly.
                tracing::warn!(error = %e, "ignoring an undecodable job event");
                metrics::counter!("jobstack_job_events_total", "event" => "undecodable", "result" => "ignored").increment(1);
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        }
    };
    drop(lanes);
    // Unacked events go back to the queue when the channel closes; no need to wait long.
    let _ = tokio::time::timeout(Duration::from_secs(2), workers.join_all()).await;
    result
}

async fn lane(
    mut rx: mpsc::Receiver<(JobEvent, Delivery)>,
    queue: String,
    state: AppState,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    // Under load, whatever waits in the lane is applied together: one transaction per batch
    // instead of one per event. An idle lane applies each event as it comes.
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let (events, deliveries): (Vec<JobEvent>, Vec<Delivery>) = batch.drain(..).unzip();
        let spans: Vec<tracing::Span> = events
            .iter()
            .zip(&deliveries)
            .map(|(event, delivery)| {
                let span = shared::amqp::consumer_span(&queue, delivery);
                let id = event.job_id.to_string();
                span.record("messaging.message.id", id.as_str());
                span.record("job.id", id.as_str());
                span.record("job.attempt", event.attempt);
                span.record("job.event", event.change.name());
                span
            })
            .collect();
        let Some(applied) = apply_with_retry(&state, &events, &shutdown).await else {
            return;
        };
        if applied.recancelled > 0 || applied.retried > 0 {
            state.broker.wake_relay.notify_one();
        }
        let outcomes = events
            .iter()
            .zip(deliveries)
            .zip(spans)
            .zip(applied.changed);
        for (((event, delivery), span), applied) in outcomes {
            let result = if applied { "applied" } else { "ignored" };
            span.in_scope(|| tracing::debug!(result, batch = events.len(), "job event"));
            metrics::counter!("jobstack_job_events_total", "event" => event.change.name(), "result" => result)
                .increment(1);
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                span.in_scope(|| {
                    tracing::warn!(error = %e, "event ack failed; it will be redelivered and ignored");
                });
            }
        }
    }
}

/// `Some` once applied; `None` if shutdown came first.
async fn apply_with_retry(
    state: &AppState,
    events: &[JobEvent],
    shutdown: &CancellationToken,
) -> Option<store::Applied> {
    let backoff = |attempt| state.config.retry_delay(attempt);
    let policy = Policy {
        base: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
    backoff::retry(
        policy,
        shutdown,
        || store::apply_events(&state.db, events, backoff),
        |e, _| tracing::warn!(error = %e, events = events.len(), "cannot apply job events; retrying"),
    )
    .await
}
