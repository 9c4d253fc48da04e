//! The outbox relay: publishes committed jobs to RabbitMQ and takes them out of the outbox.
//!
//! Why an outbox: the 202 promises the job will run, so it must not depend on the broker being
//! up at that moment, nor on the api surviving the next millisecond. The handler only commits
//! the job and its `outbox` entry; this loop publishes due entries' jobs in batches with
//! pipelined confirms (an order of magnitude faster than a confirm per request) and deletes the
//! entries only after the broker confirmed them. A crash between the two publishes a job twice,
//! which at-least-once delivery allows.
//!
//! A delayed job, and a failed attempt's retry, wait in the outbox until their `run_at`: the
//! relay publishes only due rows and, when idle, sleeps until the earliest one is due. Each
//! message names its attempt: one more than the attempts the job has started. Cancels have an
//! outbox of their own (a flag on the row), published the same way to the control stream (see
//! `worker::session`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use jobs_contract::Topology;
use jobs_contract::messages::{Checkpoint, ControlMessage, JobMessage};
use shared::amqp::{Outgoing, Publisher, producer_span};
use shared::telemetry::propagation;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::Broker;
use crate::flow::{Flow, gate};
use crate::store::outbox;

/// Rows per batch: large enough to amortise the round trips, small enough to bound the time a
/// batch holds its row locks.
const BATCH: i64 = 256;

/// How often the outbox gauges are refreshed at most: counting is a scan of the outbox, and the
/// relay may be woken thousands of times a second.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// The relay's rounds over the cancel outbox. A request that accepted a cancel waits for a
/// round that began after its commit to end: its 202 then comes once the cancel is in the
/// control stream (while the broker is up), so a worker that takes the job after the answer,
/// even one that connects only then, skips it. Without the wait, a job's message handed out
/// between the 202 and the relay's next round would run (its outcome ignored, the job staying
/// `cancelled`, but its handler run).
#[derive(Debug)]
pub struct CancelRounds {
    begun: AtomicU64,
    ended: watch::Sender<u64>,
}

impl Default for CancelRounds {
    fn default() -> Self {
        Self {
            begun: AtomicU64::new(0),
            ended: watch::channel(0).0,
        }
    }
}

