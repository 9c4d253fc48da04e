//! `sleep`: wait `duration_ms` in `steps` equal steps, reporting progress after each and saving
//! a checkpoint as it goes: the stand-in for any long, I/O-bound job, minutes to days, which
//! resumes where it left off after a crash, a deploy or a re-drive.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::JobKind;

/// Longest sleep accepted: a week. An attempt lives on its lease, not on a broker delivery, so
/// nothing but this bound limits it.
pub const MAX_DURATION_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most steps accepted (one progress report each).
pub const MAX_STEPS: u32 = 10_000;
/// The longest snooze: as far ahead as a job may be scheduled (30 days).
pub const MAX_SNOOZE_MS: u64 = 2_592_000_000;

/// The `sleep` kind.
#[derive(Debug)]
pub struct Sleep;

/// `{"duration_ms": N, "steps": K}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// How long the whole job sleeps, in milliseconds.
    #[schemars(range(max = 604_800_000))]
    pub duration_ms: u64,
    /// In how many equal steps, each reporting progress.
    #[schemars(range(min = 1, max = 10_000))]
    pub steps: u32,
    /// When more than 0, the first run asks to run again this many milliseconds later, without
    /// spending an attempt, as a handler does when an upstream answers 429 with `Retry-After`
    /// (a snooze).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(max = 2_592_000_000_u64))]
    pub snooze_ms: u64,
}

impl JobKind for Sleep {
    const NAME: &'static str = "sleep";
    type Payload = Payload;

    fn validate(p: &Payload) -> Result<(), String> {
        if p.duration_ms > MAX_DURATION_MS {
            return Err(format!("duration_ms must be at most {MAX_DURATION_MS}"));
        }
        if !(1..=MAX_STEPS).contains(&p.steps) {
            return Err(format!("steps must be between 1 and {MAX_STEPS}"));
        }
        if p.snooze_ms > MAX_SNOOZE_MS {
            return Err(format!("snooze_ms must be at most {MAX_SNOOZE_MS}"));
        }
        Ok(())
    }

    fn example() -> Payload {
        Payload {
            duration_ms: 3000,
            steps: 3,
            snooze_ms: 0,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
