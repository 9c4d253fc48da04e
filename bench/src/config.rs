//! The run's settings: flags, each with the `BENCH_*` variable `make bench` documents.

use std::path::PathBuf;

use clap::Parser;

/// Measure jobstack against this machine's own PostgreSQL and RabbitMQ limits, in one run, and
/// write BENCHMARKS.md. A benchmark, not a test: targets are reported, never asserted.
#[derive(Debug, Clone, Parser)]
#[command(name = "bench", version)]
pub struct Config {
    /// Seconds of each measured step (a load round, a limit).
    #[arg(long, env = "BENCH_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
    /// Requests in flight in the closed loop, clients of the PostgreSQL limit, confirms in
    /// flight of the publish limit.
    #[arg(long, env = "BENCH_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,
    /// No-op jobs the worker drains in each drain round.
    #[arg(long, env = "BENCH_DRAIN_JOBS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub drain_jobs: u64,
    /// Only these sections, comma-separated (limits, enqueue, drain, storm, fanin, lateness,
    /// flow, priority, quota, pipeline, longjobs; lateness needs enqueue): a quick look at one part. The
    /// report shows the others as not measured. Empty: every section.
    #[arg(long, env = "BENCH_ONLY", default_value = "", value_parser = parse_sections)]
    pub only: Sections,
    /// Long jobs held in flight at once by one worker (each a minute of timers).
    #[arg(long, env = "BENCH_LONG_JOBS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(10..=50_000))]
    pub long_jobs: u32,
    /// Seconds of the end-to-end soak at 70 % of the knee.
    #[arg(long, env = "BENCH_SOAK_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(10..=7200))]
    pub soak_seconds: u64,
    /// Rounds of each measured enqueue and drain step; each keeps its best.
    #[arg(long, env = "BENCH_ROUNDS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Requests of the warm-up before each closed loop.
    #[arg(long, env = "BENCH_WARMUP", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub warmup: u64,
    /// Where to write the report.
    #[arg(long, env = "BENCH_OUT", default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// Directory holding the release binaries api, worker, loadgen, otlp-sink and amqp-bench
    /// (default: the directory this program runs from, which `make bench` builds them into).
    #[arg(long, env = "BENCH_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// PostgreSQL server (a superuser; the bench creates and drops its own databases).
    #[arg(
        long,
        env = "BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub pg_url: String,
    /// RabbitMQ, for the services and the limits.
    #[arg(
        long,
        env = "BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// RabbitMQ management API, to remove the run's queues and exchanges.
    #[arg(
        long,
        env = "BENCH_RABBIT_API",
        default_value = "http://guest:guest@127.0.0.1:15672/api"
    )]
    pub rabbit_api: String,
    /// Seconds to wait at the start for a quiet machine.
    #[arg(long, env = "BENCH_QUIET_WAIT", default_value_t = 180)]
    pub quiet_wait: u64,
    /// Seconds to wait before each measured step for a quiet machine.
    #[arg(long, env = "BENCH_STEP_WAIT", default_value_t = 60)]
    pub step_wait: u64,
    /// A machine at least this idle (percent) counts as quiet.
    #[arg(long, env = "BENCH_IDLE_PCT", default_value_t = 85.0)]
    pub idle_pct: f64,
}

impl Config {
    /// The release binaries' directory.
    pub fn bin_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.bin_dir {
            return Ok(dir.clone());
        }
        let exe = std::env::current_exe()?;
        Ok(exe.parent().map(PathBuf::from).unwrap_or_default())
    }

    /// Refuses a server that is not on this machine: the bench's traffic stays on 127.0.0.1.
    pub fn check_local(&self) -> anyhow::Result<()> {
        for (flag, url) in [
            ("BENCH_PG_URL", &self.pg_url),
            ("BENCH_AMQP_URL", &self.amqp_url),
            ("BENCH_RABBIT_API", &self.rabbit_api),
        ] {
            anyhow::ensure!(
                is_local(url),
                "{flag}: {} is not on 127.0.0.1; the bench only talks to this machine",
                redact(url)
            );
        }
        Ok(())
    }
}

/// Whether a URL's host is the loopback address.
pub fn is_local(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// The URL with its password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(_)) => {
            let (userinfo, after) = rest.rsplit_once('@').unwrap_or_default();
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{after}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_local() {
        assert!(is_local("postgres://postgres@127.0.0.1:5432/postgres"));
        assert!(is_local("amqp://guest:guest@localhost:5672/%2f"));
        assert!(is_local("http://guest:guest@127.0.0.1:15672/api"));
        assert!(!is_local("postgres://postgres@db.example.com:5432/x"));
        assert!(!is_local("amqp://guest:guest@127.0.0.1.example.com/%2f"));
        assert!(!is_local("not a url"));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("http://127.0.0.1/api"), "http://127.0.0.1/api");
    }
}

/// The bench's sections, in the order they run.
pub const SECTIONS: [&str; 11] = [
    "limits", "enqueue", "drain", "storm", "fanin", "lateness", "flow", "priority", "quota",
    "pipeline", "longjobs",
];

/// The sections a run measures (empty: all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sections(Vec<String>);

impl Sections {
    /// Whether `name` runs.
    pub fn has(&self, name: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|s| s == name)
    }
}

fn parse_sections(raw: &str) -> Result<Sections, String> {
    let names: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if let Some(bad) = names.iter().find(|n| !SECTIONS.contains(&n.as_str())) {
        return Err(format!(
            "unknown section {bad:?}; one of {}",
            SECTIONS.join(", ")
        ));
    }
    if names.iter().any(|n| n == "lateness") && !names.iter().any(|n| n == "enqueue") {
        return Err("lateness runs at half the enqueue peak: add enqueue".into());
    }
    Ok(Sections(names))
}

#[cfg(test)]
mod sections_tests {
    use super::*;

    #[test]
    fn sections_are_named_checked_and_empty_means_all() {
        assert!(parse_sections("").unwrap().has("drain"));
        let only = parse_sections("pipeline, drain").unwrap();
        assert!(only.has("pipeline") && only.has("drain") && !only.has("enqueue"));
        assert!(
            parse_sections("pipelines")
                .unwrap_err()
                .contains("unknown section")
        );
        assert!(parse_sections("lateness").is_err());
    }
}
