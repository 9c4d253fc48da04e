//! Applies job events and heartbeats from workers to the job rows.
//!
//! A message carries one event or, from a busy worker, the events of many jobs (an
//! `EventBatch`). Events of one job must be applied in the order they were published; different
//! jobs are independent. So events go to one of `APPLIERS` appliers by job id, each taking
//! them in the order they came and applying whatever has queued up meanwhile in one
//! transaction: an idle api applies each event as it comes, a busy one hundreds per commit. Two,
//! not one and not eight (measured: docs/adr/0003-event-batches.md): many appliers make small
//! transactions whose commits cost a busy machine more CPU than their parallelism saves; one
//! caps what is applied at what one PostgreSQL backend can write (10,000 long jobs report more
//! progress and checkpoints than that). An applier retries a batch PostgreSQL refused with
//! backoff (the prefetch bounds what waits behind it); a message is acked only once each of its
//! events is applied or found useless. A `started` event of a job whose cancel was accepted (a
//! worker that raced the broadcast) puts the cancel back in its outbox; a failed attempt to be
//! retried, or one handed back, puts the job back in the outbox; both wake the relay.
//!
//! A worker's heartbeat (one message naming every attempt it runs) renews those attempts'
//! leases in one statement, beside the appliers: it carries no order with the events. What has
//! been received and not yet applied is counted, so that the lease reaper never gives up an
//! attempt whose sign of life is still on its way in (see [`crate::leases`]).
//!
//! Traces stay bounded however long a job runs: progress events and heartbeats are applied
//! without a span of their own; every other event gets one, a child of the worker's publish.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use jobs_contract::messages::{
    BatchedEvent, EventBatch, HEARTBEAT_ROUTING_KEY, Heartbeat, JobChange, JobEvent,
};
use lapin::Consumer;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use shared::backoff::{self, Policy};
use shared::telemetry::propagation;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::events::Timing;
use crate::{AppState, store};

/// Appliers, each applying the events of its share of the jobs in order.
const APPLIERS: usize = 2;
/// Unacked events the broker may push to us at once.
const PREFETCH: u16 = 512;
/// Most events applied in one transaction.
const BATCH: usize = 256;

/// When each delivery this session holds was published (by its worker's clock, the AMQP
/// `timestamp`, whole seconds), until it is applied (or found useless) and acked: the lease
/// reaper gives up only attempts whose lease lapsed before the oldest of these was sent, so a
/// renewal on its way in always counts, however long it waited in the queue (an api that was
/// down, or lagging).
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<InFlightInner>>);

#[derive(Debug, Default)]
struct InFlightInner {
    next: u64,
    published: BTreeMap<u64, DateTime<Utc>>,
}

impl InFlight {
    /// When the oldest delivery still held was published, if any.
    pub fn oldest(&self) -> Option<DateTime<Utc>> {
        let inner = self.0.lock().expect("not poisoned");
        inner.published.values().next().copied()
    }

    fn add(&self, delivery: &Delivery) -> u64 {
        let published = delivery
            .properties
            .timestamp()
            .and_then(|secs| DateTime::from_timestamp(secs as i64, 0))
            .unwrap_or_else(Utc::now);
        let mut inner = self.0.lock().expect("not poisoned");
        let seq = inner.next;
        inner.next += 1;
        inner.published.insert(seq, published);
        seq
    }

    fn done(&self, seq: u64) {
        self.0.lock().expect("not poisoned").published.remove(&seq);
    }
}

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

