//! The three tables: every figure with its limit and ratio, the targets, the CPU split.

use std::fmt::Write as _;

use super::markdown::{Table, figures, fixed, list, list_ms, mib, pg_work};
use crate::results::{BrokerOps, Drain, Enqueue, LoadRun, Results, median};
use crate::targets::{self, ratio};

/// Every figure, its limit and the ratio ours ÷ limit.
pub(super) fn results_table(r: &Results) -> String {
    let (l, c) = (&r.limits, r.plan.concurrency);
    let empty = String::new;
    let mut t = Table::new(["measurement", "jobstack", "machine limit", "ratio"]);
    t.row([
        format!(
            "durable enqueue, closed loop {c} in flight, telemetry off (best of {})",
            list(&r.off.rates)
        ),
        load(&r.off.run),
        format!(
            "PostgreSQL single-row inserts {:.0} tx/s (AMQP confirmed publish {:.0}/s)",
            l.pg_tps, l.publish
        ),
        fixed(ratio(r.off.run.rate, l.pg_tps), 2),
    ]);
    t.row([
        format!(
            "durable enqueue, open loop at half the peak, {:.0}/s offered (p99 of each round: {})",
            r.half.target,
            list_ms(&r.half.p99s)
        ),
        load(&r.half.run),
        empty(),
        empty(),
    ]);
    t.row([
        format!(
            "durable enqueue, telemetry on: OTLP 100 %, JSON logs at info (best of {})",
            list(&r.on.rates)
        ),
        load(&r.on.run),
        format!("telemetry off: {:.0}/s", r.off.run.rate),
        fixed(ratio(r.on.run.rate, r.off.run.rate), 3),
    ]);
    t.row([
        format!(
            "durable enqueue, telemetry on without exemplars, METRICS_EXEMPLARS=false (best of {})",
            list(&r.on_no_exemplars.rates)
        ),
        load(&r.on_no_exemplars.run),
        format!("with exemplars: {:.0}/s", r.on.run.rate),
        fixed(ratio(r.on.run.rate, r.on_no_exemplars.run.rate), 3),
    ]);
    t.row([
        format!("durable enqueue, telemetry off, DB_MAX_CONNECTIONS={c} (default 10)"),
        load(&r.pool.run),
        format!("{:.0} tx/s (pgbench -c 10: {:.0})", l.pg_tps, l.pg_tps_pool),
        fixed(ratio(r.pool.run.rate, l.pg_tps), 2),
    ]);
    let api_change = ratio(r.on.api_us, r.off.api_us)
        .map_or("?".into(), |x| format!("{:+.0} %", (x - 1.0) * 100.0));
    t.row([
        "api CPU per accepted job (utime + stime ÷ 202s)".into(),
        format!(
            "off {:.0} µs, on {:.0} µs ({api_change}), on without exemplars {:.0} µs, pool {:.0} µs",
            r.off.api_us, r.on.api_us, r.on_no_exemplars.api_us, r.pool.api_us
        ),
        empty(),
        empty(),
    ]);
    let machine_us = |e: &Enqueue| e.cpu.per_job_us("all", e.run.rate);
    let machine_change =
        targets::telemetry_cpu_change_pct(r).map_or("?".into(), |x| format!("{x:+.1} %"));
    t.row([
        "machine CPU per accepted job (all cores ÷ jobs/s)".into(),
        format!(
            "off {:.0} µs, on {:.0} µs ({machine_change})",
            machine_us(&r.off),
            machine_us(&r.on)
        ),
        format!(
            "pgbench: {:.0} µs per insert",
            l.pg_cpu.per_job_us("all", l.pg_tps)
        ),
        empty(),
    ]);
    t.row([
        "relay catch-up after the closed loop (every accepted job published)".into(),
        format!(
            "off {:.1}s, on {:.1}s, pool {:.1}s",
            r.off.relay_catch_up_s, r.on.relay_catch_up_s, r.pool.relay_catch_up_s
        ),
        empty(),
        empty(),
    ]);
    t.row([
        "AMQP confirmed publishes per accepted job (the api's relay)".into(),
        format!(
            "off {:.2}, on {:.2}, pool {:.2}",
            r.off.publishes_per_job, r.on.publishes_per_job, r.pool.publishes_per_job
        ),
        empty(),
        empty(),
    ]);
    t.row([
        "PostgreSQL per accepted job, closed loop, telemetry off".into(),
        pg_work(&r.off.pg),
        "pgbench: 1 transaction, 1 insert".into(),
        empty(),
    ]);
    t.row([
        "PostgreSQL per accepted job, open loop at half the peak".into(),
        pg_work(&r.half.pg),
        empty(),
        empty(),
    ]);
    let drains = [
        (&r.drain16, l.consume16, l.consume32),
        (&r.drain1, l.consume1, l.consume2),
    ];
    for (d, limit, deeper) in drains {
        t.row([
            format!(
                "worker drain, {} no-op jobs, WORKER_CONCURRENCY {} (best of {})",
                r.plan.drain_jobs,
                d.concurrency,
                list(&d.rates)
            ),
            drained(d),
            format!(
                "consume+ack {limit:.0}/s at prefetch {} ({deeper:.0}/s at {})",
                d.concurrency,
                2 * d.concurrency
            ),
            fixed(ratio(d.rate, limit), 2),
        ]);
    }
    t.row([
        "broker operations per drained job (the services' own counters)".into(),
        format!(
            "at 16: {}; at 1: {}",
            broker(&r.drain16.broker),
            broker(&r.drain1.broker)
        ),
        format!("one confirmed publish at a time: {:.0}/s", l.publish_one),
        empty(),
    ]);
    t.row([
        "PostgreSQL per drained job (the api applying events), at 16".into(),
        pg_work(&r.drain16.pg),
        empty(),
        empty(),
    ]);
    for (what, e) in [("off", &r.off), ("on", &r.on)] {
        t.row([
            format!("api RSS idle / under load (max VmRSS) / VmHWM, telemetry {what}, worst round"),
            format!(
                "{} / {} / {} MiB",
                mib(e.rss.idle),
                mib(e.rss.load),
                mib(e.rss.hwm)
            ),
            empty(),
            empty(),
        ]);
    }
    t.row([
        "worker RSS idle / under load at 1 / at 16 (max VmRSS), VmHWM at 16, worst round".into(),
        format!(
            "{} / {} / {} / {} MiB",
            mib(r.drain16.rss.idle),
            mib(r.drain1.rss.load),
            mib(r.drain16.rss.load),
            mib(r.drain16.rss.hwm)
        ),
        empty(),
        empty(),
    ]);
    let storm = &r.storm;
    t.row([
        format!(
            "accept → succeeded of {}/s no-op jobs over {}s, alone / with {} jobs failing at once",
            storm.rate, storm.seconds, storm.failing
        ),
        format!(
            "p50/p99 {:.1} / {:.1} ms alone; {:.1} / {:.1} ms in the storm ({} retries)",
            storm.baseline.p50_ms,
            storm.baseline.p99_ms,
            storm.storm.p50_ms,
            storm.storm.p99_ms,
            storm.retries
        ),
        empty(),
        empty(),
    ]);
    let f = &r.fanin;
    t.row([
        format!(
            "workflow fan-in: {} no-op children, then one job after all of them ({} rounds)",
            f.children,
            f.gaps_ms.len()
        ),
        format!(
            "last child → parent start {} ms (median {:.1}); whole workflow {} s; POST /workflows {} ms",
            figures(&f.gaps_ms, 1),
            median(&f.gaps_ms),
            figures(&f.totals_s, 2),
            figures(&f.submit_ms, 0)
        ),
        empty(),
        empty(),
    ]);
    let l = &r.lateness;
    t.row([
        format!(
            "schedule lateness: {} schedules every 1 s, {}s alone / {}s under {:.0}/s of submits offered",
            l.schedules, l.seconds, l.seconds, l.offered
        ),
        format!(
            "p50/p99/max {:.1} / {:.1} / {:.1} ms alone ({} of {} fires); {:.1} / {:.1} / {:.1} ms under load ({} of {} fires, {:.0}/s accepted)",
            l.idle.p50_ms,
            l.idle.p99_ms,
            l.idle.max_ms,
            l.idle.fires,
            l.idle.expected,
            l.loaded.p50_ms,
            l.loaded.p99_ms,
            l.loaded.max_ms,
            l.loaded.fires,
            l.loaded.expected,
            l.loaded.accepted_rate
        ),
        empty(),
        empty(),
    ]);
    let pr = &r.priority;
    t.row([
        format!(
            "priorities when work waits: {} jobs at priority 0 ({} ms each) behind a concurrency limit of {}, then {} at priority 9",
            pr.low, pr.job_ms, pr.slots, pr.high
        ),
        format!(
            "accept → start p50/p99: priority 9 {:.0} / {:.0} ms; priority 0 {:.0} / {:.0} ms (longest {:.0} ms)",
            pr.high_p50_ms, pr.high_p99_ms, pr.low_p50_ms, pr.low_p99_ms, pr.low_max_ms
        ),
        empty(),
        empty(),
    ]);
    let q = &r.quota;
    t.row([
        format!(
            "per-client quotas: client B at {}/s, alone and beside client A offering {}/s against a quota of {}/s ({}s each)",
            q.steady, q.flood, q.quota, q.seconds
        ),
        format!(
            "B accept p50/p99 {:.2} / {:.2} ms alone, {:.2} / {:.2} ms beside the flood; A accepted {:.0}/s, {} refused with 429; without a quota B's p99 beside the same flood is {:.2} ms",
            q.alone_p50_ms, q.alone_p99_ms, q.beside_p50_ms, q.beside_p99_ms, q.flood_accepted_rate, q.flood_refused, q.unlimited_p99_ms
        ),
        empty(),
        empty(),
    ]);
    let flow = &r.flow;
    if let Some(base) = flow.runs.first() {
        for (run, (_, cost)) in flow.runs.iter().skip(1).zip(flow.costs()) {
            t.row([
                format!(
                    "flow control, no limit hit: {} (closed loop 64, api + worker, {}s, best of {})",
                    run.label, flow.seconds, flow.rounds
                ),
                format!(
                    "{:.0} finished/s end to end ({cost:+.1} % cost), {:.0} accepted/s, accept p99 {:.1} ms",
                    run.finished, run.accepted, run.p99_ms
                ),
                format!("unlimited: {:.0} finished/s, {:.0} accepted/s", base.finished, base.accepted),
                fixed(ratio(run.finished, base.finished), 2),
            ]);
        }
    }
    t.render()
}

