//! The attempts this worker knows of: the ones it runs (each with a stop that a cancel, a
//! shutdown or a lost lease trips, and, once its message is acked, the lease it holds), and the
//! jobs the api asked to cancel, as read from the control stream. A cancel names a generation:
//! a job re-driven after it was cancelled runs. Cancelled jobs that are not running here are
//! remembered (bounded, oldest forgotten first) so that the job is skipped whenever it is
//! delivered here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use jobs_contract::messages::Lease;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How many cancelled jobs to remember: about 5 MB. The control stream keeps a week of cancels;
/// past this many, the oldest is forgotten, and the api answers that job's `started` event with
/// the cancel again, which stops it at its first step.
const REMEMBERED: usize = 100_000;

/// A job's generation.
type Series = (Uuid, u32);

/// Why an attempt is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The api cancelled the job.
    Cancelled,
    /// The worker is shutting down: save a checkpoint and hand the job back.
    Shutdown,
    /// The worker could not renew the attempt's lease for half of it: the api will give the
    /// attempt up, so it must stop before another one may start.
    LeaseLost,
    /// The attempt's message went back to the broker (its `started` was not confirmed, or its
    /// ack failed): another delivery runs the attempt, so this one stops without a word.
    HandedBack,
}

/// An attempt's stop: a token to wait on, and why it tripped (the first reason wins).
#[derive(Debug, Clone, Default)]
pub struct Stop {
    token: CancellationToken,
    reason: Arc<OnceLock<StopReason>>,
}

impl Stop {
    /// Asks the attempt to stop, for `reason` (unless it already was, for another).
    pub fn trip(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Why it was asked to stop, if it was.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason.get().copied()
    }

    /// Resolves once the attempt is asked to stop.
    pub async fn tripped(&self) {
        self.token.cancelled().await;
    }
}

/// A running attempt.
#[derive(Debug)]
struct Running {
    attempt: u32,
    stop: Stop,
    /// Set once its message is acked: the lease it lives on from then, and since when the
    /// worker holds it (its first confirmed `started`).
    lease: Option<(Duration, Instant)>,
}

/// Shared between the control consumer, the job tasks and the heartbeat.
#[derive(Debug, Default)]
pub struct Attempts {
    inner: Mutex<Inner>,
    /// Notified when an attempt starts or stops holding a lease (the intake re-sizes).
    leases_changed: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    running: HashMap<Series, Running>,
    cancelled: HashSet<Series>,
    order: VecDeque<Series>,
}

impl Attempts {
    /// A cancel was read (again, after a reconnect: the stream is read from its start).
    /// Returns whether it stops a job running here.
    pub fn cancel(&self, id: Uuid, generation: u32) -> bool {
        let mut inner = self.inner.lock().expect("not poisoned");
        let series = (id, generation);
        let running = inner
            .running
            .get(&series)
            .inspect(|r| r.stop.trip(StopReason::Cancelled))
            .is_some();
        if inner.cancelled.insert(series) {
            if inner.order.len() == REMEMBERED
                && let Some(oldest) = inner.order.pop_front()
            {
                inner.cancelled.remove(&oldest);
            }
            inner.order.push_back(series);
        }
        running
    }

    /// An attempt starts here: its stop, already tripped if the job is cancelled.
    pub fn start(&self, id: Uuid, generation: u32, attempt: u32) -> Stop {
        let mut inner = self.inner.lock().expect("not poisoned");
        let series = (id, generation);
        let stop = Stop::default();
        if inner.cancelled.contains(&series) {
            stop.trip(StopReason::Cancelled);
        }
        inner.running.insert(
            series,
            Running {
                attempt,
                stop: stop.clone(),
                lease: None,
            },
        );
        stop
    }

    /// The attempt's message is acked: it lives on `lease` from now, renewed by heartbeats.
    pub fn hold(&self, id: Uuid, generation: u32, lease: Duration) {
        let mut inner = self.inner.lock().expect("not poisoned");
        if let Some(r) = inner.running.get_mut(&(id, generation)) {
            r.lease = Some((lease, Instant::now()));
            self.leases_changed.notify_one();
        }
    }

    /// The attempt is over.
    pub fn finish(&self, id: Uuid, generation: u32) {
        let mut inner = self.inner.lock().expect("not poisoned");
        if inner
            .running
            .remove(&(id, generation))
            .is_some_and(|r| r.lease.is_some())
        {
            self.leases_changed.notify_one();
        }
    }

    /// How many attempts hold a lease (their messages acked): the slots long jobs take.
    pub fn holding(&self) -> usize {
        let inner = self.inner.lock().expect("not poisoned");
        inner.running.values().filter(|r| r.lease.is_some()).count()
    }

