//! What one run measured: plain data, filled in by the measuring modules and read by the
//! report, so the report can be rendered (and tested) without running anything.

use std::fmt;

/// The machine and the servers the run measured on.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// Online cores.
    pub cores: usize,
    /// MemTotal.
    pub memory_gib: f64,
    /// `Linux <release>`.
    pub kernel: String,
    /// `rustc --version`.
    pub rustc: String,
    /// RabbitMQ version.
    pub rabbitmq: String,
    /// PostgreSQL version.
    pub postgres: String,
    /// The PostgreSQL settings that decide durability and size.
    pub pg_settings: String,
    /// Percent idle when the run started.
    pub idle_at_start: f64,
}

/// The run's size.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Seconds per measured step.
    pub seconds: u64,
    /// Closed-loop requests in flight.
    pub concurrency: u32,
    /// Jobs per drain round.
    pub drain_jobs: u64,
    /// Rounds per measured step.
    pub rounds: u32,
    /// Warm-up requests.
    pub warmup: u64,
    /// Percent idle that counts as a quiet machine.
    pub quiet_pct: f64,
}

/// CPU used by each part of the machine over one step, in cores (1.0 = one core busy).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuSplit {
    /// Wall-clock length of the step.
    pub seconds: f64,
    /// The whole machine (busy time of /proc/stat).
    pub all: f64,
    /// Named parts: postgres, rabbitmq, the services, the client, the bench itself.
    pub parts: Vec<(String, f64)>,
}

impl CpuSplit {
    /// Cores used by `name` (0 when it is not in the split).
    pub fn cores(&self, name: &str) -> f64 {
        match name {
            "all" => self.all,
            "rest" => self.rest(),
            _ => self
                .parts
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |(_, c)| *c),
        }
    }

    /// Everything not named: the kernel's loopback TCP and softirqs, other processes.
    pub fn rest(&self) -> f64 {
        (self.all - self.parts.iter().map(|(_, c)| c).sum::<f64>()).max(0.0)
    }

    /// Microseconds of `name`'s CPU per unit of work at `rate` per second.
    pub fn per_job_us(&self, name: &str, rate: f64) -> f64 {
        if rate > 0.0 {
            self.cores(name) * 1e6 / rate
        } else {
            0.0
        }
    }
}

impl fmt::Display for CpuSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "all {:.2}", self.all)?;
        for (name, cores) in &self.parts {
            write!(f, " {name} {cores:.2}")?;
        }
        write!(f, " rest {:.2}", self.rest())
    }
}

/// One loadgen run, as the report needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadRun {
    /// 202s per second.
    pub rate: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Requests without a 202: other statuses, timeouts, transport errors, and open-loop
    /// arrivals never sent because the in-flight cap was full.
    pub failed: u64,
}

/// Row work of one table per job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableWork {
    /// Table name.
    pub table: String,
    /// Rows inserted per job.
    pub inserts: f64,
    /// Rows updated per job.
    pub updates: f64,
    /// Of those, heap-only (no index touched).
    pub hot: f64,
    /// Rows deleted per job.
    pub deletes: f64,
}

/// PostgreSQL work per job, from pg_stat_database and pg_stat_user_tables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PgWork {
    /// Committed transactions per job.
    pub xacts: f64,
    /// Tables with any row work.
    pub tables: Vec<TableWork>,
}

/// Memory of one process, in kB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rss {
    /// VmRSS a second after start.
    pub idle: u64,
    /// Highest VmRSS sampled under load.
    pub load: u64,
    /// VmHWM at the end of the step.
    pub hwm: u64,
}

impl Rss {
    /// The larger of each field: memory keeps the worst round.
    pub fn worst(self, other: Self) -> Self {
        Self {
            idle: self.idle.max(other.idle),
            load: self.load.max(other.load),
            hwm: self.hwm.max(other.hwm),
        }
    }
}

/// This machine's limits for the same durable work, without jobstack.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// pgbench single-row insert transactions/s at the closed loop's concurrency.
    pub pg_tps: f64,
    /// The same at 10 clients (the api's default pool).
    pub pg_tps_pool: f64,
    /// CPU split of the first pgbench run.
    pub pg_cpu: CpuSplit,
    /// Confirmed persistent publishes/s, `concurrency` confirms in flight.
    pub publish: f64,
    /// The same, waiting for each confirm.
    pub publish_one: f64,
    /// CPU split of the pipelined publish.
    pub publish_cpu: CpuSplit,
    /// Consume + ack/s at prefetch 16.
    pub consume16: f64,
    /// Consume + ack/s at prefetch 32.
    pub consume32: f64,
    /// Consume + ack/s at prefetch 1.
    pub consume1: f64,
    /// Consume + ack/s at prefetch 2.
    pub consume2: f64,
    /// CPU split of the prefetch-16 consume.
    pub consume_cpu: CpuSplit,
}

