//! Per-client quotas under a flood: client B submits at a steady rate alone, then again while
//! client A offers ten times its quota. A's excess is refused at the edge (429, before any
//! query), so B's accept latency should barely move: the figure is B's p99 with the flood
//! against B's p99 alone, measured in one run on one api. The control: the same flood from a
//! client without a quota (all of it accepted and stored), what B would see without quotas.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use crate::ctx::{ApiMode, Ctx, LoadSummary};
use crate::results::Quota;

/// A's quota, submits per second.
pub const QUOTA: u32 = 100;
/// What A offers: ten times its quota.
pub const FLOOD: u32 = 10 * QUOTA;
/// B's steady rate.
pub const STEADY: u32 = 200;

/// Measures B alone and B beside A's flood, `rounds` times each, best kept.
pub async fn measure(ctx: &Ctx) -> anyhow::Result<Quota> {
    let name = ctx.scratch.name("quota");
    ctx.pg.create(&name).await?;
    // The api's default quota stays unlimited (as in every step); A's key carries its own.
    let api = ctx.start_api("api_quota", &name, ApiMode::Off).await?;
    let a = key(ctx, &api.url, "flood", Some(QUOTA)).await?;
    let b = key(ctx, &api.url, "steady", None).await?;
    // The control: the same flood from a client without a quota, every request accepted.
    let free = key(ctx, &api.url, "unlimited", None).await?;
    let secs = ctx.cfg.seconds.max(5);
    let args = |rate: u32| crate::ctx::paced(rate, 64, secs);
    let limit = Duration::from_secs(secs + 60);
    crate::log(&format!(
        "quotas: client B at {STEADY}/s alone, then beside client A offering {FLOOD}/s against a quota of {QUOTA}/s ({secs}s each)"
    ));
    ctx.loadgen_as(&api, "quota_warmup", &args(STEADY), limit, &b)
        .await?;
    let mut out = Quota {
        quota: QUOTA,
        flood: FLOOD,
        steady: STEADY,
        seconds: secs,
        ..Quota::default()
    };
    for round in 1..=ctx.cfg.rounds {
        ctx.quiet(&format!("quota alone {round}")).await;
        let alone = ctx
            .loadgen_as(
                &api,
                &format!("quota_alone_{round}"),
                &args(STEADY),
                limit,
                &b,
            )
            .await?;
        ctx.quiet(&format!("quota flood {round}")).await;
        let (flood_label, beside_label) = (
            format!("quota_flood_{round}"),
            format!("quota_beside_{round}"),
        );
        let (flood_args, steady_args) = (args(FLOOD), args(STEADY));
        let (flood, beside) = tokio::try_join!(
            ctx.loadgen_as(&api, &flood_label, &flood_args, limit, &a),
            ctx.loadgen_as(&api, &beside_label, &steady_args, limit, &b),
        )?;
        crate::log(&format!(
            "  round {round}: B alone p99 {:.2} ms; beside the flood p99 {:.2} ms; A accepted {:.0}/s, {} refused",
            alone.latency_ms.p99,
            beside.latency_ms.p99,
            flood.accepted() as f64 / secs as f64,
            refused(&flood)
        ));
        if out.alone_p99_ms == 0.0 || alone.latency_ms.p99 < out.alone_p99_ms {
            out.alone_p50_ms = alone.latency_ms.p50;
            out.alone_p99_ms = alone.latency_ms.p99;
        }
        ctx.quiet(&format!("quota control {round}")).await;
        let (free_label, control_label) = (
            format!("quota_free_{round}"),
            format!("quota_control_{round}"),
        );
        let (_, control) = tokio::try_join!(
            ctx.loadgen_as(&api, &free_label, &flood_args, limit, &free),
            ctx.loadgen_as(&api, &control_label, &steady_args, limit, &b),
        )?;
        crate::log(&format!(
            "  round {round}: B beside the same flood with no quota: p99 {:.2} ms",
            control.latency_ms.p99
        ));
        if out.unlimited_p99_ms == 0.0 || control.latency_ms.p99 < out.unlimited_p99_ms {
            out.unlimited_p99_ms = control.latency_ms.p99;
        }
        if out.beside_p99_ms == 0.0 || beside.latency_ms.p99 < out.beside_p99_ms {
            out.beside_p50_ms = beside.latency_ms.p50;
            out.beside_p99_ms = beside.latency_ms.p99;
            out.beside_accepted = beside.accepted();
            out.flood_accepted_rate = flood.accepted() as f64 / secs as f64;
            out.flood_refused = refused(&flood);
        }
    }
    api.stop().await?;
    ctx.pg.wait_disconnected(&name).await?;
    ctx.scratch.remove(&ctx.pg, &ctx.rabbit, &name).await?;
    Ok(out)
}

/// 429 answers.
fn refused(load: &LoadSummary) -> u64 {
    load.statuses.get("429").copied().unwrap_or(0)
}

/// A submitter's key named `name`, with its own submit rate if given; its secret.
async fn key(ctx: &Ctx, url: &str, name: &str, rate: Option<u32>) -> anyhow::Result<String> {
    let res = ctx
        .http
        .post(format!("{url}/keys"))
        .json(&json!({ "name": name, "role": "submitter", "submit_rate": rate }))
        .send()
        .await?
        .error_for_status()?;
    let body: serde_json::Value = res.json().await?;
    body["secret"]
        .as_str()
        .map(str::to_owned)
        .context("POST /keys answered no secret")
}
