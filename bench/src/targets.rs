//! The targets, and how each measured figure compares with its target. Reported, never
//! asserted: a missed target is a finding, not a failure of the run.

use std::fmt;

use crate::results::Results;

/// Durable enqueue, as a share of PostgreSQL's single-row insert limit.
pub const ENQUEUE_MIN_SHARE: f64 = 0.60;
/// p99 at half the peak rate, ms.
pub const HALF_RATE_P99_MAX_MS: f64 = 20.0;
/// Worker drain at concurrency 16, as a share of raw consume + ack at prefetch 16.
pub const DRAIN_MIN_SHARE: f64 = 0.50;
/// Share of the job-row updates that workers' events make which are heap-only (HOT).
pub const HOT_MIN_SHARE: f64 = 0.90;
/// Throughput full telemetry may cost, percent.
pub const TELEMETRY_MAX_COST_PCT: f64 = 10.0;
/// Throughput exemplars may cost, percent (telemetry on, with vs without them).
pub const EXEMPLARS_MAX_COST_PCT: f64 = 3.0;
/// api VmRSS under load, MiB.
pub const API_RSS_MAX_MIB: f64 = 30.0;
/// worker VmRSS under load, MiB.
pub const WORKER_RSS_MAX_MIB: f64 = 20.0;
/// What a retry storm may add to the other jobs' accept→succeeded p99, ms.
pub const STORM_P99_ADDED_MAX_MS: f64 = 50.0;

/// A fan-in's last child to its parent's start (median of the rounds), ms: the parent is made
/// due by the transaction that records the last success, so only the relay and the broker are
/// in between, never a poll.
pub const FANIN_GAP_MAX_MS: f64 = 100.0;
/// Schedule fire lateness p99 under load, ms: a tenth of the shortest period measured (1 s).
pub const SCHEDULE_LATE_P99_MAX_MS: f64 = 100.0;

/// What a flow-control mechanism may cost end to end when no limit is hit, percent.
pub const FLOW_COST_MAX_PCT: f64 = 10.0;

/// How much a neighbour's flood (ten times its quota) may raise a client's accept p99: by at most
/// this factor over its p99 alone (the flood's refusals share the api's cores: 2 on the
/// reference machine).
pub const QUOTA_NEIGHBOUR_P99_MAX_RATIO: f64 = 1.5;

/// The end-to-end knee (api and worker together), jobs/s.
pub const KNEE_MIN: f64 = 3000.0;
/// How much a soak's queue depth, outbox depth or RSS may grow per minute and still be flat:
/// queue and outbox in messages or rows, RSS in MiB. Shrinking is never a leak.
pub const SOAK_FLAT_PER_MIN: [f64; 4] = [50.0, 50.0, 1.0, 1.0];

/// One worker's VmRSS with BENCH_LONG_JOBS long jobs in flight, MiB.
pub const LONG_RSS_MAX_MIB: f64 = 200.0;
/// Cancel sent → job stopped, p99, while every long job runs, ms.
pub const LONG_CANCEL_P99_MAX_MS: f64 = 1000.0;

/// How a figure compares with its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Within the target.
    Met,
    /// Outside it.
    Missed,
    /// The run cannot tell (why).
    Inconclusive(&'static str),
}

impl Verdict {
    fn of(ok: bool) -> Self {
        if ok { Self::Met } else { Self::Missed }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Met => f.write_str("met"),
            Self::Missed => f.write_str("MISSED"),
            Self::Inconclusive(why) => write!(f, "inconclusive: {why}"),
        }
    }
}

/// One target and what the run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The target, in words.
    pub goal: String,
    /// The figure, in words.
    pub measured: String,
    /// How they compare.
    pub verdict: Verdict,
}

/// `a / b`, or `None` when there is no `b` to compare with.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

/// Percent throughput lost with telemetry on.
pub fn telemetry_cost_pct(on: f64, off: f64) -> Option<f64> {
    ratio(on, off).map(|r| (1.0 - r) * 100.0)
}

