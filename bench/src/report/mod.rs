//! BENCHMARKS.md and the printed summary, rendered from [`Results`] alone (pure, so it is
//! tested without running anything).
//!
//! - [`tables`]: results, targets and CPU split; [`bounds`]: what bounds each result;
//!   [`method`]: how it was measured; [`markdown`]: tables and number formats.

mod bounds;
pub mod charts;
mod markdown;
mod method;
pub mod pipeline;
mod tables;

use std::fmt::Write as _;

use crate::results::Results;
use tables::{cpu_table, results_table, targets_table};

/// The whole of BENCHMARKS.md.
pub fn document(r: &Results, written_at: &str) -> String {
    let m = &r.machine;
    let mut out = String::new();
    let _ = write!(
        out,
        "# jobstack benchmarks\n\n\
         Written by `make bench` (the `bench` crate) on {written_at}. Every number below was\n\
         measured in that one run, on this machine; the limits are the same machine's PostgreSQL and\n\
         RabbitMQ doing the same durable work with nothing of ours in the way.\n\n\
         ## Machine\n\n\
         | | |\n| --- | --- |\n\
         | CPU | {cpu}, {cores} cores |\n\
         | memory | {mem:.1} GiB |\n\
         | kernel | {kernel} |\n\
         | rustc | {rustc} |\n\
         | RabbitMQ | {rabbit} (local, 127.0.0.1:5672) |\n\
         | PostgreSQL | {pg} (local, 127.0.0.1:5432; {pgs}) |\n\n\
         Everything (api, worker, loadgen, PostgreSQL, RabbitMQ, the OTLP sink, the bench itself)\n\
         shares these cores, so each step's CPU split is given below too. The machine was {idle:.0} %\n\
         idle when the run started.\n\n",
        cpu = m.cpu_model,
        cores = m.cores,
        mem = m.memory_gib,
        kernel = m.kernel,
        rustc = m.rustc,
        rabbit = m.rabbitmq,
        pg = m.postgres,
        pgs = m.pg_settings,
        idle = m.idle_at_start,
    );
    let _ = write!(
        out,
        "## Results\n\n{}\n## End to end\n\n{}\n## Long jobs at scale\n\n{}\n## Targets\n\n{}\n## Where the CPU went\n\n{}\n",
        results_table(r),
        pipeline::text(&r.pipeline),
        pipeline::long_jobs(&r.long_jobs),
        targets_table(r),
        cpu_table(r)
    );
    out.push_str(
        "\"all\" is the whole machine (busy time of /proc/stat); postgres is every PostgreSQL process\n\
         (its backends included, also those that ended during the step); rabbitmq is beam.smp; the\n\
         services, the client (pgbench, amqp-bench or loadgen) and the bench are their own\n\
         utime + stime; \"rest\" is everything not named: the kernel's loopback TCP and softirqs, and\n\
         anything else running on the machine.\n",
    );
    if r.noisy.is_empty() {
        let _ = writeln!(
            out,
            "Every measured step started on a quiet machine (at least {:.0} % idle).",
            r.plan.quiet_pct
        );
    } else {
        let _ = writeln!(
            out,
            "Steps that started on a busy machine (below {:.0} % idle after the wait; noisier numbers): {}.",
            r.plan.quiet_pct,
            r.noisy.join(", ")
        );
    }
    let _ = write!(
        out,
        "\n## What bounds the results\n\n{}\n## How it was measured\n\n{}",
        bounds::text(r),
        method::text(r)
    );
    out
}

/// What `make bench` prints: the three tables.
pub fn console(r: &Results) -> String {
    format!(
        "{}\n{}\n{}",
        results_table(r),
        targets_table(r),
        cpu_table(r)
    )
}

/// A run's results with every figure the tables read, for the tests.
#[cfg(test)]
pub(crate) mod fixture {
    use crate::results::{CpuSplit, LoadRun, PgWork, Results, Rss, TableWork};

    /// A plausible run.
    pub(crate) fn results() -> Results {
        let mut r = Results::default();
        r.machine.cores = 2;
        r.plan.concurrency = 64;
        r.plan.drain_jobs = 5000;
        r.plan.rounds = 3;
        r.limits.pg_tps = 8000.0;
        r.limits.consume16 = 10_000.0;
        r.limits.consume1 = 900.0;
        r.off.run = LoadRun {
            rate: 4000.0,
            p50_ms: 9.0,
            p99_ms: 30.0,
            failed: 0,
        };
        r.off.rates = vec![3900.0, 4000.0, 3950.0];
        r.off.cpu = CpuSplit {
            seconds: 15.0,
            all: 1.9,
            parts: vec![("postgres".into(), 0.8), ("api".into(), 0.6)],
        };
        r.off.pg = PgWork {
            xacts: 0.12,
            tables: vec![
                TableWork {
                    table: "_sqlx_migrations".into(),
                    inserts: 0.0001,
                    ..TableWork::default()
                },
                TableWork {
                    table: "jobs".into(),
                    inserts: 1.0,
                    updates: 1.0,
                    hot: 1.0,
                    deletes: 0.0,
                },
            ],
        };
        r.on.run = LoadRun {
            rate: 3800.0,
            ..LoadRun::default()
        };
        r.half.run = LoadRun {
            rate: 2000.0,
            p50_ms: 2.0,
            p99_ms: 6.5,
            failed: 0,
        };
        r.half.p99s = vec![7.0, 6.5];
        r.drain16.concurrency = 16;
        r.drain16.rate = 4100.0;
        r.drain16.rss = Rss {
            idle: 8 * 1024,
            load: 10 * 1024,
            hwm: 11 * 1024,
        };
        r.drain1.concurrency = 1;
        r.drain1.rate = 300.0;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fixture::results;

    #[test]
    fn the_document_has_every_section_and_each_verdict() {
        let doc = document(&results(), "2026-01-01 00:00 UTC");
        for heading in [
            "# jobstack benchmarks",
            "## Machine",
            "## Results",
            "## Targets",
            "## Where the CPU went",
            "## What bounds the results",
            "## How it was measured",
        ] {
            assert!(doc.contains(heading), "{heading} missing");
        }
        assert!(doc.contains(
            "| durable enqueue ≥ 60 % of PostgreSQL's single-row insert limit | 50 % (4000 of 8000/s) | MISSED |"
        ));
        assert!(doc.contains("| p99 ≤ 20 ms at half the peak rate | 6.5 ms at 2000/s | met |"));
        assert!(doc.contains("Every measured step started on a quiet machine"));
        assert!(doc.ends_with("never asserted.\n"));
    }

    #[test]
    fn noisy_steps_are_named() {
        let mut r = results();
        r.noisy = vec!["drain 16 round 2 (70 % idle)".into()];
        assert!(document(&r, "now").contains("noisier numbers): drain 16 round 2 (70 % idle)."));
    }
}
