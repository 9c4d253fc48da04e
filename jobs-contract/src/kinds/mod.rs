//! The job kinds: what a client may submit and a worker must accept.
//!
//! A kind is a file here (its payload type, with serde and JSON Schema derives, its validation
//! and an example) and one `.with::<…>()` line in [`catalog`]. The worker adds the handler.

pub mod fail;
pub mod hash;
pub mod sleep;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use fail::Fail;
pub use hash::Hash;
pub use sleep::Sleep;

/// Every kind of the contract. Add a line to add a kind.
pub fn catalog() -> Catalog {
    Catalog::default()
        .with::<Sleep>()
        .with::<Hash>()
        .with::<Fail>()
}

/// A job kind as the contract states it.
pub trait JobKind: 'static {
    /// The `kind` clients send.
    const NAME: &'static str;
    /// What the kind takes; unknown fields are refused by `#[serde(deny_unknown_fields)]`.
    type Payload: DeserializeOwned + Serialize + JsonSchema + Send;

    /// Checks what serde cannot (ranges, sizes). The message says what is wrong, for people.
    fn validate(payload: &Self::Payload) -> Result<(), String>;

    /// A valid payload, for documentation and generated clients.
    fn example() -> Self::Payload;
}

#[derive(Clone, Copy)]
struct Entry {
    validate: fn(&Value) -> Result<(), String>,
    schema: fn() -> Value,
    example: fn() -> Value,
}

/// The kinds by name: what the api checks a submitted job against.
#[derive(Clone, Default)]
pub struct Catalog {
    kinds: BTreeMap<&'static str, Entry>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

impl Catalog {
    /// Adds kind `K`.
    pub fn with<K: JobKind>(mut self) -> Self {
        self.kinds.insert(
            K::NAME,
            Entry {
                validate: validate::<K>,
                schema: schema::<K>,
                example: || serde_json::to_value(K::example()).expect("payloads serialize"),
            },
        );
        self
    }

    /// The kinds' names, sorted.
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

    /// The JSON Schema (draft 2020-12) of `kind`'s payload.
    pub fn schema(&self, kind: &str) -> Option<Value> {
        self.kinds.get(kind).map(|e| (e.schema)())
    }

    /// A valid payload of `kind`.
    pub fn example(&self, kind: &str) -> Option<Value> {
        self.kinds.get(kind).map(|e| (e.example)())
    }
}

/// Parses and validates a payload of `K`: what the api does at the door and the worker on receipt.
pub fn parse<K: JobKind>(payload: &Value) -> Result<K::Payload, String> {
    // The path names the field at fault (`steps: invalid type ...`); serde alone does not.
    let parsed = serde_path_to_error::deserialize(payload).map_err(|e| {
        let path = e.path().to_string();
        match path.as_str() {
            "." => e.into_inner().to_string(),
            _ => format!("{path}: {}", e.into_inner()),
        }
    })?;
    K::validate(&parsed)?;
    Ok(parsed)
}

fn schema<K: JobKind>() -> Value {
    let mut schema =
        serde_json::to_value(schemars::schema_for!(K::Payload)).expect("schemas serialize");
    schema["title"] = Value::String(format!("{} payload", K::NAME));
    schema
}

fn validate<K: JobKind>(payload: &Value) -> Result<(), String> {
    parse::<K>(payload).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validates_each_kind() {
        let c = catalog();
        let names: Vec<_> = c.names().collect();
        assert!(
            ["fail", "hash", "sleep"].iter().all(|k| names.contains(k)),
            "{names:?}"
        );
        assert!(
            c.validate("sleep", &json!({"duration_ms": 10, "steps": 2}))
                .is_ok()
        );
        assert!(c.validate("hash", &json!({"rounds": 10})).is_ok());
        assert!(c.validate("fail", &json!({"transient": true})).is_ok());
        for (kind, bad) in [
            ("sleep", json!({"duration_ms": -1, "steps": 1})),
            ("sleep", json!({"duration_ms": 10, "steps": 0})),
            ("sleep", json!({"duration_ms": 10})),
            ("sleep", json!({"duration_ms": 10, "steps": 1, "extra": 1})),
            ("sleep", json!({"duration_ms": 300_001, "steps": 1})),
            ("hash", json!({"rounds": 0})),
            ("hash", json!({"rounds": "many"})),
            ("fail", json!({})),
            ("fail", json!([])),
            ("nope", json!({})),
        ] {
            assert!(
                c.validate(kind, &bad).is_err(),
                "{kind} {bad} should be refused"
            );
        }
    }

    #[test]
    fn the_committed_schemas_are_fresh() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let c = catalog();
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("jobs-contract/schemas exists: run `make contract`")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let expected: Vec<String> = c.names().map(|k| format!("{k}.schema.json")).collect();
        assert_eq!(files, expected, "one schema per kind: run `make contract`");
        for kind in c.names() {
            let text = std::fs::read_to_string(dir.join(format!("{kind}.schema.json"))).unwrap();
            let committed: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                committed,
                c.schema(kind).unwrap(),
                "{kind}: stale, run `make contract`"
            );
        }
    }

    #[test]
    fn every_example_is_valid_and_every_schema_names_its_fields() {
        let c = catalog();
        for kind in c.names() {
            let example = c.example(kind).unwrap();
            assert_eq!(c.validate(kind, &example), Ok(()), "{kind}: {example}");
            let schema = c.schema(kind).unwrap();
            assert_eq!(schema["type"], "object", "{kind}: {schema}");
            assert_eq!(
                schema["additionalProperties"], false,
                "{kind}: unknown fields are refused"
            );
            for field in example.as_object().unwrap().keys() {
                assert!(
                    schema["properties"].get(field).is_some(),
                    "{kind}: {field} in {schema}"
                );
            }
        }
    }
}