/// What exemplars cost, as a share of throughput: the api CPU they add per accepted job over the
/// machine's CPU per job without them (at saturation, throughput goes as 1 / machine CPU per job).
/// CPU per job, not the rates: rounds here swing by more than the cost being measured.
pub fn exemplar_cost_pct(r: &Results) -> Option<f64> {
    let (with, without) = (&r.on, &r.on_no_exemplars);
    let machine = without.cpu.per_job_us("all", without.run.rate);
    (with.api_us > 0.0 && without.api_us > 0.0 && machine > 0.0)
        .then(|| (with.api_us - without.api_us) / machine * 100.0)
}

/// Percent change of machine CPU per job with telemetry on.
pub fn telemetry_cpu_change_pct(r: &Results) -> Option<f64> {
    let per_job = |e: &crate::results::Enqueue| e.cpu.per_job_us("all", e.run.rate);
    ratio(per_job(&r.on), per_job(&r.off)).map(|x| (x - 1.0) * 100.0)
}

fn share_target(goal: String, ours: f64, limit: f64, min: f64, unit: &str) -> Target {
    match ratio(ours, limit) {
        Some(share) => Target {
            goal,
            measured: format!("{:.0} % ({ours:.0} of {limit:.0}{unit})", share * 100.0),
            verdict: Verdict::of(share >= min),
        },
        None => Target {
            goal,
            measured: format!("{ours:.0}{unit}, no limit measured"),
            verdict: Verdict::Inconclusive("no limit measured"),
        },
    }
}

/// The largest VmRSS under load, in MiB.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Every target, in the order.
pub fn targets(r: &Results) -> Vec<Target> {
    let half = &r.half.run;
    let cost = telemetry_cost_pct(r.on.run.rate, r.off.run.rate);
    let ex_cost = exemplar_cost_pct(r);
    let cpu_change = telemetry_cpu_change_pct(r).map_or("?".into(), |c| format!("{c:+.1} %"));
    let api_rss = mib(r.off.rss.load.max(r.on.rss.load));
    let worker_rss = mib(r.drain1.rss.load.max(r.drain16.rss.load));
    vec![
        share_target(
            format!(
                "durable enqueue ≥ {:.0} % of PostgreSQL's single-row insert limit",
                ENQUEUE_MIN_SHARE * 100.0
            ),
            r.off.run.rate,
            r.limits.pg_tps,
            ENQUEUE_MIN_SHARE,
            "/s",
        ),
        Target {
            goal: format!("p99 ≤ {HALF_RATE_P99_MAX_MS:.0} ms at half the peak rate"),
            measured: format!("{:.1} ms at {:.0}/s", half.p99_ms, half.rate),
            verdict: if half.rate > 0.0 {
                Verdict::of(half.p99_ms <= HALF_RATE_P99_MAX_MS)
            } else {
                Verdict::Inconclusive("no open-loop round")
            },
        },
        share_target(
            format!(
                "worker drain ≥ {:.0} % of raw consume+ack at concurrency 16",
                DRAIN_MIN_SHARE * 100.0
            ),
            r.drain16.rate,
            r.limits.consume16,
            DRAIN_MIN_SHARE,
            "/s",
        ),
        Target {
            goal: format!("full telemetry costs ≤ {TELEMETRY_MAX_COST_PCT:.0} % of throughput"),
            measured: match cost {
                Some(c) => format!(
                    "{c:.1} % ({:.0} vs {:.0}/s; machine CPU per job {cpu_change})",
                    r.on.run.rate, r.off.run.rate
                ),
                None => "no telemetry-off figure".into(),
            },
            verdict: match cost {
                None => Verdict::Inconclusive("no telemetry-off figure"),
                Some(c) if c < 0.0 => {
                    Verdict::Inconclusive("on ran faster than off, the noise exceeds the cost")
                }
                Some(c) => Verdict::of(c <= TELEMETRY_MAX_COST_PCT),
            },
        },
        Target {
            goal: format!("api RSS ≤ {API_RSS_MAX_MIB:.0} MiB under load"),
            measured: format!("{api_rss:.1} MiB"),
            verdict: Verdict::of(api_rss <= API_RSS_MAX_MIB),
        },
        Target {
            goal: format!("worker RSS ≤ {WORKER_RSS_MAX_MIB:.0} MiB under load"),
            measured: format!("{worker_rss:.1} MiB"),
            verdict: Verdict::of(worker_rss <= WORKER_RSS_MAX_MIB),
        },
        storm_target(&r.storm),
        fanin_target(&r.fanin),
        lateness_target(&r.lateness),
        flow_target(&r.flow),
        quota_target(&r.quota),
        knee_target(&r.pipeline),
        soak_target(&r.pipeline),
        e2e_telemetry_target(&r.pipeline),
        hot_target(&r.drain16, &r.long_jobs),
    ]
    .into_iter()
    .chain(long_targets(&r.long_jobs))
    .chain([Target {
            goal: format!(
                "exemplars cost ≤ {EXEMPLARS_MAX_COST_PCT:.0} % of enqueue throughput (telemetry on)"
            ),
            measured: match ex_cost {
                Some(c) => format!(
                    "{c:+.1} % (api CPU {:.0} vs {:.0} µs per job with and without, machine {:.0} µs; {:.0} vs {:.0} jobs/s)",
                    r.on.api_us,
                    r.on_no_exemplars.api_us,
                    r.on_no_exemplars
                        .cpu
                        .per_job_us("all", r.on_no_exemplars.run.rate),
                    r.on.run.rate,
                    r.on_no_exemplars.run.rate
                ),
                None => "no exemplars-off figure".into(),
            },
            verdict: match ex_cost {
                None => Verdict::Inconclusive("no exemplars-off figure"),
                Some(c) => Verdict::of(c <= EXEMPLARS_MAX_COST_PCT),
            },
        }])
    .collect()
}

