//! What the requests recorded while the run goes: latency histograms and status counts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::api::Outcome;

/// Latencies are recorded in microseconds, up to an hour, with 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Records a latency, saturating at the histogram's highest value.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

/// Counters shared by the request tasks and the progress line.
#[derive(Debug)]
pub struct Stats {
    /// Latency from the scheduled time, whole run.
    pub latency: Histogram<u64>,
    /// Latency since the progress line last looked.
    pub window: Histogram<u64>,
    /// Responses by status, plus `timeout` / `transport`.
    pub statuses: BTreeMap<String, u64>,
    /// Requests that got no 2xx.
    pub failed: u64,
    /// Requests sent so far.
    pub sent: u64,
    /// Requests completed so far.
    pub completed: u64,
}

/// [`Stats`] behind a lock; requests hold it only to record.
pub type Shared = Arc<Mutex<Stats>>;

impl Stats {
    /// Empty counters.
    pub fn shared() -> Shared {
        Arc::new(Mutex::new(Self {
            latency: histogram(),
            window: histogram(),
            statuses: BTreeMap::new(),
            failed: 0,
            sent: 0,
            completed: 0,
        }))
    }

    /// Records one finished request.
    pub fn finish(&mut self, outcome: Outcome, latency: Duration) {
        record(&mut self.latency, latency);
        record(&mut self.window, latency);
        *self.statuses.entry(outcome.label()).or_default() += 1;
        if !matches!(outcome, Outcome::Status(200..=299)) {
            self.failed += 1;
        }
        self.completed += 1;
    }
}
