#!/usr/bin/env bash
# A broker config read by a real RabbitMQ (the local Debian 3.10 server): a throwaway node on spare
# ports loads it as conf.d/20-jobstack.conf, exactly as compose (and the k8s local overlay) mount
# it, and we read back the values the broker actually applied. Exits 0 when they are the expected
# ones. Usage: rabbitmq_conf.sh [DIR] [LOOPBACK_USERS], DIR holding rabbitmq.conf and
# enabled_plugins (default observability/rabbitmq, loopback users [] there: guest may connect).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${1:-$ROOT/observability/rabbitmq}
LOOPBACK=${2:-[]}
NODE="stackcfg$$@localhost"
T=$(mktemp -d /tmp/jobstack-rmqcfg.XXXXXX)
as_rabbitmq() { su rabbitmq -s /bin/sh -c "HOME=/var/lib/rabbitmq $*"; }
cleanup() {
  as_rabbitmq "/usr/lib/rabbitmq/bin/rabbitmqctl -q -n $NODE stop" >/dev/null 2>&1 || true
  [[ -f $T/pid ]] && kill "$(cat "$T/pid")" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "${SERVER:-0}" 2>/dev/null || break; sleep 0.5; done
  rm -rf "$T"
}
trap cleanup EXIT
trap "exit 143" TERM INT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mkdir -p "$T/conf.d" "$T/mnesia" "$T/log"
cp "$DIR/rabbitmq.conf" "$T/conf.d/20-jobstack.conf"
cp "$DIR/enabled_plugins" "$T/enabled_plugins"
cat >"$T/rabbitmq.conf" <<CONF
listeners.tcp.default = $(port)
management.tcp.port = $(port)
prometheus.tcp.port = $(port)
CONF
chmod 755 "$T"; chown -R rabbitmq:rabbitmq "$T"
as_rabbitmq "RABBITMQ_NODENAME=$NODE RABBITMQ_DIST_PORT=$(port) RABBITMQ_CONFIG_FILE=$T/rabbitmq.conf \
  RABBITMQ_CONFIG_FILES=$T/conf.d RABBITMQ_MNESIA_BASE=$T/mnesia RABBITMQ_LOG_BASE=$T/log \
  RABBITMQ_ENABLED_PLUGINS_FILE=$T/enabled_plugins RABBITMQ_PID_FILE=$T/pid \
  /usr/lib/rabbitmq/bin/rabbitmq-server" >"$T/out" 2>&1 &
SERVER=$!
for _ in $(seq 1 60); do
  as_rabbitmq "/usr/lib/rabbitmq/bin/rabbitmqctl -q -n $NODE await_startup --timeout 2" >/dev/null 2>&1 && break
  if grep -qiE "error|failed" "$T/out"; then break; fi
  sleep 1
done
got=$(as_rabbitmq "/usr/lib/rabbitmq/bin/rabbitmqctl -q -n $NODE eval '
  {application:get_env(rabbit, consumer_timeout), application:get_env(rabbit, loopback_users),
   application:get_env(rabbit, total_memory_available_override_value),
   application:get_env(rabbitmq_prometheus, return_per_object_metrics),
   lists:sort([P || {P, _, _} <- application:which_applications(), P == rabbitmq_prometheus orelse P == rabbitmq_management])}.'" 2>&1 || true)
want="{{ok,900000},{ok,$LOOPBACK},{ok,536870912},{ok,false},[rabbitmq_management,rabbitmq_prometheus]}"
if [[ $(tr -d ' \n' <<<"$got") == "$want" ]]; then
  echo "applied: $got"
else
  echo "expected $want, got: $got"; tail -n 20 "$T/out"; exit 1
fi