/// The job-row updates of the drain at 16 (an outcome per job) and of the long-jobs run
/// (progress, checkpoints, hand-backs, outcomes) are at least [`HOT_MIN_SHARE`] heap-only.
fn hot_target(drain: &crate::results::Drain, long: &crate::results::LongJobs) -> Target {
    let drain_share = drain
        .pg
        .tables
        .iter()
        .find(|t| t.table == "jobs" && t.updates > 0.0)
        .map(|t| t.hot / t.updates);
    let long_share = long.hot_share();
    let show = |share: Option<f64>| {
        share.map_or("not measured".to_owned(), |s| format!("{:.0} %", s * 100.0))
    };
    Target {
        goal: format!(
            "≥ {:.0} % of the job-row updates workers' events make are HOT",
            HOT_MIN_SHARE * 100.0
        ),
        measured: format!(
            "drain at 16: {}; long jobs: {}",
            show(drain_share),
            show(long_share)
        ),
        verdict: match (drain_share, long_share) {
            (Some(d), Some(l)) => Verdict::of(d >= HOT_MIN_SHARE && l >= HOT_MIN_SHARE),
            _ => Verdict::Inconclusive("not measured"),
        },
    }
}

/// Long jobs: the worker's RSS, accept latency beside their progress, cancel latency, and the
/// shutdown that hands every unfinished one back with none lost and none run twice.
fn long_targets(l: &crate::results::LongJobs) -> Vec<Target> {
    let measured = l.jobs > 0;
    let judge = |ok: bool| {
        if measured {
            Verdict::of(ok)
        } else {
            Verdict::Inconclusive("not measured")
        }
    };
    let rss = mib(l.peak_kib);
    vec![
        Target {
            goal: format!(
                "{} long jobs in flight on one worker: RSS ≤ {LONG_RSS_MAX_MIB:.0} MiB",
                l.jobs
            ),
            measured: format!("{rss:.1} MiB (idle {:.1} MiB)", mib(l.idle_kib)),
            verdict: judge(rss <= LONG_RSS_MAX_MIB),
        },
        Target {
            goal: format!(
                "accept p99 ≤ {HALF_RATE_P99_MAX_MS:.0} ms beside their progress events"
            ),
            measured: format!(
                "{:.1} ms at {:.0}/s beside {:.0} events/s",
                l.probe.p99_ms, l.probe.rate, l.events_per_s
            ),
            verdict: judge(l.probe.p99_ms <= HALF_RATE_P99_MAX_MS && l.probe.failed == 0),
        },
        Target {
            goal: format!(
                "cancel → stopped p99 ≤ {LONG_CANCEL_P99_MAX_MS:.0} ms while all run"
            ),
            measured: format!(
                "p50/p99 {:.0} / {:.0} ms over {} cancels",
                l.cancel_p50_ms, l.cancel_p99_ms, l.cancels
            ),
            verdict: judge(l.cancel_p99_ms <= LONG_CANCEL_P99_MAX_MS && l.cancels > 0),
        },
        Target {
            goal: "SIGTERM hands every unfinished job back within the grace period; none lost, none run twice to success".into(),
            measured: l.shutdown(),
            verdict: judge(
                l.exit_s <= l.grace_s
                    && l.left_running == 0
                    && l.other == 0
                    && (l.worker_successes - l.succeeded as f64).abs() < 0.5,
            ),
        },
    ]
}

