//! Command-line arguments, and the run [`Plan`] they resolve to (scenario presets included).

use std::time::Duration;

use clap::{CommandFactory, Parser, ValueEnum};

use crate::mix::{Mix, Payloads, Range};
use crate::schedule::Phase;

/// Drive a jobstack api with an open-loop job mix and report what it measured.
///
/// Requests are scheduled by the clock, and latency is measured from the scheduled time, so a
/// slow server cannot hide its delay by slowing the generator down (no coordinated omission).
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Args {
    /// Base URL of the api.
    #[arg(long, env = "LOADGEN_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The API key to send (`Authorization: Bearer`); the demo's is `API_DEMO_KEY` in `.env`.
    #[arg(long = "api-key", env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A preset load shape for the dashboards (rate, duration and mix can still be overridden).
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// Arrivals per second, or `max` for closed loop: --max-in-flight requests back to back.
    #[arg(long)]
    pub rate: Option<Rate>,
    /// How long to offer load (e.g. 30s, 2m, 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many requests (whichever of --count and --duration comes first).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Ramp linearly from 0 to --rate over this long first (part of --duration).
    #[arg(long, value_parser = parse_duration)]
    pub ramp: Option<Duration>,
    /// Cap on requests in flight; a request that has to wait for a slot still counts its
    /// latency from its scheduled time.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_in_flight: u32,
    /// Weighted job mix, kind=weight,... (kinds sleep, hash and fail get generated payloads).
    #[arg(long, default_value = "sleep=70,hash=20,fail=10")]
    pub mix: Mix,
    /// sleep: duration_ms range, N or A..B (inclusive).
    #[arg(long, default_value = "0..50")]
    pub sleep_ms: Range,
    /// sleep: steps range.
    #[arg(long, default_value = "1..3")]
    pub sleep_steps: Range,
    /// hash: rounds range (1M rounds take about 0.2 s).
    #[arg(long, default_value = "1000..50000")]
    pub hash_rounds: Range,
    /// fail: percentage of fail jobs that are transient (retried) rather than permanent.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub fail_transient_pct: u8,
    /// Every job's `priority`, drawn from this range (0..9; none by default).
    #[arg(long)]
    pub priority: Option<Range>,
    /// Every job's `concurrency_key`: one of this many (`k0`, `k1`, …; 0: none).
    #[arg(long, default_value_t = 0)]
    pub keys: u64,
    /// A distinct `unique_key` on every job (exercises the unique claim without a duplicate).
    #[arg(long)]
    pub unique: bool,
    /// A distinct `Idempotency-Key` header on every request (exercises the key's claim
    /// without a replay).
    #[arg(long)]
    pub idempotency_keys: bool,
    /// Follow every accepted job (GET /jobs/{id}) to its end state and report end-to-end latency.
    #[arg(long)]
    pub track: bool,
    /// How long to keep following jobs after the load ends; jobs still open then are lost.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub track_timeout: Duration,
    /// Cap on tracking polls per second, so following many slow jobs cannot flood the api.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub track_rate: u32,
    /// Cap on tracking polls in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub track_concurrency: u32,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the summary as one JSON object on stdout (instead of the text report).
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when failed requests (or lost jobs) exceed this share: 0.01 or 1%.
    #[arg(long, default_value = "1%", value_parser = parse_share)]
    pub max_error_rate: f64,
    /// Runtime threads for the generator itself (1 keeps it on one core).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
    /// Seed for the job mix (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Preset load shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Ramp up over 10 s, then hold the rate (default 50/s for 5 min).
    Steady,
    /// Base rate, a 5× burst for 15 % of the run, base again (default 30/s for 150 s).
    Spike,
    /// A third normal, a third mostly failing jobs (retries, dead letters), a third normal.
    FailureStorm,
}

/// `--rate`: arrivals per second, or closed loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Open loop at this many arrivals per second.
    PerSecond(f64),
    /// Closed loop: `max_in_flight` requests back to back.
    Max,
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "max" {
            return Ok(Self::Max);
        }
        match s.parse::<f64>() {
            Ok(r) if r > 0.0 && r.is_finite() => Ok(Self::PerSecond(r)),
            _ => Err(format!("`{s}` is not a positive number or `max`")),
        }
    }
}

/// What to run, resolved from [`Args`].
#[derive(Debug, Clone)]
pub struct Plan {
    /// Open-loop phases, or `None` for closed loop.
    pub phases: Option<Vec<Phase>>,
    /// The mix for each phase index (closed loop uses the first).
    pub mixes: Vec<Mix>,
    /// Upper bound on the load's length.
    pub duration: Duration,
    /// Upper bound on requests.
    pub count: Option<u64>,
}