/// Each target, what was measured, met or not.
pub(super) fn targets_table(r: &Results) -> String {
    let mut t = Table::new(["target", "measured", ""]);
    for target in targets::targets(r) {
        t.row([target.goal, target.measured, target.verdict.to_string()]);
    }
    t.render()
}

/// The CPU split of each step.
pub(super) fn cpu_table(r: &Results) -> String {
    let (l, c) = (&r.limits, r.plan.concurrency);
    let head = format!("CPU used, in cores (of {})", r.machine.cores);
    let mut t = Table::new(["step", head.as_str()]);
    let steps = [
        (format!("limit: pgbench -c {c}"), &l.pg_cpu),
        (
            format!("limit: amqp-bench publish, window {c}"),
            &l.publish_cpu,
        ),
        (
            "limit: amqp-bench consume, prefetch 16".into(),
            &l.consume_cpu,
        ),
        ("closed loop, telemetry off".into(), &r.off.cpu),
        ("closed loop, telemetry on".into(), &r.on.cpu),
        (format!("closed loop, DB_MAX_CONNECTIONS={c}"), &r.pool.cpu),
        ("worker drain at 1".into(), &r.drain1.cpu),
        ("worker drain at 16".into(), &r.drain16.cpu),
    ];
    for (step, split) in steps {
        t.row([step, split.to_string()]);
    }
    t.render()
}