/// The highest offered rate at which api and worker together keep up.
fn knee_target(p: &crate::results::Pipeline) -> Target {
    Target {
        goal: format!(
            "end-to-end knee ≥ {KNEE_MIN:.0} jobs/s (finished ≥ {:.0} % of accepted, accept p99 ≤ {:.0} ms)",
            crate::pipeline::KEEPS_UP * 100.0,
            crate::pipeline::ACCEPT_P99_MS
        ),
        measured: match p.knee {
            Some(k) => format!("{k:.0} jobs/s"),
            None if p.steps.is_empty() => "not measured".into(),
            None => "no step kept up".into(),
        },
        verdict: match p.knee {
            _ if p.steps.is_empty() => Verdict::Inconclusive("not measured"),
            Some(k) => Verdict::of(k >= KNEE_MIN),
            None => Verdict::Missed,
        },
    }
}

/// Full telemetry on both services costs at most TELEMETRY_MAX_COST_PCT of end-to-end throughput
/// (best round against best round).
fn e2e_telemetry_target(p: &crate::results::Pipeline) -> Target {
    let best = |xs: &[f64]| xs.iter().copied().fold(0.0, f64::max);
    let (off, on) = (best(&p.telemetry_off), best(&p.telemetry_on));
    let cost = telemetry_cost_pct(on, off);
    Target {
        goal: format!(
            "full telemetry (both services, OTLP 100 %, logs at info) costs ≤ {TELEMETRY_MAX_COST_PCT:.0} % of end-to-end throughput"
        ),
        measured: match cost {
            Some(c) => format!("{c:.1} % ({on:.0} vs {off:.0} finished/s, best of each)"),
            None => "not measured".into(),
        },
        verdict: match cost {
            None => Verdict::Inconclusive("not measured"),
            Some(c) if c < 0.0 => {
                Verdict::Inconclusive("on ran faster than off, the noise exceeds the cost")
            }
            Some(c) => Verdict::of(c <= TELEMETRY_MAX_COST_PCT),
        },
    }
}

/// Queue depth, outbox depth and both services' RSS stay flat over the soak.
fn soak_target(p: &crate::results::Pipeline) -> Target {
    let slopes = p.soak_slopes();
    let flat = slopes
        .iter()
        .zip(SOAK_FLAT_PER_MIN)
        .all(|(s, max)| *s <= max);
    Target {
        goal: format!(
            "soak at 70 % of the knee: queue, outbox (≤ +{:.0}/min) and RSS (≤ +{:.0} MiB/min) flat",
            SOAK_FLAT_PER_MIN[0], SOAK_FLAT_PER_MIN[2]
        ),
        measured: format!(
            "slopes per minute over {}s at {:.0}/s: queue {:+.1}, outbox {:+.1}, api RSS {:+.2} MiB, worker RSS {:+.2} MiB",
            p.soak_seconds, p.soak_rate, slopes[0], slopes[1], slopes[2], slopes[3]
        ),
        verdict: if p.soak.len() < 3 {
            Verdict::Inconclusive("fewer than three samples")
        } else {
            Verdict::of(flat)
        },
    }
}

