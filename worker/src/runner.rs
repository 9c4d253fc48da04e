//! One delivery, from decode to ack.
//!
//! Order matters here. The worker acks a job only after the broker has confirmed everything
//! that must follow it — the retry message, the dead-letter copy, the final event — so a crash
//! at any point leaves the job in the queue (delivery is at-least-once; the api applies events
//! idempotently). If any of those publishes fails, the delivery is handed back (nack + requeue)
//! and the attempt runs again.
//!
//! Cheap per job: a job that ends within its first progress interval sends one event, its final
//! one, which carries when it started; longer jobs report `started` at the first interval, then
//! progress. And the job's slot (one of `WORKER_CONCURRENCY`) is freed when the handler returns:
//! publishing the outcome, waiting for its confirm and acking happen after, while the next job
//! runs (the prefetch is above the concurrency so that one is already here).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use jobs_contract::messages::{JobChange, JobEvent, JobMessage};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use serde_json::Value;
use shared::amqp::{Outgoing, PublishError, Publisher, producer_span};
use shared::telemetry::propagation;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::context::{JobContext, JobError};
use crate::session::Deps;

/// At most one event per job in this interval, the first (`started`, or progress if the handler
/// reported some) no earlier than this after the start: a handler may report after every item of
/// a million, and each event costs a publish, a delivery and a row update. The latest report
/// wins; the final event carries the outcome (and 100 % on success) whatever was coalesced.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Publishes one job's events on the worker's confirm channel.
#[derive(Debug, Clone)]
pub struct Reporter {
    publisher: Publisher,
    exchange: String,
    job_id: Uuid,
    attempt: u32,
    generation: u32,
    started_at: chrono::DateTime<Utc>,
}

impl Reporter {
    fn new(publisher: Publisher, deps: &Deps, msg: &JobMessage) -> Self {
        Self {
            publisher,
            exchange: deps.config.amqp.topology.events_exchange(),
            job_id: msg.id,
            attempt: msg.attempt,
            generation: msg.generation,
            started_at: Utc::now(),
        }
    }

    /// Publishes `change` and waits for its confirm.
    async fn send(&self, change: JobChange) -> Result<(), PublishError> {
        let (msg, span) = self.event(change);
        self.publisher.publish(msg).instrument(span).await
    }

    /// Publishes `change` without waiting for its confirm: for `started` and `progress`, whose
    /// loss the api's state machine absorbs (a later event implies them). Only the final event
    /// holds up the ack.
    async fn notify(&self, change: JobChange) -> Result<(), PublishError> {
        let (msg, span) = self.event(change);
        self.publisher.publish_detached(msg, span).await
    }

    fn event(&self, change: JobChange) -> (Outgoing, tracing::Span) {
        let routing_key = format!("job.{}", change.name());
        let event = JobEvent {
            job_id: self.job_id,
            attempt: self.attempt,
            generation: self.generation,
            at: Utc::now(),
            started_at: Some(self.started_at),
            change,
        };
        let body = serde_json::to_vec(&event).expect("events serialize");
        let id = self.job_id.to_string();
        let span = producer_span(&self.exchange, &routing_key, &id);
        let msg = Outgoing::new(&self.exchange, &routing_key, body, &id, &span);
        (msg, span)
    }
}

/// Runs `attempt` while reporting it: nothing if it ends within [`PROGRESS_INTERVAL`]; else
/// `started` (or progress, if the handler reported some) then the handler's progress reports, at
/// most one event per interval (the latest value wins). Returns once `attempt` has ended and no
/// publish is halfway: one is never abandoned mid-send.
async fn with_progress<T>(
    attempt: impl Future<Output = T>,
    mut reports: watch::Receiver<f64>,
    reporter: &Reporter,
) -> T {
    let done = CancellationToken::new();
    let forward = async {
        tokio::select! {
            () = done.cancelled() => return,
            () = tokio::time::sleep(PROGRESS_INTERVAL) => {},
        }
        let first = if reports.has_changed().unwrap_or(false) {
            JobChange::Progress {
                progress: *reports.borrow_and_update(),
            }
        } else {
            JobChange::Started
        };
        if let Err(e) = reporter.notify(first).await {
            tracing::warn!(error = %e, "started event not published");
        }
        loop {
            let next = async {
                tokio::time::sleep(PROGRESS_INTERVAL).await;
                reports.changed().await
            };
            tokio::select! {
                () = done.cancelled() => return,
                changed = next => if changed.is_err() { return },
            }
            let progress = *reports.borrow_and_update();
            if let Err(e) = reporter.notify(JobChange::Progress { progress }).await {
                tracing::warn!(error = %e, "progress event not published");
            }
        }
    };
    let run = async {
        let out = attempt.await;
        done.cancel();
        out
    };
    tokio::join!(run, forward).0
}

