//! One delivery, from decode to its outcome.
//!
//! A job's message is held (unacked) only for the attempt's first moments. An attempt that ends
//! within [`PROGRESS_INTERVAL`] settles on its delivery: its outcome is published and confirmed,
//! then the message is acked (one event per job: the cheap path). One that runs longer reports
//! `started` — confirmed — and only then acks its message: from there the attempt lives on its
//! lease, renewed by the worker's heartbeats (see `heartbeat`), and its later events go out on
//! whichever session is up (see `link`). So an attempt may run for days whatever the broker's
//! consumer timeout, which only ever sees deliveries held for a moment; and in-flight jobs are
//! bounded by `WORKER_CONCURRENCY` (handlers running), not by the prefetch (messages waiting).
//!
//! Order still matters where the message is held: it is acked only after everything that must
//! follow it is confirmed (a dead-letter copy, the outcome), so a crash at any point leaves it
//! in the queue; a failed publish hands it back (nack + requeue). Once acked, a crash is the
//! lease's business: the api gives the attempt up when its lease lapses and runs the job again
//! from its last checkpoint. A failed attempt with retries left is reported as such: the api
//! schedules the retry, after a jittered back-off.
//!
//! Why leases, and the options weighed: docs/adr/0001-leases.md.
//!
//! Traces stay bounded however long the job runs: one span per attempt (the consumer span
//! below), a span per event that changes the job's state (`started`, checkpoints, the outcome),
//! and progress as at most ten span events on the attempt's span, never a span per report.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use jobs_contract::kinds::PayloadError;
use jobs_contract::messages::{BatchedEvent, JobChange, JobEvent, JobMessage, MAX_RESULT_BYTES};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use serde_json::Value;
use shared::amqp::{Outgoing, PublishError, producer_span};
use shared::telemetry::propagation;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::WorkerState;
use crate::attempts::{Stop, StopReason};
use crate::context::{JobContext, JobError, Saver};

/// At most one progress event per job in this interval, and the moment an attempt still running
/// reports `started` and lets go of its message: a handler may report after every item of a
/// million, and each event costs a publish, a delivery and a row update. The latest report
/// wins; the outcome carries the rest (and 100 % on success).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Progress becomes a span event on the attempt's span at most at each tenth of the work.
const PROGRESS_MARKS: f64 = 10.0;

