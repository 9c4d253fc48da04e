//! Priorities when work waits: a backlog of priority-0 jobs held in PostgreSQL by a concurrency
//! limit, then a few priority-9 jobs submitted behind it. How long each waits from accept to
//! start shows whether the later, higher-priority jobs go first, and what that costs the rest.

use std::time::Duration;

use chrono::DateTime;

use futures_util::StreamExt as _;
use serde_json::json;

use crate::ctx::{ApiMode, Ctx};
use crate::results::Priority;
use crate::services::Service;

/// The backlog's jobs (priority 0).
const LOW: u32 = 2000;
/// The jobs submitted behind it (priority 9).
const HIGH: u32 = 50;
/// The kind's concurrency limit, and the worker's concurrency.
const SLOTS: u16 = 16;
/// Each job's run time.
const JOB_MS: u64 = 5;

/// Submits the backlog, then the high-priority jobs, and waits for every job to end.
pub async fn measure(ctx: &Ctx) -> anyhow::Result<Priority> {
    let name = ctx.scratch.name("priority");
    ctx.pg.create(&name).await?;
    let limits = format!("sleep:concurrency={SLOTS}");
    let api = ctx
        .start_api_with(
            "api_priority",
            &name,
            ApiMode::Off,
            &[("JOB_LIMITS", &limits)],
        )
        .await?;
    let worker = ctx.start_worker("worker_priority", &name, SLOTS).await?;
    ctx.quiet("priorities").await;
    crate::log(&format!(
        "priorities: {LOW} jobs at priority 0 behind a concurrency limit of {SLOTS}, then {HIGH} at priority 9"
    ));
    submit(ctx, &api, LOW, 0).await?;
    submit(ctx, &api, HIGH, 9).await?;
    let mut conn = ctx.pg.open(&name).await?;
    crate::pg::Pg::wait_ended(
        &mut conn,
        DateTime::UNIX_EPOCH,
        Duration::from_secs(300),
        "priorities",
    )
    .await?;
    let waits: Vec<(i16, f64, f64, f64)> = sqlx::query_as(
        "SELECT priority, \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)), \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)), \
                max(extract(epoch FROM started_at - created_at))::float8 \
         FROM jobs WHERE status = 'succeeded' GROUP BY priority ORDER BY priority",
    )
    .fetch_all(&mut conn)
    .await?;
    let of = |p: i16| {
        waits
            .iter()
            .find(|w| w.0 == p)
            .map(|w| (w.1 * 1000.0, w.2 * 1000.0, w.3 * 1000.0))
            .unwrap_or_default()
    };
    let (low, high) = (of(0), of(9));
    crate::log(&format!(
        "  accept → start p50/p99: priority 9 {:.0} / {:.0} ms, priority 0 {:.0} / {:.0} ms (max {:.0} ms)",
        high.0, high.1, low.0, low.1, low.2
    ));
    drop(conn);
    worker.stop().await?;
    api.stop().await?;
    ctx.pg.wait_disconnected(&name).await?;
    ctx.scratch.remove(&ctx.pg, &ctx.rabbit, &name).await?;
    Ok(Priority {
        low: LOW,
        high: HIGH,
        slots: SLOTS,
        job_ms: JOB_MS,
        low_p50_ms: low.0,
        low_p99_ms: low.1,
        low_max_ms: low.2,
        high_p50_ms: high.0,
        high_p99_ms: high.1,
    })
}

/// Submits `n` sleep jobs at `priority`, 32 at a time.
async fn submit(ctx: &Ctx, api: &Service, n: u32, priority: u8) -> anyhow::Result<()> {
    let url = format!("{}/jobs", api.url);
    let body = json!({
        "kind": "sleep",
        "payload": {"duration_ms": JOB_MS, "steps": 1},
        "priority": priority,
    });
    let answers: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..n)
        .map(|_| async {
            let res = ctx.http.post(&url).json(&body).send().await?;
            anyhow::ensure!(res.status().as_u16() == 202, "submit: {}", res.status());
            Ok(())
        })
        .buffer_unordered(32)
        .collect()
        .await;
    answers.into_iter().collect()
}