    /// Resolves when an attempt starts or stops holding a lease.
    pub async fn leases_changed(&self) {
        self.leases_changed.notified().await;
    }

    /// The attempts that hold a lease, for a heartbeat; and the shortest lease among them.
    pub fn leases(&self) -> (Vec<Lease>, Option<Duration>) {
        let inner = self.inner.lock().expect("not poisoned");
        let mut shortest: Option<Duration> = None;
        let leases = inner
            .running
            .iter()
            .filter_map(|(&(job_id, generation), r)| {
                let (lease, _) = r.lease?;
                shortest = Some(shortest.map_or(lease, |s| s.min(lease)));
                Some(Lease {
                    job_id,
                    attempt: r.attempt,
                    generation,
                })
            })
            .collect();
        (leases, shortest)
    }

    /// Stops every attempt whose lease has gone half of it since `renewed` (the last heartbeat
    /// the broker confirmed) or since it was acked, whichever is later; returns how many.
    pub fn fence(&self, renewed: Option<Instant>) -> usize {
        let inner = self.inner.lock().expect("not poisoned");
        let mut stopped = 0;
        for r in inner.running.values() {
            let Some((lease, since)) = r.lease else {
                continue;
            };
            let alive = renewed.map_or(since, |at| at.max(since));
            if alive.elapsed() > lease / 2 && r.stop.reason().is_none() {
                r.stop.trip(StopReason::LeaseLost);
                stopped += 1;
            }
        }
        stopped
    }

    /// Asks every running attempt to stop, for `reason`.
    pub fn stop_all(&self, reason: StopReason) -> usize {
        let inner = self.inner.lock().expect("not poisoned");
        inner.running.values().for_each(|r| r.stop.trip(reason));
        inner.running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_job_stays_cancelled_but_a_redrive_does_not() {
        let a = Attempts::default();
        let id = Uuid::new_v4();
        a.cancel(id, 0);
        a.cancel(id, 0);
        assert_eq!(a.start(id, 0, 1).reason(), Some(StopReason::Cancelled));
        a.finish(id, 0);
        assert_eq!(
            a.start(id, 0, 2).reason(),
            Some(StopReason::Cancelled),
            "a redelivery is skipped too"
        );
        a.finish(id, 0);
        assert_eq!(
            a.start(id, 1, 1).reason(),
            None,
            "the re-driven generation runs"
        );
    }

    #[test]
    fn cancel_while_running_trips_the_stop_and_the_first_reason_wins() {
        let a = Attempts::default();
        let id = Uuid::new_v4();
        let stop = a.start(id, 2, 1);
        assert!(!a.cancel(id, 1));
        assert_eq!(stop.reason(), None, "another generation");
        assert!(a.cancel(id, 2));
        a.stop_all(StopReason::Shutdown);
        assert_eq!(stop.reason(), Some(StopReason::Cancelled));
    }

    #[test]
    fn only_acked_attempts_heartbeat_and_a_silent_lease_is_fenced_at_half() {
        let a = Attempts::default();
        let (held, fresh) = (Uuid::new_v4(), Uuid::new_v4());
        let held_stop = a.start(held, 0, 3);
        let fresh_stop = a.start(fresh, 0, 1);
        assert_eq!(a.leases(), (vec![], None), "nothing acked yet");
        a.hold(held, 0, Duration::from_millis(40));
        let (leases, shortest) = a.leases();
        assert_eq!(
            leases,
            [Lease {
                job_id: held,
                attempt: 3,
                generation: 0
            }]
        );
        assert_eq!(shortest, Some(Duration::from_millis(40)));
        assert_eq!(a.fence(Some(Instant::now())), 0, "just renewed");
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(
            a.fence(None),
            1,
            "half the lease without a confirmed heartbeat"
        );
        assert_eq!(held_stop.reason(), Some(StopReason::LeaseLost));
        assert_eq!(fresh_stop.reason(), None, "not acked: no lease to lose");
        a.finish(held, 0);
        assert_eq!(a.leases().0, []);
    }

    #[test]
    fn remembers_a_bounded_number() {
        let a = Attempts::default();
        let first = Uuid::new_v4();
        a.cancel(first, 0);
        for _ in 0..REMEMBERED {
            a.cancel(Uuid::new_v4(), 0);
        }
        assert_eq!(
            a.start(first, 0, 1).reason(),
            None,
            "the oldest was forgotten"
        );
        assert_eq!(a.inner.lock().unwrap().cancelled.len(), REMEMBERED);
    }
}
