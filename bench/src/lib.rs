//! `make bench`: jobstack against this machine's own limits, in one run, written to
//! BENCHMARKS.md. A benchmark, not a test: targets are reported, never asserted.
//!
//! # Layout
//! - [`config`]: the `BENCH_*` settings; [`ctx`]: what every step shares, how services start.
//! - [`limits`]: PostgreSQL inserts (pgbench) and RabbitMQ publish / consume (amqp-bench).
//! - [`enqueue`]: `POST /jobs` closed and open loop, telemetry off and on; [`drain`]: the worker;
//!   [`storm`]: a retry storm next to a steady stream; [`fanin`]: a workflow of 1000 jobs joined
//!   by one; [`lateness`]: schedules firing alone and under load; [`flowcost`]: what flow
//!   control costs when no limit is hit; [`priority`]: priorities when work waits; [`quota`]:
//!   one client's accepts beside another's flood.
//! - [`procfs`]: CPU and memory from /proc; [`machine`]: what it is and whether it is quiet.
//! - [`pg`], [`rabbit`], [`services`]: the servers and processes; [`scratch`]: their removal.
//! - [`results`]: what was measured; [`targets`]: against what; [`report`]: BENCHMARKS.md.

pub mod config;
pub mod ctx;
pub mod drain;
pub mod enqueue;
pub mod fanin;
pub mod flowcost;
pub mod lateness;
pub mod limits;
pub mod longjobs;
pub mod machine;
pub mod pg;
pub mod pipeline;
pub mod priority;
pub mod procfs;
pub mod quota;
pub mod rabbit;
pub mod report;
pub mod results;
pub mod scratch;
pub mod services;
pub mod storm;
pub mod targets;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use crate::config::Config;
use crate::ctx::Ctx;
use crate::pg::Pg;
use crate::rabbit::Rabbit;
use crate::results::{Plan, Results};
use crate::scratch::Scratch;

/// The binaries the bench runs, besides pgbench.
const BINARIES: [&str; 5] = ["api", "worker", "loadgen", "otlp-sink", "amqp-bench"];

/// A progress line on stderr.
pub fn log(msg: &str) {
    eprintln!("[bench {}] {msg}", chrono::Local::now().format("%H:%M:%S"));
}

/// Where the run keeps the logs of every process it starts (removed when the run succeeds).
pub fn work_dir(scratch: &Scratch) -> PathBuf {
    std::env::temp_dir().join(format!("jobstack-{}", scratch.run()))
}

/// The whole run: measures in a task of its own, stops it on SIGINT or SIGTERM, sweeps what
/// it made on the servers in every case, then writes the report. The work directory (every
/// process's log) is kept when the run fails.
pub async fn run_to_end(cfg: Config) -> anyhow::Result<()> {
    let scratch = Arc::new(Scratch::new(&cfg.pg_url, &cfg.rabbit_api));
    let mut task = tokio::spawn(run(cfg.clone(), scratch.clone()));
    let outcome = tokio::select! {
        joined = &mut task => joined.unwrap_or_else(|e| Err(anyhow::anyhow!("the run panicked: {e}"))),
        signal = stopped() => {
            // Dropping the run kills the processes it started before their servers are swept.
            task.abort();
            let _ = task.await;
            Err(anyhow::anyhow!("stopped by {signal}"))
        }
    };
    scratch.sweep().await;
    let work = work_dir(&scratch);
    let written = outcome.and_then(|results| write_report(&cfg, &results));
    match written {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&work);
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("{e:#} (logs kept in {})", work.display())),
    }
}

