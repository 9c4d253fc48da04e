#!/usr/bin/env bash
# `make fork-check` (CI): the fork path works, in both forms the template offers. 1) `cargo
# generate` makes acme-jobs from this checkout, full (the default) and lean (--define
# include_bench=false); in each, nothing names jobstack or the fork machinery, and its tests pass
# with the lock file as it came (the Dockerfile builds --locked); the lean one has no bench and no
# loadgen, nothing in it mentions them, and its static stack checks pass. 2) `make new-kind
# NAME=resize` in a scratch copy; its tests pass with the kind in the OpenAPI document and
# accepted by POST /jobs (the contract test posts every kind). All builds share one target
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

fail() { echo "not ok - $*" >&2; exit 1; }
# none DIR WHAT GREP-ARGS...: fail when grep finds the pattern in DIR (it lists the files).
none() {
  local dir=$1 what=$2; shift 2
  if grep -rIl "$@" "$dir"; then fail "the fork still $what in the files above"; fi
}

# The checkout's files (what git would commit), without target/: cargo generate copies all of
# --path, gigabytes of build output included, before it applies the template's `ignore`.
src=$TMP/template
mkdir "$src"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$src")

# generate FORM [--define ...]: a fork named acme-jobs in $TMP/FORM; prints its path.
generate() {
  local form=$1; shift
  echo "# cargo generate --path . --name acme-jobs $*" >&2
  # Chained: errexit does not reach into a command substitution.
  mkdir "$TMP/$form" \
    && (cd "$TMP/$form" && cargo generate --path "$src" --name acme-jobs --allow-commands --silent --vcs none "$@" >/dev/null) \
    && echo "$TMP/$form/acme-jobs"
}

# The text first (seconds), then the builds (minutes): a stale line fails before any compiling.
full=$(generate full)
lean=$(generate lean --define include_bench=false)
for form in full lean; do
  fork=$TMP/$form/acme-jobs
  none "$fork" "names jobstack" -i jobstack
  none "$fork" "carries the template's fork machinery" -E 'fork-check|fork\.(sh|py|rhai)|rename\.py|cargo-generate'
  echo "ok - the $form acme-jobs names itself acme_jobs everywhere and carries no fork machinery"
done
[[ -d $full/bench && -d $full/loadgen ]] || fail "the full fork lacks bench/ or loadgen/"
[[ ! -e $lean/bench && ! -e $lean/loadgen && ! -e $lean/BENCHMARKS.md ]] || fail "the lean fork has bench/, loadgen/ or BENCHMARKS.md"
none "$lean" "mentions loadgen or the bench" -iE 'loadgen|otlp-sink|benchmarks'
none "$lean" "mentions the bench" -w bench
echo "ok - the lean acme-jobs has no bench and no loadgen, and nothing in it mentions them"
# Its edited compose file, Dockerfile and images table, read by the real tools that read them.
source "$ROOT/tests/stack/tools.sh"
(cd "$lean" && python3 tests/stack/check_static.py && python3 tests/stack/check_images.py) >"$TMP/static.log" 2>&1 \
  || { grep '^not ok' "$TMP/static.log" >&2; fail "the lean fork's static stack checks"; }
echo "ok - the lean acme-jobs passes its static stack checks ($(grep -c '^ok' "$TMP/static.log") checks: compose, images, dashboards, pipeline)"

# fresh DIR: the trees share target/fork-check, where cargo names a workspace crate's build by its
# path inside the workspace (the same in every tree) and judges it up to date by mtime. Touched
# right before its first build, a tree never reuses another tree's crates (the new-kind copy once
# ran the renamed fork's test-support against its own worker).
fresh() { find "$1" -type f -exec touch {} +; }

for form in full lean; do
  fresh "$TMP/$form/acme-jobs"
  (cd "$TMP/$form/acme-jobs" && cargo nextest run --workspace --locked --no-fail-fast)
  echo "ok - the $form acme-jobs builds with its lock file as generated and passes its tests"
done

echo "# make new-kind NAME=resize in a scratch copy"
copy=$TMP/new-kind
cp -a "$src" "$copy"
fresh "$copy"
(cd "$copy" && make -s new-kind NAME=resize)
grep -q '"resize"' "$copy/api/openapi.json"
(cd "$copy" && cargo nextest run --workspace --no-fail-fast)
echo "ok - after make new-kind NAME=resize: resize is in the OpenAPI document, accepted by POST /jobs, and every test passes"
