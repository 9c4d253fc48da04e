//! The job kinds this worker runs, and their registry.
//!
//! Adding a kind is one file here (a payload type and a [`JobKind`] impl) and one
//! `.register::<...>()` line in [`registry`]. The api validates payloads through the same
//! registry before it stores a job, so a bad payload is refused at the door.

pub mod fail;
pub mod hash;
pub mod sleep;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::runner::Reporter;

/// Every kind the worker knows. Add a line to add a kind.
pub fn registry() -> Registry {
    Registry::default()
        .register::<sleep::Sleep>()
        .register::<hash::Hash>()
        .register::<fail::Fail>()
}

/// How an attempt can fail.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt (a dependency was down, a deadline passed).
    #[error("{0}")]
    Transient(String),
    /// Will fail again: no retry.
    #[error("{0}")]
    Permanent(String),
    /// The job was cancelled while it ran.
    #[error("cancelled")]
    Cancelled,
}

/// A job handler.
pub trait JobKind: 'static {
    /// The `kind` clients send.
    const NAME: &'static str;
    /// How long one attempt may run before it fails as timed out (`JOB_DEADLINE_SECS` caps it).
    const DEADLINE: Duration;
    /// The handler's input; unknown fields are refused by `#[serde(deny_unknown_fields)]`.
    type Payload: DeserializeOwned + Send;

    /// Checks what serde cannot (ranges, sizes). The message says what is wrong, for people.
    fn validate(payload: &Self::Payload) -> Result<(), String>;

    /// Runs one attempt. Report progress and check cancellation between steps through `ctx`.
    fn run(
        ctx: JobContext,
        payload: Self::Payload,
    ) -> impl Future<Output = Result<Value, JobError>> + Send;
}

/// What a running handler can see and do.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job's id.
    pub id: Uuid,
    /// 1 for the first attempt.
    pub attempt: u32,
    cancel: CancellationToken,
    reporter: Reporter,
}

impl JobContext {
    pub(crate) fn new(
        id: Uuid,
        attempt: u32,
        cancel: CancellationToken,
        reporter: Reporter,
    ) -> Self {
        Self {
            id,
            attempt,
            cancel,
            reporter,
        }
    }

    /// `Err(Cancelled)` once the job has been cancelled; call it between steps.
    pub fn check_cancelled(&self) -> Result<(), JobError> {
        if self.cancel.is_cancelled() {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Reports progress (0.0–1.0) to the api. Best effort: a lost progress event is harmless.
    pub async fn progress(&self, done: f64) {
        self.reporter.progress(done.clamp(0.0, 1.0)).await;
    }
}

/// A boxed handler future.
pub type JobFuture = Pin<Box<dyn Future<Output = Result<Value, JobError>> + Send>>;

#[derive(Clone, Copy)]
struct Entry {
    deadline: Duration,
    validate: fn(&Value) -> Result<(), String>,
    run: fn(JobContext, Value) -> JobFuture,
}

/// Kinds by name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Entry>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

impl Registry {
    /// Adds kind `K`.
    pub fn register<K: JobKind>(mut self) -> Self {
        self.kinds.insert(
            K::NAME,
            Entry {
                deadline: K::DEADLINE,
                validate: validate::<K>,
                run: run::<K>,
            },
        );
        self
    }

    /// The known kinds' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    /// Whether `kind` is known.
    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// Checks `payload` for `kind`; `Err` says what is wrong.
    pub fn validate(&self, kind: &str, payload: &Value) -> Result<(), String> {
        match self.kinds.get(kind) {
            Some(e) => (e.validate)(payload),
            None => Err(format!("unknown kind {kind:?}")),
        }
    }

    /// Starts `kind`'s handler with its deadline, or `None` when the kind is unknown.
    pub fn run(
        &self,
        kind: &str,
        ctx: JobContext,
        payload: Value,
    ) -> Option<(JobFuture, Duration)> {
        self.kinds
            .get(kind)
            .map(|e| ((e.run)(ctx, payload), e.deadline))
    }
}

fn validate<K: JobKind>(payload: &Value) -> Result<(), String> {
    let parsed = K::Payload::deserialize(payload).map_err(|e| e.to_string())?;
    K::validate(&parsed)
}

fn run<K: JobKind>(ctx: JobContext, payload: Value) -> JobFuture {
    Box::pin(async move {
        // The api validated this payload; a failure here means an older or newer api.
        let parsed = K::Payload::deserialize(payload)
            .map_err(|e| JobError::Permanent(format!("invalid payload: {e}")))?;
        K::run(ctx, parsed).await
    })
}

use serde::Deserialize as _;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validates_each_kind() {
        let r = registry();
        assert_eq!(r.names().collect::<Vec<_>>(), ["fail", "hash", "sleep"]);
        assert!(
            r.validate("sleep", &json!({"duration_ms": 10, "steps": 2}))
                .is_ok()
        );
        assert!(r.validate("hash", &json!({"rounds": 10})).is_ok());
        assert!(r.validate("fail", &json!({"transient": true})).is_ok());
        for (kind, bad) in [
            ("sleep", json!({"duration_ms": -1, "steps": 1})),
            ("sleep", json!({"duration_ms": 10, "steps": 0})),
            ("sleep", json!({"duration_ms": 10})),
            ("sleep", json!({"duration_ms": 10, "steps": 1, "extra": 1})),
            ("hash", json!({"rounds": 0})),
            ("hash", json!({"rounds": "many"})),
            ("fail", json!({})),
            ("fail", json!([])),
            ("nope", json!({})),
        ] {
            assert!(
                r.validate(kind, &bad).is_err(),
                "{kind} {bad} should be refused"
            );
        }
    }
}