/// Handles one delivery from the work queue; never panics, always settles it (ack, or nack so
/// the broker hands it out again). It runs the handler once it holds one of the worker's slots;
/// if `session_over` comes first (shutdown, or the connection failed), it leaves the delivery
/// unacked: the broker hands it out again; if the worker stops consuming first
/// (`intake_stopped`: long jobs hold every slot), it hands the delivery back at once.
pub(crate) async fn handle(
    delivery: Delivery,
    state: Arc<WorkerState>,
    session_over: CancellationToken,
    intake_stopped: CancellationToken,
) {
    let span = shared::amqp::consumer_span(&state.topology.jobs_queue(), &delivery);
    async move {
        let msg = match serde_json::from_slice::<JobMessage>(&delivery.data) {
            Ok(msg) => msg,
            Err(e) => {
                let settled = dead_letter_undecodable(&delivery, &e.to_string(), &state).await;
                Held::new(delivery).settle(settled).await;
                return;
            }
        };
        let span = tracing::Span::current();
        span.record("messaging.message.id", msg.id.to_string());
        span.record("job.id", msg.id.to_string());
        span.record("job.kind", msg.kind.as_str());
        span.record("job.attempt", msg.attempt);
        let slot = tokio::select! {
            biased;
            () = session_over.cancelled() => return,
            // Every slot is held by a long job: another worker may run this one now.
            () = intake_stopped.cancelled() => {
                Held::new(delivery).hand_back("every slot is held by a long job").await;
                return;
            }
            slot = state.slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let held = Held::new(delivery);
        let Some(stop) = state.attempts.start(msg.id, msg.generation, msg.attempt) else {
            // A copy of an attempt that runs here (the relay published it twice), or of an
            // older one: the running one reports; this copy goes.
            tracing::warn!("a copy of an attempt already running here; dropped");
            held.ack().await;
            return;
        };
        let attempt = Attempt::new(&state, &msg, held, stop);
        let outcome = attempt.run(&state, &msg).await;
        // The slot goes to the next job; the outcome is published and confirmed meanwhile,
        // while heartbeats still renew the attempt's lease.
        drop(slot);
        attempt.settle(&msg, outcome, &state).await;
        state.attempts.finish(msg.id, msg.generation, &attempt.stop);
    }
    .instrument(span)
    .await;
}

/// A job's message, until it is acked.
struct Held {
    delivery: tokio::sync::Mutex<Option<Delivery>>,
}

impl Held {
    fn new(delivery: Delivery) -> Self {
        Self {
            delivery: tokio::sync::Mutex::new(Some(delivery)),
        }
    }

    /// Acks the message (once); `false` when the ack failed (its channel is gone: the broker
    /// hands the message out again).
    async fn ack(&self) -> bool {
        let Some(delivery) = self.delivery.lock().await.take() else {
            return true;
        };
        match delivery.acker.ack(BasicAckOptions::default()).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "ack failed; the broker will redeliver");
                false
            }
        }
    }

    /// Whether the message is still held.
    async fn held(&self) -> bool {
        self.delivery.lock().await.is_some()
    }

    /// Acks after `settled` went out, or hands the message back when it could not.
    async fn settle(&self, settled: Result<(), PublishError>) {
        match settled {
            Ok(()) => {
                self.ack().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not publish the outcome; handing the job back");
                self.nack().await;
            }
        }
    }

    /// Hands the message back without running it here, for the reason `why`.
    async fn hand_back(&self, why: &'static str) {
        tracing::info!(why, "handing the job back");
        self.nack().await;
    }

    /// Nacks the message (once) so the broker hands it out again.
    async fn nack(&self) {
        let Some(delivery) = self.delivery.lock().await.take() else {
            return;
        };
        let requeue = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        if let Err(e) = delivery.acker.nack(requeue).await {
            // The channel is gone (broker restart): the broker requeues the delivery itself.
            tracing::warn!(error = %e, "nack failed; the broker will redeliver");
        }
    }
}

/// One attempt of a job on this worker: its message, its stop and its events.
struct Attempt {
    held: Held,
    stop: Stop,
    reporter: Reporter,
    kind: String,
}

impl Attempt {
    fn new(state: &WorkerState, msg: &JobMessage, held: Held, stop: Stop) -> Self {
        let kind = if state.registry.contains(&msg.kind) {
            msg.kind.clone()
        } else {
            "unknown".to_owned()
        };
        Self {
            held,
            stop,
            reporter: Reporter::new(state, msg),
            kind,
        }
    }

