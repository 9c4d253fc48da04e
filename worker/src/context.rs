//! What a running handler sees: its job, a cancellation check and a progress handle. Nothing
//! here knows of AMQP: the runner turns progress reports into events.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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
}

/// What a running handler can see and do.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job's id.
    pub id: Uuid,
    /// 1 for the first attempt.
    pub attempt: u32,
    cancel: CancellationToken,
    progress: watch::Sender<f64>,
}

impl JobContext {
    /// A context for one attempt, and the receiving end of its progress reports.
    pub fn new(id: Uuid, attempt: u32, cancel: CancellationToken) -> (Self, watch::Receiver<f64>) {
        let (progress, reports) = watch::channel(0.0);
        let ctx = Self {
            id,
            attempt,
            cancel,
            progress,
        };
        (ctx, reports)
    }

    /// `Err(Cancelled)` once the job has been cancelled; call it between steps.
    pub fn check_cancelled(&self) -> Result<(), JobError> {
        if self.cancel.is_cancelled() {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Reports progress (0.0–1.0). Never waits: the latest value is what gets reported, at most
    /// once per interval (see the runner).
    pub fn progress(&self, done: f64) {
        self.progress.send_replace(done.clamp(0.0, 1.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_clamped_and_the_latest_wins() {
        let (ctx, mut reports) = JobContext::new(Uuid::nil(), 1, CancellationToken::new());
        ctx.progress(0.25);
        ctx.progress(7.0);
        assert!(reports.has_changed().unwrap());
        assert_eq!(*reports.borrow_and_update(), 1.0);
        ctx.progress(-1.0);
        assert_eq!(*reports.borrow_and_update(), 0.0);
    }

    #[test]
    fn cancellation_is_seen_between_steps() {
        let cancel = CancellationToken::new();
        let (ctx, _) = JobContext::new(Uuid::nil(), 1, cancel.clone());
        assert!(ctx.check_cancelled().is_ok());
        cancel.cancel();
        assert!(matches!(ctx.check_cancelled(), Err(JobError::Cancelled)));
    }
}
