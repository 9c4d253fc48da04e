//! "What bounds the results": each figure's CPU per job, from the step's CPU split. Every
//! process shares the same cores, so a rate can only rise by as much as the CPU per job falls;
//! a target rate on N cores leaves a CPU budget per job, shown beside what the run spent.

use std::fmt::Write as _;

use super::markdown::pg_work;
use crate::results::Results;
use crate::targets::{DRAIN_MIN_SHARE, ENQUEUE_MIN_SHARE};

/// The section's Markdown.
pub(super) fn text(r: &Results) -> String {
    let (l, off, d16) = (&r.limits, &r.off, &r.drain16);
    let cores = r.machine.cores.max(1) as f64;
    let us = |split: &crate::results::CpuSplit, name: &str, rate: f64| {
        split.per_job_us(name, rate).round()
    };
    let budget = |rate: f64| {
        if rate > 0.0 {
            (cores * 1e6 / rate).round()
        } else {
            0.0
        }
    };
    let mut out = String::new();

    let enqueue_target = l.pg_tps * ENQUEUE_MIN_SHARE;
    let _ = writeln!(
        out,
        "- **Durable enqueue** (closed loop, telemetry off) keeps {all:.2} of {cores} cores busy: {total} µs of\n  \
         machine CPU per accepted job: PostgreSQL {pg}, api {api}, RabbitMQ {rmq} (the relay's confirmed\n  \
         publishes, {pubs:.2} per job), loadgen {lg}, and {rest} for the kernel's loopback TCP and the rest.\n  \
         PostgreSQL's part is its work per job: {work}. The insert limit spends\n  \
         {lim_all} µs of machine CPU per insert ({lim_pg} in PostgreSQL) with no HTTP hop, no broker and no\n  \
         relay. {share:.0} % of that limit ({target:.0} jobs/s) on {cores} cores leaves {budget} µs per job for\n  \
         everything.",
        all = off.cpu.all,
        total = us(&off.cpu, "all", off.run.rate),
        pg = us(&off.cpu, "postgres", off.run.rate),
        api = us(&off.cpu, "api", off.run.rate),
        rmq = us(&off.cpu, "rabbitmq", off.run.rate),
        pubs = off.publishes_per_job,
        lg = us(&off.cpu, "loadgen", off.run.rate),
        rest = us(&off.cpu, "rest", off.run.rate),
        work = pg_work(&off.pg),
        lim_all = us(&l.pg_cpu, "all", l.pg_tps),
        lim_pg = us(&l.pg_cpu, "postgres", l.pg_tps),
        share = ENQUEUE_MIN_SHARE * 100.0,
        target = enqueue_target,
        budget = budget(enqueue_target),
    );
    // Little's law: in a closed loop, mean latency is the requests in flight over the rate.
    let closed_mean_ms = if off.run.rate > 0.0 {
        f64::from(r.plan.concurrency) * 1e3 / off.run.rate
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "- **Latency**: the closed loop's latency is its {c} requests in flight over its rate\n  \
         ({c} ÷ {rate:.0}/s = {closed_mean_ms:.1} ms on average; p99 {closed:.1} ms), so it is queueing\n  \
         by construction. The open loop at half the peak measures the service: p50 {p50:.1} ms,\n  \
         p99 {p99:.1} ms.",
        c = r.plan.concurrency,
        rate = off.run.rate,
        closed = off.run.p99_ms,
        p50 = r.half.run.p50_ms,
        p99 = r.half.run.p99_ms,
    );
    let drain_target = l.consume16 * DRAIN_MIN_SHARE;
    let b = &d16.broker;
    let _ = writeln!(
        out,
        "- **Worker drain** at concurrency 16: per no-op job the broker made {del:.2} jobs-queue\n  \
         deliveries, the worker waited for {conf:.2} confirmed publishes (mean {ms:.2} ms each) and the api\n  \
         consumed {ev:.2} events and applied them ({work}). The whole machine\n  \
         spent {total} µs per job: RabbitMQ {rmq} (against {rmq_lim} µs per message in the consume+ack\n  \
         limit), PostgreSQL {pg}, api {api}, worker {worker}, rest {rest}. {share:.0} % of that limit\n  \
         ({target:.0} jobs/s) on {cores} cores leaves {budget} µs per job. With its 16 slots full, a job\n  \
         holds one for 16 ÷ {rate:.0}/s = {slot:.1} ms on average (Little's law), against the mean\n  \
         confirm wait of {ms:.2} ms. The limit holds 16 unacked messages, as many as the\n  \
         worker has slots; holding 32 it reaches {deeper:.0}/s, the ceiling for a worker that\n  \
         prefetches twice its concurrency ({deep_share:.0} % of it).",
        del = b.deliveries,
        conf = b.confirm_waits,
        ms = b.mean_confirm_ms,
        ev = b.events,
        work = pg_work(&d16.pg),
        total = us(&d16.cpu, "all", d16.rate),
        rmq = us(&d16.cpu, "rabbitmq", d16.rate),
        rmq_lim = us(&l.consume_cpu, "rabbitmq", l.consume16),
        pg = us(&d16.cpu, "postgres", d16.rate),
        api = us(&d16.cpu, "api", d16.rate),
        worker = us(&d16.cpu, "worker", d16.rate),
        rest = us(&d16.cpu, "rest", d16.rate),
        share = DRAIN_MIN_SHARE * 100.0,
        target = drain_target,
        budget = budget(drain_target),
        rate = d16.rate,
        slot = if d16.rate > 0.0 { 16e3 / d16.rate } else { 0.0 },
        deeper = l.consume32,
        deep_share = crate::targets::ratio(d16.rate, l.consume32).unwrap_or(0.0) * 100.0,
    );
    let _ = writeln!(
        out,
        "- **Telemetry** fully on costs the api {on_us:.0} µs of its own CPU per job against {off_us:.0}\n  \
         off ({diff:+.0} µs); on a CPU-bound machine that difference is what it can cost in throughput.\n\
         - **Memory**: the api peaked (VmHWM) at {hwm_off:.1} MiB with telemetry off and {hwm_on:.1} MiB on,\n  \
         with {c} requests in flight; the worker at {hwm_w:.1} MiB at concurrency 16.",
        on_us = r.on.api_us,
        off_us = off.api_us,
        diff = r.on.api_us - off.api_us,
        hwm_off = off.rss.hwm as f64 / 1024.0,
        hwm_on = r.on.rss.hwm as f64 / 1024.0,
        c = r.plan.concurrency,
        hwm_w = d16.rss.hwm as f64 / 1024.0,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{CpuSplit, LoadRun};

    #[test]
    fn budgets_follow_the_targets_and_the_cores() {
        let mut r = Results::default();
        r.machine.cores = 2;
        r.limits.pg_tps = 10_000.0;
        r.limits.consume16 = 10_000.0;
        r.off.run = LoadRun {
            rate: 2000.0,
            ..LoadRun::default()
        };
        r.off.cpu = CpuSplit {
            seconds: 15.0,
            all: 2.0,
            parts: vec![("api".into(), 0.5)],
        };
        let text = text(&r);
        // 60 % of 10 000/s on 2 cores: 333 µs per job; the loop spends 1000, the api 250.
        assert!(
            text.contains("(6000 jobs/s) on 2 cores leaves 333 µs per job"),
            "{text}"
        );
        assert!(
            text.contains("1000 µs of\n  machine CPU per accepted job: PostgreSQL 0, api 250"),
            "{text}"
        );
        // 50 % of 10 000/s: 400 µs per job.
        assert!(
            text.contains("(5000 jobs/s) on 2 cores leaves 400 µs per job"),
            "{text}"
        );
    }
}
