//! The handlers this worker runs, one per kind of the contract (`jobs_contract::kinds`), and
//! their registry.
//!
//! Adding a kind: its payload, validation and schema in the contract crate, then one file here
//! (a [`Handler`] for it) and one `.register::<...>()` line in [`registry`].

pub mod fail;
pub mod hash;
pub mod sleep;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use jobs_contract::JobKind;
use jobs_contract::kinds::PayloadError;
use serde_json::Value;

use crate::context::{JobContext, JobError};

/// Every kind this worker runs. Add a line to add a kind.
pub fn registry() -> Registry {
    Registry::default()
        .register::<sleep::Sleep>()
        .register::<hash::Hash>()
        .register::<fail::Fail>()
}

/// Runs one contract kind.
pub trait Handler: 'static {
    /// The kind it runs (name, payload type, version and validation come from the contract).
    type Kind: JobKind;
    /// How long one attempt may run before it fails as timed out, or `None` for no limit (hours,
    /// days: an attempt lives on its lease, not on a broker delivery). `JOB_DEADLINE_SECS`, when
    /// set, caps it.
    const DEADLINE: Option<Duration>;

    /// Runs one attempt. Report progress and check cancellation between steps through `ctx`.
    fn run(
        ctx: JobContext,
        payload: <Self::Kind as JobKind>::Payload,
    ) -> impl Future<Output = Result<Value, JobError>> + Send;
}

/// A boxed handler future.
pub type JobFuture = Pin<Box<dyn Future<Output = Result<Value, JobError>> + Send>>;

#[derive(Clone, Copy)]
struct Entry {
    deadline: Option<Duration>,
    read: fn(u32, Value) -> Result<Value, PayloadError>,
    run: fn(JobContext, Value) -> JobFuture,
}

/// Handlers by kind name.
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
    /// Adds handler `H`.
    pub fn register<H: Handler>(mut self) -> Self {
        let entry = Entry {
            deadline: H::DEADLINE,
            read: jobs_contract::kinds::read::<H::Kind>,
            run: run::<H>,
        };
        self.kinds.insert(H::Kind::NAME, entry);
        self
    }

    /// The kinds' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    /// Whether `kind` has a handler here.
    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// A payload of `version` as `kind`'s handler takes it: upgraded when older, validated.
    /// `Err` when the kind is unknown here or the version cannot be read: the job must not run.
    pub fn read(&self, kind: &str, version: u32, payload: Value) -> Result<Value, PayloadError> {
        match self.kinds.get(kind) {
            Some(e) => (e.read)(version, payload),
            None => Err(PayloadError::UnknownKind(kind.to_owned())),
        }
    }

    /// Starts `kind`'s handler on a payload [`Registry::read`] returned, with its deadline;
    /// `None` when the kind is unknown.
    pub fn run(
        &self,
        kind: &str,
        ctx: JobContext,
        payload: Value,
    ) -> Option<(JobFuture, Option<Duration>)> {
        self.kinds
            .get(kind)
            .map(|e| ((e.run)(ctx, payload), e.deadline))
    }
}

fn run<H: Handler>(ctx: JobContext, payload: Value) -> JobFuture {
    Box::pin(async move {
        // Read (upgraded and validated) by `Registry::read` already: this only types it.
        let parsed = jobs_contract::kinds::parse::<H::Kind>(&payload)
            .map_err(|e| JobError::Permanent(format!("invalid payload: {e}")))?;
        H::run(ctx, parsed).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_the_contract_has_a_handler_and_no_handler_is_unknown_to_it() {
        let handlers: Vec<_> = registry().names().collect();
        let contract: Vec<_> = jobs_contract::kinds::catalog().names().collect();
        assert_eq!(handlers, contract);
    }
}
