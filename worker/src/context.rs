//! What a running handler sees: its job, where an earlier attempt left off, a way to save where
//! it got to, a stop to check between steps, and a progress handle. Nothing here knows of AMQP:
//! the runner turns progress and checkpoints into events.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use jobs_contract::messages::MAX_CHECKPOINT_BYTES;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use crate::attempts::{Stop, StopReason};

/// How an attempt can fail.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt (a dependency was down, a deadline passed).
    #[error("{0}")]
    Transient(String),
    /// Will fail again: no retry.
    #[error("{0}")]
    Permanent(String),
    /// The job was cancelled while it ran.
    #[error("cancelled")]
    Cancelled,
    /// The attempt was asked to stop for a reason of the worker's (it is shutting down, or lost
    /// its lease): the job runs again from its last checkpoint, and this attempt does not count
    /// as a failure.
    #[error("interrupted")]
    Interrupted,
    /// Run again at this time, without spending an attempt: the work could not be done yet
    /// (a rate-limited dependency answered 429 with `Retry-After`). See [`JobError::snooze`].
    #[error("snoozed until {0}")]
    Snooze(chrono::DateTime<chrono::Utc>),
}

impl JobError {
    /// Run again `after` from now without spending an attempt (at most [`MAX_SNOOZE`]).
    pub fn snooze(after: std::time::Duration) -> Self {
        let after = chrono::Duration::from_std(after.min(MAX_SNOOZE)).unwrap_or_default();
        Self::Snooze(chrono::Utc::now() + after)
    }
}

/// The longest a handler may snooze at once: as far ahead as a job may be scheduled.
pub const MAX_SNOOZE: std::time::Duration = jobs_contract::request::MAX_DELAY;

/// Saves a checkpoint, confirmed: `Err` says why it was not saved.
pub type SaveFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Where checkpoints go (the runner publishes them as events).
pub type Saver = Arc<dyn Fn(Value) -> SaveFuture + Send + Sync>;

/// What a running handler can see and do.
#[derive(Clone)]
pub struct JobContext {
    /// The job's id.
    pub id: Uuid,
    /// 1 for the first attempt.
    pub attempt: u32,
    stop: Stop,
    progress: watch::Sender<f64>,
    resume: Option<Value>,
    saver: Saver,
    inputs: Arc<serde_json::Map<String, Value>>,
    snoozes: u32,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

impl JobContext {
    /// A context for one attempt that resumes from `resume` (an earlier attempt's checkpoint),
    /// and the receiving end of its progress reports.
    pub fn new(
        id: Uuid,
        attempt: u32,
        stop: Stop,
        resume: Option<Value>,
        saver: Saver,
    ) -> (Self, watch::Receiver<f64>) {
        let (progress, reports) = watch::channel(0.0);
        let ctx = Self {
            id,
            attempt,
            stop,
            progress,
            resume,
            saver,
            inputs: Arc::default(),
            snoozes: 0,
        };
        (ctx, reports)
    }

    /// This context with the job's snooze count so far.
    pub fn with_snoozes(mut self, snoozes: u32) -> Self {
        self.snoozes = snoozes;
        self
    }

    /// Times this job was snoozed before this attempt ([`JobError::snooze`]).
    pub fn snoozes(&self) -> u32 {
        self.snoozes
    }

    /// This context with `inputs`: the results of the jobs a workflow's job depends on.
    pub fn with_inputs(mut self, inputs: serde_json::Map<String, Value>) -> Self {
        self.inputs = Arc::new(inputs);
        self
    }

    /// A workflow's job: the results of the jobs it depends on, by their keys (null for a failed
    /// one it runs after anyway); empty for a job outside a workflow.
    pub fn inputs(&self) -> &serde_json::Map<String, Value> {
        &self.inputs
    }

    /// `Err` once the attempt is asked to stop: `Cancelled` when the job was cancelled,
    /// `Interrupted` when the worker needs it back (a shutdown; save a checkpoint first if the
    /// work done since the last one is worth keeping). Call it between steps, and return the
    /// error.
    pub fn check_cancelled(&self) -> Result<(), JobError> {
        match self.stop.reason() {
            None => Ok(()),
            Some(StopReason::Cancelled) => Err(JobError::Cancelled),
            Some(StopReason::Shutdown | StopReason::LeaseLost | StopReason::HandedBack) => {
                Err(JobError::Interrupted)
            }
        }
    }

