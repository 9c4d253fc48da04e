//! The worker's way to the broker across sessions. A job outlives the session it was delivered
//! on once its message is acked (it lives on its lease from then on), so its later events —
//! progress, checkpoints, its outcome — go out on whichever session is up when they are sent:
//! the current session's publisher, or none while the worker reconnects.
//!
//! Job events are coalesced (group commit, as the api's inserts). Every job reports into one
//! queue; each session's coalescer sends what has queued up as one message (an [`EventBatch`]),
//! in the order reported, while up to [`IN_FLIGHT`] messages await their confirms. An idle
//! worker's event goes out alone, at once; a busy one's share a message with the events of many
//! other jobs: one confirmed publish, one delivery and one ack at the api for all of them, where
//! each cost its own before. A reporter that must know its event is safe (an outcome, before its
//! job's message is acked) still waits for the confirm of the message that carried it.

use std::sync::Arc;
use std::time::Duration;

use jobs_contract::messages::{EVENTS_ROUTING_KEY, EventBatch};
use shared::amqp::{Outgoing, PublishError, Publisher};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument as _;

/// Most events in one message.
const MAX_EVENTS: usize = 256;
/// Most bytes of events in one message (one event may be larger: it goes alone): well under
/// the smallest default maximum message size of the brokers we run on (RabbitMQ 4's 16 MiB),
/// and small enough that one message never holds a channel long.
const MAX_BYTES: usize = 1 << 20;
/// Events waiting for the coalescer; a reporter waits for room beyond that.
const QUEUED: usize = 4096;
/// Messages of events awaiting their confirm at once. Events reported meanwhile wait and go
/// together in the next message (group commit): an idle worker's event goes at once, a busy
/// worker's events in as few messages as the broker's confirm latency allows.
const IN_FLIGHT: usize = 2;

/// Keeps a session's publisher on the link, and its coalescer running; dropping it takes both
/// off.
#[derive(Debug)]
pub struct Up<'a> {
    link: &'a Link,
    _coalescer: DropGuard,
}

impl Drop for Up<'_> {
    fn drop(&mut self) {
        self.link.publisher.send_replace(None);
    }
}

/// One event to send (a serialized [`jobs_contract::messages::BatchedEvent`]), and who waits
/// for its confirm, if anyone.
#[derive(Debug)]
struct Report {
    event: Vec<u8>,
    confirmed: Option<oneshot::Sender<Result<(), PublishError>>>,
}

impl Report {
    /// Nobody waits for it any more (its reporter gave up): better not sent at all than sent
    /// after its reporter acted on its loss.
    fn abandoned(&self) -> bool {
        self.confirmed
            .as_ref()
            .is_some_and(oneshot::Sender::is_closed)
    }
}

/// The current session's publisher, and the queue of events to send on it, shared by every job
/// task.
#[derive(Debug, Clone)]
pub struct Link {
    publisher: Arc<watch::Sender<Option<Publisher>>>,
    exchange: String,
    reports: mpsc::Sender<Report>,
    queued: Arc<Mutex<mpsc::Receiver<Report>>>,
}

impl Link {
    /// A link whose events go to `exchange`.
    pub fn new(exchange: String) -> Self {
        let (reports, queued) = mpsc::channel(QUEUED);
        Self {
            publisher: Arc::new(watch::channel(None).0),
            exchange,
            reports,
            queued: Arc::new(Mutex::new(queued)),
        }
    }

    /// A session is up: publish on `publisher`, and coalesce events onto it, until the returned
    /// guard is dropped (the session is over, however it ends).
    #[must_use = "the link goes down when the guard is dropped"]
    pub fn up(&self, publisher: Publisher) -> Up<'_> {
        let over = CancellationToken::new();
        tokio::spawn(coalesce(
            self.queued.clone(),
            publisher.clone(),
            self.exchange.clone(),
            over.clone(),
        ));
        self.publisher.send_replace(Some(publisher));
        Up {
            link: self,
            _coalescer: over.drop_guard(),
        }
    }

    /// The current publisher, if a session is up.
    pub fn current(&self) -> Option<Publisher> {
        self.publisher.borrow().clone()
    }

    /// Publishes `msg` and waits for its confirm, on whichever session is up, trying again
    /// (after a pause) when a publish fails, until `deadline`: an outcome reported late is
    /// still better than one lost, as long as the attempt's lease holds.
    pub async fn publish_until(
        &self,
        msg: Outgoing,
        span: &tracing::Span,
        deadline: Instant,
    ) -> Result<(), PublishError> {
        self.until(deadline, || async {
            let publisher = self.current().ok_or(PublishError::NoSession)?;
            publisher
                .publish(msg.clone())
                .instrument(span.clone())
                .await
        })
        .await
    }

    /// Sends `event` (a serialized `BatchedEvent`) with the others reported meanwhile, and
    /// waits for the confirm of the message that carried it, on whichever session is up,
    /// trying again when that message failed, until `deadline`.
    pub async fn report_until(
        &self,
        event: Vec<u8>,
        deadline: Instant,
    ) -> Result<(), PublishError> {
        let started = Instant::now();
        self.until(deadline, || async {
            let (confirmed, answer) = oneshot::channel();
            let report = Report {
                event: event.clone(),
                confirmed: Some(confirmed),
            };
            let sent = async {
                self.reports
                    .send(report)
                    .await
                    .map_err(|_| PublishError::NoSession)?;
                // No answer: its session ended with the event still queued, to be sent again.
                answer.await.unwrap_or(Err(PublishError::NoSession))
            };
            tokio::select! {
                sent = sent => sent,
                () = tokio::time::sleep_until(deadline) => Err(PublishError::Timeout(started.elapsed())),
            }
        })
        .await
    }

    /// Sends `event` with the others reported meanwhile, without waiting for its confirm, nor
    /// for room in the queue: for events whose loss is harmless (progress: a later event
    /// implies it), which must never hold up the job that reports them.
    pub fn notify(&self, event: Vec<u8>) -> Result<(), PublishError> {
        if self.current().is_none() {
            return Err(PublishError::NoSession);
        }
        let report = Report {
            event,
            confirmed: None,
        };
        self.reports
            .try_send(report)
            .map_err(|_| PublishError::Timeout(Duration::ZERO))
    }

    /// Runs `publish` once a session is up, again after a pause when it fails, until `deadline`.
    async fn until<F, Fut>(&self, deadline: Instant, publish: F) -> Result<(), PublishError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), PublishError>>,
    {
        let mut ready = self.publisher.subscribe();
        loop {
            let up = tokio::select! {
                p = ready.wait_for(Option::is_some) => p.is_ok(),
                () = tokio::time::sleep_until(deadline) => false,
            };
            if !up {
                return Err(PublishError::NoSession);
            }
            match publish().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "publish failed; trying again on the next session");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => {},
                        () = tokio::time::sleep_until(deadline) => return Err(e),
                    }
                }
            }
        }
    }
}

