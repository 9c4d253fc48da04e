#!/usr/bin/env bash
# `make test` needs a PostgreSQL and a RabbitMQ. Uses the ones that answer at TEST_DATABASE_URL /
# TEST_AMQP_URL (default: 127.0.0.1:5432 and :5672, this machine's or the compose ones); when
# nothing answers and Docker is there, starts the compose `postgres` and `rabbitmq` and waits for
# their health checks; otherwise says in one line what to start.
set -euo pipefail
cd "$(dirname "$0")/.."

hostport() { # URL DEFAULT_PORT -> "host port"
  local rest=${1#*://}; rest=${rest%%/*}; rest=${rest##*@}
  local host=${rest%:*} port=${rest##*:}
  [[ $rest == *:* ]] || port=$2
  echo "$host $port"
}
answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

read -r pg_host pg_port < <(hostport "${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}" 5432)
read -r mq_host mq_port < <(hostport "${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}" 5672)
missing=() services=()
answers "$pg_host" "$pg_port" || { missing+=("PostgreSQL on $pg_host:$pg_port"); services+=(postgres); }
answers "$mq_host" "$mq_port" || { missing+=("RabbitMQ on $mq_host:$mq_port"); services+=(rabbitmq); }
[[ ${#missing[@]} -eq 0 ]] && exit 0
what=${missing[0]}${missing[1]:+ and ${missing[1]}}

# Only what is missing: a local server that answers keeps its port.
if command -v docker >/dev/null && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  echo "# nothing answers for $what: docker compose up -d --wait ${services[*]}"
  exec docker compose up -d --wait "${services[@]}"
fi
echo "make test needs $what: run 'docker compose up -d --wait ${services[*]}', or set TEST_DATABASE_URL / TEST_AMQP_URL" >&2
exit 1