    /// Resolves once the attempt is asked to stop: to wait on beside a long step, so that it
    /// ends at once instead of at the step's end.
    pub async fn stopped(&self) {
        self.stop.tripped().await;
    }

    /// Reports progress (0.0–1.0). Never waits: the latest value is what gets reported, at most
    /// once per interval (see the runner).
    pub fn progress(&self, done: f64) {
        self.progress.send_replace(done.clamp(0.0, 1.0));
    }

    /// Where an earlier attempt left off: the state of its last [`JobContext::checkpoint`], or
    /// `None` on a fresh start. `Err` (permanent) when it is not a `T`.
    pub fn resume<T: DeserializeOwned>(&self) -> Result<Option<T>, JobError> {
        self.resume
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| JobError::Permanent(format!("the checkpoint cannot be read: {e}")))
    }

    /// Saves where the handler got to, and waits until it is stored: an attempt that runs after
    /// this one, for whatever reason (a crash, a deploy, a lost lease, a re-drive), gets it from
    /// [`JobContext::resume`]. At most 64 KiB serialized (a larger one is a permanent error); a
    /// checkpoint that cannot be saved now is a transient one.
    pub async fn checkpoint<T: Serialize>(&self, state: &T) -> Result<(), JobError> {
        let state = serde_json::to_value(state)
            .map_err(|e| JobError::Permanent(format!("checkpoint does not serialize: {e}")))?;
        let size = serde_json::to_vec(&state).map_or(0, |b| b.len());
        if size > MAX_CHECKPOINT_BYTES {
            return Err(JobError::Permanent(format!(
                "checkpoint of {size} bytes is over the {MAX_CHECKPOINT_BYTES}-byte limit"
            )));
        }
        (self.saver)(state)
            .await
            .map_err(|e| JobError::Transient(format!("checkpoint not saved: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    fn saver(into: Arc<Mutex<Vec<Value>>>) -> Saver {
        Arc::new(move |state| {
            into.lock().unwrap().push(state);
            Box::pin(async { Ok(()) })
        })
    }

    fn context(stop: Stop, resume: Option<Value>) -> (JobContext, watch::Receiver<f64>) {
        JobContext::new(Uuid::nil(), 1, stop, resume, saver(Arc::default()))
    }

    #[test]
    fn reports_are_clamped_and_the_latest_wins() {
        let (ctx, mut reports) = context(Stop::default(), None);
        ctx.progress(0.25);
        ctx.progress(7.0);
        assert!(reports.has_changed().unwrap());
        assert_eq!(*reports.borrow_and_update(), 1.0);
        ctx.progress(-1.0);
        assert_eq!(*reports.borrow_and_update(), 0.0);
    }

    #[test]
    fn a_stop_is_seen_between_steps_as_a_cancel_or_an_interruption() {
        for (reason, cancelled) in [
            (StopReason::Cancelled, true),
            (StopReason::Shutdown, false),
            (StopReason::LeaseLost, false),
        ] {
            let stop = Stop::default();
            let (ctx, _) = context(stop.clone(), None);
            assert!(ctx.check_cancelled().is_ok());
            stop.trip(reason);
            match ctx.check_cancelled() {
                Err(JobError::Cancelled) => assert!(cancelled, "{reason:?}"),
                Err(JobError::Interrupted) => assert!(!cancelled, "{reason:?}"),
                other => panic!("{reason:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_checkpoint_is_saved_bounded_and_read_back_typed() {
        let saved = Arc::new(Mutex::new(Vec::new()));
        let (ctx, _) = JobContext::new(
            Uuid::nil(),
            2,
            Stop::default(),
            Some(json!({"step": 4})),
            saver(saved.clone()),
        );
        assert_eq!(ctx.resume::<Value>().unwrap(), Some(json!({"step": 4})));
        assert!(matches!(ctx.resume::<u32>(), Err(JobError::Permanent(_))));
        ctx.checkpoint(&json!({"step": 5})).await.unwrap();
        assert_eq!(*saved.lock().unwrap(), [json!({"step": 5})]);
        let big = "x".repeat(MAX_CHECKPOINT_BYTES);
        let Err(JobError::Permanent(why)) = ctx.checkpoint(&big).await else {
            panic!("a checkpoint over the limit is refused");
        };
        assert!(why.contains("over the 65536-byte limit"), "{why}");
        assert_eq!(saved.lock().unwrap().len(), 1, "nothing saved");
        let (fresh, _) = context(Stop::default(), None);
        assert_eq!(fresh.resume::<Value>().unwrap(), None);
    }
}
