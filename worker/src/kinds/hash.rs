//! `hash`: `rounds` of SHA-256 over its own output, on the blocking pool: the stand-in for
//! CPU-bound work, which must never run on the async threads. In a workflow it starts from its
//! dependencies' digests, so its own says which results it was given.

use std::time::Duration;

use jobs_contract::kinds::hash::Payload;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::Instrument as _;

use super::{Handler, JobContext, JobError};

/// Progress is reported in this many steps.
const STEPS: u64 = 4;

/// Runs `hash` jobs.
#[derive(Debug)]
pub struct Hash;

impl Handler for Hash {
    type Kind = jobs_contract::kinds::Hash;
    // 10 M rounds take a few seconds; anything near this is a stuck pool.
    const DEADLINE: Option<Duration> = Some(Duration::from_secs(120));

    async fn run(ctx: JobContext, p: Payload) -> Result<Value, JobError> {
        let mut digest = [0u8; 32];
        digest[..16].copy_from_slice(ctx.id.as_bytes());
        // A workflow's job: its dependencies' digests (by key, in key order) go in first.
        let inputs: Vec<(&String, &str)> = ctx
            .inputs()
            .iter()
            .filter_map(|(key, result)| Some((key, result.get("digest")?.as_str()?)))
            .collect();
        for (_, input) in &inputs {
            digest = Sha256::digest([&digest[..], input.as_bytes()].concat()).into();
        }
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
            ctx.progress(i as f64 / STEPS as f64);
        }
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let from: Vec<&String> = inputs.iter().map(|(key, _)| *key).collect();
        Ok(json!({ "rounds": p.rounds, "digest": hex, "from": from }))
    }
}

fn chain(mut digest: [u8; 32], rounds: u64) -> [u8; 32] {
    for _ in 0..rounds {
        digest = Sha256::digest(digest).into();
    }
    digest
}
