//! The whole path at once, as a service runs: the api and the worker together under open-loop
//! load at rising offered rates (each step on fresh services and a fresh database), then a soak
//! at 70 % of the knee. What a user sees is this figure, not enqueue and drain measured apart:
//! accepting, running and recording jobs share the same cores.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::ctx::{ApiMode, Ctx};
use crate::procfs;
use crate::results::{Pipeline, PipelineStep, SoakSample};
use crate::services::Service;

/// Offered rates, jobs/s; the steps stop rising once one falls clearly behind.
pub const RATES: [f64; 9] = [
    250.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 3500.0, 4000.0,
];
/// The worker's concurrency (the bench's drain figure uses the same).
const CONCURRENCY: u16 = 16;
/// loadgen's bound on requests in flight: far above what a step at the knee holds, so the
/// schedule, not the client, sets the rate.
const MAX_IN_FLIGHT: &str = "1024";
/// A step keeps up when the jobs reaching `succeeded` during it are at least this share of the
/// jobs accepted during it.
pub const KEEPS_UP: f64 = 0.95;
/// A step's accept p99 must stay at or under this, ms (the bound).
pub const ACCEPT_P99_MS: f64 = 20.0;
/// How often the soak samples.
const SAMPLE: Duration = Duration::from_secs(10);

/// The steps, the knee, the soak.
pub async fn measure(ctx: &Ctx, soak_seconds: u64) -> anyhow::Result<Pipeline> {
    let (telemetry_off, telemetry_on) = telemetry(ctx).await?;
    let amqp = lapin::Connection::connect(&ctx.cfg.amqp_url, Default::default()).await?;
    let channel = amqp.create_channel().await?;
    let mut steps: Vec<PipelineStep> = Vec::new();
    let mut api_rss_after_steps_kib = 0;
    for rate in RATES {
        let (step, api_rss_kib) = step(ctx, &channel, rate).await?;
        api_rss_after_steps_kib = api_rss_kib;
        let behind = step.finished < 0.5 * step.accepted || step.accept_p99_ms > 1000.0;
        steps.push(step);
        if behind {
            break;
        }
    }
    let knee = knee(&steps);

    // The soak on fresh services and a fresh database: a steady state from a clean start.
    let name = ctx.scratch.name("e2esoak");
    ctx.pg.create(&name).await?;
    let api = ctx.start_api("api_e2esoak", &name, ApiMode::Off).await?;
    let worker = ctx
        .start_worker("worker_e2esoak", &name, CONCURRENCY)
        .await?;
    let queue = format!("{name}.jobs");
    let mut conn = ctx.pg.open(&name).await?;
    let soak_rate = (0.7 * knee.unwrap_or(RATES[0])).round();
    let soak = soak(
        ctx,
        &api,
        &worker,
        &channel,
        &queue,
        &mut conn,
        soak_rate,
        soak_seconds,
    )
    .await?;
    drop(conn);
    let _ = amqp.close(200, "bench done".into()).await;
    worker.stop().await?;
    api.stop().await?;
    ctx.pg.wait_disconnected(&name).await?;
    ctx.scratch.remove(&ctx.pg, &ctx.rabbit, &name).await?;
    Ok(Pipeline {
        telemetry_off,
        telemetry_on,
        api_rss_after_steps_kib,
        seconds: ctx.cfg.seconds,
        concurrency: CONCURRENCY,
        steps,
        knee,
        soak_rate,
        soak_seconds,
        soak,
    })
}

