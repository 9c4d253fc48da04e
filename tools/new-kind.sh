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
    // Version 1. When Payload changes in a way that jobs accepted before the change do not
    // satisfy, bump it and implement \`upgrade\` from the versions still in flight (README,
    // "Evolve a kind").
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
    // How long one attempt may take before it fails as timed out (and is retried); \`None\` for
    // as long as it takes (an attempt lives on its lease, not on a broker delivery).
    const DEADLINE: Option<Duration> = Some(Duration::from_secs(60));

    async fn run(ctx: JobContext, p: Payload) -> Result<Value, JobError> {
        // Where an earlier attempt got to (a crash, a deploy, a re-drive): resume after it.
        let done: u32 = ctx.resume()?.unwrap_or(0);
        for i in done + 1..=p.items {
            ctx.check_cancelled()?;
            // The work for item i goes here; return JobError::Transient for what a retry may fix.
            ctx.progress(f64::from(i) / f64::from(p.items));
            // Save where it got to now and then: each checkpoint is a confirmed publish.
            if i % 100 == 0 {
                ctx.checkpoint(&i).await?;
            }
        }
        Ok(json!({ "items": p.items, "resumed_after": done }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::attempts::{Stop, StopReason};
    use crate::context::Saver;

    /// A context resuming from \`resume\`, whose checkpoints land in the returned list.
    fn context(stop: Stop, resume: Option<Value>) -> (JobContext, Arc<Mutex<Vec<Value>>>) {
        let saved = Arc::new(Mutex::new(Vec::new()));
        let into = saved.clone();
        let saver: Saver = Arc::new(move |state| {
            into.lock().unwrap().push(state);
            Box::pin(async { Ok(()) })
        });
        let (ctx, _) = JobContext::new(uuid::Uuid::nil(), 1, stop, resume, saver);
        (ctx, saved)
    }

    #[tokio::test]
    async fn processes_every_item_saving_checkpoints_as_it_goes() {
        let (ctx, saved) = context(Stop::default(), None);
        let out = $type::run(ctx, Payload { items: 250 }).await.unwrap();
        assert_eq!(out, json!({ "items": 250, "resumed_after": 0 }));
        assert_eq!(*saved.lock().unwrap(), [json!(100), json!(200)]);
    }

    #[tokio::test]
    async fn resumes_after_the_last_checkpoint() {
        let (ctx, _) = context(Stop::default(), Some(json!(200)));
        let out = $type::run(ctx, Payload { items: 250 }).await.unwrap();
        assert_eq!(out["resumed_after"], 200);
    }

    #[tokio::test]
    async fn stops_when_cancelled() {
        let stop = Stop::default();
        stop.trip(StopReason::Cancelled);
        let (ctx, _) = context(stop, None);
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