/// The best round of one closed-loop enqueue mode, and what every round saw.
#[derive(Debug, Clone, Default)]
pub struct Enqueue {
    /// The best round's load.
    pub run: LoadRun,
    /// Every round's rate, in order.
    pub rates: Vec<f64>,
    /// The best round's CPU split.
    pub cpu: CpuSplit,
    /// api CPU (utime + stime) per accepted job in the best round, µs.
    pub api_us: f64,
    /// Seconds the relay needed after the loop to publish every accepted job.
    pub relay_catch_up_s: f64,
    /// PostgreSQL work per accepted job over the best round's api life.
    pub pg: PgWork,
    /// Confirmed AMQP publishes per accepted job (the api's relay), best round.
    pub publishes_per_job: f64,
    /// Memory, worst round.
    pub rss: Rss,
}

/// The open loop at half the first closed-loop peak.
#[derive(Debug, Clone, Default)]
pub struct HalfRate {
    /// Arrivals per second offered.
    pub target: f64,
    /// The round with the lowest p99.
    pub run: LoadRun,
    /// Every round's p99, in order.
    pub p99s: Vec<f64>,
    /// PostgreSQL work per accepted job at this rate (best round).
    pub pg: PgWork,
}

/// Broker operations per drained job, from the services' own counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerOps {
    /// Jobs-queue deliveries the worker started (1 unless redelivered).
    pub deliveries: f64,
    /// Confirmed publishes the worker waited for (job events).
    pub confirm_waits: f64,
    /// Their mean wait, ms.
    pub mean_confirm_ms: f64,
    /// Job events the api consumed.
    pub events: f64,
}

/// The best drain round at one worker concurrency.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    /// WORKER_CONCURRENCY.
    pub concurrency: u16,
    /// Jobs per second, from the worker's start until every row said succeeded.
    pub rate: f64,
    /// Every round's rate.
    pub rates: Vec<f64>,
    /// Seconds until the worker had finished every job.
    pub worker_s: f64,
    /// Seconds until every row said succeeded.
    pub rows_s: f64,
    /// Rows not `succeeded` when the wait gave up (0 when all were).
    pub unfinished: u64,
    /// CPU split over the best round.
    pub cpu: CpuSplit,
    /// Broker operations per job.
    pub broker: BrokerOps,
    /// PostgreSQL work per job while draining (the api applying events).
    pub pg: PgWork,
    /// Worker memory, worst round.
    pub rss: Rss,
}

/// Everything the report shows.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// The run's id (its scratch databases' and queues' prefix), named in the charts.
    pub run: String,
    /// Where it ran.
    pub machine: Machine,
    /// Its size.
    pub plan: Plan,
    /// The machine's limits.
    pub limits: Limits,
    /// Closed loop, telemetry off.
    pub off: Enqueue,
    /// Closed loop, telemetry fully on.
    pub on: Enqueue,
    /// Closed loop, telemetry fully on but exemplars.
    pub on_no_exemplars: Enqueue,
    /// Closed loop, telemetry off, DB_MAX_CONNECTIONS = concurrency.
    pub pool: Enqueue,
    /// Open loop at half the peak.
    pub half: HalfRate,
    /// Worker drain at concurrency 1.
    pub drain1: Drain,
    /// Worker drain at concurrency 16.
    pub drain16: Drain,
    /// api spans the OTLP sink received.
    pub spans_api: u64,
    /// Log lines the telemetry-on apis wrote.
    pub log_lines_on: u64,
    /// A retry storm next to a steady stream.
    pub storm: Storm,
    /// A workflow's fan-in of 1000 jobs.
    pub fanin: FanIn,
    /// Schedule fire lateness.
    pub lateness: Lateness,
    /// Flow control's cost when no limit is hit.
    pub flow: FlowCost,
    /// Priorities when work waits.
    pub priority: Priority,
    /// Per-client quotas under a flood.
    pub quota: Quota,
    /// The api and the worker together at rising offered rates, and the soak.
    pub pipeline: Pipeline,
    /// Thousands of long jobs on one worker.
    pub long_jobs: LongJobs,
    /// Steps that started on a busy machine, with its idle share.
    pub noisy: Vec<String>,
}

