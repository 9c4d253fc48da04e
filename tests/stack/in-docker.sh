#!/usr/bin/env bash
# `make stack-check` on a machine with Docker but without Debian's packages (a laptop): the same
# checks, run by tests/stack/run.sh inside the pinned build image (RUST_IMAGE of .env, Debian
# bookworm like this project's CI machines), which installs its tools and a throwaway PostgreSQL
# and RabbitMQ inside the container. The repository is mounted read-write (the checks write
# nothing into it); builds and tool caches live in a named volume, so a second run is quick.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
image=$(sed -n 's/^RUST_IMAGE=//p' "$ROOT/.env")
echo "# no apt-get here: running the stack checks in $image (docker run; first run installs tools and builds)"
exec docker run --rm --init -e JOBSTACK_STACK_IN_CONTAINER=1 \
  -e CARGO_TARGET_DIR=/cache/target -e XDG_CACHE_HOME=/cache \
  -v "$ROOT:/src" -v jobstack-stack-cache:/cache -v jobstack-stack-cargo:/usr/local/cargo/registry \
  -w /src "$image" bash -c '
    set -euo pipefail
    # The Python modules from Debian (pip into the system Python is refused on bookworm: PEP 668).
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv python3-yaml python3-jsonschema curl openssl >/dev/null
    bash tests/local-services.sh >/dev/null
    exec bash tests/stack/run.sh'