/// Handles one delivery from the work queue; never panics, always acks or hands back. It runs
/// the handler once it holds one of the `slots`; if `session_over` comes first (shutdown, or the
/// connection failed), it leaves the delivery unacked: the broker hands it out again.
pub(crate) async fn handle(
    delivery: Delivery,
    publisher: Publisher,
    deps: Arc<Deps>,
    slots: Arc<Semaphore>,
    session_over: CancellationToken,
) {
    let span = shared::amqp::consumer_span(&deps.config.amqp.topology.jobs_queue(), &delivery);
    async move {
        let settled = match serde_json::from_slice::<JobMessage>(&delivery.data) {
            Ok(msg) => {
                let span = tracing::Span::current();
                span.record("messaging.message.id", msg.id.to_string());
                span.record("job.id", msg.id.to_string());
                span.record("job.kind", msg.kind.as_str());
                span.record("job.attempt", msg.attempt);
                let slot = tokio::select! {
                    biased;
                    () = session_over.cancelled() => return,
                    slot = slots.acquire_owned() => slot.expect("the semaphore is never closed"),
                };
                process(msg, &publisher, &deps, slot).await
            }
            Err(e) => dead_letter_undecodable(&delivery, &e.to_string(), &publisher, &deps).await,
        };
        let acked = match settled {
            Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
            Err(e) => {
                tracing::warn!(error = %e, "could not publish the outcome; handing the job back");
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
        };
        if let Err(e) = acked {
            // The channel is gone (broker restart): the broker requeues the delivery itself.
            tracing::warn!(error = %e, "ack failed; the broker will redeliver");
        }
    }
    .instrument(span)
    .await;
}

/// A message nobody can read goes straight to the dead-letter queue: retrying cannot help.
async fn dead_letter_undecodable(
    delivery: &Delivery,
    error: &str,
    publisher: &Publisher,
    deps: &Deps,
) -> Result<(), PublishError> {
    tracing::error!(
        error,
        bytes = delivery.data.len(),
        "undecodable job message; dead-lettering"
    );
    propagation::record_error(&tracing::Span::current(), error);
    let exchange = deps.config.amqp.topology.dead_letter_exchange();
    let span = producer_span(&exchange, "undecodable", "");
    let msg = Outgoing::new(&exchange, "undecodable", delivery.data.clone(), "", &span)
        .with_header("x-jobstack-reason", "undecodable")
        .with_header("x-jobstack-error", error);
    publisher.publish(msg).instrument(span).await?;
    metrics::counter!("jobstack_jobs_dead_lettered_total", "kind" => "unknown", "reason" => "undecodable")
        .increment(1);
    Ok(())
}

async fn process(
    msg: JobMessage,
    publisher: &Publisher,
    deps: &Deps,
    slot: OwnedSemaphorePermit,
) -> Result<(), PublishError> {
    let kind = if deps.registry.contains(&msg.kind) {
        msg.kind.clone()
    } else {
        "unknown".to_owned()
    };
    let reporter = Reporter::new(publisher.clone(), deps, &msg);
    let cancel = deps.cancellations.start(msg.id, msg.generation);
    let outcome = if cancel.is_cancelled() {
        tracing::info!("job was cancelled before it started");
        Err(JobError::Cancelled)
    } else {
        tracing::info!("job started");
        metrics::counter!("jobstack_jobs_started_total", "kind" => kind.clone()).increment(1);
        let waited = (Utc::now() - msg.available_at).to_std().unwrap_or_default();
        metrics::histogram!("jobstack_job_queue_wait_seconds", "kind" => kind.clone())
            .record(waited.as_secs_f64());
        let in_flight = metrics::gauge!("jobstack_jobs_in_flight", "kind" => kind.clone());
        in_flight.increment(1.0);
        let started = Instant::now();
        let (ctx, reports) = JobContext::new(msg.id, msg.attempt, cancel);
        let outcome = with_progress(execute(&msg, ctx, deps), reports, &reporter).await;
        in_flight.decrement(1.0);
        let label = match &outcome {
            Ok(_) => "succeeded",
            Err(JobError::Cancelled) => "cancelled",
            Err(JobError::Transient(_))
                if msg.attempt < deps.config.amqp.topology.max_attempts() =>
            {
                "retried"
            }
            Err(_) => "failed",
        };
        metrics::histogram!("jobstack_job_duration_seconds", "kind" => kind.clone(), "outcome" => label)
            .record(started.elapsed().as_secs_f64());
        outcome
    };
    deps.cancellations.finish(msg.id, msg.generation);
    // The slot goes to the next job; the outcome is published and confirmed meanwhile.
    drop(slot);
    settle(&msg, &kind, outcome, &reporter, publisher, deps).await
}

/// Runs the handler in its own task, so a panic is contained, under the kind's deadline.
async fn execute(msg: &JobMessage, ctx: JobContext, deps: &Deps) -> Result<Value, JobError> {
    let Some((fut, deadline)) = deps.registry.run(&msg.kind, ctx, msg.payload.clone()) else {
        return Err(JobError::Permanent(format!("unknown kind {:?}", msg.kind)));
    };
    let deadline = deadline.min(deps.config.deadline);
    let task = tokio::spawn(fut.in_current_span());
    let abort = task.abort_handle();
    match tokio::time::timeout(deadline, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(JobError::Permanent(match join.try_into_panic() {
            Ok(panic) => format!("handler panicked: {}", panic_message(&panic)),
            Err(_) => "handler task was aborted".to_owned(),
        })),
        Err(_) => {
            abort.abort();
            Err(JobError::Transient(format!(
                "timed out after {}s",
                deadline.as_secs()
            )))
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

/// Publishes what follows the attempt: the final event, or a retry, or a dead-letter copy.
async fn settle(
    msg: &JobMessage,
    kind: &str,
    outcome: Result<Value, JobError>,
    reporter: &Reporter,
    publisher: &Publisher,
    deps: &Deps,
) -> Result<(), PublishError> {
    let topology = &deps.config.amqp.topology;
    let (error, reason) = match outcome {
        Ok(result) => {
            reporter.send(JobChange::Succeeded { result }).await?;
            tracing::info!("job succeeded");
            finished(kind, "succeeded");
            return Ok(());
        }
        Err(JobError::Cancelled) => {
            reporter.send(JobChange::Cancelled).await?;
            tracing::info!("job cancelled");
            finished(kind, "cancelled");
            return Ok(());
        }
        Err(JobError::Transient(error)) if msg.attempt < topology.max_attempts() => {
            let delay = topology.retry_delay(msg.attempt);
            retry(msg, delay, publisher, deps).await?;
            propagation::record_error(&tracing::Span::current(), &error);
            reporter
                .send(JobChange::Failed {
                    error: error.clone(),
                    retrying: true,
                })
                .await?;
            tracing::warn!(
                error,
                retry_in_ms = delay.as_millis() as u64,
                "job attempt failed; retrying"
            );
            metrics::counter!("jobstack_job_retries_total", "kind" => kind.to_owned()).increment(1);
            return Ok(());
        }
        Err(JobError::Transient(error)) => (error, "exhausted"),
        Err(JobError::Permanent(error)) => (error, "permanent"),
    };
    propagation::record_error(&tracing::Span::current(), &error);
    let exchange = topology.dead_letter_exchange();
    let span = producer_span(&exchange, kind, &msg.id.to_string());
    let copy = Outgoing::new(
        &exchange,
        kind,
        serde_json::to_vec(msg).expect("messages serialize"),
        &msg.id.to_string(),
        &span,
    )
    .with_header("x-jobstack-reason", reason)
    .with_header("x-jobstack-error", error.clone());
    publisher.publish(copy).instrument(span).await?;
    reporter
        .send(JobChange::Failed {
            error: error.clone(),
            retrying: false,
        })
        .await?;
    tracing::error!(error, reason, "job failed; dead-lettered");
    finished(kind, "failed");
    metrics::counter!("jobstack_jobs_dead_lettered_total", "kind" => kind.to_owned(), "reason" => reason)
        .increment(1);
    Ok(())
}

/// Sends the next attempt to the TTL queue for `delay`, which dead-letters it back to the work
/// queue when the delay is over.
async fn retry(
    msg: &JobMessage,
    delay: Duration,
    publisher: &Publisher,
    deps: &Deps,
) -> Result<(), PublishError> {
    let next = JobMessage {
        attempt: msg.attempt + 1,
        available_at: Utc::now() + delay,
        ..msg.clone()
    };
    let queue = deps.config.amqp.topology.retry_queue(delay);
    let span = producer_span("", &queue, &msg.id.to_string());
    let out = Outgoing::new(
        "",
        &queue,
        serde_json::to_vec(&next).expect("messages serialize"),
        &msg.id.to_string(),
        &span,
    );
    publisher.publish(out).instrument(span).await
}

fn finished(kind: &str, outcome: &'static str) {
    metrics::counter!("jobstack_jobs_finished_total", "kind" => kind.to_owned(), "outcome" => outcome)
        .increment(1);
}
