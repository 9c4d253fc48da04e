//! `sleep`: waits `duration_ms` in `steps` equal steps, reporting progress after each: the
//! stand-in for any long, I/O-bound job.

use std::time::Duration;

use jobs_contract::kinds::sleep::Payload;
use serde_json::{Value, json};
use tracing::Instrument as _;

use super::{Handler, JobContext, JobError};

/// Runs `sleep` jobs.
#[derive(Debug)]
pub struct Sleep;

impl Handler for Sleep {
    type Kind = jobs_contract::kinds::Sleep;
    // The longest sleep accepted, plus slack.
    const DEADLINE: Duration = Duration::from_secs(330);

    async fn run(ctx: JobContext, p: Payload) -> Result<Value, JobError> {
        let step = Duration::from_millis(p.duration_ms) / p.steps;
        for i in 1..=p.steps {
            ctx.check_cancelled()?;
            let span = tracing::info_span!("job.step", otel.name = format!("step {i}"), step = i);
            // A zero sleep would still wait for the timer's next 1 ms tick.
            if !step.is_zero() {
                tokio::time::sleep(step).instrument(span).await;
            }
            ctx.progress(f64::from(i) / f64::from(p.steps));
        }
        Ok(json!({ "slept_ms": p.duration_ms, "steps": p.steps }))
    }
}
