//! This machine's limits for the same durable work with nothing of ours in the way:
//! PostgreSQL single-row insert transactions into the jobs table (pgbench, a C client with
//! prepared statements: the cheapest client there is), and RabbitMQ confirmed persistent
//! publishes and consume + ack on a quorum queue (this crate's `amqp-bench`).

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::ctx::{ApiMode, Ctx};
use crate::procfs::CpuMark;
use crate::results::Limits;
use crate::services::Launch;

/// One job row, as the api inserts it (the other columns take their defaults).
const INSERT: &str = "INSERT INTO jobs (id, kind, payload, trace_id, traceparent)
VALUES (gen_random_uuid(), 'sleep', '{\"duration_ms\":0,\"steps\":1}', md5(random()::text),
        '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
";

/// Messages the AMQP limits may send: far more than a step's seconds allow, so time bounds them.
const AMQP_COUNT: u64 = 300_000;

/// Measures every limit.
pub async fn measure(ctx: &Ctx) -> anyhow::Result<Limits> {
    let c = ctx.cfg.concurrency;
    let secs = ctx.cfg.seconds;
    crate::log(&format!(
        "limit: PostgreSQL inserts, pgbench -c {c} and -c 10, {secs}s each"
    ));
    let db = ctx.scratch.name("pg");
    ctx.pg.create(&db).await?;
    // The table is made by the api's own migrations, so it is the jobs table, indexes and all.
    let api = ctx.start_api("api_schema", &db, ApiMode::Off).await?;
    api.stop().await?;
    let script = ctx.work.join("insert.sql");
    std::fs::write(&script, INSERT)?;
    ctx.pg.settle(&db).await?;
    ctx.quiet("pgbench").await;
    let mark = CpuMark::now(&[]);
    let pg_tps = pgbench(ctx, &db, c, &script).await?;
    // Its backends' CPU is counted once PostgreSQL has reaped them.
    ctx.pg.wait_disconnected(&db).await?;
    let pg_cpu = mark.split(Some("pgbench"));
    let pg_tps_pool = pgbench(ctx, &db, 10, &script).await?;
    ctx.scratch.remove(&ctx.pg, &ctx.rabbit, &db).await?;
    crate::log(&format!(
        "  {pg_tps:.0} tx/s at {c} clients, {pg_tps_pool:.0} at 10"
    ));

    let broker = amqp_limits(ctx).await?;
    Ok(Limits {
        pg_tps,
        pg_tps_pool,
        pg_cpu,
        ..broker
    })
}

/// RabbitMQ: confirmed persistent publishes with `concurrency` confirms in flight, then
/// consume + ack at prefetch 16 (the worker's 16 slots) and 32; one confirm at a time, then
/// consume + ack at prefetch 1 and 2.
async fn amqp_limits(ctx: &Ctx) -> anyhow::Result<Limits> {
    let (c, secs) = (ctx.cfg.concurrency, ctx.cfg.seconds);
    crate::log(&format!(
        "limit: RabbitMQ confirmed persistent publish (window {c}) and consume+ack, quorum queue"
    ));
    let raw = ctx.scratch.name("raw");
    let (a, b) = (format!("{raw}.a"), format!("{raw}.b"));
    let publish = |queue: &str, window: u32, secs: u64| {
        let args = ["publish", "--queue", queue, "--window", &window.to_string()].map(String::from);
        async move { amqp(ctx, &args, AMQP_COUNT, secs).await }
    };
    // Each consumer gets its own share of what was published, and stops when it has it: a
    // consumer waiting on an empty queue would count the wait.
    let consume = |queue: &str, prefetch: u16, count: u64| {
        let args = [
            "consume",
            "--queue",
            queue,
            "--prefetch",
            &prefetch.to_string(),
        ]
        .map(String::from);
        async move { amqp(ctx, &args, count.max(1), secs).await }
    };
    ctx.quiet("amqp publish").await;
    let mark = CpuMark::now(&[]);
    let piped = publish(&a, c, secs).await?;
    let publish_cpu = mark.split(Some("amqp-bench"));
    let half = piped.acked / 2;
    ctx.quiet("amqp consume 16").await;
    let mark = CpuMark::now(&[]);
    let consume16 = consume(&a, 16, half).await?.rate;
    let consume_cpu = mark.split(Some("amqp-bench"));
    ctx.quiet("amqp consume 32").await;
    let consume32 = consume(&a, 32, piped.acked - half).await?.rate;
    ctx.quiet("amqp one at a time").await;
    let one = publish(&b, 1, secs.min(5)).await?;
    let consume1 = consume(&b, 1, one.acked / 2).await?.rate;
    let consume2 = consume(&b, 2, one.acked - one.acked / 2).await?.rate;
    ctx.rabbit.delete_starting(&format!("{raw}.")).await?;
    crate::log(&format!(
        "  publish {:.0}/s (one at a time {:.0}/s); consume+ack {consume16:.0}/s at prefetch 16, \
         {consume32:.0} at 32, {consume1:.0} at 1, {consume2:.0} at 2",
        piped.rate, one.rate
    ));
    Ok(Limits {
        publish: piped.rate,
        publish_one: one.rate,
        publish_cpu,
        consume16,
        consume32,
        consume1,
        consume2,
        consume_cpu,
        ..Limits::default()
    })
}

/// pgbench with `clients` connections for the step's seconds; transactions per second.
async fn pgbench(
    ctx: &Ctx,
    db: &str,
    clients: u32,
    script: &std::path::Path,
) -> anyhow::Result<f64> {
    let mut launch = Launch::new(&format!("pgbench_{clients}"), "pgbench".into());
    let secs = ctx.cfg.seconds.to_string();
    launch.args = vec![
        "-n".into(),
        "-M".into(),
        "prepared".into(),
        "-c".into(),
        clients.to_string(),
        "-j".into(),
        "2".into(),
        "-T".into(),
        secs,
        "-f".into(),
        script.display().to_string(),
        ctx.pg.url(db),
    ];
    let out = run(ctx, &launch, ctx.cfg.seconds).await?;
    parse_pgbench_tps(&out).with_context(|| format!("no `tps = ` in pgbench's output: {out}"))
}

/// The `tps = 8595.12 (without initial connection time)` line of pgbench.
pub fn parse_pgbench_tps(out: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix("tps = "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What amqp-bench reports: messages confirmed (publish) or acked (consume), and their rate.
#[derive(Debug, Deserialize)]
struct Amqp {
    acked: u64,
    rate: f64,
}

/// One amqp-bench command of up to `count` messages and `secs` seconds.
async fn amqp(ctx: &Ctx, args: &[String], count: impl ToString, secs: u64) -> anyhow::Result<Amqp> {
    let mut launch = Launch::new(&format!("amqp-bench_{}", args[0]), ctx.bin("amqp-bench"));
    launch.args = ["--url", &ctx.cfg.amqp_url]
        .map(String::from)
        .into_iter()
        .chain(args.iter().cloned())
        .chain(["--count".into(), count.to_string()])
        .chain(["--max-seconds".into(), secs.to_string()])
        .collect();
    let out = run(ctx, &launch, secs).await?;
    serde_json::from_str(out.trim()).with_context(|| format!("amqp-bench: {out}"))
}

/// Runs a client to its end (bounded: its own seconds and a margin); its stdout.
async fn run(ctx: &Ctx, launch: &Launch, secs: u64) -> anyhow::Result<String> {
    let log = ctx.work.join(format!("{}.log", launch.name));
    let mut cmd = launch.command(&log)?;
    cmd.stdout(std::process::Stdio::piped());
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", launch.program.display()))?;
    let limit = Duration::from_secs(secs + 60);
    let Ok(out) = tokio::time::timeout(limit, child.wait_with_output()).await else {
        bail!("{} still running after {limit:?}", launch.name);
    };
    let out = out?;
    if !out.status.success() {
        bail!(
            "{} failed ({}); see {}",
            launch.name,
            out.status,
            log.display()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_tps_line() {
        let out = "number of failed transactions: 0 (0.000%)\nlatency average = 7.4 ms\n\
                   initial connection time = 60.2 ms\ntps = 8595.123456 (without initial connection time)\n";
        assert_eq!(parse_pgbench_tps(out), Some(8595.123456));
        assert_eq!(parse_pgbench_tps("pgbench: error"), None);
    }
}
