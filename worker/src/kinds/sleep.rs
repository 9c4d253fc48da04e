//! `sleep`: waits `duration_ms` in `steps` equal steps, reporting progress after each: the
//! stand-in for any long, I/O-bound job.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument as _;

use super::{JobContext, JobError, JobKind};

/// Longest sleep accepted (5 minutes), so a job cannot outlive the default deadline.
const MAX_DURATION_MS: u64 = 300_000;
const MAX_STEPS: u32 = 100;

/// The `sleep` kind.
#[derive(Debug)]
pub struct Sleep;

/// `{"duration_ms": N, "steps": K}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    duration_ms: u64,
    steps: u32,
}

impl JobKind for Sleep {
    const NAME: &'static str = "sleep";
    // The longest sleep accepted, plus slack.
    const DEADLINE: Duration = Duration::from_secs(330);
    type Payload = Payload;

    fn validate(p: &Payload) -> Result<(), String> {
        if p.duration_ms > MAX_DURATION_MS {
            return Err(format!("duration_ms must be at most {MAX_DURATION_MS}"));
        }
        if !(1..=MAX_STEPS).contains(&p.steps) {
            return Err(format!("steps must be between 1 and {MAX_STEPS}"));
        }
        Ok(())
    }

    async fn run(ctx: JobContext, p: Payload) -> Result<Value, JobError> {
        let step = Duration::from_millis(p.duration_ms) / p.steps;
        for i in 1..=p.steps {
            ctx.check_cancelled()?;
            let span = tracing::info_span!("job.step", otel.name = format!("step {i}"), step = i);
            // A zero sleep would still wait for the timer's next 1 ms tick.
            if !step.is_zero() {
                tokio::time::sleep(step).instrument(span).await;
            }
            ctx.progress(f64::from(i) / f64::from(p.steps)).await;
        }
        Ok(json!({ "slept_ms": p.duration_ms, "steps": p.steps }))
    }
}
