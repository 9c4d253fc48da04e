//! What flow control costs when no limit is hit: the same closed loop of no-op jobs through api
//! and worker together, once unlimited and once with each mechanism switched on at a level the
//! load never reaches (a priority on every job, a unique key on every job, a concurrency limit
//! per kind and per key, a rate limit), and with an `Idempotency-Key` on every request (keyed
//! requests share the group commit). Peers report halving their throughput with such features
//! on (river#1145); the target here is under 10 %.

use std::time::Duration;

use chrono::DateTime;

use crate::ctx::{ApiMode, Ctx};
use crate::results::{FlowCost, FlowRun};

/// The worker's concurrency (the bench's drain figure uses the same).
const CONCURRENCY: u16 = 16;
/// Requests in flight from loadgen.
pub(crate) const IN_FLIGHT: &str = "64";

/// One mechanism: its label, the api's `JOB_LIMITS`, loadgen's extra arguments.
struct Mode {
    label: &'static str,
    limits: &'static str,
    args: &'static [&'static str],
}

const MODES: [Mode; 7] = [
    Mode {
        label: "unlimited",
        limits: "",
        args: &[],
    },
    Mode {
        label: "priority 0–9 on every job",
        limits: "",
        args: &["--priority", "0..9"],
    },
    Mode {
        label: "a unique_key on every job",
        limits: "",
        args: &["--unique"],
    },
    Mode {
        label: "an Idempotency-Key on every request",
        limits: "",
        args: &["--idempotency-keys"],
    },
    Mode {
        label: "concurrency limit per kind (100000)",
        limits: "sleep:concurrency=100000",
        args: &[],
    },
    Mode {
        label: "concurrency limit per key (100000; 100 keys)",
        limits: "sleep:concurrency_per_key=100000",
        args: &["--keys", "100"],
    },
    Mode {
        label: "rate limit per kind (1000000/s)",
        limits: "sleep:rate=1000000/s",
        args: &[],
    },
];

/// Runs every mode `BENCH_ROUNDS` times, the modes in turn within each round (so a noisy
/// stretch of the machine does not fall on one mode only), each run on a fresh api, worker and
/// database; keeps each mode's best run (noise only ever lowers throughput).
pub async fn measure(ctx: &Ctx) -> anyhow::Result<FlowCost> {
    let mut best: Vec<Option<FlowRun>> = vec![None; MODES.len()];
    for round in 1..=ctx.cfg.rounds {
        for (i, mode) in MODES.iter().enumerate() {
            let run = measure_one(ctx, i, mode, round).await?;
            let kept = &mut best[i];
            if kept.as_ref().is_none_or(|k| run.finished > k.finished) {
                *kept = Some(run);
            }
        }
    }
    Ok(FlowCost {
        seconds: ctx.cfg.seconds,
        rounds: ctx.cfg.rounds,
        runs: best.into_iter().flatten().collect(),
    })
}

/// One run of `mode`.
async fn measure_one(ctx: &Ctx, i: usize, mode: &Mode, round: u32) -> anyhow::Result<FlowRun> {
    let env: Vec<(&str, &str)> = if mode.limits.is_empty() {
        Vec::new()
    } else {
        vec![("JOB_LIMITS", mode.limits)]
    };
    let run = closed_end_to_end(
        ctx,
        &format!("flow{i}"),
        round,
        ApiMode::Off,
        &env,
        &[],
        mode.args,
    )
    .await?;
    crate::log(&format!(
        "  {} (round {round}): {:.0} accepted/s, {:.0} finished/s end to end",
        mode.label, run.accepted, run.finished
    ));
    Ok(FlowRun {
        label: mode.label.to_owned(),
        ..run
    })
}

/// A closed loop of IN_FLIGHT no-op submits for BENCH_SECONDS through a fresh api (`mode`,
/// `api_env`) and worker (`worker_env`) on a fresh database; `finished` is every accepted job's
/// end over the span from the first accept to the last end.
pub(crate) async fn closed_end_to_end(
    ctx: &Ctx,
    label: &str,
    round: u32,
    mode: ApiMode,
    api_env: &[(&str, &str)],
    worker_env: &[(&str, &str)],
    load_args: &[&str],
) -> anyhow::Result<FlowRun> {
    let name = ctx.scratch.name(&format!("{label}_{round}"));
    ctx.pg.create(&name).await?;
    let api = ctx
        .start_api_with(&format!("api_{label}"), &name, mode, api_env)
        .await?;
    let worker = ctx
        .start_worker_with(&format!("worker_{label}"), &name, CONCURRENCY, worker_env)
        .await?;
    ctx.quiet(&format!("{label} (round {round})")).await;
    let mut conn = ctx.pg.open(&name).await?;
    let seconds = ctx.cfg.seconds;
    let mut args = crate::ctx::paced("max", IN_FLIGHT, seconds);
    args.extend(load_args.iter().map(|s| (*s).to_owned()));
    let load = ctx
        .loadgen(
            &api,
            &format!("load_{label}"),
            &args,
            Duration::from_secs(seconds + 60),
        )
        .await?;
    // Every accepted job ends, then the span from the first accept to the last end.
    crate::pg::Pg::wait_ended(
        &mut conn,
        DateTime::UNIX_EPOCH,
        Duration::from_secs(120),
        label,
    )
    .await?;
    let (jobs, span): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM max(finished_at) - min(created_at))::float8 \
             FROM jobs WHERE status = 'succeeded'",
    )
    .fetch_one(&mut conn)
    .await?;
    let finished = span.filter(|s| *s > 0.0).map_or(0.0, |s| jobs as f64 / s);
    drop(conn);
    worker.stop().await?;
    api.stop().await?;
    ctx.pg.wait_disconnected(&name).await?;
    ctx.scratch.remove(&ctx.pg, &ctx.rabbit, &name).await?;
    Ok(FlowRun {
        label: label.to_owned(),
        accepted: load.achieved_rate,
        finished,
        p99_ms: load.latency_ms.p99,
    })
}
