//! Group commit on the accept path: concurrent `POST /jobs` share one transaction.
//!
//! Each request hands its job to the committer and waits for its answer. The committer takes
//! whatever is waiting — at least one job, at most [`MAX_BATCH`] — and inserts it with one
//! statement in one transaction (a batch with nothing to claim is that statement alone, with
//! no BEGIN and COMMIT around it), then answers each request: its row once committed, or the
//! error that stopped the batch (a 503 for an outage; never a 202 for an uncommitted row). No
//! timer: a lone request is committed at once, and under load a batch is what queued up while
//! the batches before it were committing. Up to [`IN_FLIGHT`] batches commit at a time, so one
//! batch's fsync overlaps the next one's statement.
//!
//! Why: a one-row transaction costs PostgreSQL a WAL flush and a round trip per job; a batch
//! pays them once. Requests with an `Idempotency-Key` share batches too: a batch claims its
//! keys first, in key order, and each request is answered as if it had been alone (see
//! [`store::insert`]).

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::{self, Inserted, Key, NewJob, Submission};

/// Most jobs one transaction inserts.
pub const MAX_BATCH: usize = 128;
/// The buckets of `jobstack_accept_batch_size`: powers of two up to [`MAX_BATCH`], so the
/// largest bucket is always a full batch.
pub fn batch_buckets() -> shared::metrics::Buckets {
    let bounds = std::iter::successors(Some(1usize), |b| Some(b * 2))
        .take_while(|b| *b < MAX_BATCH)
        .chain([MAX_BATCH])
        .map(|b| b as f64)
        .collect();
    shared::metrics::Buckets {
        metric: "jobstack_accept_batch_size",
        bounds,
    }
}

/// Batches committing at once.
const IN_FLIGHT: usize = 4;
/// Requests waiting for a batch; beyond this `accept` waits for room (the HTTP server's own
/// concurrency bounds it well before).
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Inserted, BatchError>>;

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The committer has stopped: the api is shutting down.
    #[error("the api is shutting down")]
    ShuttingDown,
    /// The batch's transaction failed; nothing of it was stored.
    #[error("storing the job failed")]
    Store(#[source] BatchError),
}

/// The error that stopped a batch, shared by every request of it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the batch's transaction failed")]
pub struct BatchError(#[source] Arc<sqlx::Error>);

impl BatchError {
    /// What PostgreSQL answered.
    pub fn cause(&self) -> &sqlx::Error {
        &self.0
    }
}

/// Hands jobs to the committer.
#[derive(Debug, Clone)]
pub struct Committer {
    queue: mpsc::Sender<(Submission, Reply)>,
}

/// Stops the committer.
#[derive(Debug)]
pub struct Closer {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Closer {
    /// Takes no more jobs, commits and answers those already handed over, and returns.
    pub async fn close(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

impl Committer {
    /// Starts the committer on `db`; it wakes the relay after each commit.
    pub fn start(db: PgPool, wake_relay: Arc<Notify>) -> (Self, Closer) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(db, rx, wake_relay, stop.clone()));
        (Self { queue }, Closer { stop, task })
    }

    /// Stores `job` with its `Idempotency-Key`, if any; answers once committed: its row (or
    /// the row of the unique job it duplicates), or what its key stands for.
    pub async fn accept(&self, job: NewJob, key: Option<Key>) -> Result<Inserted, AcceptError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((Submission { job, key }, reply))
            .await
            .map_err(|_| AcceptError::ShuttingDown)?;
        answer
            .await
            .map_err(|_| AcceptError::ShuttingDown)?
            .map_err(AcceptError::Store)
    }
}

async fn run(
    db: PgPool,
    mut rx: mpsc::Receiver<(Submission, Reply)>,
    wake_relay: Arc<Notify>,
    stop: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        // A free slot first, then whatever is waiting by then.
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let received = tokio::select! {
            // Once stopped, always this branch: closing is idempotent, and a closed queue still
            // hands out what was sent before, then 0.
            biased;
            () = stop.cancelled() => {
                rx.close();
                rx.recv_many(&mut batch, MAX_BATCH).await
            }
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
        };
        if received == 0 {
            break;
        }
        let (subs, replies): (Vec<Submission>, Vec<Reply>) = batch.drain(..).unzip();
        let (db, wake_relay) = (db.clone(), wake_relay.clone());
        tokio::spawn(async move {
            let committed = store::insert(&db, &subs).await;
            drop(permit);
            match committed {
                Ok(rows) => {
                    wake_relay.notify_one();
                    metrics::histogram!("jobstack_accept_batch_size").record(rows.len() as f64);
                    for (reply, row) in replies.into_iter().zip(rows) {
                        let _ = reply.send(Ok(row));
                    }
                }
                Err(e) => {
                    let e = BatchError(Arc::new(e));
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
    // Every batch committed (or failed) and answered.
    let _ = in_flight.acquire_many(IN_FLIGHT as u32).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_buckets_double_up_to_a_full_batch() {
        let b = batch_buckets().bounds;
        assert_eq!(b.first(), Some(&1.0));
        assert_eq!(b.last(), Some(&(MAX_BATCH as f64)));
        assert!(b.windows(2).all(|w| w[1] > w[0] && w[1] <= 2.0 * w[0]));
    }

    #[tokio::test]
    async fn close_returns_while_handles_are_alive_even_before_the_loop_first_runs() {
        // Never connects: no job is handed over.
        let db = PgPool::connect_lazy("postgres://127.0.0.1:1/never").unwrap();
        let (committer, closer) = Committer::start(db, Arc::new(Notify::new()));
        // A handle outlives the close, as a stalled request's state does at shutdown; on this
        // single-threaded runtime the loop has not run yet when the stop comes.
        tokio::time::timeout(std::time::Duration::from_secs(5), closer.close())
            .await
            .expect("the committer stops");
        let refused = committer
            .accept(NewJob::now("sleep", serde_json::json!({}), 1), None)
            .await;
        assert!(
            matches!(refused, Err(AcceptError::ShuttingDown)),
            "{refused:?}"
        );
    }
}
