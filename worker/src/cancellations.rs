//! Jobs the api cancelled, as read from the control stream. Running ones are stopped through
//! their token; the others are remembered (bounded, oldest forgotten first) so that the job is
//! skipped whenever it is delivered here. A cancel names a series of attempts: a job re-driven
//! after it was cancelled runs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How many cancelled jobs to remember: about 5 MB. The control stream keeps a week of cancels;
/// past this many, the oldest is forgotten, and the api answers that job's `started` event with
/// the cancel again, which stops it at its first step.
const REMEMBERED: usize = 100_000;

/// A job's series of attempts.
type Series = (Uuid, u32);

/// Shared between the control consumer and the job tasks.
#[derive(Debug, Default)]
pub struct Cancellations {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    running: HashMap<Series, CancellationToken>,
    cancelled: HashSet<Series>,
    order: VecDeque<Series>,
}

impl Cancellations {
    /// A cancel was read (again, after a reconnect: the stream is read from its start).
    /// Returns whether it stops a job running here.
    pub fn cancel(&self, id: Uuid, generation: u32) -> bool {
        let mut inner = self.inner.lock().expect("not poisoned");
        let series = (id, generation);
        let running = inner.running.get(&series).inspect(|t| t.cancel()).is_some();
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

    /// A job starts here: its token, already cancelled if the job is.
    pub fn start(&self, id: Uuid, generation: u32) -> CancellationToken {
        let mut inner = self.inner.lock().expect("not poisoned");
        let series = (id, generation);
        let token = CancellationToken::new();
        if inner.cancelled.contains(&series) {
            token.cancel();
        }
        inner.running.insert(series, token.clone());
        token
    }

    /// The job's attempt is over.
    pub fn finish(&self, id: Uuid, generation: u32) {
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.running.remove(&(id, generation));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_job_stays_cancelled_but_a_redrive_does_not() {
        let c = Cancellations::default();
        let id = Uuid::new_v4();
        c.cancel(id, 0);
        c.cancel(id, 0);
        assert!(c.start(id, 0).is_cancelled());
        c.finish(id, 0);
        assert!(c.start(id, 0).is_cancelled(), "a redelivery is skipped too");
        c.finish(id, 0);
        assert!(!c.start(id, 1).is_cancelled(), "the re-driven series runs");
    }

    #[test]
    fn cancel_while_running_trips_the_token() {
        let c = Cancellations::default();
        let id = Uuid::new_v4();
        let token = c.start(id, 2);
        assert!(!c.cancel(id, 1));
        assert!(!token.is_cancelled(), "another series");
        assert!(c.cancel(id, 2));
        assert!(token.is_cancelled());
    }

    #[test]
    fn remembers_a_bounded_number() {
        let c = Cancellations::default();
        let first = Uuid::new_v4();
        c.cancel(first, 0);
        for _ in 0..REMEMBERED {
            c.cancel(Uuid::new_v4(), 0);
        }
        assert!(
            !c.start(first, 0).is_cancelled(),
            "the oldest was forgotten"
        );
        assert_eq!(c.inner.lock().unwrap().cancelled.len(), REMEMBERED);
    }
}
