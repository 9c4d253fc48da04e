//! `hash`: `rounds` of SHA-256 over its own output: the stand-in for CPU-bound work.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::JobKind;

/// Most rounds accepted (a few seconds of CPU).
pub const MAX_ROUNDS: u64 = 10_000_000;

/// The `hash` kind.
#[derive(Debug)]
pub struct Hash;

/// `{"rounds": N}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// How many times to hash.
    #[schemars(range(min = 1, max = 10_000_000))]
    pub rounds: u64,
}

impl JobKind for Hash {
    const NAME: &'static str = "hash";
    type Payload = Payload;

    fn validate(p: &Payload) -> Result<(), String> {
        if !(1..=MAX_ROUNDS).contains(&p.rounds) {
            return Err(format!("rounds must be between 1 and {MAX_ROUNDS}"));
        }
        Ok(())
    }

    fn example() -> Payload {
        Payload { rounds: 100_000 }
    }
}
