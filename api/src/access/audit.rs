//! The audit trail: who did what to which jobs or objects, when, under which trace. A handler
//! makes an [`Audit`] from its caller; the store writes it in the transaction of the effect (so an
//! action is recorded if and only if it took effect), and [`Audit::logged`] writes the JSON log
//! line with the same trace id once it is committed. Submits are counted
//! (`jobstack_jobs_created_total`), not recorded one by one.

use serde_json::Value;
use uuid::Uuid;

use super::Caller;

/// One mutating action, as recorded.
#[derive(Debug, Clone)]
pub struct Audit {
    /// The caller's client name.
    pub actor: String,
    /// Its role at the time.
    pub role: String,
    /// Its key.
    pub key_id: Option<Uuid>,
    /// What it did, e.g. `job.cancel`.
    pub action: &'static str,
    /// What it did it to.
    pub target: String,
    /// Anything else worth keeping (a filter, a count, a new setting).
    pub detail: Value,
    /// The request's trace.
    pub trace_id: String,
}

impl Audit {
    /// `caller` doing `action` to `target`, in the current request's trace.
    pub fn new(caller: &Caller, action: &'static str, target: impl Into<String>) -> Self {
        Self {
            actor: caller.client.clone(),
            role: caller.role.as_str().to_owned(),
            key_id: caller.key_id,
            action,
            target: target.into(),
            detail: Value::Object(Default::default()),
            trace_id: shared::telemetry::propagation::trace_id(&tracing::Span::current())
                .unwrap_or_default(),
        }
    }

    /// With `detail`.
    pub fn with(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }

    /// The log line of a committed action that changed `jobs` jobs.
    pub fn logged(&self, jobs: usize) {
        tracing::info!(
            audit.action = self.action,
            audit.actor = %self.actor,
            audit.role = %self.role,
            audit.target = %self.target,
            audit.jobs = jobs,
            "audited"
        );
    }
}
