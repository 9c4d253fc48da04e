//! `fail`: fails on purpose, to show retries with backoff (`transient: true`), immediate
//! dead-lettering (`transient: false`) and a contained handler panic (`panic: true`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::JobKind;

/// The `fail` kind.
#[derive(Debug)]
pub struct Fail;

/// `{"transient": bool, "panic": bool}` (`panic` is optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// A transient failure is retried with backoff; a permanent one is dead-lettered at once.
    pub transient: bool,
    /// Panic in the handler instead (the worker contains it).
    #[serde(default)]
    pub panic: bool,
}

impl JobKind for Fail {
    const NAME: &'static str = "fail";
    type Payload = Payload;

    fn validate(_: &Payload) -> Result<(), String> {
        Ok(())
    }

    fn example() -> Payload {
        Payload {
            transient: true,
            panic: false,
        }
    }
}