/// One offered rate on a fresh api, worker and database (what an earlier step left behind —
/// a grown jobs table, the memory an overload made the api take — must not weigh on this one),
/// drained at its end; with the api's RSS then.
async fn step(
    ctx: &Ctx,
    channel: &lapin::Channel,
    rate: f64,
) -> anyhow::Result<(PipelineStep, u64)> {
    let name = ctx.scratch.name(&format!("e2e{rate:.0}"));
    ctx.pg.create(&name).await?;
    let api = ctx
        .start_api(&format!("api_e2e_{rate:.0}"), &name, ApiMode::Off)
        .await?;
    let worker = ctx
        .start_worker(&format!("worker_e2e_{rate:.0}"), &name, CONCURRENCY)
        .await?;
    let mut conn = ctx.pg.open(&name).await?;
    let seconds = ctx.cfg.seconds;
    ctx.quiet(&format!("end to end at {rate:.0}/s")).await;
    let since = db_now(&mut conn).await?;
    let args = crate::ctx::paced(rate, MAX_IN_FLIGHT, seconds);
    let load = ctx
        .loadgen(
            &api,
            &format!("load_e2e_{rate:.0}"),
            &args,
            Duration::from_secs(seconds + 60),
        )
        .await?;
    let until = db_now(&mut conn).await?;
    let ready = ready_messages(channel, &format!("{name}.jobs")).await?;
    let events = ready_messages(channel, &format!("{name}.api.events")).await?;
    let outbox = outbox_depth(&mut conn).await?;
    let window = (until - since).as_seconds_f64();
    let (finished, p50, p99, unfinished) = finished_in(&mut conn, since, until).await?;
    let step = PipelineStep {
        offered: rate,
        accepted: load.accepted() as f64 / window,
        failed: load.scheduled.saturating_sub(load.accepted()),
        finished: finished as f64 / window,
        accept_p50_ms: load.latency_ms.p50,
        accept_p99_ms: load.latency_ms.p99,
        e2e_p50_ms: p50,
        e2e_p99_ms: p99,
        unfinished,
        queue_ready: ready,
        events_ready: events,
        outbox,
    };
    crate::log(&format!(
        "  {rate:.0}/s offered: {:.0} accepted/s, {:.0} finished/s, accept p50/p99 {:.1} / {:.1} ms, accept→succeeded p50/p99 {:.0} / {:.0} ms, {unfinished} unfinished, jobs queue {ready}, events queue {events}, outbox {outbox}",
        step.accepted, step.finished, step.accept_p50_ms, step.accept_p99_ms, p50, p99
    ));
    crate::pg::Pg::wait_ended(
        &mut conn,
        since,
        Duration::from_secs(300),
        "end-to-end step",
    )
    .await?;
    let api_rss_kib = procfs::kib(api.pid, "VmRSS");
    drop(conn);
    worker.stop().await?;
    api.stop().await?;
    ctx.pg.wait_disconnected(&name).await?;
    ctx.scratch.remove(&ctx.pg, &ctx.rabbit, &name).await?;
    Ok((step, api_rss_kib))
}

/// Full telemetry's cost end to end: the closed loop of the flow-control figures (api and worker
/// together) with telemetry off, and on (both services exporting every span over OTLP to the
/// sink, JSON logs at info), alternating, BENCH_ROUNDS each: finished/s of each round.
pub async fn telemetry(ctx: &Ctx) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let sink = crate::enqueue::start_sink(ctx).await?;
    let endpoint = sink.url.clone();
    let worker_env = [
        ("RUST_LOG", "info"),
        ("OTEL_TRACES_SAMPLER", "always_on"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
    ];
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 1..=ctx.cfg.rounds {
        let run =
            crate::flowcost::closed_end_to_end(ctx, "e2e_off", round, ApiMode::Off, &[], &[], &[])
                .await?;
        off.push(run.finished);
        let run = crate::flowcost::closed_end_to_end(
            ctx,
            "e2e_on",
            round,
            ApiMode::On,
            &[],
            &worker_env,
            &[],
        )
        .await?;
        on.push(run.finished);
        crate::log(&format!(
            "  end to end, closed loop (round {round}): {:.0} finished/s telemetry off, {:.0} on",
            off[off.len() - 1],
            on[on.len() - 1]
        ));
    }
    sink.stop().await?;
    Ok((off, on))
}

/// The highest offered rate whose step kept up (finished ≥ KEEPS_UP of accepted), refused
/// nothing and kept accept p99 within ACCEPT_P99_MS.
pub fn knee(steps: &[PipelineStep]) -> Option<f64> {
    steps
        .iter()
        .filter(|s| {
            s.failed == 0 && s.finished >= KEEPS_UP * s.accepted && s.accept_p99_ms <= ACCEPT_P99_MS
        })
        .map(|s| s.offered)
        .reduce(f64::max)
}

