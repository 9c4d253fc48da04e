//! A workflow's fan-in: a thousand jobs in one workflow, 999 children and one job that depends
//! on every one of them (Celery's chord, whose join is where Celery hangs). The figure that
//! matters is the time from the last child's success to the parent's start: the trigger makes
//! the parent due in the transaction that records that success, and the relay publishes it at
//! once (no poll in between).

use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::ctx::{ApiMode, Ctx};
use crate::results::FanIn;
use crate::services::Service;

/// Children of the parent; with it, the most jobs a workflow may have (1000).
pub const CHILDREN: u32 = 999;
/// The worker's concurrency (the bench's drain figure uses the same).
const CONCURRENCY: u16 = 16;
/// How long one workflow may take before the step gives up.
const LIMIT: Duration = Duration::from_secs(120);

/// Runs `rounds` fan-ins, one after the other, on one api and one worker.
pub async fn measure(ctx: &Ctx) -> anyhow::Result<FanIn> {
    let name = ctx.scratch.name("fanin");
    ctx.pg.create(&name).await?;
    let api = ctx.start_api("api_fanin", &name, ApiMode::Off).await?;
    let worker = ctx.start_worker("worker_fanin", &name, CONCURRENCY).await?;
    ctx.quiet("workflow fan-in").await;
    crate::log(&format!(
        "workflow fan-in: {CHILDREN} no-op children and one parent, {} rounds",
        ctx.cfg.rounds
    ));
    let mut out = FanIn {
        children: CHILDREN,
        ..FanIn::default()
    };
    for round in 1..=ctx.cfg.rounds {
        let r = round_trip(ctx, &api, &name).await?;
        crate::log(&format!(
            "  round {round}: last child → parent start {:.1} ms; whole workflow {:.2} s",
            r.gap_ms, r.total_s
        ));
        out.gaps_ms.push(r.gap_ms);
        out.totals_s.push(r.total_s);
        out.submit_ms.push(r.submit_ms);
    }
    worker.stop().await?;
    api.stop().await?;
    ctx.pg.wait_disconnected(&name).await?;
    ctx.scratch.remove(&ctx.pg, &ctx.rabbit, &name).await?;
    Ok(out)
}

/// One fan-in as PostgreSQL recorded it.
struct Round {
    /// `POST /workflows` until its 201, ms.
    submit_ms: f64,
    /// The last child's `finished_at` to the parent's `started_at`, ms.
    gap_ms: f64,
    /// The workflow's `created_at` to the parent's `finished_at`, s.
    total_s: f64,
}

/// The request: children `c0` … `c998`, and `join` after all of them.
pub fn request() -> Value {
    let noop = json!({"duration_ms": 0, "steps": 1});
    let mut jobs: Vec<Value> = (0..CHILDREN)
        .map(|i| json!({"key": format!("c{i}"), "kind": "sleep", "payload": noop}))
        .collect();
    let keys: Vec<String> = (0..CHILDREN).map(|i| format!("c{i}")).collect();
    jobs.push(json!({"key": "join", "kind": "sleep", "payload": noop, "depends_on": keys}));
    json!({"name": "bench-fan-in", "jobs": jobs})
}

/// Submits one fan-in, waits for its parent to end, reads its timings.
async fn round_trip(ctx: &Ctx, api: &Service, db: &str) -> anyhow::Result<Round> {
    let started = tokio::time::Instant::now();
    let res = ctx
        .http
        .post(format!("{}/workflows", api.url))
        .json(&request())
        .send()
        .await?;
    let submit_ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        res.status().as_u16() == 201,
        "POST /workflows: {}",
        res.status()
    );
    let body: Value = res.json().await?;
    let id = body["id"]
        .as_str()
        .context("POST /workflows answered without an id")?
        .to_owned();

    let mut conn = ctx.pg.open(db).await?;
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE workflow_id = $1::uuid AND finished_at IS NULL",
        )
        .bind(&id)
        .fetch_one(&mut conn)
        .await?;
        if open == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < LIMIT,
            "fan-in {id}: {open} jobs unfinished after {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // started_at and finished_at are the worker's own clock, as its events carry them.
    let (gap, total, failed): (Option<f64>, Option<f64>, i64) = sqlx::query_as(
        "SELECT extract(epoch FROM p.started_at - c.last)::float8, \
                extract(epoch FROM p.finished_at - w.created_at)::float8, \
                c.failed \
         FROM workflows w \
         JOIN jobs p ON p.workflow_id = w.id AND p.workflow_key = 'join' \
         CROSS JOIN LATERAL (SELECT max(finished_at) AS last, \
                                    count(*) FILTER (WHERE status <> 'succeeded') AS failed \
                             FROM jobs WHERE workflow_id = w.id AND workflow_key <> 'join') c \
         WHERE w.id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&mut conn)
    .await
    .context("reading the fan-in's timings")?;
    anyhow::ensure!(
        failed == 0,
        "fan-in {id}: {failed} children did not succeed"
    );
    Ok(Round {
        submit_ms,
        gap_ms: gap.context("the parent never started")? * 1000.0,
        total_s: total.context("the parent never finished")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_a_thousand_jobs_joined_by_one() {
        let req = request();
        let jobs = req["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 1000);
        let join = jobs.last().unwrap();
        assert_eq!(join["key"], "join");
        assert_eq!(
            join["depends_on"].as_array().unwrap().len(),
            CHILDREN as usize
        );
        assert!(jobs[..999].iter().all(|j| j.get("depends_on").is_none()));
    }
}
