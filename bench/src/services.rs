//! The processes the bench starts: the release binaries it measures (api, worker) and the
//! helpers (otlp-sink), each on a free 127.0.0.1 port, with only the environment it is given,
//! its output in the run's work directory, and stopped by SIGTERM like in production.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// How long a service may take to answer its readiness check.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// What to start.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Label for logs and the CPU split.
    pub name: String,
    /// The binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment (besides PATH): nothing leaks in from the caller's shell.
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// A launch of `program` with no arguments and no environment yet.
    pub fn new(name: &str, program: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            program,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Adds a variable.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// The command, ready to spawn: own process group, so a Ctrl-C at the terminal reaches the
    /// bench only and the bench stops its children in order; killed if the bench drops it.
    pub fn command(&self, log: &Path) -> anyhow::Result<Command> {
        let out = std::fs::File::create(log).with_context(|| log.display().to_string())?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .kill_on_drop(true);
        Ok(cmd)
    }
}

/// A running service.
#[derive(Debug)]
pub struct Service {
    /// Its label.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its output.
    pub log: PathBuf,
    child: Child,
}

impl Service {
    /// Starts `launch` (which must listen on `port`) and waits until `ready_path` answers 200.
    pub async fn start(
        launch: &Launch,
        port: u16,
        ready_path: &str,
        work: &Path,
        http: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let log = work.join(format!("{}.log", launch.name));
        let mut child = launch
            .command(&log)?
            .spawn()
            .with_context(|| format!("starting {}", launch.program.display()))?;
        let pid = child.id().context("a started child has a pid")?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready; see {}",
                    launch.name,
                    log.display()
                );
            }
            let ready = http.get(format!("{url}{ready_path}")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {READY_TIMEOUT:?}; see {}",
                    launch.name,
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            name: launch.name.clone(),
            pid,
            url,
            log,
            child,
        })
    }

    /// The service's `/metrics` text.
    pub async fn metrics(&self, http: &reqwest::Client) -> anyhow::Result<String> {
        let resp = http.get(format!("{}/metrics", self.url)).send().await;
        let text = resp?.error_for_status()?.text().await;
        text.with_context(|| format!("{} /metrics", self.name))
    }

    /// SIGTERM, then up to 15 s for a graceful exit (in-flight work finished, connections
    /// closed), then SIGKILL.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        // tokio only sends SIGKILL; `kill` sends the signal the services handle.
        let _ = std::process::Command::new("kill")
            .args(["-s", "TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            crate::log(&format!(
                "{} ignored SIGTERM for {STOP_TIMEOUT:?}; killing it",
                self.name
            ));
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The sum over every series of one metric in Prometheus text (`name` or `name{…}`).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    metric_sum_where(text, name, "")
}

/// [`metric_sum`] over the series whose labels contain `label` (e.g. `outcome="succeeded"`).
pub fn metric_sum_where(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_every_series_and_only_that_metric() {
        let text = "# HELP jobstack_jobs_finished_total Jobs.\n\
                    # TYPE jobstack_jobs_finished_total counter\n\
                    jobstack_jobs_finished_total{kind=\"sleep\",outcome=\"succeeded\"} 4990\n\
                    jobstack_jobs_finished_total{kind=\"sleep\",outcome=\"failed\"} 10\n\
                    jobstack_jobs_finished_total_extra 7\n\
                    jobstack_amqp_publish_duration_seconds_count{exchange=\"e\"} 3\n\
                    jobstack_amqp_publish_duration_seconds_sum{exchange=\"e\"} 0.015\n\
                    jobstack_outbox_published_total 12\n";
        assert_eq!(metric_sum(text, "jobstack_jobs_finished_total"), 5000.0);
        assert_eq!(metric_sum(text, "jobstack_outbox_published_total"), 12.0);
        assert_eq!(
            metric_sum(text, "jobstack_amqp_publish_duration_seconds_sum"),
            0.015
        );
        assert_eq!(metric_sum(text, "missing"), 0.0);
        assert_eq!(
            metric_sum_where(text, "jobstack_jobs_finished_total", "outcome=\"failed\""),
            10.0
        );
    }
}
