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

/// An attempt's stop: a token to wait on, and why it tripped (the first reason wins); and,
/// apart from it, whether its lease is lost (whatever stopped it first, nothing it reports after
/// that may count: the api is about to give it up).
#[derive(Debug, Clone, Default)]
pub struct Stop {
    token: CancellationToken,
    reason: Arc<OnceLock<StopReason>>,
    lease_lost: CancellationToken,
}

impl Stop {
    /// Asks the attempt to stop, for `reason` (unless it already was, for another).
    pub fn trip(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// The lease could not be renewed for half of it: stop, and say nothing more.
    pub fn lose_lease(&self) {
        self.trip(StopReason::LeaseLost);
        self.lease_lost.cancel();
    }

    /// Resolves once the lease is lost.
    pub async fn lease_lost(&self) {
        self.lease_lost.cancelled().await;
    }

    /// Whether `other` is this very stop (the same attempt on this worker, not another copy).
    fn same(&self, other: &Stop) -> bool {
        Arc::ptr_eq(&self.reason, &other.reason)
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

    /// An attempt starts here: its stop, already tripped if the job is cancelled. `None` when
    /// the delivery is a copy of an attempt that runs here already (the relay published it
    /// twice) or of an older one: it must not run. A copy of an attempt whose message went back
    /// (its ack failed) replaces it; an older attempt still running here is one the api gave up
    /// (it published this one after), and stops.
    pub fn start(&self, id: Uuid, generation: u32, attempt: u32) -> Option<Stop> {
        let mut inner = self.inner.lock().expect("not poisoned");
        let series = (id, generation);
        if let Some(other) = inner.running.get(&series)
            && other.stop.reason() != Some(StopReason::HandedBack)
        {
            if other.attempt >= attempt {
                return None;
            }
            other.stop.lose_lease();
        }
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
        Some(stop)
    }

    /// The attempt's message is acked: it lives on `lease` from now, renewed by heartbeats.
    pub fn hold(&self, id: Uuid, generation: u32, stop: &Stop, lease: Duration) {
        let mut inner = self.inner.lock().expect("not poisoned");
        if let Some(r) = inner.running.get_mut(&(id, generation))
            && r.stop.same(stop)
        {
            r.lease = Some((lease, Instant::now()));
            self.leases_changed.notify_one();
        }
    }

    /// The attempt is over (its outcome published: until then its lease is renewed). Leaves
    /// alone another copy that replaced it.
    pub fn finish(&self, id: Uuid, generation: u32, stop: &Stop) {
        let mut inner = self.inner.lock().expect("not poisoned");
        let series = (id, generation);
        if inner
            .running
            .get(&series)
            .is_some_and(|r| r.stop.same(stop))
            && inner
                .running
                .remove(&series)
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
            if alive.elapsed() > lease / 2 && !r.stop.lease_lost.is_cancelled() {
                r.stop.lose_lease();
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
        let first = a.start(id, 0, 1).unwrap();
        assert_eq!(first.reason(), Some(StopReason::Cancelled));
        a.finish(id, 0, &first);
        let again = a.start(id, 0, 2).unwrap();
        assert_eq!(
            again.reason(),
            Some(StopReason::Cancelled),
            "a redelivery is skipped too"
        );
        a.finish(id, 0, &again);
        assert_eq!(
            a.start(id, 1, 1).unwrap().reason(),
            None,
            "the re-driven generation runs"
        );
    }

    #[test]
    fn cancel_while_running_trips_the_stop_and_the_first_reason_wins() {
        let a = Attempts::default();
        let id = Uuid::new_v4();
        let stop = a.start(id, 2, 1).unwrap();
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
        let held_stop = a.start(held, 0, 3).unwrap();
        let fresh_stop = a.start(fresh, 0, 1).unwrap();
        assert_eq!(a.leases(), (vec![], None), "nothing acked yet");
        a.hold(held, 0, &held_stop, Duration::from_millis(40));
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
        a.finish(held, 0, &held_stop);
        assert_eq!(a.leases().0, []);
    }

    #[test]
    fn a_second_copy_of_a_running_attempt_does_not_run_and_a_handed_back_one_is_replaced() {
        let a = Attempts::default();
        let id = Uuid::new_v4();
        let first = a.start(id, 0, 2).unwrap();
        a.hold(id, 0, &first, Duration::from_secs(60));
        assert!(a.start(id, 0, 2).is_none(), "the relay published it twice");
        assert!(a.start(id, 0, 1).is_none(), "an older attempt");
        // Its ack failed: the broker hands the message out again, here.
        first.trip(StopReason::HandedBack);
        let second = a.start(id, 0, 2).unwrap();
        a.hold(id, 0, &first, Duration::from_secs(1));
        a.finish(id, 0, &first);
        assert_eq!(
            a.leases().0.len(),
            0,
            "the old copy neither holds nor finishes the new one"
        );
        a.hold(id, 0, &second, Duration::from_secs(60));
        assert_eq!(a.leases().0.len(), 1);
        // The api gave attempt 2 up and published attempt 3: attempt 2 stops, 3 runs.
        let third = a.start(id, 0, 3).unwrap();
        assert_eq!(second.reason(), Some(StopReason::LeaseLost));
        assert_eq!(third.reason(), None);
        a.finish(id, 0, &second);
        assert_eq!(a.holding(), 0, "attempt 3 is not acked yet");
        a.finish(id, 0, &third);
        assert!(a.inner.lock().unwrap().running.is_empty());
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
            a.start(first, 0, 1).unwrap().reason(),
            None,
            "the oldest was forgotten"
        );
        assert_eq!(a.inner.lock().unwrap().cancelled.len(), REMEMBERED);
    }
}