/// Applies what `consumer` delivers until `shutdown` or a broker failure, counting in
/// `in_flight` what it holds (one count per session: a session that ends hands its unacked
/// deliveries back to the broker).
pub async fn consume(
    mut consumer: Consumer,
    state: AppState,
    in_flight: InFlight,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let queue = state.config.topology().events_queue();
    let mut workers = tokio::task::JoinSet::new();
    let mut appliers = Vec::with_capacity(APPLIERS);
    for _ in 0..APPLIERS {
        let (tx, rx) = mpsc::channel(usize::from(PREFETCH));
        appliers.push(tx);
        workers.spawn(apply(
            rx,
            state.clone(),
            in_flight.clone(),
            shutdown.clone(),
        ));
    }
    let (beats, beats_rx) = mpsc::channel(usize::from(PREFETCH));
    workers.spawn(heartbeats(
        beats_rx,
        state.clone(),
        in_flight.clone(),
        shutdown.clone(),
    ));
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
        let held = Held {
            seq: in_flight.add(&delivery),
            delivery,
        };
        let routing_key = held.delivery.routing_key.as_str();
        let sent = if routing_key == HEARTBEAT_ROUTING_KEY {
            match serde_json::from_slice::<Heartbeat>(&held.delivery.data) {
                Ok(beat) => beats.send((beat, held)).await.is_ok(),
                Err(e) => {
                    undecodable(held, "heartbeat", &e, &in_flight).await;
                    true
                }
            }
        } else {
            match EventBatch::read(routing_key, &held.delivery.data) {
                Ok(batch) => dispatch(batch, held, &queue, &appliers, &in_flight).await,
                Err(e) => {
                    undecodable(held, "undecodable", &e, &in_flight).await;
                    true
                }
            }
        };
        if !sent {
            break Ok(());
        }
    };
    drop((appliers, beats));
    // Unacked events go back to the queue when the channel closes; no need to wait long.
    let _ = tokio::time::timeout(Duration::from_secs(2), workers.join_all()).await;
    result
}

/// A delivery, and its place among those held.
struct Held {
    seq: u64,
    delivery: Delivery,
}

impl Held {
    /// Acks it, and it is no longer held.
    async fn ack(self, in_flight: &InFlight) -> lapin::Result<()> {
        let acked = self.delivery.acker.ack(BasicAckOptions::default()).await;
        in_flight.done(self.seq);
        acked.map(drop)
    }
}

/// One event of a delivery that may carry several: the delivery is acked once the last of
/// its events is applied (or found useless).
struct Part(Arc<Held>);

impl Part {
    /// Splits `held` into `n` parts.
    fn split(held: Held, n: usize) -> impl Iterator<Item = Self> {
        let held = Arc::new(held);
        (0..n).map(move |_| Self(held.clone()))
    }

    /// This event is done with; the last one acks the delivery.
    async fn done(self, in_flight: &InFlight) -> lapin::Result<()> {
        match Arc::into_inner(self.0) {
            Some(held) => held.ack(in_flight).await,
            None => Ok(()),
        }
    }
}

/// One event on its way to its job's applier.
struct Routed {
    event: JobEvent,
    span: Option<tracing::Span>,
    part: Part,
}

/// Sends each event of `batch` to its job's applier; `false` once they are gone (shutdown).
async fn dispatch(
    batch: EventBatch,
    held: Held,
    queue: &str,
    appliers: &[mpsc::Sender<Routed>],
    in_flight: &InFlight,
) -> bool {
    if batch.events.is_empty() {
        let _ = held.ack(in_flight).await;
        return true;
    }
    let spans: Vec<Option<tracing::Span>> = batch
        .events
        .iter()
        .map(|e| event_span(queue, e, &held.delivery))
        .collect();
    let parts = Part::split(held, batch.events.len());
    for ((batched, span), part) in batch.events.into_iter().zip(spans).zip(parts) {
        let event = batched.event;
        let applier = &appliers[(event.job_id.as_u128() % APPLIERS as u128) as usize];
        if applier.send(Routed { event, span, part }).await.is_err() {
            return false;
        }
    }
    true
}

/// Nothing can make this message readable later: drop it, loudly.
async fn undecodable(held: Held, what: &'static str, e: &serde_json::Error, in_flight: &InFlight) {
    tracing::warn!(error = %e, what, "ignoring an undecodable message on the events queue");
    metrics::counter!("jobstack_job_events_total", "event" => what, "result" => "ignored")
        .increment(1);
    let _ = held.ack(in_flight).await;
}

