//! Workflows: jobs that run after other jobs, submitted as one DAG (Celery's chain, group and
//! chord are its special cases). This module reads and checks a request; the store keeps the
//! whole DAG in one transaction, and PostgreSQL releases each job when its dependencies have
//! ended (migration 0007's trigger), in the transaction that records the last one's end.

use std::collections::{BTreeMap, HashMap};

use jobs_contract::Catalog;
use jobs_contract::kinds::PayloadError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Most jobs in one workflow.
pub const MAX_JOBS: usize = 1000;
/// Most dependencies of one workflow, all jobs together.
pub const MAX_EDGES: usize = 10_000;

/// A workflow to run.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRequest {
    /// A name for people (not unique): at most 200 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 200, pattern = r"^[^\u0000-\u001F\u007F]*$")]
    pub name: Option<String>,
    /// Its jobs, at least one, at most 1000.
    #[schema(min_items = 1, max_items = 1000)]
    pub jobs: Vec<WorkflowJob>,
}

/// A job of a workflow.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowJob {
    /// Its key, unique in the workflow: letters, digits, `.`, `_` and `-`, at most 64.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub key: String,
    /// Its kind.
    pub kind: String,
    /// Its payload, checked against the kind's schema.
    pub payload: Value,
    /// The payload's version (default: the kind's current).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub payload_version: Option<u32>,
    /// The jobs it runs after, by key. Its handler reads their results.
    #[serde(default)]
    pub depends_on: Vec<DependsOn>,
}

/// A dependency: a key, or a key and what its failure does.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DependsOn {
    /// Runs after this job; if it fails or is cancelled, this one is cancelled.
    Key(String),
    /// Runs after `key`; `on_failure` says what its failure does.
    With {
        /// The job it runs after.
        key: String,
        /// `fail` (default: this job is cancelled, and what depends on it) or `ignore` (it runs
        /// anyway; the failed job's result reads as null).
        #[serde(default)]
        on_failure: OnFailure,
    },
}

impl DependsOn {
    fn key(&self) -> &str {
        match self {
            Self::Key(key) | Self::With { key, .. } => key,
        }
    }

    fn on_failure(&self) -> OnFailure {
        match self {
            Self::Key(_) => OnFailure::Fail,
            Self::With { on_failure, .. } => *on_failure,
        }
    }
}

/// What a dependency's failure does to the job that depends on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Cancel it, and what depends on it: the workflow fails.
    #[default]
    Fail,
    /// Run it anyway.
    Ignore,
}

impl OnFailure {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Ignore => "ignore",
        }
    }
}

/// A checked workflow: its jobs in an order where each comes after its dependencies.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWorkflow {
    /// Its name.
    pub name: Option<String>,
    /// Its jobs, dependencies first.
    pub jobs: Vec<NewWorkflowJob>,
}

/// A checked job of a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWorkflowJob {
    /// Its key.
    pub key: String,
    /// Its kind.
    pub kind: String,
    /// Its payload, valid for the kind.
    pub payload: Value,
    /// The payload's version.
    pub payload_version: u32,
    /// The keys it runs after, with their failure policies.
    pub depends_on: Vec<(String, OnFailure)>,
}

/// Why a workflow is refused: the field at fault (`jobs[3].depends_on[0]`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Invalid {
    /// Where in the request.
    pub field: String,
    /// What is wrong, for people.
    pub why: String,
}

fn refuse(field: impl Into<String>, why: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        why: why.into(),
    }
}

