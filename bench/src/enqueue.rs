//! Durable enqueue: `POST /jobs` → 202 (row committed; the relay publishes it with confirms),
//! closed loop at BENCH_CONCURRENCY with telemetry off, fully on and with a larger pool, and an
//! open loop at half the first peak for latency.
//!
//! Each round gets a fresh api, database and AMQP prefix, a warm-up of the same load, then the
//! measured loop. Rounds alternate the modes and each mode keeps its best round: on a shared
//! machine noise only ever takes throughput away. Each api's whole life (start-up, warm-up,
//! loop) is one kind of load, so its pg_stat counters, read after it exits, are per-job costs.

use std::time::Duration;

use crate::ctx::{ApiMode, Ctx, LoadSummary};
use crate::pg::PgCounters;
use crate::procfs::{self, CpuMark, RssSampler};
use crate::results::{Enqueue, HalfRate, Rss};
use crate::services::{Launch, Service, free_port, metric_sum};

/// What the enqueue steps found.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Telemetry off.
    pub off: Enqueue,
    /// Telemetry on.
    pub on: Enqueue,
    /// Telemetry on, exemplars off.
    pub on_no_exemplars: Enqueue,
    /// Telemetry off, pool = concurrency.
    pub pool: Enqueue,
    /// Open loop at half the peak.
    pub half: HalfRate,
    /// api spans the sink received.
    pub spans_api: u64,
    /// Log lines of the telemetry-on apis.
    pub log_lines_on: u64,
}

/// Runs every enqueue round.
pub async fn measure(ctx: &Ctx) -> anyhow::Result<Found> {
    let sink = start_sink(ctx).await?;
    let mut found = Found::default();
    for round in 1..=ctx.cfg.rounds {
        keep_best(
            &mut found.off,
            closed_round(ctx, ApiMode::Off, round, sink.pid).await?,
        );
        // Half of the first round's peak in every round, so the p99s compare.
        if found.half.target == 0.0 {
            found.half.target = (found.off.run.rate / 2.0).floor().max(1.0);
        }
        half_round(ctx, &mut found.half, round).await?;
        keep_best(
            &mut found.on,
            closed_round(ctx, ApiMode::On, round, sink.pid).await?,
        );
        keep_best(
            &mut found.on_no_exemplars,
            closed_round(ctx, ApiMode::OnNoExemplars, round, sink.pid).await?,
        );
    }
    keep_best(
        &mut found.pool,
        closed_round(ctx, ApiMode::Pool, 1, sink.pid).await?,
    );
    let stats: serde_json::Value = ctx
        .http
        .get(format!("{}/stats", sink.url))
        .send()
        .await?
        .json()
        .await?;
    found.spans_api = stats["spans"]["api"].as_u64().unwrap_or(0);
    sink.stop().await?;
    found.log_lines_on = (1..=ctx.cfg.rounds)
        .map(|r| ctx.work.join(format!("api_on_{r}.log")))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.lines().count() as u64)
        .sum();
    Ok(found)
}

/// The OTLP sink the telemetry-on apis export to: answers 200 at once and counts spans, so the
/// api pays the full cost of exporting without a collector's CPU in the way.
pub(crate) async fn start_sink(ctx: &Ctx) -> anyhow::Result<Service> {
    let port = free_port()?;
    let mut launch = Launch::new("otlp-sink", ctx.bin("otlp-sink"));
    launch.args = vec!["--listen".into(), format!("127.0.0.1:{port}")];
    let sink = Service::start(&launch, port, "/stats", &ctx.work, &ctx.http).await?;
    *ctx.sink.lock().expect("not poisoned") = Some(sink.url.clone());
    Ok(sink)
}

/// One closed-loop round of `mode`.
async fn closed_round(
    ctx: &Ctx,
    mode: ApiMode,
    round: u32,
    sink_pid: u32,
) -> anyhow::Result<Enqueue> {
    let (c, secs) = (ctx.cfg.concurrency, ctx.cfg.seconds);
    let label = format!("{}_{round}", mode_name(mode));
    let name = ctx.scratch.name(&label);
    ctx.pg.create(&name).await?;
    let api = ctx.start_api(&format!("api_{label}"), &name, mode).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = procfs::kib(api.pid, "VmRSS");
    crate::log(&format!(
        "enqueue {} (round {round}): warm-up, then closed loop {c} in flight for {secs}s",
        mode_name(mode)
    ));
    let closed = |extra: &[String]| {
        let mut args = vec![
            "--rate".into(),
            "max".into(),
            "--max-in-flight".into(),
            c.to_string(),
        ];
        args.extend_from_slice(extra);
        args
    };
    let warmup = closed(&["--count".into(), ctx.cfg.warmup.to_string()]);
    ctx.loadgen(
        &api,
        &format!("warmup_{label}"),
        &warmup,
        Duration::from_secs(300),
    )
    .await?;
    ctx.wait_relay(&api, Duration::from_secs(60)).await?;
    ctx.pg.settle(&name).await?;
    ctx.quiet(&format!("enqueue {label}")).await;

    let sampler = RssSampler::start(api.pid);
    let mark = CpuMark::now(&[("api", api.pid), ("otlp-sink", sink_pid)]);
    let args = closed(&["--duration".into(), format!("{secs}s")]);
    let load = ctx
        .loadgen(
            &api,
            &format!("closed_{label}"),
            &args,
            Duration::from_secs(secs + 60),
        )
        .await?;
    let cpu = mark.split(Some("loadgen"));
    // The api's own CPU over the loop, per job it accepted in it.
    let api_us = cpu.cores("api") * cpu.seconds * 1e6 / load.accepted().max(1) as f64;
    let relay_catch_up_s = ctx.wait_relay(&api, Duration::from_secs(120)).await?;
    let rss = Rss {
        idle,
        load: sampler.stop(),
        hwm: procfs::kib(api.pid, "VmHWM"),
    };
    let (pg, publishes) = finish(ctx, api, &name).await?;
    crate::log(&format!(
        "  {:.0} jobs/s, p99 {:.1} ms, relay caught up {relay_catch_up_s:.1}s after",
        load.achieved_rate, load.latency_ms.p99
    ));
    Ok(Enqueue {
        run: load.run(),
        rates: vec![load.achieved_rate],
        cpu,
        api_us,
        relay_catch_up_s,
        pg,
        publishes_per_job: publishes,
        rss,
    })
}

