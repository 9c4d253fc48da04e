#!/usr/bin/env bash
# Makes the two Secrets the local overlay needs, with random passwords, shaped like the ones the
# operators make in production, so the base references the same names and keys in both overlays:
#   jobstack-rabbitmq-default-user  username, password, default_user.conf
#       (RabbitMQ Cluster Operator v2.22.3 internal/resource/default_user_secret.go)
#   jobstack-db-app                 username, password, dbname, uri
#       (CloudNativePG v1.30.0 pkg/specs/secrets.go)
# An existing Secret is kept: RabbitMQ and PostgreSQL keep the password they were first started
# with on their volumes. `--dry-run` prints the manifests and touches no cluster (tests/k8s runs it).
# Usage: deploy/k8s/overlays/local/secrets.sh [--dry-run]   (NAMESPACE, default jobstack; KUBECTL)
set -euo pipefail
NS=${NAMESPACE:-jobstack}
KUBECTL=${KUBECTL:-kubectl}
DRY=
[[ ${1:-} == --dry-run ]] && DRY=1

# 32 hex digits: safe unescaped in the amqp:// and postgresql:// URLs built from them.
random_password() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# secret NAME KEY=VALUE...: create it unless it exists (or print it with --dry-run).
secret() {
  local name=$1 kv args=()
  shift
  if [[ -z $DRY ]] && "$KUBECTL" -n "$NS" get secret "$name" >/dev/null 2>&1; then
    echo "secret/$name exists in namespace $NS: kept" >&2
    return
  fi
  for kv in "$@"; do args+=("--from-literal=$kv"); done
  local manifest
  manifest=$("$KUBECTL" -n "$NS" create secret generic "$name" "${args[@]}" --dry-run=client -o yaml)
  if [[ -n $DRY ]]; then printf '%s\n---\n' "$manifest"; else printf '%s\n' "$manifest" | "$KUBECTL" apply -f -; fi
}

if [[ -z $DRY ]]; then
  "$KUBECTL" create namespace "$NS" --dry-run=client -o yaml | "$KUBECTL" apply -f -
fi
amqp_password=$(random_password)
db_password=$(random_password)
secret jobstack-rabbitmq-default-user \
  username=jobstack \
  "password=$amqp_password" \
  "default_user.conf=default_user = jobstack
default_pass = $amqp_password"
secret jobstack-db-app \
  username=jobstack \
  "password=$db_password" \
  dbname=jobstack \
  "uri=postgresql://jobstack:$db_password@jobstack-db-rw:5432/jobstack"
