//! What every step shares: settings, server clients, the run's names, its work directory, and
//! how to start the api, the worker and the load generator the same way each time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::config::Config;
use crate::machine;
use crate::pg::Pg;
use crate::rabbit::Rabbit;
use crate::results::LoadRun;
use crate::scratch::Scratch;
use crate::services::{Launch, Service, free_port};

/// loadgen's arguments for no-op jobs, one JSON summary, and no verdict of its own (every
/// failure is counted in the summary; the bench reports, it does not judge).
const NOOP_JOBS: [&str; 9] = [
    "--mix",
    "sleep=1",
    "--sleep-ms",
    "0",
    "--sleep-steps",
    "1",
    "--json",
    "--max-error-rate",
    "100%",
];

/// How the api is configured for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiMode {
    /// No trace export, `RUST_LOG=warn`.
    Off,
    /// OTLP to the local sink with 100 % sampling, JSON logs at info.
    On,
    /// On, without exemplars (`METRICS_EXEMPLARS=false`): what exemplars cost.
    OnNoExemplars,
    /// Off, with `DB_MAX_CONNECTIONS` = the closed loop's concurrency (the default pool is 10).
    Pool,
}

/// The shared state of a run.
#[derive(Debug)]
pub struct Ctx {
    /// Settings.
    pub cfg: Config,
    /// Where the measured binaries are.
    pub bins: PathBuf,
    /// PostgreSQL.
    pub pg: Pg,
    /// RabbitMQ management.
    pub rabbit: Rabbit,
    /// The run's names and their removal.
    pub scratch: Arc<Scratch>,
    /// For readiness checks and /metrics, and requests of its own (with [`Ctx::key`]).
    pub http: reqwest::Client,
    /// The admin API key every api of the run is started with (`API_DEMO_KEY`).
    pub key: String,
    /// Logs of every process started.
    pub work: PathBuf,
    /// The OTLP sink's URL, once it runs.
    pub sink: Mutex<Option<String>>,
    /// Steps that started on a busy machine.
    pub noisy: Mutex<Vec<String>>,
}

/// The fields of loadgen's `--json` summary the bench reads.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadSummary {
    /// Completed 2xx per second.
    pub achieved_rate: f64,
    /// Requests the schedule asked for (open loop) or that were started (closed loop).
    pub scheduled: u64,
    /// Answers by status.
    pub statuses: BTreeMap<String, u64>,
    /// Latency percentiles, ms.
    pub latency_ms: Latency,
}

/// loadgen's latency percentiles.
#[derive(Debug, Clone, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// loadgen's arguments for an open loop: `rate` submits a second (or `max`: as fast as
/// `in_flight` open requests allow) for `seconds`.
pub fn paced(
    rate: impl std::fmt::Display,
    in_flight: impl std::fmt::Display,
    seconds: u64,
) -> Vec<String> {
    vec![
        "--rate".into(),
        rate.to_string(),
        "--max-in-flight".into(),
        in_flight.to_string(),
        "--duration".into(),
        format!("{seconds}s"),
    ]
}

impl LoadSummary {
    /// 202 answers.
    pub fn accepted(&self) -> u64 {
        self.statuses.get("202").copied().unwrap_or(0)
    }

    /// As the report shows it.
    pub fn run(&self) -> LoadRun {
        LoadRun {
            rate: self.achieved_rate,
            p50_ms: self.latency_ms.p50,
            p99_ms: self.latency_ms.p99,
            failed: self.scheduled.saturating_sub(self.accepted()),
        }
    }
}

impl Ctx {
    /// A release binary beside the others.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }

    /// Starts an api on database and AMQP prefix `name`.
    pub async fn start_api(
        &self,
        label: &str,
        name: &str,
        mode: ApiMode,
    ) -> anyhow::Result<Service> {
        self.start_api_with(label, name, mode, &[]).await
    }

    /// [`Ctx::start_api`] with `extra` variables besides the mode's.
    pub async fn start_api_with(
        &self,
        label: &str,
        name: &str,
        mode: ApiMode,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        let port = free_port()?;
        let mut launch = Launch::new(label, self.bin("api"))
            .env("API_LISTEN", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", self.pg.url(name))
            .env("AMQP_URL", &self.cfg.amqp_url)
            .env("AMQP_PREFIX", name)
            .env("LOG_FORMAT", "json")
            .env("API_DEMO_KEY", &self.key)
            // The bench measures the path; per-client quotas have a step of their own.
            .env("CLIENT_SUBMIT_RATE", "0")
            .env("CLIENT_MAX_IN_FLIGHT", "0");
        launch = match mode {
            ApiMode::Off => launch.env("RUST_LOG", "warn"),
            ApiMode::Pool => launch
                .env("RUST_LOG", "warn")
                .env("DB_MAX_CONNECTIONS", self.cfg.concurrency.to_string()),
            ApiMode::On | ApiMode::OnNoExemplars => {
                let sink = self.sink.lock().expect("not poisoned").clone();
                let sink = sink.context("the OTLP sink runs before a telemetry-on api starts")?;
                launch
                    .env("RUST_LOG", "info")
                    .env("OTEL_TRACES_SAMPLER", "always_on")
                    .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
                    .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink)
                    .env("METRICS_EXEMPLARS", (mode == ApiMode::On).to_string())
            }
        };
        for (key, value) in extra {
            launch = launch.env(key, *value);
        }
        Service::start(&launch, port, "/readyz", &self.work, &self.http).await
    }