/// One open-loop round at `half.target`, kept if its p99 is the lowest so far.
async fn half_round(ctx: &Ctx, half: &mut HalfRate, round: u32) -> anyhow::Result<()> {
    let (c, secs) = (ctx.cfg.concurrency, ctx.cfg.seconds);
    let label = format!("half_{round}");
    let name = ctx.scratch.name(&label);
    ctx.pg.create(&name).await?;
    let api = ctx
        .start_api(&format!("api_{label}"), &name, ApiMode::Off)
        .await?;
    let rate = half.target.to_string();
    let open = |seconds: u64| crate::ctx::paced(&rate, c, seconds);
    crate::log(&format!(
        "enqueue off: open loop at {rate}/s (half the peak) for {secs}s"
    ));
    // The warm-up is the same open loop, so the api's life is one kind of load.
    ctx.loadgen(
        &api,
        &format!("warmup_{label}"),
        &open(2),
        Duration::from_secs(60),
    )
    .await?;
    ctx.wait_relay(&api, Duration::from_secs(60)).await?;
    ctx.pg.settle(&name).await?;
    ctx.quiet(&format!("half rate {round}")).await;
    let limit = Duration::from_secs(secs + 60);
    let load: LoadSummary = ctx
        .loadgen(&api, &format!("open_{label}"), &open(secs), limit)
        .await?;
    ctx.wait_relay(&api, Duration::from_secs(60)).await?;
    let (pg, _) = finish(ctx, api, &name).await?;
    crate::log(&format!(
        "  p50 {:.1} ms, p99 {:.1} ms",
        load.latency_ms.p50, load.latency_ms.p99
    ));
    let run = load.run();
    half.p99s.push(run.p99_ms);
    if half.p99s.len() == 1 || run.p99_ms < half.run.p99_ms {
        half.run = run;
        half.pg = pg;
    }
    Ok(())
}

/// Stops the api and removes its database and queues; PostgreSQL work per job over its life,
/// and its confirmed publishes per job.
async fn finish(
    ctx: &Ctx,
    api: Service,
    name: &str,
) -> anyhow::Result<(crate::results::PgWork, f64)> {
    let metrics = api.metrics(&ctx.http).await?;
    let created = metric_sum(&metrics, "jobstack_jobs_created_total") as u64;
    let publishes = metric_sum(&metrics, "jobstack_amqp_publish_duration_seconds_count");
    api.stop().await?;
    ctx.pg.wait_disconnected(name).await?;
    let pg = ctx
        .pg
        .counters(name)
        .await?
        .per_job_since(&PgCounters::default(), created);
    ctx.scratch.remove(&ctx.pg, &ctx.rabbit, name).await?;
    Ok((pg, publishes / created.max(1) as f64))
}

/// Folds a round into the mode's best: the best round's figures, every round's rate, the worst
/// round's memory.
fn keep_best(best: &mut Enqueue, round: Enqueue) {
    let mut rates = std::mem::take(&mut best.rates);
    rates.extend_from_slice(&round.rates);
    let rss = best.rss.worst(round.rss);
    if rates.len() == 1 || round.run.rate > best.run.rate {
        *best = round;
    }
    best.rates = rates;
    best.rss = rss;
}

fn mode_name(mode: ApiMode) -> &'static str {
    match mode {
        ApiMode::Off => "off",
        ApiMode::On => "on",
        ApiMode::OnNoExemplars => "on_noex",
        ApiMode::Pool => "pool",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::LoadRun;

    fn round(rate: f64, load_kib: u64) -> Enqueue {
        Enqueue {
            run: LoadRun {
                rate,
                ..LoadRun::default()
            },
            rates: vec![rate],
            api_us: rate / 10.0,
            rss: Rss {
                idle: 1,
                load: load_kib,
                hwm: load_kib,
            },
            ..Enqueue::default()
        }
    }

    #[test]
    fn the_best_round_counts_and_memory_keeps_the_worst() {
        let mut best = Enqueue::default();
        keep_best(&mut best, round(2400.0, 20_000));
        keep_best(&mut best, round(2600.0, 18_000));
        keep_best(&mut best, round(2500.0, 23_000));
        assert_eq!(best.rates, [2400.0, 2600.0, 2500.0]);
        assert_eq!(best.run.rate, 2600.0);
        assert_eq!(best.api_us, 260.0);
        assert_eq!(best.rss.load, 23_000);
    }
}
