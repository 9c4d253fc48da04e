#!/usr/bin/env bash
# `make fork-check` (CI): the fork path works. 1) `cargo generate` makes a project named
# acme-jobs from this checkout; nothing in it names jobstack; its tests pass. 2) `make new-kind
# NAME=resize` in a scratch copy; its tests pass with the kind in the OpenAPI document and
# accepted by POST /jobs (the contract test posts every kind). Both builds share one target
# directory of their own (target/fork-check: the checkout's binaries are left alone), so the
# dependencies are compiled once. Temp dirs go on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CG_VERSION=0.23.5 # the newest cargo-generate whose lock file builds on Rust 1.95
TMP=$(mktemp -d /tmp/jobstack-fork.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
export CARGO_TARGET_DIR=$ROOT/target/fork-check

if ! cargo generate --version 2>/dev/null | grep -q "$CG_VERSION"; then
  echo "# installing cargo-generate $CG_VERSION (crates.io)"
  cargo install -q --locked "cargo-generate@$CG_VERSION"
fi

echo "# cargo generate --path . --name acme-jobs"
(cd "$TMP" && cargo generate --path "$ROOT" --name acme-jobs --allow-commands --silent --vcs none >/dev/null)
fork=$TMP/acme-jobs
if grep -rIil jobstack "$fork"; then
  echo "not ok - the fork still names jobstack in the files above" >&2; exit 1
fi
echo "ok - the generated acme-jobs names itself acme_jobs everywhere (grep -ri jobstack: nothing)"
(cd "$fork" && cargo nextest run --workspace --no-fail-fast)
echo "ok - acme-jobs builds and passes its tests"

echo "# make new-kind NAME=resize in a scratch copy"
copy=$TMP/new-kind
mkdir -p "$copy"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$copy")
(cd "$copy" && make -s new-kind NAME=resize)
grep -q '"resize"' "$copy/api/openapi.json"
(cd "$copy" && cargo nextest run --workspace --no-fail-fast)
echo "ok - after make new-kind NAME=resize: resize is in the OpenAPI document, accepted by POST /jobs, and every test passes"
