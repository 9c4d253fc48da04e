#!/usr/bin/env bash
# Mutation testing of the core modules: `make mutants` (all) or `make mutants MODULES="lifecycle relay"`.
#
# For each module, cargo-mutants changes its code one mutant at a time (a `>` for a `>=`, a
# function that returns a default, a deleted `!`) and runs the tests that guard it; a mutant the
# tests still pass is a "missed" one: a change in behaviour nothing notices. Each module names
# its oracle: the state machine is pure and its unit tests must catch everything; the modules
# that talk to PostgreSQL and RabbitMQ are guarded by the end-to-end tests that exercise them
# (they need the services, like `make test`).
#
# Writes target/mutants/<module>/mutants.out/ (cargo-mutants' own report: caught.txt,
# missed.txt, …) and prints the score per module: caught / (caught + missed + timeout); unviable
# mutants (those that do not compile) do not count. The source tree is copied for each run, the
# checkout is never edited; dependencies are built once (a shared target directory).
set -euo pipefail
cd "$(dirname "$0")/.."

MUTANTS_VERSION=27.1.0
if ! cargo mutants --version 2>/dev/null | grep -q "$MUTANTS_VERSION"; then
  echo "# installing cargo-mutants $MUTANTS_VERSION (crates.io)"
  cargo install -q --locked "cargo-mutants@$MUTANTS_VERSION"
fi

# module → files (-f, repeatable), test package(s) and a nextest filter for its oracle.
declare -A FILES PACKAGES FILTER
IT="binary_id(system-tests::it)" # the end-to-end suite
FILES[lifecycle]="api/src/lifecycle.rs"
PACKAGES[lifecycle]="api"
FILTER[lifecycle]="package(api) & test(/^lifecycle::/)"

FILES[accept]="api/src/accept.rs"
PACKAGES[accept]="api system-tests"
FILTER[accept]="test(/^(accept|bad_input)::/)"

FILES[relay]="api/src/relay.rs"
PACKAGES[relay]="system-tests"
FILTER[relay]="$IT & test(/^(lifecycle|control)::/)"

FILES[store]="api/src/store/*.rs"
PACKAGES[store]="api system-tests"
FILTER[store]="(package(api) & test(/^(routes|idempotency)::/)) | ($IT & test(/^(lifecycle|control|listing|accept)::/))"

FILES[runner]="worker/src/runner.rs"
PACKAGES[runner]="worker"
FILTER[runner]="package(worker)"

FILES[attempts]="worker/src/attempts.rs"
PACKAGES[attempts]="worker system-tests"
FILTER[attempts]="package(worker) | ($IT & test(/^control::/))"

MODULES=${MODULES:-lifecycle accept relay store runner attempts}
export CARGO_TARGET_DIR=${MUTANTS_TARGET_DIR:-$PWD/target/mutants-build}
summary=()
for m in $MODULES; do
  [[ -n "${FILES[$m]:-}" ]] || { echo "unknown module $m (known: ${!FILES[*]})" >&2; exit 2; }
  args=()
  for f in ${FILES[$m]}; do args+=(-f "$f"); done
  for p in ${PACKAGES[$m]}; do args+=(--test-package "$p"); done
  out="target/mutants/$m"
  mkdir -p "$out"
  echo "== $m: $(cargo mutants --list "${args[@]}" 2>/dev/null | wc -l) mutants in ${FILES[$m]}, tests: ${PACKAGES[$m]} [${FILTER[$m]}]"
  start=$SECONDS
  # Exit codes 2 (missed) and 3 (timeouts) are results, not failures of the run.
  cargo mutants "${args[@]}" --test-tool nextest --no-shuffle --timeout 300 --output "$out" \
    -- --no-fail-fast -E "${FILTER[$m]}" || { rc=$?; [[ $rc == 2 || $rc == 3 ]]; }
  n() { [[ -s "$out/mutants.out/$1.txt" ]] && grep -c . "$out/mutants.out/$1.txt" || echo 0; }
  caught=$(n caught) missed=$(n missed) timeout=$(n timeout) unviable=$(n unviable)
  total=$((caught + missed + timeout))
  score=$([[ $total -gt 0 ]] && echo "$((100 * caught / total))%" || echo "n/a")
  line="$m: $score ($caught caught, $missed missed, $timeout timed out, $unviable unviable) in $(( (SECONDS - start) / 60 )) min"
  echo "$line"
  [[ $missed -eq 0 ]] || sed 's/^/  missed: /' "$out/mutants.out/missed.txt"
  summary+=("$line")
done
echo "== mutation score per module"
printf '%s\n' "${summary[@]}"
