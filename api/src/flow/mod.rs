//! Flow control: what each kind's limits and uniqueness are in this deployment, and how the
//! relay applies them.
//!
//! - [`settings`]: `JOB_LIMITS`, the per-deployment overrides of what the contract declares.
//! - [`admit`]: the relay's decision for a batch of due jobs: publish, or hold and why.
//! - [`gate`]: that decision inside the relay's transaction, with the state it reads and writes.
//!
//! Limits hold for the whole fleet because they are decided where jobs enter the broker, in
//! one transaction per batch, under a per-kind lock in PostgreSQL (see `store::flow`).

pub mod admit;
pub mod gate;
pub mod settings;

use std::collections::BTreeMap;
use std::time::Duration;

use jobs_contract::Catalog;
use jobs_contract::flow::Limits;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::store::Claim;
pub use settings::Override;

/// What makes two jobs of a kind the same job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueRule {
    /// The payload fields compared; empty: the whole payload.
    pub fields: Vec<String>,
    /// The claim lasts this long from creation; `None`: while the job is unfinished.
    pub within: Option<Duration>,
}

/// A kind's flow settings in this deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindFlow {
    /// Its limits.
    pub limits: Limits,
    /// Its uniqueness.
    pub unique: Option<UniqueRule>,
}

/// Every kind's flow settings: the contract's, with `JOB_LIMITS` applied.
#[derive(Debug, Clone, Default)]
pub struct Flow {
    kinds: BTreeMap<String, KindFlow>,
}

impl Flow {
    /// The contract's declarations for `catalog`, overridden by `overrides`; an override of a
    /// kind the catalog does not have is an error naming it.
    pub fn new(catalog: &Catalog, overrides: &[Override]) -> Result<Self, String> {
        let mut kinds: BTreeMap<String, KindFlow> = catalog
            .names()
            .map(|name| {
                let unique = catalog.unique(name).map(|u| UniqueRule {
                    fields: u.fields.iter().map(|f| (*f).to_owned()).collect(),
                    within: u.within,
                });
                let limits = catalog.limits(name).unwrap_or_default();
                (name.to_owned(), KindFlow { limits, unique })
            })
            .collect();
        for o in overrides {
            let Some(flow) = kinds.get_mut(&o.kind) else {
                let known: Vec<_> = catalog.names().collect();
                return Err(format!(
                    "unknown kind {:?} (known: {})",
                    o.kind,
                    known.join(", ")
                ));
            };
            o.apply(flow);
        }
        Ok(Self { kinds })
    }

    /// `kind`'s limits.
    pub fn limits(&self, kind: &str) -> Limits {
        self.kinds.get(kind).map(|k| k.limits).unwrap_or_default()
    }

    /// Whether any kind has a limit (the relay skips the flow work when none has).
    pub fn any_limit(&self) -> bool {
        self.kinds.values().any(|k| k.limits.any())
    }

    /// Every kind with its settings, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &KindFlow)> {
        self.kinds.iter().map(|(k, f)| (k.as_str(), f))
    }

    /// The claim of a job of `kind` with `payload`: from the request's `unique_key` if given,
    /// else from the kind's rule, else none.
    pub fn claim(&self, kind: &str, payload: &Value, unique_key: Option<&str>) -> Option<Claim> {
        let rule = self.kinds.get(kind).and_then(|k| k.unique.as_ref());
        let within = rule.and_then(|r| r.within);
        let key = match (unique_key, rule) {
            (Some(key), _) => format!("{kind}:key:{key}"),
            (None, Some(rule)) => format!("{kind}:payload:{}", digest(payload, &rule.fields)),
            (None, None) => return None,
        };
        Some(Claim { key, within })
    }
}

/// SHA-256 of the canonical JSON (keys sorted) of `fields` of `payload` (all of it when empty);
/// a missing field reads as null.
fn digest(payload: &Value, fields: &[String]) -> String {
    let picked = if fields.is_empty() {
        payload.clone()
    } else {
        Value::Object(
            fields
                .iter()
                .map(|f| (f.clone(), payload.get(f).cloned().unwrap_or(Value::Null)))
                .collect(),
        )
    };
    let canonical =
        serde_json::to_vec(&crate::idempotency::sorted(picked)).expect("values serialize");
    format!("{:x}", Sha256::digest(&canonical))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flow(overrides: &str) -> Flow {
        let o = settings::parse(overrides).unwrap();
        Flow::new(&jobs_contract::kinds::catalog(), &o).unwrap()
    }

    #[test]
    fn an_override_of_an_unknown_kind_is_refused() {
        let o = settings::parse("nope:concurrency=1").unwrap();
        let e = Flow::new(&jobs_contract::kinds::catalog(), &o).unwrap_err();
        assert!(e.contains("unknown kind \"nope\""), "{e}");
    }

    #[test]
    fn claims_come_from_the_request_key_or_the_kinds_rule() {
        let f = flow("hash:unique=rounds,unique_within=60s");
        assert_eq!(f.claim("sleep", &json!({"a": 1}), None), None);
        let by_key = f.claim("sleep", &json!({"a": 1}), Some("k1")).unwrap();
        assert_eq!(by_key.key, "sleep:key:k1");
        assert_eq!(by_key.within, None);
        let a = f.claim("hash", &json!({"rounds": 5}), None).unwrap();
        let b = f.claim("hash", &json!({"rounds": 5}), None).unwrap();
        let c = f.claim("hash", &json!({"rounds": 6}), None).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.key, c.key);
        assert_eq!(a.within, Some(Duration::from_secs(60)));
    }

    #[test]
    fn a_whole_payload_digest_ignores_key_order() {
        let fields: Vec<String> = Vec::new();
        assert_eq!(
            digest(&json!({"a": 1, "b": [1, {"y": 2, "x": 1}]}), &fields),
            digest(&json!({"b": [1, {"x": 1, "y": 2}], "a": 1}), &fields)
        );
        assert_ne!(
            digest(&json!({"a": 1}), &fields),
            digest(&json!({"a": 2}), &fields)
        );
    }
}
