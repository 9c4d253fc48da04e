#!/usr/bin/env bash
# Stands in for `docker compose` when check_live.py runs tools/demo-story.sh against the locally
# built services (no Docker here): answers `ps -q worker` and `port --index 1 worker 8081` with
# the local worker, and records every other command (start/stop of rabbitmq and loadgen) in
# $STANDIN_LOG instead of running it: the local broker is shared with the rest of the checks.
set -euo pipefail
echo "$*" >>"$STANDIN_LOG"
case "$*" in
  "ps -q worker") echo "standin-worker-1" ;;
  "port --index 1 worker 8081") echo "$STANDIN_WORKER" ;;
esac
