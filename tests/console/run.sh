#!/usr/bin/env bash
# Browser tests of the api's operator console (/ui): tests/console/console.mjs drives a real
# headless Chromium (Debian's package) through playwright-core, which speaks CDP to it, so no
# browser of Playwright's own is downloaded. Installs what is missing (as root, with apt-get and
# npm), is idempotent, and passes its arguments through; so is the environment (SCREENSHOTS_DIR,
# where screenshots go; CHROMIUM, another browser binary).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
# playwright-core has no dependencies, so the exact version pins the whole tree. Checked by
# launching Debian's chromium 156 (bookworm); it needs Node.js >= 18.
# The newest playwright-core that runs on Debian bookworm's own Node.js 18 (1.62 wants 20).
PLAYWRIGHT=1.60.0

# As in tests/stack/tools.sh (not sourced: that one also installs the stack checks' tools).
apt_install() { # PACKAGE...: apt-get update only when the package lists do not know them yet
  if ! apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [0-9]'; then timeout 300 apt-get update -qq; fi
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
can_apt() { [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; }

if [[ ! -x $CHROMIUM ]]; then
  if ! can_apt; then
    # A laptop with Docker and no apt: the same run inside the pinned build image (RUST_IMAGE of
    # .env, Debian bookworm like CI), with a throwaway PostgreSQL and RabbitMQ in the container,
    # as tests/openapi/run.sh does.
    if [[ -z ${JOBSTACK_CONSOLE_IN_CONTAINER:-} ]] && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
      image=$(sed -n 's/^RUST_IMAGE=//p' .env)
      echo "# no Chromium and no apt-get here: running the console checks in $image (first run installs tools and builds)"
      exec docker run --rm --init -e JOBSTACK_CONSOLE_IN_CONTAINER=1 -e SCREENSHOTS_DIR \
        -e CARGO_TARGET_DIR=/cache/target -e XDG_CACHE_HOME=/cache \
        -v "$ROOT:/src" -v jobstack-stack-cache:/cache -v jobstack-stack-cargo:/usr/local/cargo/registry \
        -w /src "$image" bash -c 'bash tests/local-services.sh >/dev/null && exec bash tests/console/run.sh "$@"' run "$@"
    fi
    echo "tests/console needs Chromium: run as root where apt-get works (it installs Debian's chromium), or with Docker, or set CHROMIUM=/path/to/chromium" >&2
    exit 2
  fi
  # A font too: without one, screenshots show empty boxes for text.
  echo "# installing Debian's chromium and fonts-dejavu-core"
  apt_install chromium fonts-dejavu-core
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if ! can_apt; then echo "tests/console needs Node.js >= 18 and npm" >&2; exit 2; fi
  echo "# installing nodejs (and npm)"
  command -v node >/dev/null || apt_install nodejs
  # NodeSource's nodejs (where its apt source is set up) carries npm and conflicts with Debian's.
  command -v npm >/dev/null || apt_install npm
fi
if (( $(node -p 'process.versions.node.split(".")[0]') < 18 )); then
  echo "tests/console needs Node.js >= 18 for playwright-core $PLAYWRIGHT; found $(node --version)" >&2
  exit 2
fi

PW=${XDG_CACHE_HOME:-$HOME/.cache}/jobstack-console/playwright-core-$PLAYWRIGHT
if [[ ! -f $PW/node_modules/playwright-core/package.json ]]; then
  echo "# installing playwright-core@$PLAYWRIGHT (npm) into $PW"
  # Into a scratch folder first, so an interrupted install is never taken for a finished one.
  rm -rf "$PW.tmp" && mkdir -p "$PW.tmp"
  timeout 300 npm install --silent --no-save --no-audit --no-fund --prefix "$PW.tmp" "playwright-core@$PLAYWRIGHT" >/dev/null
  rm -rf "$PW" && mv "$PW.tmp" "$PW"
fi
# The wrapper script /usr/bin/chromium may warn on stderr (it reads /dev/shm's size): not ours.
echo "# $("$CHROMIUM" --version 2>/dev/null), node $(node --version), playwright-core $PLAYWRIGHT"
# lib.mjs loads playwright-core with require(), which honours NODE_PATH (import does not).
export NODE_PATH=$PW/node_modules
echo "# cargo build -p api -p worker"
cargo build -q -p api -p worker
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
# drive.py starts an api and a worker on the tests' PostgreSQL and RabbitMQ, makes the keys and
# the jobs the flow needs, and runs console.mjs against them.
# (With tests/openapi's Python modules: its venv, made there if missing.)
VENV=$(bash tests/openapi/run.sh venv | tail -n 1)
exec timeout 400 "$VENV/bin/python" tests/console/drive.py --bin-dir "$TARGET/debug" "$@"