/// The first SIGINT or SIGTERM.
async fn stopped() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Measures everything. What it makes on the servers is named by `scratch`, which the caller
/// sweeps however this ends.
pub async fn run(cfg: Config, scratch: Arc<Scratch>) -> anyhow::Result<Results> {
    cfg.check_local()?;
    let bins = cfg.bin_dir()?;
    for bin in BINARIES {
        let path = bins.join(bin);
        anyhow::ensure!(
            path.is_file(),
            "{} not found: build the release binaries first (cargo build --release -p api -p worker -p loadgen -p bench) or set BENCH_BIN_DIR",
            path.display()
        );
    }
    let pg = Pg::connect(&cfg.pg_url).await?;
    let rabbit = Rabbit::new(&cfg.rabbit_api)?;
    let rabbit_version = rabbit.version().await?;
    let work = work_dir(&scratch);
    std::fs::create_dir_all(&work).with_context(|| work.display().to_string())?;
    log(&format!(
        "run {}, binaries from {}, logs in {}",
        scratch.run(),
        bins.display(),
        work.display()
    ));

    let start =
        machine::wait_quiet("the run", cfg.idle_pct, Duration::from_secs(cfg.quiet_wait)).await;
    log(&format!("machine {:.0} % idle at the start", start.pct));
    let mut machine = machine::describe();
    machine.idle_at_start = start.pct;
    machine.rabbitmq = rabbit_version;
    (machine.postgres, machine.pg_settings) = pg.describe().await?;

    // One admin key for every api of the run (each registers it as its demo key).
    let key = format!(
        "jsk_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut headers = reqwest::header::HeaderMap::new();
    let mut bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))?;
    bearer.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, bearer);
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(10))
        .build()?;
    let ctx = Ctx {
        key,
        cfg: cfg.clone(),
        bins,
        pg,
        rabbit,
        scratch,
        http,
        work,
        sink: Mutex::new(None),
        noisy: Mutex::new(Vec::new()),
    };
    // A section BENCH_ONLY leaves out is reported as not measured.
    macro_rules! section {
        ($name:literal, $measure:expr) => {
            if cfg.only.has($name) {
                $measure.await?
            } else {
                Default::default()
            }
        };
    }
    let limits = section!("limits", limits::measure(&ctx));
    let enqueue: enqueue::Found = section!("enqueue", enqueue::measure(&ctx));
    let drain: drain::Found = section!("drain", drain::measure(&ctx));
    let storm = section!("storm", storm::measure(&ctx));
    let fanin = section!("fanin", fanin::measure(&ctx));
    // Under the load of the half-rate open loop: more than api and worker together finish.
    let lateness = section!("lateness", lateness::measure(&ctx, enqueue.half.target));
    let flow = section!("flow", flowcost::measure(&ctx));
    let priority = section!("priority", priority::measure(&ctx));
    let quota = section!("quota", quota::measure(&ctx));
    let pipeline = section!("pipeline", pipeline::measure(&ctx, cfg.soak_seconds));
    let long_jobs = section!("longjobs", longjobs::measure(&ctx, cfg.long_jobs));
    let mut drain1 = drain.drain1;
    let mut drain16 = drain.drain16;
    drain1.rss.idle = drain.idle_kib;
    drain16.rss.idle = drain.idle_kib;
    Ok(Results {
        run: ctx.scratch.run().to_string(),
        machine,
        plan: Plan {
            seconds: cfg.seconds,
            concurrency: cfg.concurrency,
            drain_jobs: cfg.drain_jobs,
            rounds: cfg.rounds,
            warmup: cfg.warmup,
            quiet_pct: cfg.idle_pct,
        },
        limits,
        off: enqueue.off,
        on: enqueue.on,
        on_no_exemplars: enqueue.on_no_exemplars,
        pool: enqueue.pool,
        half: enqueue.half,
        drain1,
        drain16,
        spans_api: enqueue.spans_api,
        log_lines_on: enqueue.log_lines_on,
        storm,
        fanin,
        lateness,
        flow,
        priority,
        quota,
        pipeline,
        long_jobs,
        noisy: ctx.noisy.into_inner().expect("not poisoned"),
    })
}

/// Writes BENCHMARKS.md and prints the tables.
pub fn write_report(cfg: &Config, results: &Results) -> anyhow::Result<()> {
    let written_at = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let doc = report::document(results, &written_at);
    std::fs::write(&cfg.out, doc).with_context(|| cfg.out.display().to_string())?;
    let dir = cfg.out.parent().filter(|d| !d.as_os_str().is_empty());
    report::charts::write(
        dir.unwrap_or(std::path::Path::new(".")),
        &results.run,
        &results.pipeline,
        &results.long_jobs,
    )?;
    println!(
        "\n{}\nWritten to {}",
        report::console(results),
        cfg.out.display()
    );
    Ok(())
}