    /// Runs the handler, unless the job is cancelled or its payload cannot be read.
    async fn run(&self, state: &WorkerState, msg: &JobMessage) -> Outcome {
        if self.stop.reason() == Some(StopReason::Cancelled) {
            tracing::info!("job was cancelled before it started");
            return Outcome::Cancelled;
        }
        let payload = match state
            .registry
            .read(&msg.kind, msg.payload_version, msg.payload.clone())
        {
            Ok(payload) => payload,
            Err(e) => {
                let reason = match e {
                    PayloadError::Version { .. } => "version",
                    _ => "permanent",
                };
                return Outcome::Failed {
                    error: e.to_string(),
                    reason,
                };
            }
        };
        let kind = self.kind.clone();
        // The demo's slow consumer: before the job counts as started, so it shows as queue wait.
        // A cancel or a shutdown cuts it short.
        tokio::select! {
            () = state.faults.slow_consume() => {}
            () = self.stop.tripped() => {}
        }
        tracing::info!(
            resumes_from = msg.checkpoint.as_ref().map(|c| c.attempt),
            "job started"
        );
        metrics::counter!("jobstack_jobs_started_total", "kind" => kind.clone()).increment(1);
        let waited = (Utc::now() - msg.available_at).to_std().unwrap_or_default();
        metrics::histogram!("jobstack_job_queue_wait_seconds", "kind" => kind.clone())
            .record(waited.as_secs_f64());
        let in_flight = metrics::gauge!("jobstack_jobs_in_flight", "kind" => kind.clone());
        in_flight.increment(1.0);
        let started = Instant::now();
        let resume = msg.checkpoint.as_ref().map(|c| c.state.clone());
        let (ctx, reports) = JobContext::new(
            msg.id,
            msg.attempt,
            self.stop.clone(),
            resume,
            self.reporter.saver(),
        );
        let ctx = ctx
            .with_inputs(msg.inputs.clone())
            .with_snoozes(msg.snoozes);
        let lease = Duration::from_millis(msg.lease_ms);
        let result = self
            .with_progress(
                execute(msg, payload, ctx, &self.stop, state),
                reports,
                state,
                lease,
            )
            .await;
        in_flight.decrement(1.0);
        let outcome = Outcome::decide(result, msg.retries_left);
        shared::metrics::exemplars::observe(
            "jobstack_job_duration_seconds",
            &[("kind", &kind), ("outcome", outcome.label())],
            started.elapsed().as_secs_f64(),
            &tracing::Span::current(),
        );
        outcome
    }

