#!/usr/bin/env bash
# The OpenAPI checks (tests/openapi/check.py): `run.sh` for all of them (`make openapi-check`, part
# of `make test`), `run.sh fuzz` for a longer schemathesis run (`make fuzz`). Builds the api and
# worker, installs the pinned tools (requirements.txt) into a venv cached under
# ${XDG_CACHE_HOME:-~/.cache}/jobstack-openapi, and runs them against a real api and worker on the
# tests' PostgreSQL and RabbitMQ. Needs Python 3.11+ with venv: as root with apt-get it installs
# Debian's; elsewhere without it, with Docker, it runs itself inside the pinned build image
# (RUST_IMAGE of .env, Debian bookworm like CI) with a throwaway PostgreSQL and RabbitMQ.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

python_ok() { python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
if ! python_ok; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "# installing Debian's python3 and python3-venv"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  elif [[ -z ${JOBSTACK_OPENAPI_IN_CONTAINER:-} ]] && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    image=$(sed -n 's/^RUST_IMAGE=//p' .env)
    echo "# no Python 3.11+ with venv here: running the OpenAPI checks in $image (first run installs tools and builds)"
    exec docker run --rm --init -e JOBSTACK_OPENAPI_IN_CONTAINER=1 -e FUZZ_SEED -e FUZZ_CASES \
      -e CARGO_TARGET_DIR=/cache/target -e XDG_CACHE_HOME=/cache \
      -v "$ROOT:/src" -v jobstack-stack-cache:/cache -v jobstack-stack-cargo:/usr/local/cargo/registry \
      -w /src "$image" bash -c 'bash tests/local-services.sh >/dev/null && exec bash tests/openapi/run.sh "$@"' run "$@"
  fi
  python_ok || { echo "the OpenAPI checks need Python 3.11+ with venv (or Docker)" >&2; exit 1; }
fi

# A venv per requirements file: changing a pin makes a new one.
REQ=tests/openapi/requirements.txt
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/jobstack-openapi/venv-$(python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()[:12])' "$REQ")
if [[ ! -f $VENV/.complete ]]; then
  echo "# installing $REQ into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --timeout 60 -r "$REQ"
  touch "$VENV/.complete"
fi

# `run.sh venv`: only the venv's path (tests/console runs its stack with these modules).
if [[ ${1:-} == venv ]]; then echo "$VENV"; exit 0; fi

echo "# cargo build -p api -p worker"
cargo build -q -p api -p worker
TARGET=$(cargo metadata --format-version 1 --no-deps | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

# check.py bounds each of its steps in time.
case ${1:-all} in
  all) exec "$VENV/bin/python" tests/openapi/check.py all --bin-dir "$TARGET/debug" ;;
  fuzz) exec "$VENV/bin/python" tests/openapi/check.py fuzz --bin-dir "$TARGET/debug" \
    --cases "${FUZZ_CASES:-1500}" --fuzz-seconds 3000 ;;
  *) echo "usage: $0 [all|fuzz]" >&2; exit 2 ;;
esac
