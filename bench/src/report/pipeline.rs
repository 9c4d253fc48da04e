//! The end-to-end section: each offered rate, the knee, the soak's slopes, and the charts.

use std::fmt::Write as _;

use super::markdown::Table;
use crate::pipeline::{ACCEPT_P99_MS, KEEPS_UP};
use crate::results::Pipeline;

/// The chart files, written beside the report (their names are what the report embeds).
pub const LATENCY_CHART: &str = "bench-e2e-latency.svg";
/// The soak's chart.
pub const SOAK_CHART: &str = "bench-e2e-soak.svg";
/// The long jobs' RSS chart.
pub const LONG_CHART: &str = "bench-long-jobs-rss.svg";

pub(super) fn text(p: &Pipeline) -> String {
    let mut out = String::new();
    if p.steps.is_empty() {
        return "Not measured in this run.\n".into();
    }
    let _ = writeln!(
        out,
        "The api and one worker (concurrency {}) together, fed by loadgen in an open loop at each \
         offered rate for {}s, each rate on a fresh api, worker and database. accept → succeeded \
         is `finished_at - created_at` as PostgreSQL recorded it, for the step's jobs that \
         finished within it; the queues (messages ready: the worker's jobs, the api's events) and \
         the outbox are their depths at the step's end.\n",
        p.concurrency, p.seconds
    );
    let mut t = Table::new([
        "offered/s",
        "accepted/s",
        "finished/s",
        "accept p50 / p99 ms",
        "accept → succeeded p50 / p99 ms",
        "unfinished at the end",
        "jobs queue ready",
        "events queue ready",
        "outbox",
    ]);
    for s in &p.steps {
        t.row([
            format!("{:.0}", s.offered),
            format!(
                "{:.0}{}",
                s.accepted,
                if s.failed > 0 {
                    format!(" ({} refused)", s.failed)
                } else {
                    String::new()
                }
            ),
            format!("{:.0}", s.finished),
            format!("{:.1} / {:.1}", s.accept_p50_ms, s.accept_p99_ms),
            format!("{:.0} / {:.0}", s.e2e_p50_ms, s.e2e_p99_ms),
            s.unfinished.to_string(),
            s.queue_ready.to_string(),
            s.events_ready.to_string(),
            s.outbox.to_string(),
        ]);
    }
    out.push_str(&t.render());
    let _ = writeln!(
        out,
        "\nThe knee (the highest offered rate whose jobs reached `succeeded` at ≥ {:.0} % of the \
         accepted rate, with nothing refused and accept p99 ≤ {ACCEPT_P99_MS:.0} ms): **{}**.\n",
        KEEPS_UP * 100.0,
        p.knee
            .map_or("none of the steps".into(), |k| format!("{k:.0} jobs/s"))
    );
    let _ = writeln!(
        out,
        "The api's RSS after the last step: {:.1} MiB (what its overload left it holding).\n",
        p.api_rss_after_steps_kib as f64 / 1024.0
    );
    if !p.telemetry_off.is_empty() {
        let list = |xs: &[f64]| {
            xs.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "Closed loop ({} in flight, as the flow-control figures) through api and worker, \
             finished/s per round: telemetry off {}; full telemetry on both services (every span \
             exported over OTLP to a local sink, JSON logs at info) {}.\n",
            crate::flowcost::IN_FLIGHT,
            list(&p.telemetry_off),
            list(&p.telemetry_on)
        );
    }
    let _ = writeln!(out, "![latency against offered rate]({LATENCY_CHART})\n");
    if !p.soak.is_empty() {
        let s = p.soak_slopes();
        let last = p.soak.last().expect("not empty");
        let _ = writeln!(
            out,
            "Soak, on a fresh api, worker and database: {:.0}/s offered for {}s, sampled every \
             10 s. Least-squares slope per minute: \
             queue ready {:+.1}, outbox {:+.1}, api RSS {:+.2} MiB, worker RSS {:+.2} MiB; at the \
             end: queue {}, outbox {}, api RSS {:.1} MiB, worker RSS {:.1} MiB.\n",
            p.soak_rate,
            p.soak_seconds,
            s[0],
            s[1],
            s[2],
            s[3],
            last.queue_ready,
            last.outbox,
            last.api_rss_kib as f64 / 1024.0,
            last.worker_rss_kib as f64 / 1024.0,
        );
        let _ = writeln!(out, "![the soak over time]({SOAK_CHART})\n");
    }
    out
}

/// The long-jobs section.
pub(super) fn long_jobs(l: &crate::results::LongJobs) -> String {
    if l.jobs == 0 {
        return "Not measured in this run.\n".into();
    }
    let mib = |k: u64| k as f64 / 1024.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} `sleep` jobs of {:.0} s in {} steps (a timer and a progress event every {:.0} s) on one \
         worker with {} slots (`WORKER_CONCURRENCY`). Submitted in {:.1} s; all running {:.1} s \
         later. Worker RSS {:.1} MiB idle, {:.1} MiB at most with all of them in flight ({:.1} KiB \
         per job). The api applied {:.0} job events/s (progress, checkpoints) meanwhile, and accepted {:.0} no-op submits/s \
         beside them at p50/p99 {:.1} / {:.1} ms ({} not accepted). {} cancels while all ran: \
         cancel sent → `cancelled` recorded p50/p99 {:.0} / {:.0} ms. SIGTERM with all in \
         flight: {}. PostgreSQL updated job rows {} times over the run ({:.1} per job), {:.0} % \
         of them heap-only (HOT: no index touched).\n",
        l.jobs,
        l.job_seconds,
        l.steps,
        l.job_seconds / f64::from(l.steps.max(1)),
        l.jobs,
        l.submit_s,
        l.all_running_s,
        mib(l.idle_kib),
        mib(l.peak_kib),
        (l.peak_kib.saturating_sub(l.idle_kib)) as f64 / f64::from(l.jobs),
        l.events_per_s,
        l.probe.rate,
        l.probe.p50_ms,
        l.probe.p99_ms,
        l.probe.failed,
        l.cancels,
        l.cancel_p50_ms,
        l.cancel_p99_ms,
        l.shutdown(),
        l.job_updates,
        l.job_updates as f64 / f64::from(l.jobs),
        100.0 * l.hot_share().unwrap_or(0.0),
    );
    let _ = writeln!(out, "![worker RSS over the long-jobs run]({LONG_CHART})\n");
    out
}