/// Applies the events `rx` brings, in order, each batch in one transaction, and acks their
/// messages (the last event of a message acks it).
async fn apply(
    mut rx: mpsc::Receiver<Routed>,
    state: AppState,
    in_flight: InFlight,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let routed: Vec<Routed> = std::mem::take(&mut batch);
        let events: Vec<JobEvent> = routed.iter().map(|r| r.event.clone()).collect();
        let Some(applied) = apply_with_retry(&state, &events, &shutdown).await else {
            return;
        };
        // An attempt that ended may have released jobs of a workflow (the trigger queued them
        // in this batch's transaction): publish them now, not at the relay's next poll.
        let ended = events.iter().zip(&applied.changed).any(|(event, changed)| {
            *changed
                && matches!(
                    event.change,
                    JobChange::Succeeded { .. } | JobChange::Failed { .. } | JobChange::Cancelled
                )
        });
        if ended || applied.recancelled > 0 || applied.requeued > 0 {
            state.broker.wake_relay.notify_one();
        }
        for (routed, applied) in routed.into_iter().zip(applied.changed) {
            let result = if applied { "applied" } else { "ignored" };
            let span = routed.span.unwrap_or_else(tracing::Span::none);
            span.in_scope(|| tracing::debug!(result, batch = events.len(), "job event"));
            metrics::counter!("jobstack_job_events_total", "event" => routed.event.change.name(), "result" => result)
                .increment(1);
            if let Err(e) = routed.part.done(&in_flight).await {
                span.in_scope(|| {
                    tracing::warn!(error = %e, "event ack failed; it will be redelivered and ignored");
                });
            }
        }
    }
}

/// The consumer span of an event, a child of the span that reported it (named in the batch,
/// or, for an event sent alone, in the message headers); none for progress, whose count grows
/// with the job's length.
fn event_span(queue: &str, batched: &BatchedEvent, delivery: &Delivery) -> Option<tracing::Span> {
    let event = &batched.event;
    if matches!(event.change, JobChange::Progress { .. }) {
        return None;
    }
    let span = match &batched.traceparent {
        Some(parent) => shared::amqp::process_span(
            queue,
            delivery.routing_key.as_str(),
            propagation::from_traceparent(parent),
        ),
        None => shared::amqp::consumer_span(queue, delivery),
    };
    let id = event.job_id.to_string();
    span.record("messaging.message.id", id.as_str());
    span.record("job.id", id.as_str());
    span.record("job.attempt", event.attempt);
    span.record("job.event", event.change.name());
    Some(span)
}

/// Renews the leases each heartbeat names, then acks it.
async fn heartbeats(
    mut rx: mpsc::Receiver<(Heartbeat, Held)>,
    state: AppState,
    in_flight: InFlight,
    shutdown: CancellationToken,
) {
    let policy = Policy {
        base: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
    while let Some((beat, held)) = rx.recv().await {
        let renewed = backoff::retry(
            policy,
            &shutdown,
            || store::leases::renew(&state.db, &beat.running, state.config.lease),
            |e, _| tracing::warn!(error = %e, "cannot renew leases; retrying"),
        )
        .await;
        let Some(renewed) = renewed else { return };
        metrics::counter!("jobstack_heartbeats_total").increment(1);
        tracing::trace!(running = beat.running.len(), renewed, "worker heartbeat");
        let _ = held.ack(&in_flight).await;
    }
}

/// `Some` once applied; `None` if shutdown came first.
async fn apply_with_retry(
    state: &AppState,
    events: &[JobEvent],
    shutdown: &CancellationToken,
) -> Option<store::Applied> {
    let backoff = |failures| state.config.retry_delay(failures);
    let timing = Timing {
        backoff: &backoff,
        lease: state.config.lease,
    };
    let policy = Policy {
        base: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
    backoff::retry(
        policy,
        shutdown,
        || store::apply_events(&state.db, events, &timing),
        |e, _| tracing::warn!(error = %e, events = events.len(), "cannot apply job events; retrying"),
    )
    .await
}
