#!/usr/bin/env bash
# TLS to both dependencies, as the production overlay runs it (deploy/k8s/overlays/production/
# tls.yaml): a throwaway CA signs a server certificate for localhost; a RabbitMQ node (the local
# Debian server) with only a TLS listener and a PostgreSQL (the local Debian server's binaries)
# that refuses every connection without TLS run on spare ports; the built api and worker reach
# them with the variables the overlay sets (AMQP_URL amqps://, AMQP_CA_FILE, PGSSLMODE=verify-full,
# PGSSLROOTCERT), and a job goes through. Then the api is started trusting another CA: it must
# never become ready, and must say why (a certificate it cannot verify) for each of the two.
# Usage: tls.sh BIN_DIR (the api and worker binaries). Exits 0 when every step holds. Run as root.
set -euo pipefail
BIN=${1:?usage: tls.sh BIN_DIR}
T=$(mktemp -d /tmp/jobstack-tls.XXXXXX)
NODE="tls$$@localhost"
PIDS=()
as_rabbitmq() { su rabbitmq -s /bin/sh -c "HOME=/var/lib/rabbitmq $*"; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_postgres() { su postgres -s /bin/sh -c "$*"; }
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  as_rabbitmq "/usr/lib/rabbitmq/bin/rabbitmqctl -q -n $NODE stop" >/dev/null 2>&1 || true
  [[ -f $T/pg/postmaster.pid ]] && as_postgres "$PGBIN/pg_ctl -D $T/pg -m immediate stop" >/dev/null 2>&1 || true
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
trap "exit 143" TERM INT
fail() { echo "not ok: $*"; for f in "$T"/*.log "$T"/pg/postgres.log; do echo "# $f:"; tail -n 15 "$f"; done; exit 1; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- a CA, a server certificate for localhost signed by it, and another CA that signed nothing ---
cd "$T"
ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" "${@:2}" 2>/dev/null; }
ec jobstack-test-ca -x509 -days 1 -keyout ca.key -out ca.crt
ec jobstack-other-ca -x509 -days 1 -keyout other-ca.key -out other-ca.crt
ec localhost -keyout server.key -out server.csr
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile ext -out server.crt 2>/dev/null
chmod 755 "$T"; chmod 644 ./*.crt ./*.key

# --- RabbitMQ: a TLS listener and no plain one ---
MQ=$(port)
mkdir -p mq/mnesia mq/log
cat >mq/rabbitmq.conf <<CONF
listeners.tcp = none
listeners.ssl.default = $MQ
ssl_options.cacertfile = $T/ca.crt
ssl_options.certfile = $T/server.crt
ssl_options.keyfile = $T/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
echo "[]." >mq/enabled_plugins
chown -R rabbitmq:rabbitmq mq
as_rabbitmq "RABBITMQ_NODENAME=$NODE RABBITMQ_DIST_PORT=$(port) RABBITMQ_CONFIG_FILE=$T/mq/rabbitmq.conf \
  RABBITMQ_MNESIA_BASE=$T/mq/mnesia RABBITMQ_LOG_BASE=$T/mq/log RABBITMQ_ENABLED_PLUGINS_FILE=$T/mq/enabled_plugins \
  /usr/lib/rabbitmq/bin/rabbitmq-server" >rabbitmq.log 2>&1 &
PIDS+=($!)

# --- PostgreSQL: TLS on, every connection without it refused ---
PG=$(port)
mkdir pg && chown postgres pg
as_postgres "$PGBIN/initdb -D $T/pg -U postgres --auth=trust" >initdb.log 2>&1 || fail "initdb"
cat >>pg/postgresql.conf <<CONF
listen_addresses = 'localhost'
port = $PG
unix_socket_directories = '$T/pg'
ssl = on
ssl_cert_file = '$T/server.crt'
ssl_key_file = '$T/pg/server.key'
CONF
cp server.key pg/server.key && chown postgres pg/server.key && chmod 600 pg/server.key
cat >pg/pg_hba.conf <<HBA
local     all all             trust
hostssl   all all 127.0.0.1/32 trust
hostssl   all all ::1/128      trust
hostnossl all all 0.0.0.0/0    reject
hostnossl all all ::/0         reject
HBA
as_postgres "$PGBIN/pg_ctl -D $T/pg -l $T/pg/postgres.log -w start" >/dev/null || fail "PostgreSQL did not start"
for _ in $(seq 1 60); do
  as_rabbitmq "/usr/lib/rabbitmq/bin/rabbitmqctl -q -n $NODE await_startup --timeout 2" >/dev/null 2>&1 && break
  sleep 1
done
as_rabbitmq "/usr/lib/rabbitmq/bin/rabbitmqctl -q -n $NODE await_startup --timeout 2" >/dev/null 2>&1 || fail "RabbitMQ did not start"
if PGSSLMODE=disable "$PGBIN/psql" -h localhost -p "$PG" -U postgres -c 'select 1' >/dev/null 2>&1; then
  fail "PostgreSQL accepted a connection without TLS"
fi
echo "# RabbitMQ amqps on :$MQ (no plain listener), PostgreSQL on :$PG (TLS only)"

# --- the api and the worker over TLS ---
KEY=jsk_$(openssl rand -hex 32)
start() { # NAME BINARY CA_FILE PORT: start a service trusting CA_FILE, listening on PORT
  env -i PATH=/usr/bin:/bin RUST_LOG=info AMQP_PREFIX="tls$$" \
    DATABASE_URL="postgres://postgres@localhost:$PG/jobstack" PGSSLMODE=verify-full PGSSLROOTCERT="$T/$3" \
    AMQP_URL="amqps://guest:guest@localhost:$MQ/%2f" AMQP_CA_FILE="$T/$3" \
    API_LISTEN="127.0.0.1:$4" WORKER_LISTEN="127.0.0.1:$4" API_DEMO_KEY="$KEY" SHUTDOWN_GRACE_SECS=5 \
    "$BIN/$2" >"$T/$1.log" 2>&1 &
  PIDS+=($!)
}
ready() { curl -fsS -m 3 -o /dev/null "http://127.0.0.1:$1/readyz"; }
API=$(port) WORKER=$(port)
start api api ca.crt "$API"
start worker worker ca.crt "$WORKER"
for _ in $(seq 1 60); do ready "$API" && ready "$WORKER" && break; sleep 1; done
ready "$API" || fail "the api did not become ready over TLS"
ready "$WORKER" || fail "the worker did not become ready over TLS"
curl -fsS -m 3 "http://127.0.0.1:$API/readyz" | grep -q '"rabbitmq":"up"' || fail "the api is not connected to the broker"
id=$(curl -fsS -m 10 -H "authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d '{"kind":"sleep","payload":{"duration_ms":50,"steps":1}}' "http://127.0.0.1:$API/jobs" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])') \
  || fail "POST /jobs"
state=
for _ in $(seq 1 60); do
  state=$(curl -fsS -m 5 -H "authorization: Bearer $KEY" "http://127.0.0.1:$API/jobs/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
  [[ $state == succeeded ]] && break
  sleep 0.5
done
[[ $state == succeeded ]] || fail "job $id is $state, not succeeded"
echo "# job $id succeeded: api -> amqps -> worker -> amqps -> api -> PostgreSQL (verify-full)"
[[ $(as_rabbitmq "/usr/lib/rabbitmq/bin/rabbitmqctl -q -n $NODE list_connections ssl" | grep -c true) -ge 2 ]] \
  || fail "RabbitMQ does not list the services' connections as TLS"
echo "# RabbitMQ lists the api's and the worker's connections as TLS"

# --- trusting another CA: never ready, and the reason is in the log (the api reaches PostgreSQL
#     before the broker, so the worker, which needs only the broker, shows the AMQP side) ---
API2=$(port) WORKER2=$(port)
start api-wrong-ca api other-ca.crt "$API2"
start worker-wrong-ca worker other-ca.crt "$WORKER2"
sleep 8
ready "$API2" && fail "an api trusting another CA became ready"
ready "$WORKER2" && fail "a worker trusting another CA became ready"
grep -q '"message":"PostgreSQL not ready; retrying".*[Cc]ertificate' "$T/api-wrong-ca.log" \
  || fail "the api trusting another CA did not say PostgreSQL's certificate is the problem"
grep -q '"message":"cannot connect to RabbitMQ; retrying".*[Cc]ertificate' "$T/worker-wrong-ca.log" \
  || fail "the worker trusting another CA did not say the broker's certificate is the problem"
echo "# trusting another CA: neither becomes ready; the api's log names PostgreSQL's certificate, the worker's RabbitMQ's:"
for f in api-wrong-ca worker-wrong-ca; do
  grep -m1 -o '"error":"[^"]*"' "$T/$f.log" | sed "s/^/#   $f: /"
done
