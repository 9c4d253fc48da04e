#!/usr/bin/env bash
# make bench: jobstack against this machine's own limits, in one run.
#
#   (d) limits   PostgreSQL single-row insert transactions/s (pgbench, the jobs table), RabbitMQ
#                confirmed persistent publishes/s and consume+ack/s on a quorum queue (amqp-bench)
#   (a) enqueue  POST /jobs -> 202 (row committed; relay publishes with confirms): closed loop at
#                BENCH_CONCURRENCY in flight, then open loop at half that rate
#   (b) telemetry the same closed loop with telemetry fully on (OTLP to a local sink, 100 %
#                sampling, JSON logs at info to a file) and fully off (no endpoint, RUST_LOG=warn)
#   (c) worker   drain time of BENCH_DRAIN_JOBS no-op jobs at WORKER_CONCURRENCY 1 and 16
#   (e) memory   VmRSS / VmHWM of api and worker, idle and under load
#
# Prints the table and writes BENCHMARKS.md. A benchmark, not a test: targets are reported,
# never asserted. Every step is bounded in count and time; all traffic stays on 127.0.0.1;
# databases, queues and processes are unique to the run and removed on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER_STEP=${BENCH_SECONDS:-15}
CONCURRENCY=${BENCH_CONCURRENCY:-64}
DRAIN_JOBS=${BENCH_DRAIN_JOBS:-5000}
OUT=${BENCH_OUT:-$ROOT/BENCHMARKS.md}
PG="psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAtX"
AMQP_URL=${BENCH_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
RABBIT_API=${BENCH_RABBIT_API:-http://guest:guest@127.0.0.1:15672/api}
RUN=bench_$(date +%Y%m%d_%H%M%S)_$$
WORK=$(mktemp -d "/tmp/jobstack-$RUN.XXXX")
BIN=$ROOT/target/release
PIDS=()
DBS=()
PREFIXES=()

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }
signed() { awk "BEGIN { printf \"%+.${2:-1}f\", $1 }"; } # like calc, with the sign always shown

# ---- cleanup: our processes (by pid), databases and AMQP names, whatever happened ----------
cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do stop "$pid"; done
    for db in "${DBS[@]}"; do $PG -c "drop database if exists $db with (force)" 2>/dev/null; done
    for prefix in "${PREFIXES[@]}"; do delete_amqp "$prefix"; done
    if [[ $rc -eq 0 ]]; then rm -rf "$WORK"; else log "failed (exit $rc); logs kept in $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
}

# Every queue and exchange whose name starts with the prefix (management API, else rabbitmqctl).
delete_amqp() {
    local prefix=$1 name kind
    for kind in queues exchanges; do
        if names=$(curl -fsS "$RABBIT_API/$kind/%2f?columns=name" 2>/dev/null); then
            jq -r '.[].name' <<<"$names" | grep "^$prefix\." | while read -r name; do
                curl -fsS -X DELETE "$RABBIT_API/$kind/%2f/$(jq -rn --arg n "$name" '$n|@uri')" >/dev/null
            done
        elif [[ $kind == queues ]]; then
            rabbitmqctl -q list_queues name 2>/dev/null | grep "^$prefix\." |
                while read -r name; do rabbitmqctl -q delete_queue "$name" >/dev/null; done
        fi
    done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url, seconds
    local deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null "$1" 2>/dev/null; do
        ((SECONDS < deadline)) || { log "timed out waiting for $1"; return 1; }
        sleep 0.05
    done
}

kb() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# Samples VmRSS every 200 ms into a file until the process ends or the sampler is killed.
sample_rss() { while [[ -r /proc/$1/status ]]; do kb "$1" VmRSS; sleep 0.2; done >"$2" 2>/dev/null; }
max_of() { sort -n "$1" | tail -1; }

