#!/usr/bin/env bash
# Stack checks (`make stack-check`): everything about the docker-compose demo that can be checked
# without Docker, each by the real tool that reads it.
#   a. compose files vs the Compose Specification schema; pins, ports, depends_on, mounts
#   b. promtool check config / check rules / test rules
#   c. live: local api + worker + RabbitMQ + PostgreSQL scraped by a real Prometheus (config derived
#      from the compose one); every dashboard query and alert expression evaluated
#   d. the Loki derived-field regex and the Jaeger trace->logs query against real log lines
#   e. dashboards: JSON, uids, panel ids, datasource uids
#   f. images: what each pinned image contains (observability/images.yml, with upstream sources)
#      against every health check, entrypoint and depends_on edge compose resolves
#   g. our own health checks executed as compose runs them: ready, dependency down, hung, gone
#   h. the Jobs explorer's SQL, expanded as Grafana does, run as the read-only role the compose
#      init file makes: on seeded jobs here, on the live run's jobs in c
#   i. TLS: the api and worker reach a TLS-only RabbitMQ and PostgreSQL as the production overlay
#      configures them (tests/stack/tls.sh)
# Works as root on a fresh Debian bookworm machine (installs prometheus and the Python deps it
# needs), is idempotent, bounded in time, and ends with one line: `N passed, N failed`.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
# It installs its tools from Debian's packages, as root. Elsewhere (a laptop), with Docker: the
# same script inside the pinned build image (tests/stack/in-docker.sh).
if ! { [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; } && [[ -z ${JOBSTACK_STACK_IN_CONTAINER:-} ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then exec bash tests/stack/in-docker.sh; fi
  echo "make stack-check needs Debian's packages (apt-get, as root) or a running Docker" >&2
  exit 1
fi
STATE=$(mktemp -d /tmp/jobstack-stack.XXXXXX)
export STACK_STATE=$STATE
LOG=$STATE/out

# Second line of defence behind check_live.py's own cleanup: processes it recorded, its database,
# then its read-only role (a role can only go once the database holding its grants is gone).
cleanup() {
  if [[ -f $STATE/pids ]]; then
    while read -r pid; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; done <"$STATE/pids"
    sleep 1
    while read -r pid; do kill -KILL -- "-$pid" 2>/dev/null || true; done <"$STATE/pids"
  fi
  if [[ -f $STATE/db ]]; then
    psql -h 127.0.0.1 -U postgres -qAt -c "drop database if exists \"$(cat "$STATE/db")\" with (force)" >/dev/null 2>&1 || true
  fi
  if [[ -f $STATE/role ]]; then
    psql -h 127.0.0.1 -U postgres -qAt -c "drop role if exists \"$(cat "$STATE/role")\"" >/dev/null 2>&1 || true
  fi
  rm -rf "$STATE"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { echo "$@" | tee -a "$LOG"; }
# run NAME SECONDS CMD...: one check, passed when CMD exits 0 within SECONDS.
run() {
  local name=$1 secs=$2; shift 2
  local out
  if out=$(timeout "$secs" "$@" 2>&1); then
    say "ok - $name"
  else
    say "not ok - $name"
    echo "$out" | tail -n 30 | sed 's/^/#   /'
  fi
}

# --- tools (idempotent): the static checks' own (tests/stack/tools.sh), then Prometheus ---
source tests/stack/tools.sh
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "# installing Debian's prometheus (promtool + prometheus)"
  apt_install prometheus
fi
echo "# $(promtool --version 2>&1 | head -1)"

# --- a, e and the pipeline shape ---
timeout 120 python3 tests/stack/check_static.py 2>&1 | tee -a "$LOG"
# --- what each pinned image contains (observability/images.yml) vs every health check, entrypoint
#     and depends_on edge of the resolved compose models ---
timeout 120 python3 tests/stack/check_images.py 2>&1 | tee -a "$LOG"
# --- h: the Jobs explorer dashboard on a scratch database (no build needed) ---
timeout 120 python3 tests/stack/check_explorer.py --seed 2>&1 | tee -a "$LOG"

# --- b ---
P=observability/prometheus
# keys only the pinned v3 reads are dropped for Debian's 2.42 (tests/stack/prom_local.py says which)
python3 tests/stack/prom_local.py "$STATE/prometheus-local.yml" | tee -a "$LOG"
run "promtool check config $P/prometheus.yml (as the local Prometheus reads it)" 60 promtool check config "$STATE/prometheus-local.yml"
run "promtool check rules $P/rules/*.yml" 60 promtool check rules "$P"/rules/*.yml
run "promtool test rules $P/tests/*.yml" 120 promtool test rules "$P"/tests/*.yml

# rabbitmq.conf + enabled_plugins, loaded by a real (3.10) broker as compose mounts them
run "rabbitmq.conf applied by a real RabbitMQ (consumer_timeout, memory, plugins)" 120 bash tests/stack/rabbitmq_conf.sh
run "k8s local overlay: its rabbitmq.conf and enabled_plugins applied by a real RabbitMQ" 120 bash tests/stack/rabbitmq_conf.sh deploy/k8s/overlays/local '[<<"guest">>]'

# --- c, d: build the services, then the live run ---
echo "# cargo build -p api -p worker"
if timeout 1800 cargo build -q -p api -p worker >"$STATE/build.log" 2>&1; then
  say "ok - cargo build -p api -p worker"
  timeout 600 python3 tests/stack/check_live.py 2>&1 | tee -a "$LOG"
  # our services' compose health checks, executed as compose runs them, in every state
  timeout 300 python3 tests/stack/check_healthchecks.py 2>&1 | tee -a "$LOG"
  # the production overlay's TLS (deploy/k8s/overlays/production/tls.yaml), on real servers
  { command -v openssl && command -v curl; } >/dev/null || apt_install openssl curl
  run "TLS: api and worker over amqps:// and PostgreSQL verify-full; trusting another CA, neither becomes ready" 240 \
    bash tests/stack/tls.sh "${CARGO_TARGET_DIR:-$ROOT/target}/debug"
else
  say "not ok - cargo build -p api -p worker (live checks c, d not run)"
  tail -n 30 "$STATE/build.log" | sed 's/^/#   /'
fi

# --- the Dockerfile's stages replayed with cargo-chef (check instead of the release build)
run "Dockerfile stages (context via .dockerignore, cargo chef prepare/cook --locked, --bin api/worker/loadgen)" 1500 \
  bash tests/stack/docker_stages.sh "$STATE/docker"

passed=$(grep -c '^ok - ' "$LOG")
failed=$(grep -c '^not ok - ' "$LOG")
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