    /// Runs `attempt` while reporting it. Nothing if it ends within [`PROGRESS_INTERVAL`]; else
    /// `started`, confirmed, then the message is acked and the attempt holds its lease; then the
    /// handler's progress, at most one event per interval (the latest value wins). If `started`
    /// cannot be confirmed or the ack fails, the attempt stops: the message is (or will be) handed
    /// out again. Returns once `attempt` has ended and no publish is halfway.
    async fn with_progress<T>(
        &self,
        attempt: impl Future<Output = T>,
        mut reports: watch::Receiver<f64>,
        state: &WorkerState,
        lease: Duration,
    ) -> T {
        let done = CancellationToken::new();
        let forward = async {
            tokio::select! {
                () = done.cancelled() => return,
                () = tokio::time::sleep(PROGRESS_INTERVAL) => {},
            }
            let traceparent = propagation::traceparent(&tracing::Span::current());
            let deadline = tokio::time::Instant::now() + self.reporter.publish_timeout;
            let started = self
                .reporter
                .send(JobChange::Started { traceparent }, deadline)
                .await;
            match started {
                Ok(()) if self.held.ack().await => {
                    let (id, generation) = (self.reporter.job_id, self.reporter.generation);
                    state.attempts.hold(id, generation, &self.stop, lease);
                }
                Ok(()) => {
                    // The message went back to the broker with its channel: this attempt runs
                    // again from there, so this copy stops, without a word.
                    self.stop.trip(StopReason::HandedBack);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "started not confirmed; handing the job back");
                    self.stop.trip(StopReason::HandedBack);
                    return;
                }
            }
            let mut marked = 0.0;
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
                if (progress * PROGRESS_MARKS).floor() > marked {
                    // An event on the attempt's span (and a log line): ten at most.
                    marked = (progress * PROGRESS_MARKS).floor();
                    tracing::info!(progress, "job progress");
                }
                if let Err(e) = self.reporter.notify(JobChange::Progress { progress }) {
                    tracing::debug!(error = %e, "progress event not published");
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

    /// Publishes what follows the attempt: its outcome, and a dead-letter copy first when it
    /// failed for good. On the held message, confirmed before the ack (or handed back); once the
    /// attempt lives on its lease, on whichever session is up, for as long as half the lease.
    async fn settle(&self, msg: &JobMessage, outcome: Outcome, state: &WorkerState) {
        let held = self.held.held().await;
        let window = if held {
            self.reporter.publish_timeout
        } else {
            Duration::from_millis(msg.lease_ms) / 2
        };
        let deadline = tokio::time::Instant::now() + window;
        match self.stop.reason() {
            // The broker hands the message out again (or already did): that delivery runs this
            // attempt, so this one says nothing.
            Some(StopReason::HandedBack) => {
                self.held.hand_back("the broker hands it out again").await;
                return;
            }
            // The api gives the attempt up when its lease lapses; if the broker is back, tell
            // it at once instead (the attempt then costs nothing).
            Some(StopReason::LeaseLost) if !held => {
                let _ = self.reporter.send(JobChange::Released, deadline).await;
                tracing::warn!("attempt stopped: its lease could not be renewed");
                return;
            }
            _ => {}
        }
        if held {
            let sent = self.publish_outcome(msg, outcome, state, deadline).await;
            self.held.settle(sent).await;
            return;
        }
        // The lease is renewed while the outcome waits for a broker; once the fence finds it
        // lost, the api is about to run the job again, and this outcome must not count.
        tokio::select! {
            biased;
            () = self.stop.lease_lost() => {
                tracing::error!("lease lost before the outcome was published; the api will run the job again");
            }
            sent = self.publish_outcome(msg, outcome, state, deadline) => if let Err(e) = sent {
                tracing::error!(error = %e, "outcome not published within half the lease; the api will run the job again");
            },
        }
    }

    async fn publish_outcome(
        &self,
        msg: &JobMessage,
        outcome: Outcome,
        state: &WorkerState,
        deadline: tokio::time::Instant,
    ) -> Result<(), PublishError> {
        let kind = &self.kind;
        let (error, reason) = match outcome {
            Outcome::Succeeded(result) => {
                self.reporter
                    .send(JobChange::Succeeded { result }, deadline)
                    .await?;
                tracing::info!("job succeeded");
                finished(kind, "succeeded");
                return Ok(());
            }
            Outcome::Cancelled => {
                self.reporter.send(JobChange::Cancelled, deadline).await?;
                tracing::info!("job cancelled");
                finished(kind, "cancelled");
                return Ok(());
            }
            Outcome::Released => {
                self.reporter.send(JobChange::Released, deadline).await?;
                tracing::info!("job handed back: it resumes from its checkpoint");
                finished(kind, "released");
                return Ok(());
            }
            Outcome::Snoozed(until) => {
                self.reporter
                    .send(JobChange::Snoozed { until }, deadline)
                    .await?;
                tracing::info!(%until, "job snoozed: it runs again then");
                finished(kind, "snoozed");
                return Ok(());
            }
            Outcome::Retried(error) => {
                propagation::record_error(&tracing::Span::current(), &error);
                let failed = JobChange::Failed {
                    error: error.clone(),
                    retrying: true,
                };
                self.reporter.send(failed, deadline).await?;
                tracing::warn!(error, "job attempt failed; the api schedules a retry");
                metrics::counter!("jobstack_job_retries_total", "kind" => kind.clone())
                    .increment(1);
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
        state.link.publish_until(copy, &span, deadline).await?;
        let failed = JobChange::Failed {
            error: error.clone(),
            retrying: false,
        };
        self.reporter.send(failed, deadline).await?;
        tracing::error!(error, reason, "job failed; dead-lettered");
        finished(kind, "failed");
        metrics::counter!("jobstack_jobs_dead_lettered_total", "kind" => kind.clone(), "reason" => reason)
            .increment(1);
        Ok(())
    }
}

/// Publishes one attempt's events, on whichever session is up.
#[derive(Clone)]
struct Reporter {
    link: crate::link::Link,
    exchange: String,
    job_id: Uuid,
    attempt: u32,
    generation: u32,
    started_at: chrono::DateTime<Utc>,
    publish_timeout: Duration,
}

impl Reporter {
    fn new(state: &WorkerState, msg: &JobMessage) -> Self {
        Self {
            link: state.link.clone(),
            exchange: state.topology.events_exchange(),
            job_id: msg.id,
            attempt: msg.attempt,
            generation: msg.generation,
            started_at: Utc::now(),
            publish_timeout: state.config.amqp.publish_timeout,
        }
    }

    /// Reports `change` and waits for its confirm, trying again until `deadline`.
    async fn send(
        &self,
        change: JobChange,
        deadline: tokio::time::Instant,
    ) -> Result<(), PublishError> {
        let (event, span) = self.event(change, true);
        self.link
            .report_until(event, deadline)
            .instrument(span)
            .await
    }

    /// Reports progress without waiting for its confirm, and without a span: its loss is
    /// harmless (a later event implies it), and a span per report would grow the trace with
    /// the job's length.
    fn notify(&self, change: JobChange) -> Result<(), PublishError> {
        let (event, _) = self.event(change, false);
        self.link.notify(event)
    }

    /// Saves checkpoints as events, each confirmed (within the publish timeout).
    fn saver(&self) -> Saver {
        let reporter = self.clone();
        Arc::new(move |state: Value| {
            let reporter = reporter.clone();
            Box::pin(async move {
                let deadline = tokio::time::Instant::now() + reporter.publish_timeout;
                reporter
                    .send(JobChange::Checkpoint { state }, deadline)
                    .await
                    .map_err(|e| e.to_string())
            })
        })
    }

    /// The event as it travels in a batch, and the span that reports it (none when untraced).
    fn event(&self, change: JobChange, traced: bool) -> (Vec<u8>, tracing::Span) {
        let span = if traced {
            let routing_key = format!("job.{}", change.name());
            producer_span(&self.exchange, &routing_key, &self.job_id.to_string())
        } else {
            tracing::Span::none()
        };
        let event = BatchedEvent {
            traceparent: propagation::traceparent(&span),
            event: JobEvent {
                job_id: self.job_id,
                attempt: self.attempt,
                generation: self.generation,
                at: Utc::now(),
                started_at: Some(self.started_at),
                change,
            },
        };
        let bytes = serde_json::to_vec(&event).expect("events serialize");
        (bytes, span)
    }
}

/// A message nobody can read goes straight to the dead-letter queue: retrying cannot help.
async fn dead_letter_undecodable(
    delivery: &Delivery,
    error: &str,
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
    let deadline = tokio::time::Instant::now() + state.config.amqp.publish_timeout;
    state.link.publish_until(msg, &span, deadline).await?;
    metrics::counter!("jobstack_jobs_dead_lettered_total", "kind" => "unknown", "reason" => "undecodable")
        .increment(1);
    Ok(())
}

/// Runs the handler in its own task, so a panic is contained, under the kind's deadline (if it
/// has one, capped by `JOB_DEADLINE_SECS` if that is set); bounds its result. A handler still
/// running a sixth of a lease after its lease was lost is aborted (at its next `.await`): the
/// api runs the job again soon, and two attempts must not run at once.
async fn execute(
    msg: &JobMessage,
    payload: Value,
    ctx: JobContext,
    stop: &Stop,
    state: &WorkerState,
) -> Result<Value, JobError> {
    if state.faults.fails_now() {
        return Err(JobError::Transient(
            "injected fault: the handler failed (fail_percent)".into(),
        ));
    }
    let Some((fut, deadline)) = state.registry.run(&msg.kind, ctx, payload) else {
        return Err(JobError::Permanent(format!("unknown kind {:?}", msg.kind)));
    };
    let deadline = match (deadline, state.config.deadline) {
        (Some(kind), Some(cap)) => Some(kind.min(cap)),
        (kind, cap) => kind.or(cap),
    };
    let task = tokio::spawn(fut.in_current_span());
    let abort = task.abort_handle();
    let lost = async {
        stop.lease_lost().await;
        tokio::time::sleep(Duration::from_millis(msg.lease_ms) / 6).await;
    };
    let joined = tokio::select! {
        joined = maybe_timeout(deadline, task) => match joined {
            Some(joined) => joined,
            None => {
                abort.abort();
                let deadline = deadline.unwrap_or_default();
                return Err(JobError::Transient(format!("timed out after {deadline:?}")));
            }
        },
        () = lost => {
            abort.abort();
            tracing::warn!("handler still running after its lease was lost; aborted");
            return Err(JobError::Interrupted);
        }
    };
    let result = match joined {
        Ok(result) => result?,
        Err(join) => {
            return Err(JobError::Permanent(match join.try_into_panic() {
                Ok(panic) => format!("handler panicked: {}", panic_message(&panic)),
                Err(_) => "handler task was aborted".to_owned(),
            }));
        }
    };
    let size = serde_json::to_vec(&result).map_or(0, |b| b.len());
    if size > MAX_RESULT_BYTES {
        return Err(JobError::Permanent(format!(
            "result of {size} bytes is over the {MAX_RESULT_BYTES}-byte limit"
        )));
    }
    Ok(result)
}

/// `fut` within `deadline`, if there is one; `None` when it ran out.
async fn maybe_timeout<T>(deadline: Option<Duration>, fut: impl Future<Output = T>) -> Option<T> {
    match deadline {
        Some(deadline) => tokio::time::timeout(deadline, fut).await.ok(),
        None => Some(fut.await),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

/// How an attempt ended and what follows it, decided once from the handler's result and the
/// retries the message allows.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The handler returned a result.
    Succeeded(Value),
    /// The job was cancelled, before or while it ran.
    Cancelled,
    /// The attempt stopped for the worker's sake (a shutdown): the job goes back, to resume
    /// from its checkpoint.
    Released,
    /// A transient failure with retries left: the api schedules the next attempt, after a
    /// back-off.
    Retried(String),
    /// The handler asked to run again at this time; no attempt is spent.
    Snoozed(chrono::DateTime<chrono::Utc>),
    /// Final: dead-lettered for `reason` (`permanent`, `exhausted` after the last attempt, or
    /// `version` for a payload this worker cannot read).
    Failed {
        /// What went wrong.
        error: String,
        /// Why it is final.
        reason: &'static str,
    },
}

impl Outcome {
    fn decide(result: Result<Value, JobError>, retries_left: u32) -> Self {
        match result {
            Ok(value) => Self::Succeeded(value),
            Err(JobError::Cancelled) => Self::Cancelled,
            Err(JobError::Interrupted) => Self::Released,
            Err(JobError::Snooze(until)) => Self::Snoozed(until),
            Err(JobError::Transient(error)) if retries_left > 0 => Self::Retried(error),
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
            Self::Released => "released",
            Self::Retried(_) => "retried",
            Self::Snoozed(_) => "snoozed",
            Self::Failed { .. } => "failed",
        }
    }
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
    fn the_outcome_follows_the_error_and_the_retries_left() {
        let transient = || Err(JobError::Transient("flaky".into()));
        assert_eq!(
            Outcome::decide(Ok(json!(1)), 0),
            Outcome::Succeeded(json!(1))
        );
        assert_eq!(
            Outcome::decide(Err(JobError::Cancelled), 2),
            Outcome::Cancelled
        );
        assert_eq!(
            Outcome::decide(Err(JobError::Interrupted), 0),
            Outcome::Released
        );
        assert_eq!(
            Outcome::decide(transient(), 1),
            Outcome::Retried("flaky".into())
        );
        assert_eq!(
            Outcome::decide(transient(), 0),
            Outcome::Failed {
                error: "flaky".into(),
                reason: "exhausted"
            }
        );
        assert_eq!(
            Outcome::decide(Err(JobError::Permanent("bad".into())), 2),
            Outcome::Failed {
                error: "bad".into(),
                reason: "permanent"
            }
        );
        let labels: Vec<_> = [
            Outcome::decide(Ok(json!(1)), 0),
            Outcome::Cancelled,
            Outcome::Released,
            Outcome::decide(transient(), 1),
            Outcome::decide(transient(), 0),
            Outcome::decide(Err(JobError::Snooze(chrono::DateTime::UNIX_EPOCH)), 0),
        ]
        .iter()
        .map(Outcome::label)
        .collect();
        assert_eq!(
            labels,
            [
                "succeeded",
                "cancelled",
                "released",
                "retried",
                "failed",
                "snoozed"
            ]
        );
    }
}
