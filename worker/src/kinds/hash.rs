//! `hash`: `rounds` of SHA-256 over its own output, on the blocking pool: the stand-in for
//! CPU-bound work, which must never run on the async threads.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::Instrument as _;

use super::{JobContext, JobError, JobKind};

const MAX_ROUNDS: u64 = 10_000_000;
/// Progress is reported in this many steps.
const STEPS: u64 = 4;

/// The `hash` kind.
#[derive(Debug)]
pub struct Hash;

/// `{"rounds": N}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    rounds: u64,
}

impl JobKind for Hash {
    const NAME: &'static str = "hash";
    // 10 M rounds take a few seconds; anything near this is a stuck pool.
    const DEADLINE: Duration = Duration::from_secs(120);
    type Payload = Payload;

    fn validate(p: &Payload) -> Result<(), String> {
        if !(1..=MAX_ROUNDS).contains(&p.rounds) {
            return Err(format!("rounds must be between 1 and {MAX_ROUNDS}"));
        }
        Ok(())
    }

    async fn run(ctx: JobContext, p: Payload) -> Result<Value, JobError> {
        let mut digest = [0u8; 32];
        digest[..16].copy_from_slice(ctx.id.as_bytes());
        let mut done = 0;
        for i in 1..=STEPS {
            ctx.check_cancelled()?;
            let rounds = p.rounds * i / STEPS - done;
            done += rounds;
            let span = tracing::info_span!(
                "job.step",
                otel.name = format!("step {i}"),
                step = i,
                rounds
            );
            digest = tokio::task::spawn_blocking(move || chain(digest, rounds))
                .instrument(span)
                .await
                .map_err(|e| JobError::Permanent(format!("hashing task failed: {e}")))?;
            ctx.progress(i as f64 / STEPS as f64).await;
        }
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Ok(json!({ "rounds": p.rounds, "digest": hex }))
    }
}

fn chain(mut digest: [u8; 32], rounds: u64) -> [u8; 32] {
    for _ in 0..rounds {
        digest = Sha256::digest(digest).into();
    }
    digest
}