impl Args {
    /// Resolves presets and defaults into a [`Plan`]; a bad combination is a clap error.
    pub fn plan(&self) -> Result<Plan, clap::Error> {
        let bad = |msg: String| Args::command().error(clap::error::ErrorKind::ValueValidation, msg);
        self.payloads().validate().map_err(bad)?;
        let default_duration = match self.scenario {
            Some(Scenario::Steady) => Duration::from_secs(300),
            Some(Scenario::Spike) => Duration::from_secs(150),
            Some(Scenario::FailureStorm) => Duration::from_secs(180),
            // With only a count, the duration is a generous safety bound.
            None if self.count.is_some() => Duration::from_secs(3600),
            None => Duration::from_secs(30),
        };
        let duration = self.duration.unwrap_or(default_duration);
        if duration.is_zero() {
            return Err(bad("--duration must be more than 0".into()));
        }
        let ramp = match (self.ramp, self.scenario) {
            (Some(r), _) => r,
            (None, Some(Scenario::Steady)) => Duration::from_secs(10).min(duration / 2),
            (None, _) => Duration::ZERO,
        };
        if ramp >= duration {
            return Err(bad("--ramp must be shorter than --duration".into()));
        }
        let default_rate = match self.scenario {
            Some(Scenario::Steady) => 50.0,
            Some(_) => 30.0,
            None => 100.0,
        };
        let rate = match self.rate.unwrap_or(Rate::PerSecond(default_rate)) {
            Rate::Max => {
                let mixes = vec![self.mix.clone()];
                let count = self.count;
                return Ok(Plan {
                    phases: None,
                    mixes,
                    duration,
                    count,
                });
            }
            Rate::PerSecond(r) => r,
        };
        let (shape, mixes) = self.shape(rate, duration - ramp);
        let mut phases = Vec::new();
        if !ramp.is_zero() {
            phases.push(Phase::ramp(ramp, 0.0, shape[0].from));
        }
        let mut all_mixes = vec![mixes[0].clone(); phases.len()];
        phases.extend(shape);
        all_mixes.extend(mixes);
        Ok(Plan {
            phases: Some(phases),
            mixes: all_mixes,
            duration,
            count: self.count,
        })
    }

    /// The phases after the ramp, and the mix of each.
    fn shape(&self, rate: f64, d: Duration) -> (Vec<Phase>, Vec<Mix>) {
        let normal = self.mix.clone();
        match self.scenario {
            None | Some(Scenario::Steady) => (vec![Phase::hold(d, rate)], vec![normal]),
            Some(Scenario::Spike) => (
                vec![
                    Phase::hold(d.mul_f64(0.40), rate),
                    Phase::hold(d.mul_f64(0.15), rate * 5.0),
                    Phase::hold(d.mul_f64(0.45), rate),
                ],
                vec![normal.clone(), normal.clone(), normal],
            ),
            Some(Scenario::FailureStorm) => {
                let storm: Mix = "fail=80,sleep=20".parse().expect("a valid literal mix");
                (
                    vec![Phase::hold(d / 3, rate); 3],
                    vec![normal.clone(), storm, normal],
                )
            }
        }
    }

    /// The payload ranges.
    pub fn payloads(&self) -> Payloads {
        Payloads {
            sleep_ms: self.sleep_ms,
            sleep_steps: self.sleep_steps,
            hash_rounds: self.hash_rounds,
            fail_transient_pct: self.fail_transient_pct,
            flow: crate::mix::FlowFields {
                priority: self.priority,
                keys: self.keys,
                unique: self.unique,
            },
        }
    }
}

/// Parses `250ms`, `30s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is out of range"))
}

/// Parses a share: `0.05` or `5%`, between 0 and 1.
pub fn parse_share(s: &str) -> Result<f64, String> {
    let v = match s.strip_suffix('%') {
        Some(p) => p.parse::<f64>().map(|p| p / 100.0),
        None => s.parse::<f64>(),
    }
    .map_err(|_| format!("`{s}` is not a share like 0.01 or 1%"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`{s}` must be between 0 and 1 (0% and 100%)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("loadgen").chain(extra.iter().copied())).unwrap()
    }

    #[test]
    fn durations_and_shares() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 parsecs").is_err());
        assert_eq!(parse_share("5%"), Ok(0.05));
        assert_eq!(parse_share("0.2"), Ok(0.2));
        assert!(parse_share("120%").is_err());
    }

    #[test]
    fn spike_preset_bursts_to_five_times_the_base() {
        let plan = args(&["--scenario", "spike", "--rate", "10", "--duration", "100s"])
            .plan()
            .unwrap();
        let rates: Vec<f64> = plan.phases.unwrap().iter().map(|p| p.to).collect();
        assert_eq!(rates, [10.0, 50.0, 10.0]);
    }

    #[test]
    fn steady_preset_ramps_first() {
        let plan = args(&["--scenario", "steady"]).plan().unwrap();
        let phases = plan.phases.unwrap();
        assert_eq!((phases[0].from, phases[0].to), (0.0, 50.0));
        assert_eq!(plan.mixes.len(), phases.len());
        assert_eq!(plan.duration, Duration::from_secs(300));
    }

    #[test]
    fn max_rate_is_closed_loop_and_bad_ranges_are_refused() {
        assert!(args(&["--rate", "max"]).plan().unwrap().phases.is_none());
        assert!(args(&["--sleep-steps", "0..3"]).plan().is_err());
        assert!(
            args(&["--ramp", "40s", "--duration", "30s"])
                .plan()
                .is_err()
        );
        assert!(Args::try_parse_from(["loadgen", "--rate", "-3"]).is_err());
    }
}