/// Client B's accept p99 beside A's flood stays within [`QUOTA_NEIGHBOUR_P99_MAX_RATIO`] of
/// its p99 alone.
fn quota_target(q: &crate::results::Quota) -> Target {
    Target {
        goal: format!(
            "a client flooding at 10× its quota leaves another client's accept p99 within {QUOTA_NEIGHBOUR_P99_MAX_RATIO}× of its p99 alone"
        ),
        measured: format!(
            "p99 {:.2} ms beside the flood, {:.2} ms alone ({:.2}×)",
            q.beside_p99_ms,
            q.alone_p99_ms,
            q.beside_p99_ms / q.alone_p99_ms.max(f64::MIN_POSITIVE)
        ),
        verdict: if q.alone_p99_ms <= 0.0 {
            Verdict::Inconclusive("no quota run measured")
        } else {
            Verdict::of(q.beside_p99_ms <= q.alone_p99_ms * QUOTA_NEIGHBOUR_P99_MAX_RATIO)
        },
    }
}

/// Every flow-control mechanism, and an `Idempotency-Key` on every request, costs at most
/// [`FLOW_COST_MAX_PCT`] when no limit is hit.
fn flow_target(f: &crate::results::FlowCost) -> Target {
    let costs = f.costs();
    let worst = costs
        .iter()
        .map(|(_, c)| *c)
        .fold(f64::NEG_INFINITY, f64::max);
    let named: Vec<String> = costs
        .iter()
        .map(|(l, c)| format!("{l} {c:+.1} %"))
        .collect();
    Target {
        goal: format!(
            "each flow-control mechanism, and an Idempotency-Key on every request, costs ≤ {FLOW_COST_MAX_PCT:.0} % of end-to-end throughput when no limit is hit"
        ),
        measured: named.join("; "),
        verdict: if costs.is_empty() {
            Verdict::Inconclusive("no flow-control run measured")
        } else {
            Verdict::of(worst <= FLOW_COST_MAX_PCT)
        },
    }
}

/// The parent of a fan-in of 1000 starts within [`FANIN_GAP_MAX_MS`] of its last child's end.
fn fanin_target(f: &crate::results::FanIn) -> Target {
    let gap = crate::results::median(&f.gaps_ms);
    Target {
        goal: format!(
            "a fan-in of {} jobs starts its parent ≤ {FANIN_GAP_MAX_MS:.0} ms after the last child ends (median)",
            f.children + 1
        ),
        measured: format!("{gap:.1} ms"),
        verdict: if f.gaps_ms.is_empty() {
            Verdict::Inconclusive("no fan-in measured")
        } else {
            Verdict::of(gap <= FANIN_GAP_MAX_MS)
        },
    }
}

/// Every fire due under load is made, with p99 lateness ≤ [`SCHEDULE_LATE_P99_MAX_MS`].
fn lateness_target(l: &crate::results::Lateness) -> Target {
    let late = &l.loaded;
    Target {
        goal: format!(
            "under load, every schedule fire is made and p99 lateness ≤ {SCHEDULE_LATE_P99_MAX_MS:.0} ms"
        ),
        measured: format!(
            "{} of {} fires, p99 {:.1} ms at {:.0}/s accepted",
            late.fires, late.expected, late.p99_ms, late.accepted_rate
        ),
        verdict: if late.expected == 0 {
            Verdict::Inconclusive("no schedule measured")
        } else {
            Verdict::of(late.fires >= late.expected && late.p99_ms <= SCHEDULE_LATE_P99_MAX_MS)
        },
    }
}