/// A session's coalescer: sends the queued events on `publisher` until the session is `over`,
/// as many in one message as have queued up (within [`MAX_EVENTS`] and [`MAX_BYTES`]) while
/// [`IN_FLIGHT`] messages awaited their confirms, and answers each waiting reporter with the
/// confirm of the message that carried its event. Events taken
/// but not sent when the session ends are dropped: their reporters, answered by the dropped
/// sender, send them again on the next session.
async fn coalesce(
    queued: Arc<Mutex<mpsc::Receiver<Report>>>,
    publisher: Publisher,
    exchange: String,
    over: CancellationToken,
) {
    // The previous session's coalescer lets go of the queue once that session is over.
    let mut queued = tokio::select! {
        q = queued.lock_owned() => q,
        () = over.cancelled() => return,
    };
    let window = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut taken: Vec<Report> = Vec::with_capacity(MAX_EVENTS);
    loop {
        let permit = tokio::select! {
            biased;
            () = over.cancelled() => return,
            permit = window.clone().acquire_owned() => permit.expect("never closed"),
        };
        if taken.is_empty() {
            tokio::select! {
                biased;
                () = over.cancelled() => return,
                n = queued.recv_many(&mut taken, MAX_EVENTS) => if n == 0 { return },
            }
        }
        taken.retain(|r| !r.abandoned());
        let batch = next_message(&mut taken);
        if batch.is_empty() {
            continue;
        }
        let body = EventBatch::body(batch.iter().map(|r| r.event.as_slice()));
        let msg = Outgoing::new(
            &exchange,
            EVENTS_ROUTING_KEY,
            body,
            "",
            &tracing::Span::none(),
        );
        match publisher.send_ordered(msg).await {
            Ok(confirm) => {
                tokio::spawn(async move {
                    let confirmed = confirm.await;
                    drop(permit);
                    answer(batch, confirmed);
                });
            }
            // The channel is gone: the session ends, and its reporters try the next one.
            Err(e) => answer(batch, Err(e)),
        }
    }
}

/// Takes from the front of `taken` what goes in the next message: at least one event, then as
/// many as fit in [`MAX_BYTES`].
fn next_message(taken: &mut Vec<Report>) -> Vec<Report> {
    let mut bytes = 0;
    let fit = taken
        .iter()
        .take_while(|r| {
            bytes += r.event.len();
            bytes <= MAX_BYTES
        })
        .count()
        .max(1)
        .min(taken.len());
    let rest = taken.split_off(fit);
    std::mem::replace(taken, rest)
}

fn answer(batch: Vec<Report>, result: Result<(), PublishError>) {
    for report in batch {
        if let Some(confirmed) = report.confirmed {
            let _ = confirmed.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(bytes: usize) -> Report {
        Report {
            event: vec![b' '; bytes],
            confirmed: None,
        }
    }

    #[test]
    fn a_message_takes_what_fits_and_at_least_one_event() {
        let mut taken: Vec<Report> = (0..5).map(|_| report(MAX_BYTES / 3)).collect();
        assert_eq!(next_message(&mut taken).len(), 3);
        assert_eq!(next_message(&mut taken).len(), 2);
        assert!(taken.is_empty());
        let mut taken = vec![report(MAX_BYTES * 2), report(1)];
        assert_eq!(
            next_message(&mut taken).len(),
            1,
            "a large event goes alone"
        );
        assert_eq!(next_message(&mut taken).len(), 1);
        assert!(next_message(&mut taken).is_empty());
    }

    #[test]
    fn an_event_nobody_waits_for_is_abandoned_only_once_its_reporter_gave_up() {
        let (confirmed, answer) = oneshot::channel();
        let waited = Report {
            event: Vec::new(),
            confirmed: Some(confirmed),
        };
        assert!(!waited.abandoned());
        assert!(
            !report(1).abandoned(),
            "progress: nobody waits, yet it goes"
        );
        drop(answer);
        assert!(waited.abandoned());
    }
}
