//! The job kinds: what a client may submit and a worker must accept.
//!
//! A kind is a file here (its payload type, with serde and JSON Schema derives, its validation
//! and an example) and one `.with::<…>()` line in [`catalog`]. The worker adds the handler.
//!
//! A kind's payload can evolve: each kind has a `VERSION` (1 at first), every job carries the
//! version it was accepted under, and a kind whose new payload is not a superset of the old one
//! bumps `VERSION` and implements [`JobKind::upgrade`] from the versions jobs may still carry.
//! The worker upgrades before its handler sees the payload; a version it cannot read is
//! dead-lettered with the reason, never run with the wrong shape.

pub mod fail;
pub mod hash;
pub mod sleep;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use crate::flow::{Limits, Rate, Unique};
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
    /// The payload's version: 1 for a new kind, one more at each change that payloads of jobs
    /// accepted before it do not satisfy (they are then read through [`JobKind::upgrade`]).
    const VERSION: u32 = 1;
    /// How many of its jobs may run at once and how fast they may start, across every worker
    /// (default: no limit). Configuration may override it per deployment.
    const LIMITS: Limits = Limits::NONE;
    /// Whether a submit that matches an unfinished job of the kind answers with that job
    /// instead of making another (default: no; a request's `unique_key` still does).
    const UNIQUE: Option<Unique> = None;
    /// What the kind takes; unknown fields are refused by `#[serde(deny_unknown_fields)]`.
    type Payload: DeserializeOwned + Serialize + JsonSchema + Send;

    /// Checks what serde cannot (ranges, sizes). The message says what is wrong, for people.
    fn validate(payload: &Self::Payload) -> Result<(), String>;

    /// A valid payload, for documentation and generated clients.
    fn example() -> Self::Payload;

    /// A payload of version `from` (older than [`JobKind::VERSION`]) in the current version's
    /// shape. The default knows no older version; `Err` says why it cannot be read.
    fn upgrade(from: u32, payload: Value) -> Result<Value, String> {
        let _ = payload;
        Err(format!("no upgrade from version {from}"))
    }
}

/// Why a payload cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// No such kind.
    UnknownKind(String),
    /// A version this contract cannot read: newer than the kind's, or older with no upgrade.
    Version {
        /// The version the payload carries.
        version: u32,
        /// The kind's version.
        current: u32,
        /// Why it cannot be read.
        reason: String,
    },
    /// Readable, but not a valid payload of the kind.
    Invalid(String),
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownKind(kind) => write!(f, "unknown kind {kind:?}"),
            Self::Version {
                version,
                current,
                reason,
            } => write!(
                f,
                "payload version {version} cannot be read (the kind is at version {current}): {reason}"
            ),
            Self::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for PayloadError {}

#[derive(Clone, Copy)]
struct Entry {
    version: u32,
    limits: Limits,
    unique: Option<Unique>,
    read: fn(u32, Value) -> Result<Value, PayloadError>,
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
                version: K::VERSION,
                limits: K::LIMITS,
                unique: K::UNIQUE,
                read: read::<K>,
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

