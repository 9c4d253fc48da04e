//! One delivery, from decode to ack.
//!
//! Order matters here. The worker acks a job only after the broker has confirmed everything
//! that must follow it — the dead-letter copy, the final event — so a crash at any point leaves
//! the job in the queue (delivery is at-least-once; the api applies events idempotently). If any
//! of those publishes fails, the delivery is handed back (nack + requeue) and the attempt runs
//! again. A failed attempt with attempts left is reported as such and acked: the api schedules
//! the retry (after a jittered back-off) and publishes it when it is due.
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

use crate::WorkerState;
use crate::context::{JobContext, JobError};

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
    fn new(publisher: Publisher, state: &WorkerState, msg: &JobMessage) -> Self {
        Self {
            publisher,
            exchange: state.topology.events_exchange(),
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
    state: Arc<WorkerState>,
    slots: Arc<Semaphore>,
    session_over: CancellationToken,
) {
    let span = shared::amqp::consumer_span(&state.topology.jobs_queue(), &delivery);
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
                process(msg, &publisher, &state, slot).await
            }
            Err(e) => dead_letter_undecodable(&delivery, &e.to_string(), &publisher, &state).await,
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
    state: &WorkerState,
) -> Result<(), PublishError> {
    tracing::error!(
        error,
        bytes = delivery.data.len(),
        "undecodable job message; dead-lettering"
    );
    propagation::record_error(&tracing::Span::current(), error);
    let exchange = state.topology.dead_letter_exchange();
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
    state: &WorkerState,
    slot: OwnedSemaphorePermit,
) -> Result<(), PublishError> {
    let kind = if state.registry.contains(&msg.kind) {
        msg.kind.clone()
    } else {
        "unknown".to_owned()
    };
    let reporter = Reporter::new(publisher.clone(), state, &msg);
    let cancel = state.cancellations.start(msg.id, msg.generation);
    let outcome = if cancel.is_cancelled() {
        tracing::info!("job was cancelled before it started");
        Outcome::Cancelled
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
        let result = with_progress(execute(&msg, ctx, state), reports, &reporter).await;
        in_flight.decrement(1.0);
        let outcome = Outcome::decide(result, msg.attempt, state.config.max_attempts);
        metrics::histogram!("jobstack_job_duration_seconds", "kind" => kind.clone(), "outcome" => outcome.label())
            .record(started.elapsed().as_secs_f64());
        outcome
    };
    state.cancellations.finish(msg.id, msg.generation);
    // The slot goes to the next job; the outcome is published and confirmed meanwhile.
    drop(slot);
    settle(&msg, &kind, outcome, &reporter, publisher, state).await
}

/// How an attempt ended and what follows it, decided once from the handler's result and the
/// attempt's place in the budget.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The handler returned a result.
    Succeeded(Value),
    /// The job was cancelled, before or while it ran.
    Cancelled,
    /// A transient failure with attempts left: the api schedules the next one, after a
    /// back-off.
    Retried(String),
    /// Final: dead-lettered for `reason` (`permanent`, or `exhausted` after the last attempt).
    Failed {
        /// What went wrong.
        error: String,
        /// Why it is final.
        reason: &'static str,
    },
}

impl Outcome {
    fn decide(result: Result<Value, JobError>, attempt: u32, max_attempts: u32) -> Self {
        match result {
            Ok(value) => Self::Succeeded(value),
            Err(JobError::Cancelled) => Self::Cancelled,
            Err(JobError::Transient(error)) if attempt < max_attempts => Self::Retried(error),
            Err(JobError::Transient(error)) => Self::Failed {
                error,
                reason: "exhausted",
            },
            Err(JobError::Permanent(error)) => Self::Failed {
                error,
                reason: "permanent",
            },
        }
    }

    /// The `outcome` label of the duration histogram.
    fn label(&self) -> &'static str {
        match self {
            Self::Succeeded(_) => "succeeded",
            Self::Cancelled => "cancelled",
            Self::Retried(_) => "retried",
            Self::Failed { .. } => "failed",
        }
    }
}

/// Runs the handler in its own task, so a panic is contained, under the kind's deadline.
async fn execute(
    msg: &JobMessage,
    ctx: JobContext,
    state: &WorkerState,
) -> Result<Value, JobError> {
    let Some((fut, deadline)) = state.registry.run(&msg.kind, ctx, msg.payload.clone()) else {
        return Err(JobError::Permanent(format!("unknown kind {:?}", msg.kind)));
    };
    let deadline = deadline.min(state.config.deadline);
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
            Err(JobError::Transient(format!("timed out after {deadline:?}")))
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

/// Publishes what follows the attempt: its final event, and a dead-letter copy first when it
/// failed for good. Each is confirmed before the delivery is acked.
async fn settle(
    msg: &JobMessage,
    kind: &str,
    outcome: Outcome,
    reporter: &Reporter,
    publisher: &Publisher,
    state: &WorkerState,
) -> Result<(), PublishError> {
    let (error, reason) = match outcome {
        Outcome::Succeeded(result) => {
            reporter.send(JobChange::Succeeded { result }).await?;
            tracing::info!("job succeeded");
            finished(kind, "succeeded");
            return Ok(());
        }
        Outcome::Cancelled => {
            reporter.send(JobChange::Cancelled).await?;
            tracing::info!("job cancelled");
            finished(kind, "cancelled");
            return Ok(());
        }
        Outcome::Retried(error) => {
            propagation::record_error(&tracing::Span::current(), &error);
            reporter
                .send(JobChange::Failed {
                    error: error.clone(),
                    retrying: true,
                })
                .await?;
            tracing::warn!(error, "job attempt failed; the api schedules a retry");
            metrics::counter!("jobstack_job_retries_total", "kind" => kind.to_owned()).increment(1);
            return Ok(());
        }
        Outcome::Failed { error, reason } => (error, reason),
    };
    propagation::record_error(&tracing::Span::current(), &error);
    let exchange = state.topology.dead_letter_exchange();
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

fn finished(kind: &str, outcome: &'static str) {
    metrics::counter!("jobstack_jobs_finished_total", "kind" => kind.to_owned(), "outcome" => outcome)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_outcome_follows_the_error_and_the_attempts_left() {
        let transient = || Err(JobError::Transient("flaky".into()));
        assert_eq!(
            Outcome::decide(Ok(json!(1)), 3, 3),
            Outcome::Succeeded(json!(1))
        );
        assert_eq!(
            Outcome::decide(Err(JobError::Cancelled), 1, 3),
            Outcome::Cancelled
        );
        assert_eq!(
            Outcome::decide(transient(), 2, 3),
            Outcome::Retried("flaky".into())
        );
        assert_eq!(
            Outcome::decide(transient(), 3, 3),
            Outcome::Failed {
                error: "flaky".into(),
                reason: "exhausted"
            }
        );
        assert_eq!(
            Outcome::decide(Err(JobError::Permanent("bad".into())), 1, 3),
            Outcome::Failed {
                error: "bad".into(),
                reason: "permanent"
            }
        );
        let labels: Vec<_> = [
            Outcome::decide(Ok(json!(1)), 1, 1),
            Outcome::Cancelled,
            Outcome::decide(transient(), 1, 2),
            Outcome::decide(transient(), 2, 2),
        ]
        .iter()
        .map(Outcome::label)
        .collect();
        assert_eq!(labels, ["succeeded", "cancelled", "retried", "failed"]);
    }
}
