//! One run: offer the load (open or closed loop), wait for what is in flight, follow the jobs,
//! and sum it all up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::api::Api;
use crate::args::{Args, Plan};
use crate::mix::{Mix, Payloads, Rng};
use crate::progress;
use crate::report::{Percentiles, Summary, share};
use crate::schedule::{Arrivals, Dispatched, open_loop};
use crate::stats::{Shared, Stats};
use crate::track::Tracker;

/// The generator's runtime: one thread keeps it on one core (and out of the services' way).
pub fn runtime(threads: u32) -> tokio::runtime::Runtime {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n as usize);
            b
        }
    };
    builder.enable_all().build().expect("a Tokio runtime")
}

/// Runs `plan` against the api named in `args`.
pub async fn run(args: &Args, plan: Plan) -> anyhow::Result<Summary> {
    let cap = args.max_in_flight as usize;
    let api = Api::new(&args.url, args.api_key.as_deref(), args.timeout, cap)?
        .with_idempotency_keys(args.idempotency_keys);
    let stats = Stats::shared();
    let start = Instant::now();
    let end = start + plan.duration;
    let tracker = args.track.then(|| {
        let concurrency = args.track_concurrency as usize;
        Tracker::new(api.clone(), concurrency, args.track_rate, start)
    });
    let progress = progress::start(stats.clone(), tracker.clone(), start);
    let seed = args.seed.unwrap_or_else(clock_seed);
    let payloads = args.payloads();
    let count = plan.count.unwrap_or(u64::MAX);
    let slots = Arc::new(Semaphore::new(cap));

    let ctx = Ctx {
        api,
        stats: stats.clone(),
        tracker: tracker.clone(),
    };
    let (mode, dispatched) = match &plan.phases {
        Some(phases) => {
            let arrivals = Arrivals::new(phases.clone())
                .take_while(|a| a.at < plan.duration)
                .take(usize::try_from(count).unwrap_or(usize::MAX));
            let mut rng = Rng::new(seed);
            let d = open_loop(
                arrivals,
                start,
                end,
                slots.clone(),
                |arrival, due, permit| {
                    let mix = &plan.mixes[arrival.phase];
                    let body = payloads.body(mix.pick(rng.next_u64()), &mut rng);
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        ctx.send(&body, due).await;
                        drop(permit);
                    });
                },
            )
            .await;
            ("open", d)
        }
        None => {
            let d = closed_loop(&ctx, cap, end, count, &plan.mixes[0], payloads, seed).await;
            ("closed", d)
        }
    };
    // Wait for the requests still in flight (each is bounded by --timeout).
    let drained = slots.acquire_many(args.max_in_flight);
    let _ = tokio::time::timeout(args.timeout + Duration::from_secs(1), drained).await;
    let elapsed = start.elapsed().as_secs_f64();
    let track = match tracker {
        Some(t) => Some(t.finish(args.track_timeout).await),
        None => None,
    };
    progress.stop();

    let s = stats.lock().expect("not poisoned");
    let ok: u64 = s
        .statuses
        .iter()
        .filter(|(k, _)| k.starts_with('2'))
        .map(|(_, v)| v)
        .sum();
    let scheduled = dispatched.sent + dispatched.unsent;
    // Requests still unanswered after the drain count as failed, like those never sent.
    let failed = s.failed + (s.sent - s.completed) + dispatched.unsent;
    let mut summary = Summary {
        mode,
        mix: phase_mixes(&plan.mixes),
        scheduled,
        sent: dispatched.sent,
        unsent: dispatched.unsent,
        completed: s.completed,
        elapsed_s: elapsed,
        achieved_rate: ok as f64 / elapsed,
        statuses: s.statuses.clone(),
        error_rate: share(failed, scheduled),
        latency_ms: Percentiles::of(&s.latency),
        track,
        cpu_seconds: own_cpu_seconds(),
        max_error_rate: args.max_error_rate,
        passed: false,
    };
    summary.judge();
    Ok(summary)
}

/// What each request needs.
#[derive(Clone)]
struct Ctx {
    api: Api,
    stats: Shared,
    tracker: Option<Tracker>,
}

impl Ctx {
    /// Sends one job; latency runs from `due`, the scheduled time.
    async fn send(&self, body: &Value, due: Instant) {
        self.stats.lock().expect("not poisoned").sent += 1;
        let (outcome, id) = self.api.create(body).await;
        let latency = due.elapsed();
        self.stats
            .lock()
            .expect("not poisoned")
            .finish(outcome, latency);
        if let (Some(tracker), Some(id)) = (&self.tracker, id) {
            tracker.follow(id, due);
        }
    }
}

/// `--rate max`: `workers` loops, each sending its next request as soon as the last answered.
/// There is no schedule here, so latency is service time (the usual closed-loop caveat).
async fn closed_loop(
    ctx: &Ctx,
    workers: usize,
    end: Instant,
    count: u64,
    mix: &Mix,
    payloads: Payloads,
    seed: u64,
) -> Dispatched {
    let tickets = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for w in 0..workers as u64 {
        let (ctx, tickets, mix) = (ctx.clone(), tickets.clone(), mix.clone());
        let mut rng = Rng::new(seed ^ w.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        set.spawn(async move {
            while Instant::now() < end && tickets.fetch_add(1, Ordering::Relaxed) < count {
                let body = payloads.body(mix.pick(rng.next_u64()), &mut rng);
                ctx.send(&body, Instant::now()).await;
            }
        });
    }
    set.join_all().await;
    let sent = ctx.stats.lock().expect("not poisoned").sent;
    Dispatched { sent, unsent: 0 }
}

/// The mixes in phase order, a run of equal ones written once: `a | b | a`.
fn phase_mixes(mixes: &[Mix]) -> String {
    let mut names: Vec<String> = mixes.iter().map(Mix::to_string).collect();
    names.dedup();
    names.join(" | ")
}

fn clock_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_nanos() as u64)
}

/// utime + stime of this process, in seconds (clock ticks are 1/100 s on Linux).
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}