    /// Checks a current-version `payload` for `kind`; `Err` says what is wrong.
    pub fn validate(&self, kind: &str, payload: &Value) -> Result<(), String> {
        let version = self
            .version(kind)
            .ok_or_else(|| format!("unknown kind {kind:?}"))?;
        self.read(kind, version, payload.clone())
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// `kind`'s declared limits.
    pub fn limits(&self, kind: &str) -> Option<Limits> {
        self.kinds.get(kind).map(|e| e.limits)
    }

    /// `kind`'s declared uniqueness.
    pub fn unique(&self, kind: &str) -> Option<Unique> {
        self.kinds.get(kind).and_then(|e| e.unique)
    }

    /// `kind`'s payload version.
    pub fn version(&self, kind: &str) -> Option<u32> {
        self.kinds.get(kind).map(|e| e.version)
    }

    /// A payload of `version`, upgraded to the kind's version if older, and validated: what the
    /// worker runs, and what the api checks before it stores a job.
    pub fn read(&self, kind: &str, version: u32, payload: Value) -> Result<Value, PayloadError> {
        match self.kinds.get(kind) {
            Some(e) => (e.read)(version, payload),
            None => Err(PayloadError::UnknownKind(kind.to_owned())),
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
    let parsed = serde_path_to_error::deserialize(crate::strict::Strict(payload)).map_err(|e| {
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

/// A payload of `version` in `K`'s current shape, validated: upgraded first when older.
pub fn read<K: JobKind>(version: u32, payload: Value) -> Result<Value, PayloadError> {
    let refuse = |reason: String| PayloadError::Version {
        version,
        current: K::VERSION,
        reason,
    };
    let current = match version {
        v if v == K::VERSION => payload,
        v if v > K::VERSION || v == 0 => {
            return Err(refuse("this contract does not know it".into()));
        }
        v => K::upgrade(v, payload).map_err(refuse)?,
    };
    parse::<K>(&current).map_err(PayloadError::Invalid)?;
    Ok(current)
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
            ("sleep", json!({"duration_ms": 604_800_001u64, "steps": 1})),
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

    /// A kind at version 2, whose version 1 named the whole name in one field.
    struct Greet;

    #[derive(Debug, serde::Deserialize, Serialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Names {
        first: String,
        last: String,
    }

    impl JobKind for Greet {
        const NAME: &'static str = "greet";
        const VERSION: u32 = 2;
        type Payload = Names;
        fn validate(p: &Names) -> Result<(), String> {
            if p.first.is_empty() {
                return Err("first must not be empty".into());
            }
            Ok(())
        }
        fn example() -> Names {
            Names {
                first: "Ada".into(),
                last: "Lovelace".into(),
            }
        }
        fn upgrade(from: u32, payload: Value) -> Result<Value, String> {
            match from {
                1 => {
                    let name = payload["name"].as_str().ok_or("name: missing")?;
                    let (first, last) = name.split_once(' ').unwrap_or((name, ""));
                    Ok(json!({"first": first, "last": last}))
                }
                other => Err(format!("no upgrade from version {other}")),
            }
        }
    }

    #[test]
    fn an_older_payload_is_upgraded_and_an_unknown_version_is_refused() {
        let c = Catalog::default().with::<Greet>();
        assert_eq!(c.version("greet"), Some(2));
        assert_eq!(
            c.read("greet", 1, json!({"name": "Ada Lovelace"})).unwrap(),
            json!({"first": "Ada", "last": "Lovelace"})
        );
        let current = json!({"first": "Ada", "last": "L"});
        assert_eq!(c.read("greet", 2, current.clone()).unwrap(), current);
        for (version, payload, says) in [
            (
                3,
                current.clone(),
                "version 3 cannot be read (the kind is at version 2): this contract does not know it",
            ),
            (0, current, "version 0 cannot be read"),
            (
                1,
                json!({}),
                "version 1 cannot be read (the kind is at version 2): name: missing",
            ),
        ] {
            let e = c.read("greet", version, payload).unwrap_err();
            assert!(matches!(e, PayloadError::Version { .. }), "{e:?}");
            assert!(e.to_string().contains(says), "{e}");
        }
        // Upgraded, then validated like any payload.
        let e = c.read("greet", 1, json!({"name": ""})).unwrap_err();
        assert_eq!(e, PayloadError::Invalid("first must not be empty".into()));
        assert!(matches!(
            c.read("nope", 1, json!({})),
            Err(PayloadError::UnknownKind(_))
        ));
        // A kind that never changed reads only its one version.
        assert!(
            catalog()
                .read("sleep", 2, json!({"duration_ms": 1, "steps": 1}))
                .is_err()
        );
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
