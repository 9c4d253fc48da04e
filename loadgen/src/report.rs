//! The final report: achieved rate, status counts and latency percentiles, as text or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Highest value.
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// What `--track` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrackSummary {
    /// Jobs followed (every 202).
    pub accepted: u64,
    /// Jobs by end state: succeeded, failed, cancelled.
    pub ended: BTreeMap<String, u64>,
    /// Jobs with no end state when tracking stopped, by last seen state (`missing` = 404,
    /// `unknown` = never read).
    pub lost: BTreeMap<String, u64>,
    /// Sum of `lost`.
    pub lost_total: u64,
    /// A few lost job ids, to look up.
    pub lost_examples: Vec<String>,
    /// From the scheduled send to the job's `finished_at`.
    pub end_to_end_ms: Percentiles,
    /// GET /jobs/{id} polls made.
    pub polls: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `open` or `closed`.
    pub mode: &'static str,
    /// Mix and scenario, as given.
    pub mix: String,
    /// Requests the schedule asked for (open loop) or that were started (closed loop).
    pub scheduled: u64,
    /// Requests sent.
    pub sent: u64,
    /// Arrivals never sent because the in-flight cap stayed full (they count as errors).
    pub unsent: u64,
    /// Requests completed (any outcome).
    pub completed: u64,
    /// Seconds from the first scheduled request to the last response.
    pub elapsed_s: f64,
    /// Completed 2xx responses per second.
    pub achieved_rate: f64,
    /// Responses by status, plus `timeout` and `transport`.
    pub statuses: BTreeMap<String, u64>,
    /// Failed or unsent requests over scheduled.
    pub error_rate: f64,
    /// From the scheduled time to the response.
    pub latency_ms: Percentiles,
    /// Present with `--track`.
    pub track: Option<TrackSummary>,
    /// CPU time the generator itself used (Linux: /proc/self/stat), to tell its share of a
    /// shared machine.
    pub cpu_seconds: Option<f64>,
    /// The threshold the run was held to.
    pub max_error_rate: f64,
    /// Error rate and lost-job share both within `max_error_rate`.
    pub passed: bool,
}

impl Summary {
    /// Decides `passed`: requests that failed (or were never sent) and jobs that were lost,
    /// each as a share, must stay within the threshold.
    pub fn judge(&mut self) {
        let lost_share = self
            .track
            .as_ref()
            .map_or(0.0, |t| share(t.lost_total, t.accepted));
        self.passed = self.error_rate <= self.max_error_rate && lost_share <= self.max_error_rate;
    }

    /// Prints the summary on stdout: one JSON object, or the text report.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string(self).expect("serializable"));
        } else {
            print!("{}", self.text());
        }
    }

    /// The text report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let l = &self.latency_ms;
        let _ = writeln!(s, "loadgen: {} loop, mix {}", self.mode, self.mix);
        let _ = writeln!(
            s,
            "  requests   {} sent of {} scheduled, {} completed in {:.1}s, {} unsent (cap full)",
            self.sent, self.scheduled, self.completed, self.elapsed_s, self.unsent
        );
        let _ = writeln!(s, "  rate       {:.1}/s achieved (2xx)", self.achieved_rate);
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(s, "  statuses   {}", statuses.join(", "));
        let _ = writeln!(
            s,
            "  errors     {:.2}% (max {:.2}%)",
            pct(self.error_rate),
            pct(self.max_error_rate)
        );
        let _ = writeln!(s, "  latency    {}", line(l));
        if let Some(t) = &self.track {
            let ended: Vec<String> = t.ended.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(
                s,
                "  jobs       {} accepted; ended {}",
                t.accepted,
                ended.join(", ")
            );
            if t.lost_total == 0 {
                let _ = writeln!(s, "  lost       0: every accepted job reached an end state");
            } else {
                let lost: Vec<String> = t.lost.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                let _ = writeln!(
                    s,
                    "  lost       {} ({}), e.g. {}",
                    t.lost_total,
                    lost.join(", "),
                    t.lost_examples.join(" ")
                );
            }
            let _ = writeln!(
                s,
                "  end-to-end {}  ({} polls)",
                line(&t.end_to_end_ms),
                t.polls
            );
        }
        let _ = writeln!(
            s,
            "  result     {}",
            if self.passed {
                "ok"
            } else {
                "FAILED (over --max-error-rate)"
            }
        );
        s
    }
}

fn line(l: &Percentiles) -> String {
    format!(
        "ms p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean
    )
}

fn pct(x: f64) -> f64 {
    x * 100.0
}

/// `part / whole`, 0 when there is no whole.
pub fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::histogram;

    #[test]
    fn percentiles_from_a_known_distribution() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap(); // 1 ms .. 1000 ms
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        // 3 significant digits: within 0.1 %.
        for (got, want) in [
            (p.p50, 500.0),
            (p.p90, 900.0),
            (p.p99, 990.0),
            (p.max, 1000.0),
        ] {
            assert!((got - want).abs() / want < 0.001, "{got} vs {want}");
        }
        assert!((p.mean - 500.5).abs() < 0.5);
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
    }

    #[test]
    fn lost_jobs_fail_the_run_like_errors() {
        let mut s = Summary {
            mode: "open",
            mix: "sleep=1".into(),
            scheduled: 100,
            sent: 100,
            unsent: 0,
            completed: 100,
            elapsed_s: 1.0,
            achieved_rate: 100.0,
            statuses: BTreeMap::from([("202".into(), 100)]),
            error_rate: 0.0,
            latency_ms: Percentiles::default(),
            track: Some(TrackSummary {
                accepted: 100,
                lost_total: 2,
                ..Default::default()
            }),
            cpu_seconds: None,
            max_error_rate: 0.01,
            passed: true,
        };
        s.judge();
        assert!(!s.passed);
        s.max_error_rate = 0.05;
        s.judge();
        assert!(s.passed);
        assert!(s.text().contains("lost       2"));
    }
}