fn load(run: &LoadRun) -> String {
    format!(
        "{:.0} jobs/s, p50/p99 {:.2} / {:.2} ms, {} not accepted",
        run.rate, run.p50_ms, run.p99_ms, run.failed
    )
}

fn drained(d: &Drain) -> String {
    let mut s = format!(
        "{:.0} jobs/s (worker done after {:.2}s; every row succeeded after {:.2}s)",
        d.rate, d.worker_s, d.rows_s
    );
    if d.unfinished > 0 {
        let _ = write!(
            s,
            "; {} rows not succeeded when the wait gave up",
            d.unfinished
        );
    }
    s
}

fn broker(b: &BrokerOps) -> String {
    format!(
        "{:.2} jobs-queue deliveries, {:.2} confirmed publishes (mean confirm {:.2} ms), {:.2} events consumed by the api",
        b.deliveries, b.confirm_waits, b.mean_confirm_ms, b.events
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture::results;

    #[test]
    fn the_results_table_shows_each_figure_with_its_limit_and_ratio() {
        let table = results_table(&results());
        assert!(table.starts_with(
            "| measurement | jobstack | machine limit | ratio |\n| --- | --- | --- | --- |\n"
        ));
        assert!(table.contains(
            "| durable enqueue, closed loop 64 in flight, telemetry off (best of 3900, 4000, 3950) \
             | 4000 jobs/s, p50/p99 9.00 / 30.00 ms, 0 not accepted \
             | PostgreSQL single-row inserts 8000 tx/s (AMQP confirmed publish 0/s) | 0.50 |"
        ));
        assert!(table.contains("(p99 of each round: 7.00, 6.50)"));
        assert!(table.contains("| 0.12 transactions; jobs: 1.00 insert, 1.00 update (1.00 HOT) |"));
        assert!(table.contains("consume+ack 10000/s at prefetch 16 (0/s at 32) | 0.41 |"));
        assert!(table.contains("| 8.0 / 0.0 / 10.0 / 11.0 MiB |"));
    }

    #[test]
    fn the_cpu_table_names_every_step() {
        let table = cpu_table(&results());
        assert!(table.contains("| step | CPU used, in cores (of 2) |"));
        assert!(table.contains(
            "| closed loop, telemetry off | all 1.90 postgres 0.80 api 0.60 rest 0.50 |"
        ));
        assert_eq!(table.lines().count(), 10);
    }
}
