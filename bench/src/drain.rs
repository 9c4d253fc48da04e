//! Worker drain: BENCH_DRAIN_JOBS no-op jobs committed and published with no worker running,
//! then a worker at WORKER_CONCURRENCY 1 or 16, timed from its start (connecting included)
//! until every row says `succeeded` (the api has applied every final event).
//!
//! The jobs are queued by one api, which is stopped; a second api on the same database applies
//! the events while the worker drains. So pg_stat counters read before the drain (the first
//! api's backends have exited and flushed) and after it are exactly the drain's own work.

use std::time::{Duration, Instant};

use sqlx::PgConnection;

use crate::ctx::{ApiMode, Ctx};
use crate::procfs::{self, CpuMark, RssSampler};
use crate::results::{BrokerOps, Drain, Rss};
use crate::services::metric_sum;

/// The worker concurrencies measured.
pub const CONCURRENCIES: [u16; 2] = [1, 16];

/// What the drain steps found.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// At concurrency 1.
    pub drain1: Drain,
    /// At concurrency 16.
    pub drain16: Drain,
    /// A worker's VmRSS a second after start, with nothing queued.
    pub idle_kib: u64,
}

/// Runs every drain round.
pub async fn measure(ctx: &Ctx) -> anyhow::Result<Found> {
    let mut found = Found::default();
    for round in 1..=ctx.cfg.rounds {
        for c in CONCURRENCIES.into_iter().rev() {
            let first = round == 1 && c == 16;
            let (drain, idle) = drain_round(ctx, c, round, first).await?;
            found.idle_kib = found.idle_kib.max(idle);
            let best = if c == 1 {
                &mut found.drain1
            } else {
                &mut found.drain16
            };
            keep_best(best, drain);
        }
    }
    Ok(found)
}

/// One drain at concurrency `c`; with `idle`, also a worker's idle memory, measured first.
async fn drain_round(ctx: &Ctx, c: u16, round: u32, idle: bool) -> anyhow::Result<(Drain, u64)> {
    let jobs = ctx.cfg.drain_jobs;
    let label = format!("drain{c}_{round}");
    let name = ctx.scratch.name(&label);
    ctx.pg.create(&name).await?;
    let filler = ctx
        .start_api(&format!("api_fill_{label}"), &name, ApiMode::Off)
        .await?;
    let mut idle_kib = 0;
    if idle {
        let worker = ctx.start_worker("worker_idle", &name, 16).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        idle_kib = procfs::kib(worker.pid, "VmRSS");
        worker.stop().await?;
    }
    crate::log(&format!(
        "worker drain (round {round}): {jobs} no-op jobs queued with no worker, then WORKER_CONCURRENCY={c}"
    ));
    let c_in_flight = ctx.cfg.concurrency.to_string();
    let fill = [
        "--rate",
        "max",
        "--max-in-flight",
        &c_in_flight,
        "--count",
        &jobs.to_string(),
    ];
    let fill = fill.map(String::from);
    ctx.loadgen(
        &filler,
        &format!("fill_{label}"),
        &fill,
        Duration::from_secs(600),
    )
    .await?;
    ctx.wait_relay(&filler, Duration::from_secs(120)).await?;
    filler.stop().await?;
    ctx.pg.wait_disconnected(&name).await?;
    ctx.pg.settle(&name).await?;
    let before = ctx.pg.counters(&name).await?;
    let api = ctx
        .start_api(&format!("api_{label}"), &name, ApiMode::Off)
        .await?;
    let mut rows = ctx.pg.open(&name).await?;
    ctx.quiet(&format!("drain {c} round {round}")).await;

    let t0 = Instant::now();
    let worker = ctx
        .start_worker(&format!("worker_{label}"), &name, c)
        .await?;
    let sampler = RssSampler::start(worker.pid);
    let mark = CpuMark::now(&[("worker", worker.pid), ("api", api.pid)]);
    let bound = Duration::from_secs(120 + jobs / 100);
    let mut worker_s = None;
    let mut succeeded = 0;
    while t0.elapsed() < bound {
        if worker_s.is_none() {
            let m = worker.metrics(&ctx.http).await?;
            if metric_sum(&m, "jobstack_jobs_finished_total") as u64 >= jobs {
                worker_s = Some(t0.elapsed().as_secs_f64());
            }
        }
        // Rows are counted once the worker is done, so the polling does not load PostgreSQL
        // while it works.
        if worker_s.is_some() {
            succeeded = count_succeeded(&mut rows).await?;
            if succeeded >= jobs {
                break;
            }
        }
        let pause = if worker_s.is_some() { 20 } else { 100 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    let rows_s = t0.elapsed().as_secs_f64();
    let cpu = mark.split(None);
    let rss = Rss {
        idle: idle_kib,
        load: sampler.stop(),
        hwm: procfs::kib(worker.pid, "VmHWM"),
    };
    let wm = worker.metrics(&ctx.http).await?;
    let am = api.metrics(&ctx.http).await?;
    let confirm_waits = metric_sum(&wm, "jobstack_amqp_publish_duration_seconds_count");
    let confirm_secs = metric_sum(&wm, "jobstack_amqp_publish_duration_seconds_sum");
    let n = jobs as f64;
    let broker = BrokerOps {
        deliveries: metric_sum(&wm, "jobstack_jobs_started_total") / n,
        confirm_waits: confirm_waits / n,
        mean_confirm_ms: if confirm_waits > 0.0 {
            1e3 * confirm_secs / confirm_waits
        } else {
            0.0
        },
        events: metric_sum(&am, "jobstack_job_events_total") / n,
    };
    worker.stop().await?;
    api.stop().await?;
    drop(rows);
    ctx.pg.wait_disconnected(&name).await?;
    let pg = ctx.pg.counters(&name).await?.per_job_since(&before, jobs);
    ctx.scratch.remove(&ctx.pg, &ctx.rabbit, &name).await?;
    let rate = succeeded.min(jobs) as f64 / rows_s;
    crate::log(&format!(
        "  {rate:.0} jobs/s: worker done after {:.2}s, every row succeeded after {rows_s:.2}s",
        worker_s.unwrap_or(rows_s)
    ));
    let drain = Drain {
        concurrency: c,
        rate,
        rates: vec![rate],
        worker_s: worker_s.unwrap_or(rows_s),
        rows_s,
        unfinished: jobs.saturating_sub(succeeded),
        cpu,
        broker,
        pg,
        rss,
    };
    Ok((drain, idle_kib))
}

async fn count_succeeded(conn: &mut PgConnection) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
        .fetch_one(conn)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Folds a round into the best: the fastest round's figures, every rate, the worst memory.
fn keep_best(best: &mut Drain, round: Drain) {
    let mut rates = std::mem::take(&mut best.rates);
    rates.extend_from_slice(&round.rates);
    let rss = best.rss.worst(round.rss);
    if rates.len() == 1 || round.rate > best.rate {
        *best = round;
    }
    best.rates = rates;
    best.rss = rss;
}