    /// Starts a worker on AMQP prefix `name`.
    pub async fn start_worker(
        &self,
        label: &str,
        name: &str,
        concurrency: u16,
    ) -> anyhow::Result<Service> {
        self.start_worker_with(label, name, concurrency, &[]).await
    }

    /// [`Ctx::start_worker`] with `extra` variables.
    pub async fn start_worker_with(
        &self,
        label: &str,
        name: &str,
        concurrency: u16,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        let port = free_port()?;
        let mut launch = Launch::new(label, self.bin("worker"))
            .env("WORKER_LISTEN", format!("127.0.0.1:{port}"))
            .env("AMQP_URL", &self.cfg.amqp_url)
            .env("AMQP_PREFIX", name)
            .env("WORKER_CONCURRENCY", concurrency.to_string())
            .env("RUST_LOG", "warn")
            .env("LOG_FORMAT", "json");
        for (key, value) in extra {
            launch = launch.env(key, *value);
        }
        Service::start(&launch, port, "/readyz", &self.work, &self.http).await
    }

    /// Runs loadgen against `api` with no-op jobs (the request path is measured, not job work)
    /// and `args` (rate, duration or count); bounded by `limit`.
    pub async fn loadgen(
        &self,
        api: &Service,
        label: &str,
        args: &[String],
        limit: Duration,
    ) -> anyhow::Result<LoadSummary> {
        self.loadgen_as(api, label, args, limit, &self.key).await
    }

    /// [`Ctx::loadgen`] as the client of API key `key`.
    pub async fn loadgen_as(
        &self,
        api: &Service,
        label: &str,
        args: &[String],
        limit: Duration,
        key: &str,
    ) -> anyhow::Result<LoadSummary> {
        let mut launch = Launch::new(label, self.bin("loadgen")).env("API_KEY", key);
        launch.args = ["--url", api.url.as_str()]
            .into_iter()
            .chain(NOOP_JOBS)
            .map(String::from)
            .chain(args.iter().cloned())
            .collect();
        let log = self.work.join(format!("{label}.log"));
        let mut cmd = launch.command(&log)?;
        cmd.stdout(std::process::Stdio::piped());
        let child = cmd.spawn().context("starting loadgen")?;
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(out) => out?,
            Err(_) => bail!(
                "loadgen {label} still running after {limit:?}; see {}",
                log.display()
            ),
        };
        // 0: within --max-error-rate, 1: not (every failure is counted in the summary anyway).
        if !matches!(out.status.code(), Some(0 | 1)) {
            bail!(
                "loadgen {label} failed ({}); see {}",
                out.status,
                log.display()
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("loadgen {label}: reading its --json summary"))
    }

    /// Waits (bounded by BENCH_STEP_WAIT) for a quiet machine before step `what`, and notes the
    /// step if it did not come.
    pub async fn quiet(&self, what: &str) {
        let wait = Duration::from_secs(self.cfg.step_wait);
        let look = machine::wait_quiet(what, self.cfg.idle_pct, wait).await;
        if look.pct < self.cfg.idle_pct {
            let note = format!("{what} ({:.0} % idle)", look.pct);
            self.noisy.lock().expect("not poisoned").push(note);
        }
    }

    /// Whether `api` has published every job it accepted (its relay caught up).
    pub async fn relay_done(&self, api: &Service) -> anyhow::Result<bool> {
        let m = api.metrics(&self.http).await?;
        let created = crate::services::metric_sum(&m, "jobstack_jobs_created_total");
        let published = crate::services::metric_sum(&m, "jobstack_outbox_published_total");
        Ok(published >= created)
    }

    /// Waits until the relay has caught up, up to `limit`; the seconds it took.
    pub async fn wait_relay(&self, api: &Service, limit: Duration) -> anyhow::Result<f64> {
        let start = tokio::time::Instant::now();
        while !self.relay_done(api).await? {
            if start.elapsed() > limit {
                crate::log(&format!(
                    "  {}: relay still behind after {limit:?}",
                    api.name
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(start.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_open_loop_is_a_rate_a_bound_and_whole_seconds() {
        assert_eq!(
            super::paced(250.0, "1024", 15),
            [
                "--rate",
                "250",
                "--max-in-flight",
                "1024",
                "--duration",
                "15s"
            ]
        );
        assert_eq!(super::paced("max", 64, 2)[1], "max");
    }
}
