//! `sleep`: waits `duration_ms` in `steps` equal steps, reporting progress after each: the
//! stand-in for any long, I/O-bound job. It saves the steps done as its checkpoint (at most once
//! a second, and when asked to stop), and an attempt that resumes starts after the last step an
//! earlier one saved.

use std::time::{Duration, Instant};

use jobs_contract::kinds::sleep::Payload;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::Instrument as _;

use super::{Handler, JobContext, JobError};

/// Checkpoints are saved at most this often: each is a confirmed publish and a row update.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Steps get a span each up to this many: a trace shows a short job's steps, and a job of ten
/// thousand steps stays a trace of a few spans.
const TRACED_STEPS: u32 = 100;

/// Runs `sleep` jobs.
#[derive(Debug)]
pub struct Sleep;

/// What a `sleep` attempt saves: the steps done.
#[derive(Debug, Serialize, Deserialize)]
struct Done {
    steps: u32,
}

impl Handler for Sleep {
    type Kind = jobs_contract::kinds::Sleep;
    // As long as it was asked to sleep: a week at most (the contract's bound).
    const DEADLINE: Option<Duration> = None;

    async fn run(ctx: JobContext, p: Payload) -> Result<Value, JobError> {
        if p.snooze_ms > 0 && ctx.snoozes() == 0 {
            // The stand-in for an upstream's 429 with `Retry-After`: run again later, for free.
            return Err(JobError::snooze(Duration::from_millis(p.snooze_ms)));
        }
        let step = Duration::from_millis(p.duration_ms) / p.steps;
        let resumed = ctx.resume::<Done>()?.map_or(0, |d| d.steps.min(p.steps));
        if resumed > 0 {
            tracing::info!(resumed_at_step = resumed, "resuming from the checkpoint");
            ctx.progress(f64::from(resumed) / f64::from(p.steps));
        }
        let mut saved = (resumed, Instant::now());
        for i in resumed + 1..=p.steps {
            if let Err(stop) = ctx.check_cancelled() {
                return Err(save_before_stopping(&ctx, saved.0, i - 1, stop).await);
            }
            let span = if p.steps <= TRACED_STEPS {
                tracing::info_span!("job.step", otel.name = format!("step {i}"), step = i)
            } else {
                tracing::Span::none()
            };
            // A zero sleep would still wait for the timer's next 1 ms tick.
            if !step.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(step).instrument(span) => {},
                    // A long step ends at once when the attempt is asked to stop; it was not
                    // done, so the checkpoint stays at the step before.
                    () = ctx.stopped() => {
                        let stop = ctx.check_cancelled().expect_err("stopped");
                        return Err(save_before_stopping(&ctx, saved.0, i - 1, stop).await);
                    }
                }
            }
            if i < p.steps && saved.1.elapsed() >= CHECKPOINT_EVERY {
                ctx.checkpoint(&Done { steps: i }).await?;
                saved = (i, Instant::now());
            }
            ctx.progress(f64::from(i) / f64::from(p.steps));
        }
        Ok(json!({ "slept_ms": p.duration_ms, "steps": p.steps, "resumed_at_step": resumed }))
    }
}

/// On a stop for the worker's sake (a shutdown), saves the steps done since the last checkpoint
/// so the next attempt starts after them; returns the error to stop with.
async fn save_before_stopping(ctx: &JobContext, saved: u32, done: u32, stop: JobError) -> JobError {
    if matches!(stop, JobError::Interrupted)
        && done > saved
        && let Err(e) = ctx.checkpoint(&Done { steps: done }).await
    {
        tracing::warn!(error = %e, "checkpoint before stopping not saved");
    }
    stop
}
