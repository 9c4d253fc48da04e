#!/usr/bin/env bash
# The Dockerfile's build stages, replayed without Docker on this machine's Rust toolchain:
#   context (.dockerignore applied) -> planner: cargo chef prepare -> builder: cargo chef cook
#   --locked -> COPY . . -> cargo … --locked --bin api --bin worker --bin loadgen
# with `check` in place of the release build (same dependency graph, lock file and sources; no
# codegen). Catches a file .dockerignore drops, a stale Cargo.lock, a renamed binary, a recipe
# cargo-chef cannot cook. cargo-chef comes from crates.io at the version pinned in .env.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${1:?usage: docker_stages.sh WORKDIR}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/jobstack-stack
CHEF_VERSION=$(sed -n 's/^CARGO_CHEF_VERSION=//p' "$ROOT/.env")
CHEF_ROOT=$CACHE/cargo-chef-$CHEF_VERSION
if [[ ! -x $CHEF_ROOT/bin/cargo-chef ]]; then
  echo "# installing cargo-chef $CHEF_VERSION into $CHEF_ROOT"
  cargo install -q cargo-chef --locked --version "$CHEF_VERSION" --root "$CHEF_ROOT"
fi
export PATH=$CHEF_ROOT/bin:$PATH CARGO_TARGET_DIR=$CACHE/context-target
mkdir -p "$WORK/context" "$WORK/builder"
python3 "$ROOT/tests/stack/docker_context.py" "$WORK/context"
# planner stage
(cd "$WORK/context" && cargo chef prepare --recipe-path "$WORK/recipe.json")
# builder stage: dependencies from the recipe alone, then the sources
cp "$WORK/recipe.json" "$WORK/builder/recipe.json"
(cd "$WORK/builder" && cargo chef cook --check --locked --recipe-path recipe.json </dev/null 2>&1 | tail -n 3)
cp -a "$WORK/context/." "$WORK/builder/"
(cd "$WORK/builder" && cargo check -q --locked --bin api --bin worker --bin loadgen)
echo "# Docker stages replayed: prepare, cook --locked, check --locked of api, worker, loadgen"