impl WorkflowRequest {
    /// Checks every job, every key and every dependency, and that the graph has no cycle; the
    /// error names the first fault.
    pub fn check(&self, kinds: &Catalog) -> Result<NewWorkflow, Invalid> {
        if self.jobs.is_empty() || self.jobs.len() > MAX_JOBS {
            return Err(refuse("jobs", format!("1 to {MAX_JOBS} jobs")));
        }
        if self.name.as_ref().is_some_and(|n| n.chars().count() > 200) {
            return Err(refuse("name", "at most 200 characters"));
        }
        // PostgreSQL's text takes no NUL (the schema's pattern says the same).
        if self
            .name
            .as_ref()
            .is_some_and(|n| n.chars().any(|c| c <= '\u{1f}' || c == '\u{7f}'))
        {
            return Err(refuse("name", "no control characters"));
        }
        let edges: usize = self.jobs.iter().map(|j| j.depends_on.len()).sum();
        if edges > MAX_EDGES {
            return Err(refuse(
                "jobs",
                format!("at most {MAX_EDGES} dependencies in all"),
            ));
        }
        let mut index = HashMap::new();
        for (i, job) in self.jobs.iter().enumerate() {
            crate::schedules::check_name(&job.key)
                .map_err(|e| refuse(format!("jobs[{i}].key"), e.why))?;
            if index.insert(job.key.as_str(), i).is_some() {
                return Err(refuse(
                    format!("jobs[{i}].key"),
                    format!("{:?} is used twice", job.key),
                ));
            }
        }
        let mut jobs = Vec::with_capacity(self.jobs.len());
        for (i, job) in self.jobs.iter().enumerate() {
            jobs.push(check_job(i, job, &index, kinds)?);
        }
        Ok(NewWorkflow {
            name: self.name.clone(),
            jobs: in_dependency_order(jobs)?,
        })
    }
}

fn check_job(
    i: usize,
    job: &WorkflowJob,
    index: &HashMap<&str, usize>,
    kinds: &Catalog,
) -> Result<NewWorkflowJob, Invalid> {
    if !kinds.contains(&job.kind) {
        let known: Vec<_> = kinds.names().collect();
        return Err(refuse(
            format!("jobs[{i}].kind"),
            format!(
                "unknown kind {:?}; known kinds: {}",
                job.kind,
                known.join(", ")
            ),
        ));
    }
    let version = job
        .payload_version
        .unwrap_or_else(|| kinds.version(&job.kind).unwrap_or(1));
    kinds
        .read(&job.kind, version, job.payload.clone())
        .map_err(|e| match e {
            PayloadError::Version { .. } => {
                refuse(format!("jobs[{i}].payload_version"), e.to_string())
            }
            other => refuse(format!("jobs[{i}].payload"), other.to_string()),
        })?;
    let mut depends_on = Vec::with_capacity(job.depends_on.len());
    let mut seen = BTreeMap::new();
    for (d, dep) in job.depends_on.iter().enumerate() {
        let field = format!("jobs[{i}].depends_on[{d}]");
        if !index.contains_key(dep.key()) {
            return Err(refuse(field, format!("no job has the key {:?}", dep.key())));
        }
        if dep.key() == job.key {
            return Err(refuse(field, "a job cannot depend on itself"));
        }
        if seen.insert(dep.key(), ()).is_some() {
            return Err(refuse(field, format!("{:?} is listed twice", dep.key())));
        }
        depends_on.push((dep.key().to_owned(), dep.on_failure()));
    }
    Ok(NewWorkflowJob {
        key: job.key.clone(),
        kind: job.kind.clone(),
        payload: job.payload.clone(),
        payload_version: version,
        depends_on,
    })
}

