#!/usr/bin/env bash
# `make new-kind NAME=resize`: a new job kind, contract and handler, registered and documented.
# Writes jobs-contract/src/kinds/NAME.rs (payload, JSON Schema, validation, example, a unit test)
# and worker/src/kinds/NAME.rs (the handler and its unit test), adds one line to each registry,
# and refreshes the committed contract files (make contract). Edit the two files from there.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-}
if [[ ! $name =~ ^[a-z][a-z0-9_]*$ ]]; then
  echo "usage: make new-kind NAME=<snake_case name>, e.g. NAME=resize (got '${name}')" >&2
  exit 2
fi
contract=jobs-contract/src/kinds/$name.rs
handler=worker/src/kinds/$name.rs
for f in "$contract" "$handler"; do
  [[ -e $f ]] && { echo "new-kind: $f exists already" >&2; exit 1; }
done
# snake_case -> PascalCase (resize_image -> ResizeImage)
type=$(sed -E 's/(^|_)([a-z0-9])/\U\2/g' <<<"$name")

cat >"$contract" <<RUST
//! \`$name\`: what a \`$name\` job takes. Describe here what the kind does.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::JobKind;

/// Most items one job may take.
pub const MAX_ITEMS: u32 = 1000;

/// The \`$name\` kind.
#[derive(Debug)]
pub struct $type;

/// \`{"items": N}\`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// How many items to process.
    #[schemars(range(min = 1, max = 1000))]
    pub items: u32,
}

impl JobKind for $type {
    const NAME: &'static str = "$name";
    type Payload = Payload;

    fn validate(p: &Payload) -> Result<(), String> {
        if !(1..=MAX_ITEMS).contains(&p.items) {
            return Err(format!("items must be between 1 and {MAX_ITEMS}"));
        }
        Ok(())
    }

    fn example() -> Payload {
        Payload { items: 10 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_its_range_and_refuses_the_rest() {
        let parse = |v| crate::kinds::parse::<$type>(&v);
        assert_eq!(parse(json!({"items": 1})), Ok(Payload { items: 1 }));
        assert!(parse(json!({"items": 0})).is_err());
        assert!(parse(json!({"items": MAX_ITEMS + 1})).is_err());
        assert!(parse(json!({"items": 1, "extra": true})).is_err());
    }
}
RUST

cat >"$handler" <<RUST
//! \`$name\`: runs a \`$name\` job, one step per item. Replace the body of the loop with the work.

use std::time::Duration;

use jobs_contract::kinds::$name::Payload;
use serde_json::{Value, json};

use super::{Handler, JobContext, JobError};

/// Runs \`$name\` jobs.
#[derive(Debug)]
pub struct $type;

impl Handler for $type {
    type Kind = jobs_contract::kinds::$type;
    // How long one attempt may take before it fails as timed out (and is retried).
    const DEADLINE: Duration = Duration::from_secs(60);

    async fn run(ctx: JobContext, p: Payload) -> Result<Value, JobError> {
        for i in 1..=p.items {
            ctx.check_cancelled()?;
            // The work for item i goes here; return JobError::Transient for what a retry may fix.
            ctx.progress(f64::from(i) / f64::from(p.items));
        }
        Ok(json!({ "items": p.items }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn processes_every_item_and_reports_full_progress() {
        let (ctx, reports) = JobContext::new(uuid::Uuid::nil(), 1, CancellationToken::new());
        let out = $type::run(ctx, Payload { items: 3 }).await.unwrap();
        assert_eq!(out, json!({ "items": 3 }));
        assert_eq!(*reports.borrow(), 1.0);
    }

    #[tokio::test]
    async fn stops_when_cancelled() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let (ctx, _) = JobContext::new(uuid::Uuid::nil(), 1, cancel);
        let out = $type::run(ctx, Payload { items: 3 }).await;
        assert!(matches!(out, Err(JobError::Cancelled)));
    }
}
RUST

# Registration: a module line and a registry line in each crate (after the last existing ones).
python3 - "$name" "$type" <<'PY'
import re, sys
name, typ = sys.argv[1], sys.argv[2]
def edit(path, subs):
    text = open(path).read()
    for pattern, add in subs:
        matches = list(re.finditer(pattern, text, re.M))
        if not matches:
            sys.exit(f"new-kind: no line matching {pattern!r} in {path}")
        end = matches[-1].end()
        text = text[:end] + "\n" + add + text[end:]
    open(path, "w").write(text)
edit("jobs-contract/src/kinds/mod.rs", [
    (r"^pub mod \w+;$", f"pub mod {name};"),
    (r"^pub use \w+::\w+;$", f"pub use {name}::{typ};"),
    (r"^        \.with::<\w+>\(\)$", f"        .with::<{typ}>()"),
])
edit("worker/src/kinds/mod.rs", [
    (r"^pub mod \w+;$", f"pub mod {name};"),
    (r"^        \.register::<\w+::\w+>\(\)$", f"        .register::<{name}::{typ}>()"),
])
PY
cargo fmt --all
make -s contract
echo "new kind '$name': $contract (contract) and $handler (handler); api/openapi.json and jobs-contract/schemas/ refreshed"