/// Jobs' time from accept (`created_at`) to succeeded (`finished_at`), as PostgreSQL recorded it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndToEnd {
    /// Jobs measured.
    pub jobs: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// A retry storm: `failing` jobs failing at once, next to a steady stream of no-op jobs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Storm {
    /// The stream's jobs per second.
    pub rate: u32,
    /// Each window's length.
    pub seconds: u64,
    /// Jobs failing together at the start of the storm window.
    pub failing: u32,
    /// Their retried attempts.
    pub retries: u64,
    /// The stream alone.
    pub baseline: EndToEnd,
    /// The stream during the storm.
    pub storm: EndToEnd,
}

/// A workflow's fan-in: `children` jobs and one that depends on all of them, round by round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FanIn {
    /// Children of the one parent.
    pub children: u32,
    /// The last child's success to the parent's start, ms, per round.
    pub gaps_ms: Vec<f64>,
    /// The workflow's creation to the parent's success, s, per round.
    pub totals_s: Vec<f64>,
    /// `POST /workflows` until its 201, ms, per round.
    pub submit_ms: Vec<f64>,
}

/// The median of some figures (0 when there are none).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The `q` quantile (0..=1) of `xs`, nearest rank; 0 when empty.
pub fn percentile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n => v[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
    }
}

/// How late schedules fired over one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Late {
    /// Fires due in the window that made their job.
    pub fires: u64,
    /// Fires due in the window: each schedule's seconds from its first fire in it to its last
    /// (all of the window for a schedule that made none).
    pub expected: u64,
    /// Median lateness, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// The latest fire, ms.
    pub max_ms: f64,
    /// Submits per second the api accepted meanwhile (0 in the idle window).
    pub accepted_rate: f64,
}

/// Schedule lateness alone and under load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lateness {
    /// One-second schedules.
    pub schedules: u32,
    /// Each window's length.
    pub seconds: u64,
    /// Submits per second offered in the loaded window.
    pub offered: f64,
    /// No other load.
    pub idle: Late,
    /// Under load.
    pub loaded: Late,
}

/// Priorities when work waits: accept → start of a backlog at priority 0 and of jobs at
/// priority 9 submitted after it, behind one concurrency limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Priority {
    /// Priority-0 jobs, submitted first.
    pub low: u32,
    /// Priority-9 jobs, submitted after them.
    pub high: u32,
    /// The kind's concurrency limit.
    pub slots: u16,
    /// Each job's run time, ms.
    pub job_ms: u64,
    /// Priority 0: median wait, ms.
    pub low_p50_ms: f64,
    /// Priority 0: 99th percentile, ms.
    pub low_p99_ms: f64,
    /// Priority 0: the longest, ms.
    pub low_max_ms: f64,
    /// Priority 9: median wait, ms.
    pub high_p50_ms: f64,
    /// Priority 9: 99th percentile, ms.
    pub high_p99_ms: f64,
}

/// Per-client quotas: client B's accepts alone and beside client A's flood at ten times its
/// quota (best of the rounds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quota {
    /// A's quota, submits/s.
    pub quota: u32,
    /// What A offered, submits/s.
    pub flood: u32,
    /// B's rate, submits/s.
    pub steady: u32,
    /// Each load's length, s.
    pub seconds: u64,
    /// B alone: accept p50, ms.
    pub alone_p50_ms: f64,
    /// B alone: accept p99, ms.
    pub alone_p99_ms: f64,
    /// B beside the flood: accept p50, ms.
    pub beside_p50_ms: f64,
    /// B beside the flood: accept p99, ms.
    pub beside_p99_ms: f64,
    /// B's 202s beside the flood.
    pub beside_accepted: u64,
    /// The control: B's accept p99 beside the same flood from a client with no quota, ms.
    pub unlimited_p99_ms: f64,
    /// A's accepted rate, /s.
    pub flood_accepted_rate: f64,
    /// A's 429s.
    pub flood_refused: u64,
}

/// One run of the flow-control comparison.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowRun {
    /// The mechanism switched on.
    pub label: String,
    /// 202s per second.
    pub accepted: f64,
    /// Jobs succeeded per second, from the first accept to the last end.
    pub finished: f64,
    /// Accept p99, ms.
    pub p99_ms: f64,
}

