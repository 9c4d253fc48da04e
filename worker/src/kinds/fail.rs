//! `fail`: fails on purpose, to show retries with backoff (`transient: true`), immediate
//! dead-lettering (`transient: false`) and a contained handler panic (`panic: true`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{JobContext, JobError, JobKind};

/// The `fail` kind.
#[derive(Debug)]
pub struct Fail;

/// `{"transient": bool, "panic": bool}` (`panic` is optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    transient: bool,
    #[serde(default)]
    panic: bool,
}

impl JobKind for Fail {
    const NAME: &'static str = "fail";
    // It fails at once.
    const DEADLINE: Duration = Duration::from_secs(10);
    type Payload = Payload;

    fn validate(_: &Payload) -> Result<(), String> {
        Ok(())
    }

    async fn run(_ctx: JobContext, p: Payload) -> Result<Value, JobError> {
        if p.panic {
            panic!("simulated handler panic");
        }
        Err(if p.transient {
            JobError::Transient("simulated transient failure".into())
        } else {
            JobError::Permanent("simulated permanent failure".into())
        })
    }
}
