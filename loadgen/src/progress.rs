//! The live progress line on stderr (rate, errors, p99), drawn only when stderr is a terminal.

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::stats::Shared;
use crate::track::Tracker;

/// The running progress line, if any.
#[derive(Debug)]
pub struct Progress(Option<JoinHandle<()>>);

/// Starts redrawing the line every second, unless stderr is not a terminal.
pub fn start(stats: Shared, tracker: Option<Tracker>, start: Instant) -> Progress {
    if !std::io::stderr().is_terminal() {
        return Progress(None);
    }
    Progress(Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = (Instant::now(), 0u64);
        loop {
            tick.tick().await;
            let line = {
                let mut s = stats.lock().expect("not poisoned");
                let now = Instant::now();
                let rate = (s.completed - last.1) as f64 / (now - last.0).as_secs_f64();
                last = (now, s.completed);
                let p99 = s.window.value_at_quantile(0.99) as f64 / 1000.0;
                s.window.reset();
                let in_flight = s.sent - s.completed;
                format!(
                    "{:>5.0}s  rate {rate:>7.1}/s  in flight {in_flight:>4}  done {:>7}  errors {:>5}  p99 {p99:>8.2} ms",
                    start.elapsed().as_secs_f64(),
                    s.completed,
                    s.failed
                )
            };
            let tracking = tracker
                .as_ref()
                .map(|t| format!("  tracking {}", t.pending()));
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}{}", tracking.unwrap_or_default());
            let _ = err.flush();
        }
    })))
}

impl Progress {
    /// Stops and clears the line.
    pub fn stop(self) {
        if let Some(task) = self.0 {
            task.abort();
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}