/// Flow control's cost when no limit is hit: the unlimited run first, then one per mechanism.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowCost {
    /// Each run's load length.
    pub seconds: u64,
    /// Runs per mechanism (the best is kept).
    pub rounds: u32,
    /// Each mechanism's best run, unlimited first.
    pub runs: Vec<FlowRun>,
}

impl FlowCost {
    /// Each mechanism's cost: the share of the unlimited run's end-to-end rate it lost, percent.
    pub fn costs(&self) -> Vec<(&str, f64)> {
        let Some((base, rest)) = self.runs.split_first() else {
            return Vec::new();
        };
        rest.iter()
            .map(|r| {
                let cost = if base.finished > 0.0 {
                    (1.0 - r.finished / base.finished) * 100.0
                } else {
                    0.0
                };
                (r.label.as_str(), cost)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rest_and_per_job() {
        let split = CpuSplit {
            seconds: 15.0,
            all: 1.9,
            parts: vec![("postgres".into(), 0.6), ("api".into(), 0.8)],
        };
        assert!((split.rest() - 0.5).abs() < 1e-9);
        assert!((split.per_job_us("api", 2000.0) - 400.0).abs() < 1e-9);
        assert_eq!(split.cores("worker"), 0.0);
        assert_eq!(split.per_job_us("api", 0.0), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(
            split.to_string(),
            "all 1.90 postgres 0.60 api 0.80 rest 0.50"
        );
    }

    #[test]
    fn a_mechanism_costs_what_it_loses_of_the_unlimited_rate() {
        let run = |label: &str, finished| FlowRun {
            label: label.into(),
            finished,
            ..FlowRun::default()
        };
        let f = FlowCost {
            seconds: 15,
            rounds: 1,
            runs: vec![run("unlimited", 2000.0), run("a", 1900.0), run("b", 2100.0)],
        };
        let costs = f.costs();
        assert_eq!(costs.iter().map(|c| c.0).collect::<Vec<_>>(), ["a", "b"]);
        assert!((costs[0].1 - 5.0).abs() < 1e-9 && (costs[1].1 + 5.0).abs() < 1e-9);
        assert!(FlowCost::default().costs().is_empty());
    }

    #[test]
    fn memory_keeps_the_worst_round() {
        let a = Rss {
            idle: 10,
            load: 30,
            hwm: 31,
        };
        let b = Rss {
            idle: 12,
            load: 25,
            hwm: 40,
        };
        assert_eq!(
            a.worst(b),
            Rss {
                idle: 12,
                load: 30,
                hwm: 40
            }
        );
    }
}

/// One offered rate of the end-to-end steps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineStep {
    /// Jobs/s loadgen offered (open loop).
    pub offered: f64,
    /// 202 answers per second of the step.
    pub accepted: f64,
    /// Requests not accepted.
    pub failed: u64,
    /// Rows that reached `succeeded` per second of the step.
    pub finished: f64,
    /// Accept latency, ms.
    pub accept_p50_ms: f64,
    /// Accept latency, ms.
    pub accept_p99_ms: f64,
    /// Accept → succeeded of the step's jobs that finished within it, ms.
    pub e2e_p50_ms: f64,
    /// Accept → succeeded, ms.
    pub e2e_p99_ms: f64,
    /// Jobs accepted in the step not yet succeeded at its end.
    pub unfinished: u64,
    /// Messages ready in the jobs queue at the step's end.
    pub queue_ready: u64,
    /// Messages ready in the api's events queue at the step's end (events not yet taken).
    pub events_ready: u64,
    /// Rows in the outbox at the step's end.
    pub outbox: u64,
}

/// One sample of the soak.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SoakSample {
    /// Seconds since the soak started.
    pub at: f64,
    /// Jobs that reached `succeeded` per second since the previous sample.
    pub finished: f64,
    /// Messages ready in the jobs queue.
    pub queue_ready: u64,
    /// Rows in the outbox.
    pub outbox: u64,
    /// The api's VmRSS, KiB.
    pub api_rss_kib: u64,
    /// The worker's VmRSS, KiB.
    pub worker_rss_kib: u64,
}

/// The end-to-end steps, their knee and the soak at 70 % of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pipeline {
    /// Seconds per step.
    pub seconds: u64,
    /// The worker's concurrency.
    pub concurrency: u16,
    /// Each offered rate, rising.
    pub steps: Vec<PipelineStep>,
    /// The highest offered rate that kept up within the accept bound.
    pub knee: Option<f64>,
    /// The api's VmRSS after the last step (its overload included), KiB.
    pub api_rss_after_steps_kib: u64,
    /// Closed loop end to end, finished/s of each round, telemetry off.
    pub telemetry_off: Vec<f64>,
    /// The same, full telemetry on both services.
    pub telemetry_on: Vec<f64>,
    /// The soak's offered rate.
    pub soak_rate: f64,
    /// The soak's length.
    pub soak_seconds: u64,
    /// Its samples.
    pub soak: Vec<SoakSample>,
}

impl Pipeline {
    /// Per-minute least-squares slopes of (queue ready, outbox, api RSS MiB, worker RSS MiB)
    /// over the soak.
    pub fn soak_slopes(&self) -> [f64; 4] {
        let xs: Vec<f64> = self.soak.iter().map(|s| s.at).collect();
        let series = |f: fn(&SoakSample) -> f64| -> f64 {
            let ys: Vec<f64> = self.soak.iter().map(f).collect();
            crate::pipeline::slope_per_minute(&xs, &ys)
        };
        [
            series(|s| s.queue_ready as f64),
            series(|s| s.outbox as f64),
            series(|s| s.api_rss_kib as f64 / 1024.0),
            series(|s| s.worker_rss_kib as f64 / 1024.0),
        ]
    }
}

/// Long jobs at scale on one worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LongJobs {
    /// Jobs in flight at once (= the worker's slots).
    pub jobs: u32,
    /// Each job's length.
    pub job_seconds: f64,
    /// Its steps (a progress event after each).
    pub steps: u32,
    /// Seconds to submit them all.
    pub submit_s: f64,
    /// Seconds from the last submit until all ran.
    pub all_running_s: f64,
    /// The worker's VmRSS before any job, KiB.
    pub idle_kib: u64,
    /// Its highest VmRSS seen while they ran, KiB.
    pub peak_kib: u64,
    /// Job events per second the api applied while all ran.
    pub events_per_s: f64,
    /// No-op submits beside them: accept latency.
    pub probe: LoadRun,
    /// Cancel sent → the job recorded `cancelled`, ms.
    pub cancel_p50_ms: f64,
    /// The same, 99th percentile.
    pub cancel_p99_ms: f64,
    /// Cancels measured.
    pub cancels: usize,
    /// SIGTERM → the worker's exit, s.
    pub exit_s: f64,
    /// Its SHUTDOWN_GRACE_SECS.
    pub grace_s: f64,
    /// Jobs back in the queue with a checkpoint after the exit.
    pub handed_back: u64,
    /// Jobs still `running` 30 s after the exit (their hand-back never arrived).
    pub left_running: u64,
    /// Final states once a second worker finished the rest.
    pub succeeded: u64,
    /// Cancelled ones.
    pub cancelled: u64,
    /// Neither (should be 0).
    pub other: u64,
    /// Successes the workers reported to the api (`jobstack_job_events_total{event="succeeded"}`,
    /// applied or ignored): equal to `succeeded` when no job ran twice to success.
    pub worker_successes: f64,
    /// The worker's VmRSS over the run: (seconds since the first submit, KiB).
    pub rss: Vec<(f64, u64)>,
    /// Updates of job rows over the run (pg_stat_user_tables).
    pub job_updates: u64,
    /// Of those, heap-only (HOT).
    pub job_hot_updates: u64,
}

impl LongJobs {
    /// The share of its job-row updates that were heap-only (HOT), if it updated any.
    pub fn hot_share(&self) -> Option<f64> {
        (self.job_updates > 0).then(|| self.job_hot_updates as f64 / self.job_updates as f64)
    }

    /// What the SIGTERM with every job in flight did, and how the jobs ended: the report's
    /// sentence and the target's figure.
    pub fn shutdown(&self) -> String {
        format!(
            "the worker exited after {:.1} s (grace {:.0} s), {} jobs back in the queue with their \
             checkpoint, {} left running; a second worker then finished the rest: {} succeeded, \
             {} cancelled, {} in any other state; the workers reported {:.0} successes to the api",
            self.exit_s,
            self.grace_s,
            self.handed_back,
            self.left_running,
            self.succeeded,
            self.cancelled,
            self.other,
            self.worker_successes,
        )
    }
}