# CPU ticks (1/100 s): one process; all PostgreSQL processes (plus reaped backends); RabbitMQ.
ticks() { local f; if read -r -a f 2>/dev/null <"/proc/$1/stat"; then echo $((f[13] + f[14])); else echo 0; fi; }
pg_ticks() {
    local t=0 p f master
    master=$(pgrep -o -x postgres)
    for p in $(pgrep -x postgres); do read -r -a f 2>/dev/null <"/proc/$p/stat" && t=$((t + f[13] + f[14])); done
    read -r -a f 2>/dev/null <"/proc/$master/stat" && t=$((t + f[15] + f[16]))
    echo $t
}
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
cpu_mark() { # name pid...: remembers the counters
    local name=$1; shift
    eval "CPU_${name}=\"$(busy_ticks) $(pg_ticks) $(ticks "$(pgrep -x beam.smp | head -1)") $(for p in "$@"; do ticks "$p"; done | paste -sd' ')\""
}
cpu_report() { # name seconds labels...: prints "cores used" per component since cpu_mark
    local name=$1 secs=$2; shift 2
    local -a before now
    eval "read -r -a before <<<\"\$CPU_${name}\""
    read -r -a now <<<"$(busy_ticks) $(pg_ticks) $(ticks "$(pgrep -x beam.smp | head -1)") $(for p in "${MARK_PIDS[@]}"; do ticks "$p"; done | paste -sd' ')"
    local i out="all $(calc "(${now[0]} - ${before[0]}) / 100 / $secs" 2)"
    out+=" postgres $(calc "(${now[1]} - ${before[1]}) / 100 / $secs" 2)"
    out+=" rabbitmq $(calc "(${now[2]} - ${before[2]}) / 100 / $secs" 2)"
    local listed=$((now[1] - before[1] + now[2] - before[2]))
    for ((i = 0; i < $#; i++)); do
        local label=${*:i+1:1}
        out+=" $label $(calc "(${now[i + 3]:-0} - ${before[i + 3]:-0}) / 100 / $secs" 2)"
        listed=$((listed + ${now[i + 3]:-0} - ${before[i + 3]:-0}))
    done
    echo "$out rest $(calc "(${now[0]} - ${before[0]} - $listed) / 100 / $secs" 2)"
}

# ---- the services -----------------------------------------------------------------------------
# new_db name -> NEW_DB (not a $(subshell): the name must reach DBS for the cleanup)
new_db() { NEW_DB="${RUN}_$1"; $PG -c "create database $NEW_DB"; DBS+=("$NEW_DB"); }

# start_api name db prefix on|off -> API_PID, API_URL (API_EXTRA_ENV: more variables)
API_EXTRA_ENV=()
start_api() {
    local name=$1 db=$2 prefix=$3 telemetry=$4 port
    port=$(free_port)
    local -a env=(API_LISTEN=127.0.0.1:$port DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
        AMQP_URL=$AMQP_URL AMQP_PREFIX=$prefix LOG_FORMAT=json "${API_EXTRA_ENV[@]}")
    if [[ $telemetry == on ]]; then
        env+=(RUST_LOG=info OTEL_TRACES_SAMPLER=always_on OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
            OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$SINK_PORT)
    else
        env+=(RUST_LOG=warn)
    fi
    env -u OTEL_EXPORTER_OTLP_ENDPOINT -u RUST_LOG "${env[@]}" "$BIN/api" >"$WORK/$name.log" 2>&1 &
    API_PID=$!
    PIDS+=("$API_PID")
    API_URL=http://127.0.0.1:$port
    wait_http "$API_URL/readyz" 60
}

# start_worker name prefix concurrency -> WORKER_PID, WORKER_URL
start_worker() {
    local name=$1 prefix=$2 concurrency=$3 port
    port=$(free_port)
    env -u OTEL_EXPORTER_OTLP_ENDPOINT WORKER_LISTEN=127.0.0.1:$port AMQP_URL=$AMQP_URL \
        AMQP_PREFIX=$prefix WORKER_CONCURRENCY=$concurrency RUST_LOG=warn LOG_FORMAT=json \
        "$BIN/worker" >"$WORK/$name.log" 2>&1 &
    WORKER_PID=$!
    PIDS+=("$WORKER_PID")
    WORKER_URL=http://127.0.0.1:$port
    wait_http "$WORKER_URL/readyz" 60
}

# Noop jobs only: the request path is what is measured, not job work.
loadgen() {
    env -u OTEL_EXPORTER_OTLP_ENDPOINT "$BIN/loadgen" --url "$API_URL" --mix sleep=1 --sleep-ms 0 \
        --sleep-steps 1 --json --max-error-rate 100% "$@"
}

# Waits until every committed job is published (outbox empty); prints the seconds it took.
wait_outbox() { # db, bound in seconds
    local start=$SECONDS t0 left
    t0=$(date +%s.%N)
    while left=$($PG -d "$1" -c "select count(*) from jobs where outbox"); ((left > 0)); do
        ((SECONDS - start < $2)) || { log "outbox still holds $left jobs"; break; }
        sleep 0.1
    done
    calc "$(date +%s.%N) - $t0" 1
}

metric_sum() { # url, metric name: sum over all its series
    curl -fsS "$1/metrics" | awk -v m="$2" '$1 == m || index($1, m"{") == 1 { s += $NF } END { printf "%d", s }'
}

json() { jq -r "$2" "$WORK/$1.json"; }

# Each measured step starts from the same state: dead rows vacuumed, dirty pages written.
settle() { $PG -d "$1" -c 'vacuum analyze jobs' && $PG -c checkpoint; }

# Committed transactions in a database so far (every statement outside a transaction counts).
xacts() { $PG -c "select xact_commit from pg_stat_database where datname = '$1'"; }

# Share of the machine idle over 2 s, in percent.
idle_pct() {
    local a b
    a=$(awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    sleep 2
    b=$(awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%d", 100 * (y[1] - x[1]) / (y[2] - x[2]) }'
}

# ---- 0. machine and build --------------------------------------------------------------------
log "run $RUN, work dir $WORK"
log "building release binaries (api, worker, loadgen)"
cargo build --release --quiet -p api -p worker -p loadgen

# Numbers taken next to a compiler or another benchmark say little: wait (bounded) for quiet.
QUIET_WAIT=${BENCH_QUIET_WAIT:-180}
IDLE=$(idle_pct)
while ((IDLE < 85 && QUIET_WAIT > 0)); do
    log "machine only $IDLE % idle (busiest: $(ps -eo pcpu=,comm= --sort=-pcpu | head -3 | xargs)); waiting"
    sleep 8
    QUIET_WAIT=$((QUIET_WAIT - 10))
    IDLE=$(idle_pct)
done
log "machine $IDLE % idle at the start"

# Before each measured step: wait (up to BENCH_STEP_WAIT, 60 s) for the machine to settle, and
# note the step if it did not.
NOISY=()
quiet() {
    local idle waited=0
    while idle=$(idle_pct); ((idle < 85 && waited < ${BENCH_STEP_WAIT:-60})); do
        log "  machine $idle % idle before '$1' (busiest: $(ps -eo pcpu=,comm= --sort=-pcpu | head -3 | xargs)); waiting"
        sleep 3
        waited=$((waited + 5))
    done
    ((idle >= 85)) || NOISY+=("$1 ($idle % idle)")
}

CPU_MODEL=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
MEM=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
RABBIT_VERSION=$(curl -fsS "$RABBIT_API/overview" 2>/dev/null | jq -r .rabbitmq_version ||
    rabbitmqctl version 2>/dev/null || echo unknown)
PG_VERSION=$($PG -c 'show server_version')
PG_SETTINGS=$($PG -c "select string_agg(name || '=' || setting, ', ' order by name) from pg_settings
    where name in ('synchronous_commit', 'fsync', 'wal_sync_method', 'shared_buffers', 'max_connections')")

# ---- (d) limits --------------------------------------------------------------------------------
log "limit: PostgreSQL inserts, pgbench -c $CONCURRENCY and -c 10 (the api's pool), ${SECONDS_PER_STEP}s each"
new_db pg
LIMIT_DB=$NEW_DB
$PG -d "$LIMIT_DB" -f "$ROOT/api/migrations/0001_jobs.sql"
cat >"$WORK/insert.sql" <<'SQL'
INSERT INTO jobs (id, kind, payload, trace_id, traceparent)
VALUES (gen_random_uuid(), 'sleep', '{"duration_ms":0,"steps":1}', md5(random()::text),
        '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
SQL
pgbench_tps() {
    pgbench -h 127.0.0.1 -U postgres -n -M prepared -c "$1" -j 2 -T "$SECONDS_PER_STEP" \
        -f "$WORK/insert.sql" "$LIMIT_DB" 2>&1 | awk '/^tps/ { printf "%d", $3 }'
}
quiet "pgbench"
MARK_PIDS=()
cpu_mark pg
PG_TPS=$(pgbench_tps "$CONCURRENCY")
CPU_USE_pg=$(cpu_report pg "$SECONDS_PER_STEP")
PG_TPS_10=$(pgbench_tps 10)
$PG -c "drop database if exists $LIMIT_DB with (force)"
log "  $PG_TPS tx/s at $CONCURRENCY clients, $PG_TPS_10 at 10"

RAW_PREFIX=${RUN}_raw
PREFIXES+=("$RAW_PREFIX")
log "limit: RabbitMQ confirmed persistent publish (window $CONCURRENCY) and consume+ack, quorum queue"
quiet "amqp publish"
cpu_mark pub
"$BIN/amqp-bench" --url "$AMQP_URL" publish --queue "$RAW_PREFIX.a" --count 300000 \
    --window "$CONCURRENCY" --max-seconds "$SECONDS_PER_STEP" >"$WORK/raw_pub.json"
CPU_USE_pub=$(cpu_report pub "$(json raw_pub .seconds)")
quiet "amqp consume"
cpu_mark con
"$BIN/amqp-bench" --url "$AMQP_URL" consume --queue "$RAW_PREFIX.a" --count 300000 --prefetch 16 \
    --max-seconds "$SECONDS_PER_STEP" >"$WORK/raw_con16.json"
CPU_USE_con=$(cpu_report con "$(json raw_con16 .seconds)")
quiet "amqp one at a time"
"$BIN/amqp-bench" --url "$AMQP_URL" publish --queue "$RAW_PREFIX.b" --count 300000 --window 1 \
    --max-seconds 5 >"$WORK/raw_pub1.json"
"$BIN/amqp-bench" --url "$AMQP_URL" consume --queue "$RAW_PREFIX.b" --count 300000 --prefetch 1 \
    --max-seconds "$SECONDS_PER_STEP" >"$WORK/raw_con1.json"
"$BIN/amqp-bench" --url "$AMQP_URL" delete "$RAW_PREFIX.a" "$RAW_PREFIX.b" >/dev/null
RAW_PUB=$(json raw_pub '.rate | floor')
RAW_PUB1=$(json raw_pub1 '.rate | floor')
RAW_CON16=$(json raw_con16 '.rate | floor')
RAW_CON1=$(json raw_con1 '.rate | floor')
log "  publish $RAW_PUB/s (one at a time: $RAW_PUB1/s), consume+ack $RAW_CON16/s at prefetch 16, $RAW_CON1/s at 1"
LIMIT=$((PG_TPS < RAW_PUB ? PG_TPS : RAW_PUB))

# ---- (a) + (b) durable enqueue, telemetry off and on ----------------------------------------
SINK_PORT=$(free_port)
"$BIN/otlp-sink" --listen "127.0.0.1:$SINK_PORT" >"$WORK/sink.log" 2>&1 &
SINK_PID=$!
PIDS+=("$SINK_PID")
wait_http "http://127.0.0.1:$SINK_PORT/stats" 10

# enqueue_round off|on|pool round: one api on a fresh database and prefix, a warm-up, the closed
# loop (and, in the first off round, the half-rate open loop). Rounds alternate the modes, and
# each mode keeps its best round: on a shared machine, noise only ever takes throughput away.
# pool = telemetry off with DB_MAX_CONNECTIONS = BENCH_CONCURRENCY (the default pool is 10).
enqueue_round() {
    local mode=$1 round=$2 db prefix sampler telemetry=off commits name=closed_$1_$2
    API_EXTRA_ENV=()
    [[ $mode == on ]] && telemetry=on
    [[ $mode == pool ]] && API_EXTRA_ENV=(DB_MAX_CONNECTIONS=$CONCURRENCY)
    new_db "${mode}_$round"
    db=$NEW_DB
    prefix=${RUN}_${mode}_$round
    PREFIXES+=("$prefix")
    start_api "api_${mode}_$round" "$db" "$prefix" "$telemetry"
    sleep 1
    local idle_rss
    idle_rss=$(kb "$API_PID" VmRSS)
    log "enqueue $mode (round $round): warm-up, then closed loop $CONCURRENCY in flight for ${SECONDS_PER_STEP}s"
    loadgen --rate max --max-in-flight "$CONCURRENCY" --count 2000 >/dev/null
    settle "$db"
    quiet "enqueue $mode $round"
    sample_rss "$API_PID" "$WORK/rss_$name" &
    sampler=$!
    MARK_PIDS=("$API_PID" "$SINK_PID")
    cpu_mark "$mode" "$API_PID" "$SINK_PID"
    local api_ticks0
    api_ticks0=$(ticks "$API_PID")
    commits=$(xacts "$db")
    loadgen --rate max --max-in-flight "$CONCURRENCY" --duration "${SECONDS_PER_STEP}s" >"$WORK/$name.json"
    local cpu api_us outbox xact
    cpu="$(cpu_report "$mode" "$(json "$name" .elapsed_s)" api otlp-sink) $(json "$name" '"loadgen \((.cpu_seconds // 0) / .elapsed_s * 100 | floor / 100)"')"
    api_us=$(calc "($(ticks "$API_PID") - $api_ticks0) * 10000 / $(json "$name" '.statuses["202"] // 1')" 0)
    outbox=$(wait_outbox "$db" 120)
    sleep 1 # PostgreSQL flushes its statistics about once a second
    xact=$(calc "($(xacts "$db") - $commits) / $(json "$name" '.statuses["202"] // 1')" 2)
    kill "$sampler" 2>/dev/null || true
    local rate best=-1
    rate=$(json "$name" '.achieved_rate | floor')
    [[ -f $WORK/closed_$mode.json ]] && best=$(json "closed_$mode" '.achieved_rate | floor')
    eval "RATES_$mode=\"\${RATES_$mode:+\$RATES_$mode, }$rate\""
    if ((rate > best)); then
        cp "$WORK/$name.json" "$WORK/closed_$mode.json"
        eval "CPU_USE_$mode=\"$cpu\"; API_US_$mode=$api_us; OUTBOX_$mode=$outbox; XACT_PER_JOB_$mode=$xact"
    fi
    # Memory: the worst round counts.
    local load_rss
    load_rss=$(max_of "$WORK/rss_$name")
    eval "API_IDLE_$mode=\$(( \${API_IDLE_$mode:-0} > idle_rss ? \${API_IDLE_$mode:-0} : idle_rss ))"
    eval "API_LOAD_$mode=\$(( \${API_LOAD_$mode:-0} > load_rss ? \${API_LOAD_$mode:-0} : load_rss ))"
    if [[ $mode == off ]]; then
        # Half of the first round's peak in every off round; the lower p99 is kept, both shown.
        local half p99 best_p99=999999
        [[ -f $WORK/half.json ]] && best_p99=$(json half .latency_ms.p99)
        half=${HALF_TARGET:=$(json closed_off '.achieved_rate / 2 | floor')}
        settle "$db"
        quiet "half rate $round"
        log "enqueue off: open loop at $half/s (half the peak) for ${SECONDS_PER_STEP}s"
        loadgen --rate "$half" --max-in-flight "$CONCURRENCY" --duration "${SECONDS_PER_STEP}s" >"$WORK/half_$round.json"
        p99=$(json "half_$round" .latency_ms.p99)
        HALF_P99S="${HALF_P99S:+$HALF_P99S, }$p99"
        if awk "BEGIN { exit !($p99 < $best_p99) }"; then cp "$WORK/half_$round.json" "$WORK/half.json"; fi
        wait_outbox "$db" 60 >/dev/null
        # Row work per job: the relay's `outbox = false` is an UPDATE of every row; HOT or not?
        ROWS_off=$($PG -d "$db" -c "select round(n_tup_upd::numeric / greatest(n_tup_ins, 1), 2) || ' updates (' ||
            round(n_tup_hot_upd::numeric / greatest(n_tup_ins, 1), 2) || ' HOT)' from pg_stat_user_tables where relname = 'jobs'")
    fi
    local hwm
    hwm=$(kb "$API_PID" VmHWM)
    eval "API_HWM_$mode=\$(( \${API_HWM_$mode:-0} > hwm ? \${API_HWM_$mode:-0} : hwm ))"
    stop "$API_PID"
    API_EXTRA_ENV=()
    # Rounds must not slow each other: tens of thousands of messages left in a quorum queue
    # cost RabbitMQ memory and CPU, so each round's queues and database go as soon as it ends.
    delete_amqp "$prefix"
    $PG -c "drop database if exists $db with (force)"
}
ROUNDS=${BENCH_ROUNDS:-3}
for ((round = 1; round <= ROUNDS; round++)); do
    enqueue_round off "$round"
    enqueue_round on "$round"
done
enqueue_round pool 1
curl -fsS "http://127.0.0.1:$SINK_PORT/stats" >"$WORK/sink.json"
SPANS_API=$(jq -r '.spans.api // 0' "$WORK/sink.json")
LOG_LINES_ON=$(cat "$WORK"/api_on_*.log | wc -l)

# ---- (c) worker drain of no-op jobs -------------------------------------------------------
new_db drain
DRAIN_DB=$NEW_DB
DRAIN_PREFIX=${RUN}_drain
PREFIXES+=("$DRAIN_PREFIX")
start_api api_drain "$DRAIN_DB" "$DRAIN_PREFIX" off
start_worker worker_idle "$DRAIN_PREFIX" 16
sleep 1
WORKER_IDLE=$(kb "$WORKER_PID" VmRSS)
stop "$WORKER_PID"

drain() { # concurrency
    local c=$1 t0 t1 done_jobs=0 bound=$((SECONDS + 120)) sampler
    log "worker drain: $DRAIN_JOBS no-op jobs queued with the worker stopped, then WORKER_CONCURRENCY=$c"
    loadgen --rate max --max-in-flight "$CONCURRENCY" --count "$DRAIN_JOBS" >"$WORK/fill_$c.json"
    wait_outbox "$DRAIN_DB" 120 >/dev/null
    local base
    base=$($PG -d "$DRAIN_DB" -c "select count(*) from jobs where status = 'succeeded'")
    quiet "drain $c"
    # The clock runs from the worker's start (connecting and declaring included).
    t0=$(date +%s.%N)
    start_worker "worker_$c" "$DRAIN_PREFIX" "$c"
    sample_rss "$WORKER_PID" "$WORK/rss_worker_$c" &
    sampler=$!
    MARK_PIDS=("$WORKER_PID" "$API_PID")
    cpu_mark "drain$c" "$WORKER_PID" "$API_PID"
    while ((done_jobs < DRAIN_JOBS && SECONDS < bound)); do
        sleep 0.1
        done_jobs=$(metric_sum "$WORKER_URL" jobstack_jobs_finished_total)
    done
    t1=$(date +%s.%N)
    eval "CPU_USE_drain$c=\"$(cpu_report "drain$c" "$(calc "$t1 - $t0" 3)" worker api)\""
    eval "DRAIN_SECS_$c=$(calc "$t1 - $t0" 2)"
    eval "DRAIN_RATE_$c=$(calc "$done_jobs / ($t1 - $t0)" 0)"
    # End to end: the api has applied every final event.
    while (($($PG -d "$DRAIN_DB" -c "select count(*) from jobs where status = 'succeeded'") - base < done_jobs)); do
        ((SECONDS < bound)) || break
        sleep 0.1
    done
    eval "DRAIN_E2E_$c=$(calc "$(date +%s.%N) - $t0" 2)"
    kill "$sampler" 2>/dev/null || true
    eval "WORKER_LOAD_$c=$(max_of "$WORK/rss_worker_$c")"
    eval "WORKER_HWM_$c=$(kb "$WORKER_PID" VmHWM)"
    # Confirmed publishes per job and their mean confirm wait, from the worker's own metrics.
    eval "PUBS_$c=\"$(curl -fsS "$WORKER_URL/metrics" | awk -v n="$done_jobs" '
        /^jobstack_amqp_publish_duration_seconds_count/ { c += $NF }
        /^jobstack_amqp_publish_duration_seconds_sum/ { s += $NF }
        END { printf "%.1f confirmed publishes per job, mean confirm %.2f ms", c / (n ? n : 1), c ? 1000 * s / c : 0 }')\""
    stop "$WORKER_PID"
}
drain 1
drain 16
stop "$API_PID"

# ---- the table ---------------------------------------------------------------------------
CLOSED_OFF=$(json closed_off '.achieved_rate | floor')
CLOSED_ON=$(json closed_on '.achieved_rate | floor')
CLOSED_POOL=$(json closed_pool '.achieved_rate | floor')
HALF_RATE=$(json half '.achieved_rate | floor')
mb() { calc "$1 / 1024" 1; }
verdict() { if awk "BEGIN { exit !($1) }"; then echo met; else echo MISSED; fi; }
ENQ_RATIO=$(calc "$CLOSED_OFF / $LIMIT" 2)
TEL_RATIO=$(calc "$CLOSED_ON / $CLOSED_OFF" 3)
TEL_COST=$(calc "(1 - $CLOSED_ON / $CLOSED_OFF) * 100" 1)
WRK_RATIO=$(calc "$DRAIN_RATE_16 / $RAW_CON16" 2)
WRK_RATIO1=$(calc "$DRAIN_RATE_1 / $RAW_CON1" 2)
HALF_P99=$(json half .latency_ms.p99)
API_RSS_MAX=$((API_LOAD_on > API_LOAD_off ? API_LOAD_on : API_LOAD_off))
WORKER_RSS_MAX=$((WORKER_LOAD_16 > WORKER_LOAD_1 ? WORKER_LOAD_16 : WORKER_LOAD_1))
lat() { json "$1" '"\(.latency_ms.p50) / \(.latency_ms.p99)"'; }
errs() { json "$1" '"\(.completed - (.statuses["202"] // 0))"'; }

# Microseconds of CPU per job, from a CPU split ("all 1.86 postgres 0.65 ...") and a rate.
cores() { awk -v k="$2" '{ for (i = 1; i < NF; i++) if ($i == k) { print $(i + 1); exit } }' <<<"$1"; }
per_job() { calc "$1 * 1000000 / $2" 0; } # cores, jobs/s -> µs of CPU per job
# Machine CPU per accepted job in a closed-loop round: steadier than throughput on a shared
# machine, where a noisy round loses rate and CPU alike.
MACHINE_US_off=$(per_job "$(cores "$CPU_USE_off" all)" "$CLOSED_OFF")
MACHINE_US_on=$(per_job "$(cores "$CPU_USE_on" all)" "$CLOSED_ON")
MACHINE_COST=$(signed "($MACHINE_US_on / $MACHINE_US_off - 1) * 100" 1)
TABLE=$(cat <<EOF
| measurement | jobstack | machine limit | ratio |
| --- | --- | --- | --- |
| durable enqueue, closed loop $CONCURRENCY in flight, telemetry off (best of $RATES_off) | $CLOSED_OFF jobs/s, p50/p99 $(lat closed_off) ms, $(errs closed_off) non-202 | $LIMIT/s (lower of PG inserts $PG_TPS tx/s, AMQP confirmed publish $RAW_PUB/s) | $ENQ_RATIO |
| durable enqueue, open loop at half the peak (p99 of each round: $HALF_P99S) | $HALF_RATE jobs/s, p50/p99 $(lat half) ms, $(errs half) non-202 | | |
| durable enqueue, telemetry on: OTLP 100 %, JSON logs at info (best of $RATES_on) | $CLOSED_ON jobs/s, p50/p99 $(lat closed_on) ms, $(errs closed_on) non-202 | telemetry off: $CLOSED_OFF/s | $TEL_RATIO |
| durable enqueue, telemetry off, DB_MAX_CONNECTIONS=$CONCURRENCY (default 10) | $CLOSED_POOL jobs/s, p50/p99 $(lat closed_pool) ms, $(errs closed_pool) non-202 | $LIMIT/s | $(calc "$CLOSED_POOL / $LIMIT" 2) |
| api CPU per accepted job (utime + stime ÷ 202s) | off $API_US_off µs, on $API_US_on µs ($(signed "($API_US_on / $API_US_off - 1) * 100" 0) %), pool $API_US_pool µs | | |
| machine CPU per accepted job (all cores ÷ jobs/s) | off $MACHINE_US_off µs, on $MACHINE_US_on µs ($MACHINE_COST %) | | |
| relay catch-up after the closed loop (outbox empty) | off ${OUTBOX_off}s, on ${OUTBOX_on}s, pool ${OUTBOX_pool}s | | |
| PostgreSQL per accepted job: transactions (insert, relay batches, backlog queries); row updates | $XACT_PER_JOB_off transactions, $ROWS_off (telemetry off run) | pgbench: 1 insert, no update | |
| worker drain, $DRAIN_JOBS no-op jobs, WORKER_CONCURRENCY 16 | $DRAIN_RATE_16 jobs/s (${DRAIN_SECS_16}s; all rows succeeded after ${DRAIN_E2E_16}s) | consume+ack $RAW_CON16/s (prefetch 16) | $WRK_RATIO |
| worker drain, $DRAIN_JOBS no-op jobs, WORKER_CONCURRENCY 1 | $DRAIN_RATE_1 jobs/s (${DRAIN_SECS_1}s; all rows succeeded after ${DRAIN_E2E_1}s) | consume+ack $RAW_CON1/s (prefetch 1) | $WRK_RATIO1 |
| worker AMQP work per no-op job | at 16: $PUBS_16; at 1: $PUBS_1 | one confirmed publish at a time: $RAW_PUB1/s | |
| api RSS idle / under load (max VmRSS) / VmHWM, telemetry off | $(mb "$API_IDLE_off") / $(mb "$API_LOAD_off") / $(mb "$API_HWM_off") MB | | |
| api RSS idle / under load (max VmRSS) / VmHWM, telemetry on | $(mb "$API_IDLE_on") / $(mb "$API_LOAD_on") / $(mb "$API_HWM_on") MB | | |
| worker RSS idle / under load at 1 / at 16 (max VmRSS), VmHWM at 16 | $(mb "$WORKER_IDLE") / $(mb "$WORKER_LOAD_1") / $(mb "$WORKER_LOAD_16") / $(mb "$WORKER_HWM_16") MB | | |
EOF
)
TARGETS=$(cat <<EOF
| target | measured | |
| --- | --- | --- |
| durable enqueue ≥ 50 % of the lower limit | $(calc "$ENQ_RATIO * 100" 0) % ($CLOSED_OFF of $LIMIT/s) | $(verdict "$ENQ_RATIO >= 0.5") |
| p99 ≤ 20 ms at half the peak rate | $HALF_P99 ms at $HALF_RATE/s | $(verdict "$HALF_P99 <= 20") |
| telemetry costs ≤ 10 % of throughput | $TEL_COST % ($CLOSED_ON vs $CLOSED_OFF/s; machine CPU per job $MACHINE_COST %) | $(if awk "BEGIN { exit !($TEL_COST < 0) }"; then echo "inconclusive: on ran faster than off, the noise exceeds the cost"; else verdict "$TEL_COST <= 10"; fi) |
| worker no-op rate ≥ 50 % of raw consume+ack | $(calc "$WRK_RATIO * 100" 0) % ($DRAIN_RATE_16 of $RAW_CON16/s at 16) | $(verdict "$WRK_RATIO >= 0.5") |
| api RSS ≤ 30 MB under load | $(mb "$API_RSS_MAX") MB | $(verdict "$API_RSS_MAX <= 30 * 1024") |
| worker RSS ≤ 20 MB under load | $(mb "$WORKER_RSS_MAX") MB | $(verdict "$WORKER_RSS_MAX <= 20 * 1024") |
EOF
)
CPU=$(cat <<EOF
| step | CPU used, in cores (of $(nproc)) |
| --- | --- |
| limit: pgbench -c $CONCURRENCY | $CPU_USE_pg (rest includes pgbench) |
| limit: amqp-bench publish | $CPU_USE_pub (rest includes amqp-bench) |
| limit: amqp-bench consume | $CPU_USE_con |
| closed loop, telemetry off | $CPU_USE_off |
| closed loop, telemetry on | $CPU_USE_on |
| closed loop, DB_MAX_CONNECTIONS=$CONCURRENCY | $CPU_USE_pool |
| worker drain at 1 | $CPU_USE_drain1 |
| worker drain at 16 | $CPU_USE_drain16 |
EOF
)

# What bounds the results: the machine's CPU per job, from the CPU split above. Every process
# shares the same cores, so a rate can only rise by as much as the CPU per job falls.
BOUNDS=$(cat <<EOF
- **Durable enqueue** is CPU-bound on the whole machine: the closed loop keeps
  $(cores "$CPU_USE_off" all) of $(nproc) cores busy, $(per_job "$(cores "$CPU_USE_off" all)" "$CLOSED_OFF") µs of CPU per
  accepted job: PostgreSQL $(per_job "$(cores "$CPU_USE_off" postgres)" "$CLOSED_OFF"), api $(per_job "$(cores "$CPU_USE_off" api)" "$CLOSED_OFF"),
  RabbitMQ $(per_job "$(cores "$CPU_USE_off" rabbitmq)" "$CLOSED_OFF") (the relay's confirmed publish), and $(per_job "$(cores "$CPU_USE_off" rest)" "$CLOSED_OFF") for the load
  generator, the kernel's loopback TCP and the rest. The PostgreSQL limit spends
  $(per_job "$(cores "$CPU_USE_pg" all)" "$PG_TPS") µs of machine CPU per insert ($(per_job "$(cores "$CPU_USE_pg" postgres)" "$PG_TPS") in PostgreSQL), with no HTTP hop, no
  broker and no relay update of the row. Half that limit on $(nproc) cores leaves
  $(calc "$(nproc) * 1000000 / ($LIMIT / 2)" 0) µs per job for everything.
- **Worker drain**: per no-op job the broker does one delivery and ack on the jobs queue, two
  confirmed publishes to the events quorum queue and two deliveries and acks to the api, which
  applies the events in PostgreSQL, all on the same cores. RabbitMQ spends
  $(per_job "$(cores "$CPU_USE_drain16" rabbitmq)" "$DRAIN_RATE_16") µs per job at concurrency 16 against
  $(per_job "$(cores "$CPU_USE_con" rabbitmq)" "$RAW_CON16") µs per message in the consume+ack limit; the whole machine
  $(per_job "$(cores "$CPU_USE_drain16" all)" "$DRAIN_RATE_16") µs per job. The worker itself uses
  $(per_job "$(cores "$CPU_USE_drain16" worker)" "$DRAIN_RATE_16") µs per job; each of its 16 jobs in flight waits for its final
  event's confirm before the ack (mean confirm above), which bounds the rate at 16 ÷ the time
  per job.
EOF
)

{
    cat <<EOF
# jobstack benchmarks

Written by \`make bench\` (bench/run.sh) on $(date -u '+%Y-%m-%d %H:%M UTC'). Every number below was
measured in that one run, on this machine; the limits are the same machine's PostgreSQL and
RabbitMQ doing the same durable work with nothing of ours in the way.

## Machine

| | |
| --- | --- |
| CPU | $CPU_MODEL, $(nproc) cores (nproc) |
| memory | $MEM |
| kernel | $(uname -sr) |
| rustc | $(rustc --version) |
| RabbitMQ | $RABBIT_VERSION (local, 127.0.0.1:5672) |
| PostgreSQL | $PG_VERSION (local, 127.0.0.1:5432; $PG_SETTINGS) |

Everything (api, worker, loadgen, PostgreSQL, RabbitMQ, the OTLP sink) shares these cores, so
each step's CPU split is given below too. The machine was $IDLE % idle when the run started.

## Results

$TABLE

## Targets

$TARGETS

## Where the CPU went

$CPU

"all" is the whole machine (busy time from /proc/stat); postgres includes its backends; loadgen
measures its own CPU (and is part of "rest"); "rest" is everything not listed: the load
generator, kernel network and softirq time, and anything else running on the machine.
$(if ((${#NOISY[@]})); then echo "Steps that started on a busy machine (noisier numbers): ${NOISY[*]}."; else echo "Every step started on a quiet machine (at least 85 % idle)."; fi)

## What bounds the results

$BOUNDS

## How it was measured

- Jobs are no-op \`sleep\` jobs (\`duration_ms\` 0, \`steps\` 1), so the path is measured, not job work.
- **Durable enqueue**: \`loadgen --rate max --max-in-flight $CONCURRENCY --duration ${SECONDS_PER_STEP}s\` (closed
  loop: each of $CONCURRENCY clients sends its next \`POST /jobs\` when the last answered) after a
  2000-request warm-up, on a fresh api, database and AMQP prefix each time; $ROUNDS rounds
  alternate telemetry off and on, and each keeps its best round (noise from a shared machine only
  ever lowers throughput); a 202 means the row is committed, and the outbox relay publishes it with
  confirms. The "relay catch-up" row is how long the outbox took to empty after the load stopped.
  The half-rate row is open loop (\`--rate <peak/2>\`): latency runs from each request's
  scheduled time, so queueing inside the api or the generator is counted.
- **Telemetry on**: \`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf\`, \`OTEL_TRACES_SAMPLER=always_on\`,
  endpoint = otlp-sink (answers 200, counts spans: $SPANS_API api spans received), \`RUST_LOG=info\`,
  JSON logs to a file ($LOG_LINES_ON lines). **Off**: no endpoint, \`RUST_LOG=warn\`. loadgen
  sends a fresh \`traceparent\` in both and exports nothing.
- **Limits**: \`pgbench -M prepared -c $CONCURRENCY -j 2 -T $SECONDS_PER_STEP\` with one single-row \`INSERT\` into a copy
  of the jobs table (same indexes) per transaction ($PG_TPS_10 tx/s at 10 clients, the api's pool
  size); \`amqp-bench\` (loadgen/src/bin) publishing persistent 160-byte messages to a quorum queue
  with $CONCURRENCY confirms in flight ($RAW_PUB1/s when waiting for each confirm), then consuming
  them with one ack per message.
- **Worker drain**: $DRAIN_JOBS jobs enqueued and published with the worker stopped; then the worker
  starts and the clock runs from its start (connecting included) to \`jobstack_jobs_finished_total\` = $DRAIN_JOBS. The api
  is running meanwhile, applying the job events.
- Before each measured enqueue step: \`VACUUM ANALYZE jobs\` and \`CHECKPOINT\`, then a wait (up to 60 s)
  for the machine to be at least 85 % idle.
- **RSS**: VmRSS sampled every 200 ms from /proc/<pid>/status; VmHWM at the end of the step.
EOF
} >"$OUT"

printf '\n%s\n\n%s\n\n%s\n\nWritten to %s\n' "$TABLE" "$TARGETS" "$CPU" "$OUT"