/// The jobs ordered so that each comes after its dependencies (Kahn's algorithm); a cycle is
/// refused, naming a job on it.
fn in_dependency_order(jobs: Vec<NewWorkflowJob>) -> Result<Vec<NewWorkflowJob>, Invalid> {
    let position: HashMap<String, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.key.clone(), i))
        .collect();
    let mut waiting: Vec<usize> = jobs.iter().map(|j| j.depends_on.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
    for (i, job) in jobs.iter().enumerate() {
        for (key, _) in &job.depends_on {
            dependents[position[key]].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..jobs.len()).filter(|i| waiting[*i] == 0).collect();
    let mut order = Vec::with_capacity(jobs.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(d);
            }
        }
    }
    if order.len() < jobs.len() {
        let on_cycle = (0..jobs.len())
            .find(|i| waiting[*i] > 0)
            .expect("some job waits");
        return Err(refuse(
            format!("jobs[{on_cycle}].depends_on"),
            format!("{:?} is on a dependency cycle", jobs[on_cycle].key),
        ));
    }
    let mut slots: Vec<Option<NewWorkflowJob>> = jobs.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .map(|i| slots[i].take().expect("each job once"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(jobs: Value) -> WorkflowRequest {
        serde_json::from_value(json!({ "jobs": jobs })).unwrap()
    }

    fn hash(key: &str, deps: Value) -> Value {
        json!({"key": key, "kind": "hash", "payload": {"rounds": 1}, "depends_on": deps})
    }

    #[test]
    fn orders_a_diamond_dependencies_first() {
        let kinds = jobs_contract::kinds::catalog();
        let w = request(json!([
            hash("d", json!(["b", {"key": "c", "on_failure": "ignore"}])),
            hash("b", json!(["a"])),
            hash("c", json!(["a"])),
            hash("a", json!([])),
        ]))
        .check(&kinds)
        .unwrap();
        let order: Vec<_> = w.jobs.iter().map(|j| j.key.as_str()).collect();
        let at = |k| order.iter().position(|o| *o == k).unwrap();
        assert!(
            at("a") < at("b") && at("a") < at("c") && at("b") < at("d") && at("c") < at("d"),
            "{order:?}"
        );
        let d = w.jobs.iter().find(|j| j.key == "d").unwrap();
        assert_eq!(
            d.depends_on,
            [
                ("b".to_owned(), OnFailure::Fail),
                ("c".to_owned(), OnFailure::Ignore)
            ]
        );
    }

    #[test]
    fn a_name_with_a_control_character_is_refused() {
        let kinds = jobs_contract::kinds::catalog();
        let mut w = request(json!([hash("a", json!([]))]));
        w.name = Some("night\u{0}ly".into());
        assert_eq!(w.check(&kinds).unwrap_err().field, "name");
        w.name = Some("nightly report".into());
        assert!(w.check(&kinds).is_ok());
    }

    #[test]
    fn refuses_cycles_unknown_and_duplicate_keys_and_bad_jobs_naming_the_field() {
        let kinds = jobs_contract::kinds::catalog();
        let field = |jobs: Value| request(jobs).check(&kinds).unwrap_err().field;
        assert_eq!(
            field(json!([hash("a", json!(["b"])), hash("b", json!(["a"]))])),
            "jobs[0].depends_on"
        );
        assert_eq!(
            field(json!([hash("a", json!(["a"]))])),
            "jobs[0].depends_on[0]"
        );
        assert_eq!(
            field(json!([hash("a", json!(["nope"]))])),
            "jobs[0].depends_on[0]"
        );
        assert_eq!(
            field(json!([hash("a", json!([])), hash("b", json!(["a", "a"]))])),
            "jobs[1].depends_on[1]"
        );
        assert_eq!(
            field(json!([hash("a", json!([])), hash("a", json!([]))])),
            "jobs[1].key"
        );
        assert_eq!(field(json!([hash("a b", json!([]))])), "jobs[0].key");
        assert_eq!(
            field(json!([{"key": "a", "kind": "nope", "payload": {}}])),
            "jobs[0].kind"
        );
        assert_eq!(
            field(json!([{"key": "a", "kind": "hash", "payload": {"rounds": 0}}])),
            "jobs[0].payload"
        );
        assert_eq!(field(json!([])), "jobs");
        let many: Vec<Value> = (0..=MAX_JOBS)
            .map(|i| hash(&format!("j{i}"), json!([])))
            .collect();
        assert_eq!(field(json!(many)), "jobs");
        // A long chain is fine (no recursion to overflow).
        let chain: Vec<Value> = (0..MAX_JOBS)
            .map(|i| {
                hash(
                    &format!("j{i}"),
                    if i == 0 {
                        json!([])
                    } else {
                        json!([format!("j{}", i - 1)])
                    },
                )
            })
            .collect();
        assert_eq!(
            request(json!(chain)).check(&kinds).unwrap().jobs.len(),
            MAX_JOBS
        );
    }
}
