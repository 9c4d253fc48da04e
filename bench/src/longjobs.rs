//! Long jobs at scale: one worker holding thousands of jobs in flight that each wait for a minute
//! (timers, as I/O-bound work does), reporting progress every few seconds. What it costs the
//! worker (RSS), what the progress costs the api (events absorbed, accept latency beside them),
//! how fast a cancel lands while all of them run, and whether SIGTERM hands every unfinished one
//! back within the grace period with none lost and none run twice to success.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde_json::{Value, json};

use crate::ctx::{ApiMode, Ctx};
use crate::procfs;
use crate::results::{LongJobs, percentile};
use crate::services::{Service, metric_sum, metric_sum_where};

/// How long each job waits, and in how many steps (a progress event after each).
const JOB_MS: u64 = 60_000;
const STEPS: u32 = 20;
/// Jobs cancelled while all run.
const CANCELS: usize = 200;
/// No-op submits per second offered beside the long jobs, for accept latency.
const PROBE_RATE: &str = "100";
/// The worker's SHUTDOWN_GRACE_SECS, set explicitly so the report can name it.
const GRACE_S: u64 = 25;

/// Runs `jobs` long jobs on one worker with that many slots.
pub async fn measure(ctx: &Ctx, jobs: u32) -> anyhow::Result<LongJobs> {
    let name = ctx.scratch.name("long");
    ctx.pg.create(&name).await?;
    let api = ctx.start_api("api_long", &name, ApiMode::Off).await?;
    let concurrency = u16::try_from(jobs).context("BENCH_LONG_JOBS fits a worker's slots")?;
    let grace = GRACE_S.to_string();
    let env = [("SHUTDOWN_GRACE_SECS", grace.as_str())];
    let worker = ctx
        .start_worker_with("worker_long", &name, concurrency, &env)
        .await?;
    let idle_kib = procfs::kib(worker.pid, "VmRSS");
    ctx.quiet("long jobs").await;
    crate::log(&format!(
        "long jobs: {jobs} jobs of {} s in {STEPS} steps on one worker with {jobs} slots",
        JOB_MS / 1000
    ));
    let mut conn = ctx.pg.open(&name).await?;

    // The worker's RSS every second, from the first submit to SIGTERM.
    let rss = RssSampler::start(worker.pid);
    // Submit them all.
    let started = Instant::now();
    let (http, url) = (ctx.http.clone(), api.url.clone());
    let ids: Vec<String> = futures_util::stream::iter(0..jobs)
        .map(move |_| submit(http.clone(), url.clone()))
        .buffer_unordered(64)
        .try_collect()
        .await?;
    let submit_s = started.elapsed().as_secs_f64();

    // Until every one runs: the worker's RSS and the ramp.
    let ramp = Instant::now();
    let mut peak_kib = 0;
    loop {
        let running: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'running'")
            .fetch_one(&mut conn)
            .await?;
        peak_kib = peak_kib.max(procfs::kib(worker.pid, "VmRSS"));
        if running >= i64::from(jobs) {
            break;
        }
        anyhow::ensure!(
            ramp.elapsed() < Duration::from_secs(JOB_MS / 1000),
            "long jobs: only {running} of {jobs} running after {:?}",
            ramp.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_running_s = ramp.elapsed().as_secs_f64();
    crate::log(&format!(
        "  all {jobs} running {all_running_s:.1}s after the last submit ({submit_s:.1}s to submit)"
    ));

    // While they all run: progress absorbed by the api, accept latency of a probe beside them,
    // and cancels.
    let events_before = metric_sum(&api.metrics(&ctx.http).await?, "jobstack_job_events_total");
    let window = Instant::now();
    let probe_args: Vec<String> = ["--rate", PROBE_RATE, "--duration", "15s"]
        .into_iter()
        .map(String::from)
        .collect();
    let probe = ctx.loadgen(
        &api,
        "load_long_probe",
        &probe_args,
        Duration::from_secs(75),
    );
    let cancels = cancel_some(ctx, &api, &ids[..CANCELS.min(ids.len())], &mut conn);
    let (probe, cancels) = tokio::join!(probe, cancels);
    let probe = probe?;
    let cancel_ms = cancels?;
    peak_kib = peak_kib.max(procfs::kib(worker.pid, "VmRSS"));
    let events =
        metric_sum(&api.metrics(&ctx.http).await?, "jobstack_job_events_total") - events_before;
    let events_per_s = events / window.elapsed().as_secs_f64();

    // SIGTERM while they run: every unfinished job handed back within the grace period, with
    // its checkpoint; the api has applied every hand-back once nothing is left running.
    let rss = rss.stop().await;
    let signalled = Instant::now();
    worker.stop().await?;
    let exit_s = signalled.elapsed().as_secs_f64();
    let settle = Instant::now();
    let mut still_running: i64;
    loop {
        still_running = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'running'")
            .fetch_one(&mut conn)
            .await?;
        if still_running == 0 || settle.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let handed_back: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE status = 'queued' AND checkpoint IS NOT NULL",
    )
    .fetch_one(&mut conn)
    .await?;
    crate::log(&format!(
        "  SIGTERM: the worker exited after {exit_s:.1}s (grace {GRACE_S}s); {handed_back} jobs back in the queue with their checkpoint, {still_running} still running"
    ));

    // A second worker finishes the rest: every job ends once, none twice to success.
    let second = ctx
        .start_worker_with("worker_long2", &name, concurrency, &env)
        .await?;
    crate::pg::Pg::wait_ended(
        &mut conn,
        chrono::DateTime::UNIX_EPOCH,
        Duration::from_secs(JOB_MS / 1000 * 3),
        "long jobs after the restart",
    )
    .await?;
    // Every success any worker reported reached the api, which ran throughout: one applied per
    // job, and an ignored one for a job that had already succeeded (a second run to success).
    let api_metrics = api.metrics(&ctx.http).await?;
    let reported = |result: &str| {
        metric_sum_where(
            &api_metrics,
            "jobstack_job_events_total",
            &format!("event=\"succeeded\",result=\"{result}\""),
        )
    };
    let (applied, ignored) = (reported("applied"), reported("ignored"));
    let (succeeded, cancelled, other): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'cancelled'), \
                count(*) FILTER (WHERE status NOT IN ('succeeded', 'cancelled')) FROM jobs",
    )
    .fetch_one(&mut conn)
    .await?;
    drop(conn);
    second.stop().await?;
    api.stop().await?;
    ctx.pg.wait_disconnected(&name).await?;
    // Every update of a job row over the whole run (events, hand-backs, cancels), and how many
    // were heap-only: no index touched.
    let [_, updates, hot, _] = ctx
        .pg
        .counters(&name)
        .await?
        .tables
        .get("jobs")
        .copied()
        .unwrap_or_default();
    ctx.scratch.remove(&ctx.pg, &ctx.rabbit, &name).await?;
    let result = LongJobs {
        jobs,
        job_seconds: JOB_MS as f64 / 1000.0,
        steps: STEPS,
        submit_s,
        all_running_s,
        idle_kib,
        peak_kib,
        events_per_s,
        probe: probe.run(),
        cancel_p50_ms: percentile(&cancel_ms, 0.5),
        cancel_p99_ms: percentile(&cancel_ms, 0.99),
        cancels: cancel_ms.len(),
        exit_s,
        grace_s: GRACE_S as f64,
        handed_back: handed_back.max(0) as u64,
        left_running: still_running.max(0) as u64,
        succeeded: succeeded.max(0) as u64,
        cancelled: cancelled.max(0) as u64,
        other: other.max(0) as u64,
        worker_successes: applied + ignored,
        rss,
        job_updates: updates.max(0) as u64,
        job_hot_updates: hot.max(0) as u64,
    };
    crate::log(&format!(
        "  worker RSS idle {:.1} MiB, peak {:.1} MiB; {:.0} events/s absorbed; probe accept p99 {:.1} ms; cancel p50/p99 {:.0} / {:.0} ms; {} succeeded, {} cancelled, {} neither; the workers reported {} successes",
        idle_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        events_per_s,
        result.probe.p99_ms,
        result.cancel_p50_ms,
        result.cancel_p99_ms,
        result.succeeded,
        result.cancelled,
        result.other,
        result.worker_successes
    ));
    Ok(result)
}

