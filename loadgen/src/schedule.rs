//! Open-loop arrival times: each request has a time fixed by the clock before the run starts,
//! whatever the server does.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep_until};

/// A stretch of the run whose rate moves linearly from `from` to `to` arrivals per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phase {
    /// How long it lasts.
    pub duration: Duration,
    /// Rate at its start.
    pub from: f64,
    /// Rate at its end.
    pub to: f64,
}

impl Phase {
    /// A constant rate.
    pub fn hold(duration: Duration, rate: f64) -> Self {
        Self {
            duration,
            from: rate,
            to: rate,
        }
    }

    /// A linear ramp.
    pub fn ramp(duration: Duration, from: f64, to: f64) -> Self {
        Self { duration, from, to }
    }

    /// Expected arrivals in the phase.
    fn total(&self) -> f64 {
        (self.from + self.to) / 2.0 * self.duration.as_secs_f64()
    }

    /// Seconds into the phase at which `m` arrivals are due: solves a·t + c·t² = m, written
    /// so that it stays exact for a = 0 (a ramp from zero) and for c = 0 (a constant rate).
    fn time_of(&self, m: f64) -> f64 {
        let a = self.from;
        let c = (self.to - self.from) / (2.0 * self.duration.as_secs_f64());
        if m <= 0.0 {
            return 0.0;
        }
        2.0 * m / (a + (a * a + 4.0 * c * m).max(0.0).sqrt())
    }
}

/// One scheduled request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// Offset from the start of the run.
    pub at: Duration,
    /// Index of its phase.
    pub phase: usize,
}

/// The arrivals of a list of phases, in order; arrival `j` is due when `j` arrivals are expected.
#[derive(Debug, Clone)]
pub struct Arrivals {
    phases: Vec<Phase>,
    idx: usize,
    phase_start: f64,
    count_before: f64,
    next: u64,
}

impl Arrivals {
    /// The arrivals of `phases`.
    pub fn new(phases: Vec<Phase>) -> Self {
        Self {
            phases,
            idx: 0,
            phase_start: 0.0,
            count_before: 0.0,
            next: 0,
        }
    }
}

impl Iterator for Arrivals {
    type Item = Arrival;
    fn next(&mut self) -> Option<Arrival> {
        loop {
            let phase = self.phases.get(self.idx)?;
            let m = self.next as f64 - self.count_before;
            if m < phase.total() {
                let at = self.phase_start + phase.time_of(m);
                self.next += 1;
                return Some(Arrival {
                    at: Duration::from_secs_f64(at),
                    phase: self.idx,
                });
            }
            self.count_before += phase.total();
            self.phase_start += phase.duration.as_secs_f64();
            self.idx += 1;
        }
    }
}

/// What the dispatcher did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dispatched {
    /// Requests handed to `fire`.
    pub sent: u64,
    /// Arrivals never sent: the in-flight cap stayed full until the end of the run.
    pub unsent: u64,
}

/// Calls `fire` for every arrival at its time, holding one of `slots` per request in flight.
///
/// `fire` gets the *scheduled* instant: a request that waited for a slot, or that the
/// generator itself sent late, still measures its latency from when it was due. Waiting for a
/// slot stops at `end`; the arrivals left then are counted as unsent.
pub async fn open_loop<I, F>(
    mut arrivals: I,
    start: Instant,
    end: Instant,
    slots: Arc<Semaphore>,
    mut fire: F,
) -> Dispatched
where
    I: Iterator<Item = Arrival>,
    F: FnMut(Arrival, Instant, OwnedSemaphorePermit),
{
    let mut done = Dispatched::default();
    while let Some(arrival) = arrivals.next() {
        let due = start + arrival.at;
        sleep_until(due).await;
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = sleep_until(end) => {
                done.unsent = 1 + arrivals.count() as u64;
                break;
            }
        };
        fire(arrival, due, permit);
        done.sent += 1;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn offsets(phases: Vec<Phase>) -> Vec<Duration> {
        Arrivals::new(phases).map(|a| a.at).collect()
    }

    #[test]
    fn constant_rate_is_evenly_spaced() {
        let at = offsets(vec![Phase::hold(ms(1000), 10.0)]);
        assert_eq!(at, (0..10).map(|i| ms(100 * i)).collect::<Vec<_>>());
    }

    #[test]
    fn ramp_from_zero_accelerates_and_hands_over_to_the_next_phase() {
        // 0 -> 10/s over 2 s is 10 arrivals; arrival j is due at sqrt(j / 2.5) s.
        let arrivals: Vec<_> = Arrivals::new(vec![
            Phase::ramp(ms(2000), 0.0, 10.0),
            Phase::hold(ms(1000), 10.0),
        ])
        .collect();
        assert_eq!(arrivals.len(), 20);
        assert_eq!(arrivals[0].at, Duration::ZERO);
        assert!((arrivals[1].at.as_secs_f64() - (1.0f64 / 2.5).sqrt()).abs() < 1e-9);
        assert!(arrivals.windows(2).all(|w| w[0].at < w[1].at));
        let first_held = arrivals.iter().position(|a| a.phase == 1).unwrap();
        assert_eq!((first_held, arrivals[first_held].at), (10, ms(2000)));
    }

    #[test]
    fn spike_phase_is_denser() {
        let at = offsets(vec![
            Phase::hold(ms(1000), 10.0),
            Phase::hold(ms(1000), 50.0),
        ]);
        assert_eq!(at.len(), 60);
        assert_eq!(at[11] - at[10], ms(20));
    }

    #[tokio::test(start_paused = true)]
    async fn fires_on_the_clock_and_reports_the_scheduled_time() {
        let start = Instant::now();
        let fired = Arc::new(Mutex::new(Vec::new()));
        let log = fired.clone();
        let arrivals = Arrivals::new(vec![Phase::hold(ms(500), 10.0)]);
        let slots = Arc::new(Semaphore::new(10));
        let out = open_loop(arrivals, start, start + ms(500), slots, move |a, due, _| {
            log.lock()
                .unwrap()
                .push((a.at, due - start, Instant::now() - start));
        })
        .await;
        assert_eq!(out, Dispatched { sent: 5, unsent: 0 });
        for (at, due, now) in fired.lock().unwrap().iter() {
            assert_eq!((due, now), (at, at));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cap_delays_requests_but_not_their_due_time() {
        // One slot and a 250 ms server: requests due every 100 ms go out late, and the
        // latency clock (`due`) still starts on schedule.
        let start = Instant::now();
        let fired = Arc::new(Mutex::new(Vec::new()));
        let log = fired.clone();
        let arrivals = Arrivals::new(vec![Phase::hold(ms(1000), 10.0)]);
        let slots = Arc::new(Semaphore::new(1));
        let out = open_loop(
            arrivals,
            start,
            start + ms(900),
            slots,
            move |_, due, permit| {
                log.lock()
                    .unwrap()
                    .push((due - start, Instant::now() - start));
                tokio::spawn(async move {
                    tokio::time::sleep(ms(250)).await;
                    drop(permit);
                });
            },
        )
        .await;
        let fired = fired.lock().unwrap();
        assert_eq!(
            fired[..3],
            [(ms(0), ms(0)), (ms(100), ms(250)), (ms(200), ms(500))]
        );
        // Sends at 0, 250, 500, 750; the slot frees again at 1000, after the end (900).
        assert_eq!(out, Dispatched { sent: 4, unsent: 6 });
    }
}
