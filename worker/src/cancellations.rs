//! Jobs the api asked to cancel. Running ones are stopped through their token; ids that are
//! not running here are remembered (bounded, oldest forgotten first) in case the job is
//! delivered to this worker later.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How many not-yet-seen cancelled ids to remember.
const REMEMBERED: usize = 10_000;

/// Shared between the control consumer and the job tasks.
#[derive(Debug, Default)]
pub struct Cancellations {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    running: HashMap<Uuid, CancellationToken>,
    pending: VecDeque<Uuid>,
}

impl Cancellations {
    /// A cancel request arrived.
    pub fn cancel(&self, id: Uuid) {
        let mut inner = self.inner.lock().expect("not poisoned");
        if let Some(token) = inner.running.get(&id) {
            token.cancel();
        } else if !inner.pending.contains(&id) {
            if inner.pending.len() == REMEMBERED {
                inner.pending.pop_front();
            }
            inner.pending.push_back(id);
        }
    }

    /// A job starts here: its token, already cancelled if a request came first.
    pub fn start(&self, id: Uuid) -> CancellationToken {
        let mut inner = self.inner.lock().expect("not poisoned");
        let token = CancellationToken::new();
        if let Some(pos) = inner.pending.iter().position(|p| *p == id) {
            inner.pending.remove(pos);
            token.cancel();
        }
        inner.running.insert(id, token.clone());
        token
    }

    /// The job's attempt is over.
    pub fn finish(&self, id: Uuid) {
        self.inner.lock().expect("not poisoned").running.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_before_start_is_remembered_once() {
        let c = Cancellations::default();
        let id = Uuid::new_v4();
        c.cancel(id);
        assert!(c.start(id).is_cancelled());
        c.finish(id);
        assert!(
            !c.start(id).is_cancelled(),
            "a redelivery after the cancel ran is not re-cancelled"
        );
    }

    #[test]
    fn cancel_while_running_trips_the_token() {
        let c = Cancellations::default();
        let id = Uuid::new_v4();
        let token = c.start(id);
        c.cancel(id);
        assert!(token.is_cancelled());
    }

    #[test]
    fn remembers_a_bounded_number() {
        let c = Cancellations::default();
        let first = Uuid::new_v4();
        c.cancel(first);
        for _ in 0..REMEMBERED {
            c.cancel(Uuid::new_v4());
        }
        assert!(
            !c.start(first).is_cancelled(),
            "the oldest id was forgotten"
        );
    }
}