/// Runs loadgen at `rate` for `seconds` while sampling the pipeline every SAMPLE.
#[allow(clippy::too_many_arguments)]
async fn soak(
    ctx: &Ctx,
    api: &Service,
    worker: &Service,
    channel: &lapin::Channel,
    queue: &str,
    conn: &mut PgConnection,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<Vec<SoakSample>> {
    ctx.quiet(&format!("soak at {rate:.0}/s")).await;
    crate::log(&format!("  soak: {rate:.0}/s for {seconds}s"));
    let args = crate::ctx::paced(rate, MAX_IN_FLIGHT, seconds);
    let load = ctx.loadgen(
        api,
        "load_e2e_soak",
        &args,
        Duration::from_secs(seconds + 120),
    );
    let sampler = async {
        let start = Instant::now();
        let mut last = db_now(conn).await?;
        let mut samples = Vec::new();
        while start.elapsed() + SAMPLE <= Duration::from_secs(seconds) {
            tokio::time::sleep(SAMPLE).await;
            let now = db_now(conn).await?;
            let finished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE finished_at > $1 AND finished_at <= $2 AND status = 'succeeded'",
            )
            .bind(last)
            .bind(now)
            .fetch_one(&mut *conn)
            .await?;
            let window = (now - last).as_seconds_f64();
            last = now;
            samples.push(SoakSample {
                at: start.elapsed().as_secs_f64(),
                finished: finished as f64 / window,
                queue_ready: ready_messages(channel, queue).await?,
                outbox: outbox_depth(conn).await?,
                api_rss_kib: procfs::kib(api.pid, "VmRSS"),
                worker_rss_kib: procfs::kib(worker.pid, "VmRSS"),
            });
        }
        anyhow::Ok(samples)
    };
    let (load, samples) = tokio::join!(load, sampler);
    let load = load?;
    crate::log(&format!(
        "  soak: {:.0} accepted/s, accept p99 {:.1} ms",
        load.achieved_rate, load.latency_ms.p99
    ));
    samples
}

async fn db_now(conn: &mut PgConnection) -> anyhow::Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(conn)
        .await?)
}

/// Messages ready in `queue` (a passive declare: exact, not the management API's five-second
/// statistics). Prefetched messages are the consumer's, not counted.
async fn ready_messages(channel: &lapin::Channel, queue: &str) -> anyhow::Result<u64> {
    let q = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await?;
    Ok(u64::from(q.message_count()))
}

async fn outbox_depth(conn: &mut PgConnection) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(conn)
        .await?;
    Ok(n.max(0) as u64)
}

/// Of the jobs accepted in [since, until): how many reached `succeeded` in that window
/// (throughput), and accept → succeeded p50/p99 of the accepted ones that did, with how many
/// had not by `until`.
async fn finished_in(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> anyhow::Result<(i64, f64, f64, u64)> {
    let finished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE finished_at >= $1 AND finished_at < $2 AND status = 'succeeded'",
    )
    .bind(since)
    .bind(until)
    .fetch_one(&mut *conn)
    .await?;
    let (p50, p99, unfinished): (Option<f64>, Option<f64>, i64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) \
                    FILTER (WHERE finished_at < $2) * 1000, \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) \
                    FILTER (WHERE finished_at < $2) * 1000, \
                count(*) FILTER (WHERE finished_at IS NULL OR finished_at >= $2) \
           FROM jobs WHERE created_at >= $1 AND created_at < $2",
    )
    .bind(since)
    .bind(until)
    .fetch_one(&mut *conn)
    .await?;
    Ok((
        finished,
        p50.unwrap_or(f64::NAN),
        p99.unwrap_or(f64::NAN),
        unfinished.max(0) as u64,
    ))
}

/// Least-squares slope of `ys` over `xs`, per minute (xs in seconds).
pub fn slope_per_minute(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in xs.iter().zip(ys) {
        num += (x - mx) * (y - my);
        den += (x - mx) * (x - mx);
    }
    if den == 0.0 { 0.0 } else { num / den * 60.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(offered: f64, accepted: f64, finished: f64, p99: f64) -> PipelineStep {
        PipelineStep {
            offered,
            accepted,
            finished,
            accept_p99_ms: p99,
            ..Default::default()
        }
    }

    #[test]
    fn the_knee_is_the_highest_step_that_kept_up_within_the_latency_bound() {
        let steps = [
            step(500.0, 500.0, 499.0, 4.0),
            step(1000.0, 1000.0, 990.0, 9.0),
            step(1500.0, 1500.0, 1300.0, 12.0), // fell behind
            step(2000.0, 1990.0, 1980.0, 35.0), // too slow to accept
        ];
        assert_eq!(knee(&steps), Some(1000.0));
        assert_eq!(knee(&steps[2..]), None);
        let refused = PipelineStep {
            failed: 3,
            ..step(250.0, 250.0, 250.0, 2.0)
        };
        assert_eq!(knee(&[refused]), None);
    }

    #[test]
    fn a_slope_is_per_minute_and_flat_is_zero() {
        let xs = [0.0, 30.0, 60.0, 90.0];
        assert!((slope_per_minute(&xs, &[10.0, 11.0, 12.0, 13.0]) - 2.0).abs() < 1e-9);
        assert_eq!(slope_per_minute(&xs, &[5.0; 4]), 0.0);
        assert_eq!(slope_per_minute(&[1.0], &[1.0]), 0.0);
    }
}