/// A retry storm adds at most [`STORM_P99_ADDED_MAX_MS`] to the other jobs' p99.
fn storm_target(s: &crate::results::Storm) -> Target {
    let added = s.storm.p99_ms - s.baseline.p99_ms;
    Target {
        goal: format!(
            "a retry storm ({} jobs failing at once) adds ≤ {STORM_P99_ADDED_MAX_MS:.0} ms to other jobs' accept→succeeded p99",
            s.failing
        ),
        measured: format!(
            "{:.1} → {:.1} ms ({added:+.1} ms; {} retries)",
            s.baseline.p99_ms, s.storm.p99_ms, s.retries
        ),
        verdict: if s.baseline.jobs == 0 || s.storm.jobs == 0 {
            Verdict::Inconclusive("no stream jobs measured")
        } else {
            Verdict::of(added <= STORM_P99_ADDED_MAX_MS)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{CpuSplit, Drain, Enqueue, LoadRun, Rss};

    fn results() -> Results {
        let mut r = Results::default();
        r.limits.pg_tps = 8000.0;
        r.limits.consume16 = 10_000.0;
        r.off.run = LoadRun {
            rate: 4960.0,
            ..LoadRun::default()
        };
        r.on.run = LoadRun {
            rate: 4563.2,
            ..LoadRun::default()
        };
        r.half.run = LoadRun {
            rate: 2500.0,
            p99_ms: 12.5,
            ..LoadRun::default()
        };
        r.drain16 = Drain {
            rate: 3000.0,
            rss: Rss {
                load: 15 * 1024,
                ..Rss::default()
            },
            ..Drain::default()
        };
        r.off.rss.load = 31 * 1024;
        r
    }

    #[test]
    fn hot_counts_the_drain_and_the_long_jobs_both() {
        let mut drain = crate::results::Drain::default();
        drain.pg.tables.push(crate::results::TableWork {
            table: "jobs".into(),
            updates: 1.0,
            hot: 0.95,
            ..Default::default()
        });
        let mut long = crate::results::LongJobs {
            jobs: 10,
            job_updates: 100,
            job_hot_updates: 89,
            ..Default::default()
        };
        let t = hot_target(&drain, &long);
        assert_eq!(t.measured, "drain at 16: 95 %; long jobs: 89 %");
        assert_eq!(t.verdict, Verdict::Missed);
        long.job_hot_updates = 90;
        assert_eq!(hot_target(&drain, &long).verdict, Verdict::Met);
        drain.pg.tables.clear();
        assert_eq!(
            hot_target(&drain, &long).verdict,
            Verdict::Inconclusive("not measured")
        );
    }

    #[test]
    fn each_target_is_judged_on_its_own_figures() {
        let t = targets(&results());
        let verdicts: Vec<String> = t.iter().map(|t| t.verdict.to_string()).collect();
        // 62 % of the insert limit; p99 12.5 ms; 30 % of consume+ack; 8 % telemetry cost;
        // api 31 MiB; worker 15 MiB; no storm, fan-in or schedule measured.
        assert_eq!(
            verdicts,
            [
                "met",
                "met",
                "MISSED",
                "met",
                "MISSED",
                "met",
                "inconclusive: no stream jobs measured",
                "inconclusive: no fan-in measured",
                "inconclusive: no schedule measured",
                "inconclusive: no flow-control run measured",
                "inconclusive: no quota run measured",
                "inconclusive: not measured",
                "inconclusive: fewer than three samples",
                "inconclusive: not measured",
                "inconclusive: not measured",
                "inconclusive: not measured",
                "inconclusive: not measured",
                "inconclusive: not measured",
                "inconclusive: not measured",
                "inconclusive: no exemplars-off figure"
            ]
        );
        assert_eq!(t[0].measured, "62 % (4960 of 8000/s)");
        assert_eq!(t[2].measured, "30 % (3000 of 10000/s)");
        assert!(
            t[3].measured.starts_with("8.0 % (4563 vs 4960/s"),
            "{}",
            t[3].measured
        );
    }

    #[test]
    fn the_knee_and_the_soak_are_judged_on_the_pipeline() {
        use crate::results::{Pipeline, PipelineStep, SoakSample};
        let sample = |at: f64, queue: u64, api_mib: u64| SoakSample {
            at,
            queue_ready: queue,
            api_rss_kib: api_mib * 1024,
            worker_rss_kib: 12 * 1024,
            ..SoakSample::default()
        };
        let mut p = Pipeline {
            steps: vec![PipelineStep::default()],
            knee: Some(3500.0),
            soak: (0..6).map(|i| sample(f64::from(i) * 10.0, 4, 30)).collect(),
            ..Pipeline::default()
        };
        assert_eq!(knee_target(&p).verdict, Verdict::Met);
        assert_eq!(soak_target(&p).verdict, Verdict::Met);
        p.knee = Some(2500.0);
        assert_eq!(knee_target(&p).verdict, Verdict::Missed);
        p.knee = None;
        assert_eq!(knee_target(&p).verdict, Verdict::Missed);
        // The queue grows by 100 a minute: not flat.
        p.soak = (0..6)
            .map(|i| sample(f64::from(i) * 10.0, 4 + 17 * i as u64, 30))
            .collect();
        assert_eq!(soak_target(&p).verdict, Verdict::Missed);
        // The queue drains by 100 a minute: shrinking is not a leak.
        p.soak = (0..6)
            .map(|i| sample(f64::from(i) * 10.0, 90 - 17 * i as u64, 30))
            .collect();
        assert_eq!(soak_target(&p).verdict, Verdict::Met);
        // The api grows by 3 MiB a minute: not flat.
        p.soak = (0..6)
            .map(|i| sample(f64::from(i) * 10.0, 4, 30 + i as u64 / 2))
            .collect();
        assert_eq!(soak_target(&p).verdict, Verdict::Missed);
    }

    #[test]
    fn long_jobs_are_judged_on_rss_latency_cancels_and_a_clean_shutdown() {
        use crate::results::{LoadRun, LongJobs};
        let good = LongJobs {
            jobs: 10_000,
            peak_kib: 150 * 1024,
            probe: LoadRun {
                rate: 100.0,
                p99_ms: 12.0,
                ..LoadRun::default()
            },
            cancel_p99_ms: 300.0,
            cancels: 200,
            exit_s: 4.0,
            grace_s: 25.0,
            handed_back: 9800,
            succeeded: 9800,
            cancelled: 200,
            worker_successes: 9800.0,
            ..LongJobs::default()
        };
        let verdicts = |l: &LongJobs| -> Vec<Verdict> {
            long_targets(l).into_iter().map(|t| t.verdict).collect()
        };
        assert_eq!(verdicts(&good), vec![Verdict::Met; 4]);
        let twice = LongJobs {
            worker_successes: 9801.0,
            ..good.clone()
        };
        assert_eq!(
            verdicts(&twice)[3],
            Verdict::Missed,
            "a job ran twice to success"
        );
        let stuck = LongJobs {
            left_running: 3,
            ..good.clone()
        };
        assert_eq!(
            verdicts(&stuck)[3],
            Verdict::Missed,
            "a hand-back never arrived"
        );
        let fat = LongJobs {
            peak_kib: 300 * 1024,
            cancel_p99_ms: 1500.0,
            ..good
        };
        assert_eq!(
            verdicts(&fat)[..3],
            [Verdict::Missed, Verdict::Met, Verdict::Missed]
        );
    }

    #[test]
    fn a_storm_is_judged_by_what_it_adds_to_the_baseline_p99() {
        let mut r = results();
        let e2e = |p99_ms| crate::results::EndToEnd {
            jobs: 1500,
            p50_ms: 3.0,
            p99_ms,
        };
        r.storm.failing = 500;
        r.storm.retries = 1000;
        r.storm.baseline = e2e(4.0);
        r.storm.storm = e2e(4.0 + STORM_P99_ADDED_MAX_MS);
        let t = &targets(&r)[6];
        assert_eq!(t.verdict, Verdict::Met, "{t:?}");
        assert_eq!(t.measured, "4.0 → 54.0 ms (+50.0 ms; 1000 retries)");
        r.storm.storm = e2e(235.0);
        assert_eq!(targets(&r)[6].verdict, Verdict::Missed);
    }

    #[test]
    fn a_neighbour_is_judged_by_its_p99_beside_the_flood_against_alone() {
        let mut r = results();
        r.quota.alone_p99_ms = 4.0;
        r.quota.beside_p99_ms = 4.0 * QUOTA_NEIGHBOUR_P99_MAX_RATIO;
        let t = &targets(&r)[10];
        assert_eq!(t.verdict, Verdict::Met, "{t:?}");
        assert_eq!(
            t.measured,
            "p99 6.00 ms beside the flood, 4.00 ms alone (1.50×)"
        );
        r.quota.beside_p99_ms = 6.1;
        assert_eq!(targets(&r)[10].verdict, Verdict::Missed);
    }

    #[test]
    fn telemetry_faster_than_off_is_inconclusive() {
        let mut r = results();
        r.on = Enqueue {
            run: LoadRun {
                rate: 5100.0,
                ..LoadRun::default()
            },
            ..Enqueue::default()
        };
        let t = &targets(&r)[3];
        assert!(matches!(t.verdict, Verdict::Inconclusive(_)), "{t:?}");
    }

    #[test]
    fn exemplars_are_judged_by_the_api_cpu_they_add_per_job() {
        let mut r = results();
        // 2 cores busy at 4000 jobs/s: 500 µs of machine CPU per job.
        let at = |rate, api_us| Enqueue {
            run: LoadRun {
                rate,
                ..LoadRun::default()
            },
            api_us,
            cpu: CpuSplit {
                seconds: 15.0,
                all: 2.0,
                parts: vec![],
            },
            ..Enqueue::default()
        };
        let exemplars = |r: &Results| targets(r).into_iter().last().unwrap();
        r.on_no_exemplars = at(4000.0, 120.0);
        r.on = at(3900.0, 134.0);
        let t = exemplars(&r);
        assert!(
            t.measured
                .starts_with("+2.8 % (api CPU 134 vs 120 µs per job"),
            "{}",
            t.measured
        );
        assert_eq!(t.verdict, Verdict::Met);
        r.on = at(3900.0, 136.0);
        assert_eq!(
            exemplars(&r).verdict,
            Verdict::Missed,
            "16 µs of 500 is 3.2 %"
        );
        r.on = at(4100.0, 118.0);
        assert_eq!(exemplars(&r).verdict, Verdict::Met, "no measurable cost");
        r.on_no_exemplars = Enqueue::default();
        assert!(matches!(exemplars(&r).verdict, Verdict::Inconclusive(_)));
    }

    #[test]
    fn a_missing_limit_is_inconclusive_not_a_division_by_zero() {
        let mut r = results();
        r.limits.pg_tps = 0.0;
        assert_eq!(
            targets(&r)[0].verdict,
            Verdict::Inconclusive("no limit measured")
        );
        assert_eq!(ratio(1.0, 0.0), None);
        assert!((telemetry_cost_pct(90.0, 100.0).unwrap() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn a_fan_in_is_judged_on_its_median_round() {
        let mut r = results();
        r.fanin.children = 999;
        r.fanin.gaps_ms = vec![30.0, FANIN_GAP_MAX_MS + 500.0, 40.0];
        let t = fanin_target(&r.fanin);
        assert_eq!(t.verdict, Verdict::Met, "one slow round of three");
        assert_eq!(t.measured, "40.0 ms");
        r.fanin.gaps_ms = vec![FANIN_GAP_MAX_MS + 1.0, 30.0, FANIN_GAP_MAX_MS + 2.0];
        assert_eq!(fanin_target(&r.fanin).verdict, Verdict::Missed);
    }

    #[test]
    fn schedules_are_late_when_slow_or_when_a_fire_is_missing() {
        let mut r = results();
        r.lateness.loaded = crate::results::Late {
            fires: 150,
            expected: 150,
            p99_ms: SCHEDULE_LATE_P99_MAX_MS - 1.0,
            ..Default::default()
        };
        assert_eq!(lateness_target(&r.lateness).verdict, Verdict::Met);
        r.lateness.loaded.fires = 149;
        assert_eq!(lateness_target(&r.lateness).verdict, Verdict::Missed);
        r.lateness.loaded.fires = 150;
        r.lateness.loaded.p99_ms = SCHEDULE_LATE_P99_MAX_MS + 1.0;
        assert_eq!(lateness_target(&r.lateness).verdict, Verdict::Missed);
    }
}
