//! Schedule fire lateness, on an idle api and under load: how long after its due time each fire
//! of a set of one-second schedules made its job. The scheduler's tick runs on the api, so load
//! on the api and on PostgreSQL is what could make it late.

use std::time::Duration;

use serde_json::json;

use crate::ctx::{ApiMode, Ctx};
use crate::results::{Late, Lateness};
use crate::services::Service;

/// One-second schedules firing together.
pub const SCHEDULES: u32 = 10;
/// The worker's concurrency (the bench's drain figure uses the same).
const CONCURRENCY: u16 = 16;

/// Measures a window with no other load, then one with `rate` submits per second offered by
/// loadgen (open loop) while the worker runs every job; each window is BENCH_SECONDS long.
pub async fn measure(ctx: &Ctx, rate: f64) -> anyhow::Result<Lateness> {
    let name = ctx.scratch.name("sched");
    ctx.pg.create(&name).await?;
    let api = ctx.start_api("api_sched", &name, ApiMode::Off).await?;
    let worker = ctx.start_worker("worker_sched", &name, CONCURRENCY).await?;
    ctx.quiet("schedule lateness").await;
    let seconds = ctx.cfg.seconds;
    crate::log(&format!(
        "schedule lateness: {SCHEDULES} schedules every 1 s, {seconds}s alone, then {seconds}s under {rate:.0}/s of submits"
    ));
    for i in 0..SCHEDULES {
        let body = json!({
            "name": format!("bench-{i}"),
            "kind": "sleep",
            "payload": {"duration_ms": 0, "steps": 1},
            "interval_secs": 1,
            "missed": "skip",
        });
        let res = ctx
            .http
            .post(format!("{}/schedules", api.url))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            res.status().as_u16() == 201,
            "POST /schedules: {}",
            res.status()
        );
    }
    // Let every schedule fire once before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = window(ctx, &api, &name, None).await?;
    let loaded = window(ctx, &api, &name, Some(rate)).await?;
    crate::log(&format!(
        "  lateness p50/p99/max: {:.1} / {:.1} / {:.1} ms alone, {:.1} / {:.1} / {:.1} ms under load ({:.0}/s accepted)",
        idle.p50_ms,
        idle.p99_ms,
        idle.max_ms,
        loaded.p50_ms,
        loaded.p99_ms,
        loaded.max_ms,
        loaded.accepted_rate
    ));
    worker.stop().await?;
    api.stop().await?;
    ctx.pg.wait_disconnected(&name).await?;
    ctx.scratch.remove(&ctx.pg, &ctx.rabbit, &name).await?;
    Ok(Lateness {
        schedules: SCHEDULES,
        seconds,
        offered: rate,
        idle,
        loaded,
    })
}

/// One window of BENCH_SECONDS, under loadgen at `load` per second if given: the lateness of
/// every fire due in it (the job's `created_at`, its insert's transaction, minus `fire_at`).
async fn window(ctx: &Ctx, api: &Service, db: &str, load: Option<f64>) -> anyhow::Result<Late> {
    let mut conn = ctx.pg.open(db).await?;
    let from: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut conn)
        .await?;
    let seconds = ctx.cfg.seconds;
    let accepted_rate = match load {
        Some(rate) => {
            let args = crate::ctx::paced(format!("{rate:.0}"), 64, seconds);
            let limit = Duration::from_secs(seconds + 60);
            ctx.loadgen(api, "sched_load", &args, limit)
                .await?
                .achieved_rate
        }
        None => {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            0.0
        }
    };
    // A fire due at the window's end has a second to be made.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Fires due: per schedule, every second from its first fire in the window to its last; a
    // schedule that made none in the window missed all of its `seconds`.
    let (scheduled, due): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), sum(due)::int8 FROM ( \
             SELECT round(extract(epoch FROM max(fire_at) - min(fire_at)))::int8 + 1 AS due \
             FROM jobs WHERE schedule_name IS NOT NULL AND fire_at >= $1 \
               AND fire_at < $1 + make_interval(secs => $2) GROUP BY schedule_name) AS per",
    )
    .bind(from)
    .bind(seconds as f64)
    .fetch_one(&mut conn)
    .await?;
    let silent = i64::from(SCHEDULES) - scheduled;
    let expected = due.unwrap_or(0) + silent.max(0) * seconds as i64;
    let (fires, p50, p99, max): (i64, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "WITH late AS (SELECT extract(epoch FROM created_at - fire_at)::float8 AS s FROM jobs \
                       WHERE schedule_name IS NOT NULL AND fire_at >= $1 \
                         AND fire_at < $1 + make_interval(secs => $2)) \
         SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY s), \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY s), max(s) FROM late",
    )
    .bind(from)
    .bind(seconds as f64)
    .fetch_one(&mut conn)
    .await?;
    Ok(Late {
        fires: fires as u64,
        expected: expected.max(0) as u64,
        p50_ms: p50.unwrap_or_default() * 1000.0,
        p99_ms: p99.unwrap_or_default() * 1000.0,
        max_ms: max.unwrap_or_default() * 1000.0,
        accepted_rate,
    })
}
