//! `fail`: fails on purpose, to show retries with backoff (`transient: true`), immediate
//! dead-lettering (`transient: false`) and a contained handler panic (`panic: true`).

use std::time::Duration;

use jobs_contract::kinds::fail::Payload;
use serde_json::Value;

use super::{Handler, JobContext, JobError};

/// Runs `fail` jobs.
#[derive(Debug)]
pub struct Fail;

impl Handler for Fail {
    type Kind = jobs_contract::kinds::Fail;
    // It fails at once.
    const DEADLINE: Option<Duration> = Some(Duration::from_secs(10));

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