async fn submit(http: reqwest::Client, api: String) -> anyhow::Result<String> {
    let body = json!({"kind": "sleep", "payload": {"duration_ms": JOB_MS, "steps": STEPS}});
    let res = http.post(format!("{api}/jobs")).json(&body).send().await?;
    anyhow::ensure!(res.status().as_u16() == 202, "POST /jobs: {}", res.status());
    let job: Value = res.json().await?;
    job["id"]
        .as_str()
        .map(String::from)
        .context("a 202 without an id")
}

/// Cancels `ids` one after another (a few at a time) and returns, per job, ms from the cancel's
/// request to the job's `finished_at` as `cancelled`: the worker stopped it and the api recorded
/// that.
async fn cancel_some(
    ctx: &Ctx,
    api: &Service,
    ids: &[String],
    conn: &mut sqlx::PgConnection,
) -> anyhow::Result<Vec<f64>> {
    let (http, url) = (ctx.http.clone(), api.url.clone());
    let sent: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        futures_util::stream::iter(ids.to_vec())
            .map(move |id| cancel(http.clone(), url.clone(), id))
            .buffer_unordered(4)
            .try_collect()
            .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ids: Vec<uuid::Uuid> = sent.iter().filter_map(|(id, _)| id.parse().ok()).collect();
        let done: Vec<(uuid::Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT id, finished_at FROM jobs WHERE id = ANY($1) AND status = 'cancelled'",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        if done.len() == sent.len() || Instant::now() > deadline {
            return Ok(done
                .iter()
                .filter_map(|(id, at)| {
                    let sent_at = sent.iter().find(|(s, _)| s == &id.to_string())?.1;
                    Some((*at - sent_at).num_microseconds()? as f64 / 1000.0)
                })
                .collect());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Cancels `id`, a moment after the previous one: the time it was sent.
async fn cancel(
    http: reqwest::Client,
    api: String,
    id: String,
) -> anyhow::Result<(String, chrono::DateTime<chrono::Utc>)> {
    let at = chrono::Utc::now();
    let res = http.post(format!("{api}/jobs/{id}/cancel")).send().await?;
    anyhow::ensure!(res.status().is_success(), "cancel {id}: {}", res.status());
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok((id, at))
}

/// Samples one process's VmRSS every second in the background.
struct RssSampler {
    samples: std::sync::Arc<std::sync::Mutex<Vec<(f64, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = samples.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            loop {
                let kib = procfs::kib(pid, "VmRSS");
                into.lock()
                    .expect("not poisoned")
                    .push((start.elapsed().as_secs_f64(), kib));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Self { samples, task }
    }

    /// (seconds since the start, KiB), in order.
    async fn stop(self) -> Vec<(f64, u64)> {
        self.task.abort();
        let _ = self.task.await;
        std::mem::take(&mut *self.samples.lock().expect("not poisoned"))
    }
}
