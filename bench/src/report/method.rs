//! "How it was measured": the method, with the run's own sizes filled in.

use crate::results::Results;

/// The section's Markdown.
pub(super) fn text(r: &Results) -> String {
    let p = &r.plan;
    let (c, s) = (p.concurrency, p.seconds);
    format!(
        "- Jobs are no-op `sleep` jobs (`duration_ms` 0, `steps` 1), so the path is measured, not job\n  \
         work. api, worker, loadgen, otlp-sink and amqp-bench are release builds; each service gets\n  \
         only the environment variables named here.\n\
         - **Durable enqueue**: `loadgen --rate max --max-in-flight {c} --duration {s}s` (closed loop:\n  \
         each of {c} clients sends its next `POST /jobs` when the last answered) after a\n  \
         {w}-request warm-up of the same loop, on a fresh api, database and AMQP prefix each round;\n  \
         {rounds} rounds alternate telemetry off, the half-rate open loop and telemetry on, and each keeps\n  \
         its best round (noise from a shared machine only ever lowers throughput). A 202 means the row\n  \
         is committed; the outbox relay publishes it with confirms. \"Relay catch-up\" is how long the\n  \
         api took after the loop to publish every job it had accepted (its\n  \
         `jobstack_outbox_published_total` reaching `jobstack_jobs_created_total`). \"Not accepted\"\n  \
         counts every request without a 202: other statuses, timeouts, transport errors, and arrivals\n  \
         the open loop could not send because {c} were already in flight.\n\
         - **Half the peak**: open loop (`--rate <first peak ÷ 2>`) on its own api after a 2 s warm-up at\n  \
         the same rate: latency runs from each request's scheduled time, so queueing inside the api or\n  \
         the generator is counted. The round with the lowest p99 is kept; every round's p99 is shown.\n\
         - **Telemetry on**: `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`, `OTEL_TRACES_SAMPLER=always_on`,\n  \
         endpoint = otlp-sink (answers 200, counts spans: {spans} api spans received), `RUST_LOG=info`,\n  \
         JSON logs to a file ({lines} lines). **Off**: no endpoint, `RUST_LOG=warn`. loadgen sends a fresh\n  \
         `traceparent` in both and exports nothing.\n\
         - **PostgreSQL per job**: `xact_commit` of pg_stat_database and `n_tup_ins/upd/hot_upd/del` of\n  \
         pg_stat_user_tables, read once the api has exited (a backend flushes its counters when it\n  \
         ends), divided by the jobs it created: its whole life (start-up, warm-up, loop) is one kind of\n  \
         load. AMQP publishes per job are the services' own `jobstack_amqp_publish_duration_seconds`\n  \
         counts, deliveries the worker's `jobstack_jobs_started_total`, events the api's\n  \
         `jobstack_job_events_total`.\n\
         - **Limits**: `pgbench -n -M prepared -c {c} -j 2 -T {s}` with one single-row `INSERT` per\n  \
         transaction into the jobs table as the api's own migrations made it ({pool:.0} tx/s at 10\n  \
         clients, the api's default pool); `amqp-bench` (loadgen/src/bin) publishing persistent 160-byte\n  \
         messages to a quorum queue with {c} confirms in flight ({one:.0}/s when waiting for each\n  \
         confirm), then consuming them with one ack per message: the pipelined ones at prefetch 16 and\n  \
         32, the others at 1 and 2, each consumer taking half and stopping when it has it (so no\n  \
         consumer's rate includes waiting on an empty queue).\n\
         - **Worker drain**: {jobs} jobs enqueued and published by an api that then stops; a second api\n  \
         on the same database applies the job events while a worker at the given concurrency drains\n  \
         the queue. The clock runs from the worker's start (connecting included) until every row says\n  \
         `succeeded`; when the worker's own `jobstack_jobs_finished_total` reached {jobs} is shown too.\n  \
         {rounds} rounds at each concurrency; the fastest is kept. The CPU split covers the same span.\n\
         - **Workflow fan-in**: `POST /workflows` with {children} no-op children and one job that depends on\n  \
         all of them, on its own api and a worker at concurrency 16, {rounds} rounds one after the other.\n  \
         \"Last child → parent start\" is the parent's `started_at` minus the latest child's `finished_at`\n  \
         (both the worker's clock, as its events carry them); \"whole workflow\" runs from the workflow's\n  \
         `created_at` to the parent's `finished_at`.\n\
         - **Schedule lateness**: {schedules} schedules with `interval_secs: 1` on their own api and worker;\n  \
         for every fire due in the window, its job's `created_at` (the fire's transaction) minus its\n  \
         `fire_at`. One window of {s}s with nothing else running, then one of {s}s while loadgen offers the\n  \
         half-peak rate (open loop, no-op jobs) and the worker runs every job: more than api and worker\n  \
         together finish, so PostgreSQL and the api are as busy as they get.\n\
         - **Flow control, no limit hit**: a fresh api (`JOB_LIMITS` as named) and worker at concurrency\n  \
         16 per run; `loadgen --rate max --max-in-flight 64 --duration {s}s` of no-op jobs (with\n  \
         `--priority 0..9`, `--unique` or `--keys 100` where named), then every job to its end:\n  \
         \"finished/s\" is the jobs succeeded over the span from the first accept to the last end. {rounds}\n  \
         rounds, the mechanisms in turn within each; each keeps its best; the cost is the share of the\n  \
         unlimited run's finished/s lost.\n\
         - **Priorities**: an api with `JOB_LIMITS=sleep:concurrency=16` and a worker at 16; 2000 sleep\n  \
         jobs of 5 ms at priority 0 submitted (32 requests in flight), then 50 at priority 9; each job's\n  \
         wait is its `started_at` minus its `created_at`.\n\
         - **Per-client quotas**: one api (no worker); client B (a submitter's key) at 200/s open loop\n  \
         for {s}s alone, then again while client A (a key with `submit_rate` 100) offers 1000/s, both\n  \
         with 64 in flight; then, as a control, B beside the same 1000/s from a key with no quota (all\n  \
         of it accepted); {rounds} rounds, each figure's best p99 kept; A's excess is answered 429 at the\n  \
         edge.\n\
         - Before each measured step: `VACUUM ANALYZE` and `CHECKPOINT`, then a bounded wait for the\n  \
         machine to be quiet (BENCH_STEP_WAIT); the run itself first waits for a quiet machine\n  \
         (BENCH_QUIET_WAIT).\n\
         - **RSS**: VmRSS sampled every 200 ms from /proc/<pid>/status; VmHWM at the end of the step.\n\
         - **Targets** are reported, never asserted.\n",
        w = p.warmup,
        rounds = p.rounds,
        spans = r.spans_api,
        lines = r.log_lines_on,
        pool = r.limits.pg_tps_pool,
        one = r.limits.publish_one,
        jobs = p.drain_jobs,
        children = crate::fanin::CHILDREN,
        schedules = crate::lateness::SCHEDULES,
    )
}
