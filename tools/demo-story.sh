#!/usr/bin/env bash
# `make demo-story`: a scripted story on the running demo (`docker compose up`), ten minutes in
# five phases, each marked on the dashboards by a Grafana annotation (tag `jobstack-story`):
#
#   1. steady      load from loadgen, no fault
#   2. failures    30 % of job handlers fail (retries, then dead letters): errors in metrics,
#                  red spans in Jaeger, `job failed` lines in Loki
#   3. slow paths  +250 ms before each database connection of the api, +500 ms per job in the
#                  worker: latency panels climb, exemplars lead to traces with `fault …` spans
#   4. broker down RabbitMQ stopped: the outbox grows, readiness drops, reconnect logs
#   5. recovery    RabbitMQ back, every fault off: the backlog drains, the panels settle
#
# Needs bash, curl and the compose stack with FAULTS_TOKEN from .env. STORY_PHASE_SECS (120)
# sets each phase's length; COMPOSE ("docker compose") the compose command. Whatever happens,
# the faults are switched off, RabbitMQ started and loadgen stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

env_of() { sed -n "s/^$1=//p" .env | tail -n 1; }
PHASE_SECS=${STORY_PHASE_SECS:-120}
COMPOSE=${COMPOSE:-docker compose}
API=${STORY_API:-http://127.0.0.1:$(env_of API_PORT)}
GRAFANA=${STORY_GRAFANA:-http://127.0.0.1:$(env_of GRAFANA_PORT)}
TOKEN=${FAULTS_TOKEN:-$(env_of FAULTS_TOKEN)}
[[ -n $TOKEN ]] || { echo "demo-story: FAULTS_TOKEN is not set in .env" >&2; exit 2; }

say() { printf '%s  %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# A point annotation on every dashboard that shows the `jobstack-story` tag.
annotate() {
  local body
  body=$(printf '{"time":%s,"tags":["jobstack-story","%s"],"text":"%s"}' "$(($(date +%s) * 1000))" "$1" "$2")
  curl -fsS -m 5 -X POST "$GRAFANA/api/annotations" -H 'Content-Type: application/json' -d "$body" >/dev/null ||
    say "warning: Grafana did not take the annotation for $1"
}

# Every worker replica's admin address on the host (each publishes :8081 on a loopback port).
workers() {
  local n i
  n=$($COMPOSE ps -q worker | wc -l)
  for ((i = 1; i <= n; i++)); do $COMPOSE port --index "$i" worker 8081; done
}

put_faults() { # URL JSON
  curl -fsS -m 5 -X PUT "$1/admin/faults" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' -d "$2" >/dev/null
}

faults() { # API_JSON WORKER_JSON
  put_faults "$API" "$1"
  local w
  for w in $(workers); do put_faults "http://$w" "$2"; done
}

phase() { # NAME TEXT
  say "phase $1: $2"
  annotate "$1" "$2"
}

finish() {
  set +e
  faults '{}' '{}' 2>/dev/null
  $COMPOSE start rabbitmq >/dev/null 2>&1
  $COMPOSE --profile load stop loadgen >/dev/null 2>&1
  annotate end "story over"
  say "done: faults off, RabbitMQ running, loadgen stopped"
}
trap finish EXIT

curl -fsS -m 5 "$API/readyz" >/dev/null || { echo "demo-story: the api at $API is not ready (docker compose up first)" >&2; exit 2; }
faults '{}' '{}'
$COMPOSE --profile load up -d loadgen >/dev/null

phase steady "steady load, no fault"
sleep "$PHASE_SECS"

phase failures "30 % of job handlers fail"
faults '{}' '{"fail_percent":30}'
sleep "$PHASE_SECS"

phase slow "+250 ms on the api's database path, +500 ms per job in the worker"
faults '{"db_latency_ms":250}' '{"slow_consume_ms":500}'
sleep "$PHASE_SECS"

phase broker-down "RabbitMQ stopped"
faults '{}' '{}'
$COMPOSE stop rabbitmq >/dev/null
sleep "$PHASE_SECS"

phase recovery "RabbitMQ back, every fault off"
$COMPOSE start rabbitmq >/dev/null
sleep "$PHASE_SECS"
