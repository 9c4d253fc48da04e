#!/usr/bin/env bash
# Installs (Debian's packages) and starts a local PostgreSQL and RabbitMQ, as root, idempotently:
# what CI does on a fresh machine, and what `make stack-check` does inside its container on a
# machine without apt. PostgreSQL gets trust auth on loopback (the tests' default URL carries the
# compose password, which trust ignores).
set -euo pipefail

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq "$secs"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "$name did not come up in ${secs}s" >&2; return 1
}
apt_install() {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v pg_isready >/dev/null || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  apt_install postgresql
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  cluster=$(ls /etc/postgresql | head -1)
  hba=/etc/postgresql/$cluster/main/pg_hba.conf
  # Only a cluster we start ourselves is touched: trust on loopback, like this project's CI machines.
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$cluster" main start || true
fi
wait_for PostgreSQL 60 pg_isready -h 127.0.0.1 -p 5432 -q
psql -h 127.0.0.1 -U postgres -Atc 'select version()'

if ! command -v rabbitmqctl >/dev/null; then
  apt_install rabbitmq-server
fi
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  rabbitmq-server -detached || true
fi
wait_for RabbitMQ 90 rabbitmqctl -q await_startup
rabbitmqctl -q version
