//! A retry storm: hundreds of jobs failing at the same moment, next to a steady stream of other
//! jobs. The api schedules each retry after a back-off drawn at random below its step (full
//! jitter), so the failed jobs come back spread over the step instead of all in the same
//! instant; this measures what the storm does to the other jobs' time from accept to succeeded,
//! against the same stream without a storm, in one run.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use crate::ctx::{ApiMode, Ctx};
use crate::results::{EndToEnd, Storm};
use crate::services::Service;

/// The steady stream: no-op jobs per second, over each window.
const RATE: u32 = 100;
/// Each window's length.
const WINDOW: Duration = Duration::from_secs(15);
/// The jobs failing together (`fail`, transient: each is tried MAX_ATTEMPTS = 3 times).
const FAILING: u32 = 500;
/// The worker's concurrency (the bench's drain figure uses the same).
const CONCURRENCY: u16 = 16;

/// Runs the baseline window, then the storm window, on one api and one worker.
pub async fn measure(ctx: &Ctx) -> anyhow::Result<Storm> {
    let name = ctx.scratch.name("storm");
    ctx.pg.create(&name).await?;
    let api = ctx.start_api("api_storm", &name, ApiMode::Off).await?;
    let worker = ctx.start_worker("worker_storm", &name, CONCURRENCY).await?;
    ctx.quiet("retry storm").await;
    crate::log(&format!(
        "retry storm: {RATE}/s of no-op jobs for {}s, then again with {FAILING} jobs failing at once",
        WINDOW.as_secs()
    ));
    let baseline = window(ctx, &api, &name, "storm_baseline", 0).await?;
    let storm = window(ctx, &api, &name, "storm", FAILING).await?;
    let retries = retries_seen(ctx, &name).await?;
    crate::log(&format!(
        "  accept→succeeded p99: {:.1} ms without, {:.1} ms with the storm ({retries} retries)",
        baseline.p99_ms, storm.p99_ms
    ));
    worker.stop().await?;
    api.stop().await?;
    ctx.pg.wait_disconnected(&name).await?;
    ctx.scratch.remove(&ctx.pg, &ctx.rabbit, &name).await?;
    Ok(Storm {
        rate: RATE,
        seconds: WINDOW.as_secs(),
        failing: FAILING,
        retries,
        baseline,
        storm,
    })
}

/// One window of the steady stream, with `failing` jobs submitted at once at its start; the
/// stream's jobs' time from accept to succeeded, once every job of the window has ended.
async fn window(
    ctx: &Ctx,
    api: &Service,
    db: &str,
    label: &str,
    failing: u32,
) -> anyhow::Result<EndToEnd> {
    let mut conn = ctx.pg.open(db).await?;
    let from: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut conn)
        .await?;
    let args = crate::ctx::paced(RATE, 64, WINDOW.as_secs());
    let stream = ctx.loadgen(api, label, &args, WINDOW + Duration::from_secs(60));
    let storm = submit_failing(ctx, api, failing);
    let (stream, storm) = tokio::join!(stream, storm);
    stream?;
    storm?;
    // Every job of the window ended: the stream's succeeded, the failing ones failed after
    // their retries (a back-off of at most 1 s, then 2 s, with the default RETRY_BASE_MS).
    crate::pg::Pg::wait_ended(&mut conn, from, Duration::from_secs(120), label).await?;
    let (jobs, p50, p99): (i64, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT count(*), \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)), \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) \
         FROM jobs WHERE created_at >= $1 AND kind = 'sleep' AND status = 'succeeded'",
    )
    .bind(from)
    .fetch_one(&mut conn)
    .await?;
    Ok(EndToEnd {
        jobs: jobs as u64,
        p50_ms: p50.unwrap_or_default() * 1000.0,
        p99_ms: p99.unwrap_or_default() * 1000.0,
    })
}

/// Submits `n` transiently failing jobs as fast as the api takes them.
async fn submit_failing(ctx: &Ctx, api: &Service, n: u32) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    let url = format!("{}/jobs", api.url);
    let body = json!({"kind": "fail", "payload": {"transient": true}});
    let answers: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..n)
        .map(|_| async {
            let res = ctx.http.post(&url).json(&body).send().await?;
            anyhow::ensure!(
                res.status().as_u16() == 202,
                "storm submit: {}",
                res.status()
            );
            Ok(())
        })
        .buffer_unordered(50)
        .collect()
        .await;
    answers.into_iter().collect::<anyhow::Result<()>>()
}

/// Failed attempts that were retried (the api's count of re-published attempts).
async fn retries_seen(ctx: &Ctx, db: &str) -> anyhow::Result<u64> {
    let mut conn = ctx.pg.open(db).await?;
    let retried: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(attempts - 1), 0)::int8 FROM jobs WHERE kind = 'fail'",
    )
    .fetch_one(&mut conn)
    .await
    .context("counting retries")?;
    Ok(retried as u64)
}