impl CancelRounds {
    /// A round begins: its number.
    fn begin(&self) -> u64 {
        self.begun.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Round `round` published every cancel it found.
    fn end(&self, round: u64) {
        self.ended.send_if_modified(|ended| {
            let later = round > *ended;
            if later {
                *ended = round;
            }
            later
        });
    }

    /// Wakes the relay and waits, at most `bound`, for a round that begins from now to end;
    /// whether one did (not if the broker or PostgreSQL failed it, or another api replica's
    /// relay holds the cancel).
    pub async fn next(&self, wake: &Notify, bound: Duration) -> bool {
        let mut ended = self.ended.subscribe();
        let after = self.begun.load(Ordering::SeqCst);
        wake.notify_one();
        tokio::time::timeout(bound, ended.wait_for(|ended| *ended > after))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }
}

/// Publishes outbox entries and cancels until `shutdown`, then flushes once more; returns an
/// error when the broker failed us (the caller reconnects). `broker.wake_relay` is notified
/// after each accepted job or cancel; each round over the cancels is counted in
/// `broker.cancel_rounds`.
pub async fn run(
    db: PgPool,
    publisher: Publisher,
    dispatch: Dispatch,
    flow: Arc<Flow>,
    broker: Broker,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut gauges_at: Option<Instant> = None;
    if flow.any_limit() {
        // A limit may have been raised since the last start: every job waiting for a slot is
        // looked at again now, not when a slot frees.
        if let Err(e) = crate::store::flow::wake_held(&db).await {
            tracing::warn!(error = %e, "could not wake the jobs waiting for a slot");
        }
    }
    loop {
        for relay in [Relay::Jobs, Relay::Cancels] {
            let round = matches!(relay, Relay::Cancels).then(|| broker.cancel_rounds.begin());
            loop {
                match relay_batch(relay, &db, &publisher, &dispatch, &flow).await {
                    Ok(n) if n < BATCH as usize => {
                        if let Some(round) = round {
                            broker.cancel_rounds.end(round);
                        }
                        break;
                    }
                    Ok(_) => continue,
                    Err(Failure::Database(e)) => {
                        tracing::warn!(error = %e, "outbox relay cannot reach PostgreSQL; will retry");
                        break;
                    }
                    Err(Failure::Broker(e)) => return Err(e),
                }
            }
        }
        if gauges_at.is_none_or(|at| at.elapsed() >= GAUGE_INTERVAL) {
            record_backlog(&db).await;
            record_flow(&db, &flow).await;
            gauges_at = Some(Instant::now());
        }
        if shutdown.is_cancelled() {
            // The loop above was the final flush: jobs committed before the signal are out.
            return Ok(());
        }
        // Until the earliest delayed job is due, if that comes before the next poll.
        let nap = match outbox::next_due(&db).await {
            Ok(Some(due)) => (due - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(interval),
            _ => interval,
        };
        tokio::select! {
            () = broker.wake_relay.notified() => {},
            () = tokio::time::sleep(nap) => {},
            () = shutdown.cancelled() => {},
        }
    }
}

/// Where jobs go, and what every attempt is told: its retry budget and its lease.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// The exchanges.
    pub topology: Topology,
    /// `MAX_ATTEMPTS`: a transient failure of the last of these is final.
    pub max_attempts: u32,
    /// `JOB_LEASE_SECS`: how long an attempt may go without a heartbeat.
    pub lease: Duration,
}

/// Sets the outbox gauges from PostgreSQL (what is due, what waits for its `run_at`); the api
/// also calls it at start-up, so the series exist before the broker is reached.
pub async fn record_backlog(db: &PgPool) {
    if let Ok(outbox) = outbox::backlog(db).await {
        metrics::gauge!("jobstack_outbox_backlog").set(outbox.due as f64);
        metrics::gauge!("jobstack_jobs_scheduled").set(outbox.scheduled as f64);
    }
}

/// Sets the flow-control gauges: per kind, whether it is paused, the slots in use and the jobs
/// held, by reason (every kind and reason, at zero too, so a panel's series never vanish).
pub async fn record_flow(db: &PgPool, flow: &Flow) {
    let (Ok(usage), Ok(paused)) = (
        crate::store::flow::usage(db).await,
        crate::store::flow::paused(db).await,
    ) else {
        return;
    };
    for (kind, _) in flow.iter() {
        let u = usage.get(kind);
        let is_paused = paused.iter().any(|(k, _)| k == kind);
        metrics::gauge!("jobstack_kind_paused", "kind" => kind.to_owned())
            .set(f64::from(u8::from(is_paused)));
        metrics::gauge!("jobstack_jobs_holding_slot", "kind" => kind.to_owned())
            .set(u.map_or(0, |u| u.running) as f64);
        for reason in ["concurrency", "rate", "paused"] {
            let held = u.and_then(|u| u.held.get(reason)).copied().unwrap_or(0);
            metrics::gauge!("jobstack_jobs_held", "kind" => kind.to_owned(), "reason" => reason)
                .set(held as f64);
        }
    }
}

/// What one batch publishes.
#[derive(Debug, Clone, Copy)]
enum Relay {
    /// Due jobs, to the jobs exchange.
    Jobs,
    /// Accepted cancels, to the control exchange (bound to the control stream).
    Cancels,
}

enum Failure {
    Database(sqlx::Error),
    Broker(anyhow::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

async fn relay_batch(
    relay: Relay,
    db: &PgPool,
    publisher: &Publisher,
    dispatch: &Dispatch,
    flow: &Flow,
) -> Result<usize, Failure> {
    let mut tx = db.begin().await?;
    let mut locked = 0;
    let Batch {
        ids,
        stale,
        scheduled,
        messages,
        spans,
    } = match relay {
        Relay::Jobs => {
            let due = outbox::lock_due(&mut tx, BATCH).await?;
            locked = due.len();
            jobs(gate::admit(&mut tx, due, flow).await?, dispatch)
        }
        Relay::Cancels => cancels(
            outbox::lock_cancels(&mut tx, BATCH).await?,
            &dispatch.topology,
        ),
    };
    if ids.is_empty() && stale.is_empty() {
        // What was locked was held: commit that, and report the batch as locked, so a full
        // batch of held entries is followed by the next one at once.
        tx.commit().await?;
        return Ok(locked);
    }
    let results = publisher.publish_all(messages).await;
    let mut published = Vec::with_capacity(ids.len());
    let mut failure = None;
    for ((id, result), span) in ids.iter().zip(results).zip(&spans) {
        match result {
            Ok(()) => published.push(*id),
            Err(e) => {
                propagation::record_error(span, &e.to_string());
                failure.get_or_insert(e);
            }
        }
    }
    match relay {
        Relay::Jobs => {
            let taken: Vec<Uuid> = published.iter().chain(&stale).copied().collect();
            outbox::take_out(&mut tx, &taken).await?;
        }
        Relay::Cancels => outbox::mark_cancels_published(&mut tx, &published).await?,
    }
    tx.commit().await?;
    let queued: Vec<Uuid> = scheduled
        .into_iter()
        .filter(|id| published.contains(id))
        .collect();
    if !queued.is_empty() {
        outbox::mark_queued(db, &queued).await?;
    }
    let counter = match relay {
        Relay::Jobs => "jobstack_outbox_published_total",
        Relay::Cancels => "jobstack_cancels_published_total",
    };
    metrics::counter!(counter).increment(published.len() as u64);
    match failure {
        None => Ok(locked.max(published.len() + stale.len())),
        Some(e) => Err(Failure::Broker(anyhow::Error::new(e).context(format!(
            "outbox relay: {} of {} {relay:?} not published",
            ids.len() - published.len(),
            ids.len()
        )))),
    }
}

/// What one batch publishes: per row its id, message and span.
#[derive(Default)]
struct Batch {
    ids: Vec<Uuid>,
    /// Entries to drop unpublished: their jobs started or ended since they were published.
    stale: Vec<Uuid>,
    /// The scheduled jobs among them (queued once published).
    scheduled: Vec<Uuid>,
    messages: Vec<Outgoing>,
    spans: Vec<tracing::Span>,
}

impl Batch {
    fn push(&mut self, id: Uuid, message: Outgoing, span: tracing::Span) {
        self.ids.push(id);
        self.messages.push(message);
        self.spans.push(span);
    }
}

fn jobs(rows: Vec<outbox::Unpublished>, dispatch: &Dispatch) -> Batch {
    let exchange = dispatch.topology.jobs_exchange();
    let mut batch = Batch::default();
    for row in rows {
        if row.stale {
            batch.stale.push(row.id);
            continue;
        }
        let id = row.id.to_string();
        let attempt = row.attempt.max(1) as u32;
        let span = producer_span(&exchange, &row.kind, &id);
        match (attempt, &row.attempt_traceparent, &row.traceparent) {
            // A later attempt starts a trace of its own, linked to the attempt before it: a
            // job that runs for days makes a bounded trace per attempt, not one trace forever.
            (2.., Some(previous), _) => propagation::link_to(&span, previous),
            // The first attempt continues the request's trace, however long after it we
            // publish.
            (_, _, Some(request)) => {
                propagation::set_parent(&span, propagation::from_traceparent(request));
            }
            _ => {}
        }
        let checkpoint = match (row.checkpoint, row.checkpoint_attempt, row.checkpoint_at) {
            (Some(state), Some(attempt), Some(at)) => Some(Checkpoint {
                state,
                attempt: attempt.max(0) as u32,
                at,
            }),
            _ => None,
        };
        let failures = row.failures.max(0) as u32;
        let body = JobMessage {
            id: row.id,
            kind: row.kind.clone(),
            payload: row.payload,
            payload_version: row.payload_version.max(1) as u32,
            attempt,
            generation: row.generation.max(0) as u32,
            available_at: row.run_at,
            retries_left: dispatch.max_attempts.saturating_sub(failures + 1),
            lease_ms: dispatch.lease.as_millis() as u64,
            checkpoint,
            previous_attempt: (attempt > 1).then_some(row.attempt_traceparent).flatten(),
            inputs: match row.inputs {
                Some(serde_json::Value::Object(inputs)) => inputs,
                _ => serde_json::Map::new(),
            },
            snoozes: row.snoozes.max(0) as u32,
        };
        let body = serde_json::to_vec(&body).expect("messages serialize");
        if row.scheduled {
            batch.scheduled.push(row.id);
        }
        let message = Outgoing::new(&exchange, &row.kind, body, &id, &span)
            .with_priority(row.priority.clamp(0, 9) as u8);
        batch.push(row.id, message, span);
    }
    batch
}

fn cancels(rows: Vec<outbox::PendingCancel>, topology: &Topology) -> Batch {
    let exchange = topology.control_exchange();
    let mut batch = Batch::default();
    for row in rows {
        let id = row.id.to_string();
        let span = producer_span(&exchange, "", &id);
        if let Some(tp) = &row.traceparent {
            propagation::set_parent(&span, propagation::from_traceparent(tp));
        }
        let body = ControlMessage::Cancel {
            job_id: row.id,
            generation: row.generation.max(0) as u32,
        };
        let body = serde_json::to_vec(&body).expect("messages serialize");
        batch.push(row.id, Outgoing::new(&exchange, "", body, &id, &span), span);
    }
    batch
}
