//! How many job messages a worker takes from the queue: as many as it has slots for, never more.
//!
//! A job's message is acked once its attempt has run for a moment (it then lives on its lease),
//! so the broker's prefetch no longer counts the long jobs a worker runs, only the messages it
//! holds: the ones starting and settling, and the ones waiting for a slot. A message that waits
//! for a slot taken by a job of hours would be hoarded from the other workers, and held past the
//! broker's consumer timeout. So the prefetch follows the slots that long jobs leave free: twice
//! those (the next job is here when a slot frees), at most [`PREFETCH_MAX`]; and when long jobs
//! hold every slot the worker stops consuming, and hands back whatever message still waits.

use futures_util::StreamExt as _;
use futures_util::stream::SelectAll;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The most job messages held at once, however many slots: a worker with thousands of slots
/// takes its jobs a few hundred at a time.
pub const PREFETCH_MAX: u16 = 256;

/// The prefetch for `concurrency` slots of which `long` are held by jobs whose messages are
/// acked: 0 means stop consuming.
pub fn prefetch(concurrency: u16, long: usize) -> u16 {
    let free = usize::from(concurrency).saturating_sub(long);
    (free * 2).min(usize::from(PREFETCH_MAX)) as u16
}

/// Whether the intake at `current` re-sizes for `target`: to stop or start consuming, and when
/// the prefetch is off by half or more. A re-size is a new consumer (RabbitMQ applies a
/// prefetch to the consumers created after it, not to a running one), so it is not done for
/// each long job that starts or ends.
pub fn resizes(current: u16, target: u16) -> bool {
    let (current, target) = (u32::from(current), u32::from(target));
    target != current
        && (target == 0 || current == 0 || target >= 2 * current || 2 * target <= current)
}

/// The jobs consumer of a session, started, stopped and re-sized as slots free up and fill.
pub struct Intake {
    channel: Channel,
    queue: String,
    /// The current consumer's tag, while consuming.
    current: Option<ShortString>,
    /// The current consumer and those cancelled at a re-size: a cancelled one still yields what
    /// the broker delivered to it before its cancel-ok, then ends (and leaves the set).
    consumers: SelectAll<Consumer>,
    prefetch: u16,
    /// Cancelled when the worker stops consuming: messages still waiting for a slot go back.
    waiting: CancellationToken,
}

impl Intake {
    /// Not consuming yet; [`Intake::follow`] starts it.
    pub fn new(channel: Channel, queue: String) -> Self {
        Self {
            channel,
            queue,
            current: None,
            consumers: SelectAll::new(),
            prefetch: 0,
            waiting: CancellationToken::new(),
        }
    }

    /// Tripped when the worker stops consuming: a message still waiting for a slot is handed
    /// back then, for another worker.
    pub fn waiting(&self) -> CancellationToken {
        self.waiting.clone()
    }

    /// Consumes with `prefetch`, or stops at 0; a small change keeps the current consumer (see
    /// [`resizes`]).
    pub async fn follow(&mut self, prefetch: u16) -> lapin::Result<()> {
        if !resizes(self.prefetch, prefetch) {
            return Ok(());
        }
        tracing::debug!(from = self.prefetch, to = prefetch, "jobs intake re-sized");
        if let Some(tag) = self.current.take() {
            let cancel = self
                .channel
                .basic_cancel(tag, BasicCancelOptions::default());
            tokio::time::timeout(Duration::from_secs(2), cancel)
                .await
                .map_err(|_| {
                    lapin::Error::from(std::io::Error::other("basic.cancel timed out"))
                })??;
        }
        if prefetch == 0 {
            self.waiting.cancel();
            self.waiting = CancellationToken::new();
        } else {
            // Applies to the consumers created after it: the new one.
            self.channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let consumer = self
                .channel
                .basic_consume(
                    self.queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            self.current = Some(consumer.tag());
            self.consumers.push(consumer);
        }
        self.prefetch = prefetch;
        Ok(())
    }

    /// The next delivery; pending while there is none to come. A delivery that arrives while
    /// the worker does not consume (a cancelled consumer's last ones) goes straight back.
    pub async fn next(&mut self) -> Option<lapin::Result<Delivery>> {
        loop {
            if self.consumers.is_empty() {
                return std::future::pending().await;
            }
            match self.consumers.next().await {
                // A consumer ended: the current one (the channel closed) ends the session.
                None if self.current.is_some() && self.consumers.is_empty() => return None,
                None => continue,
                Some(Ok(delivery)) if self.prefetch == 0 => {
                    // In a task of its own: this future may be dropped at any `.await`.
                    tokio::spawn(async move {
                        let requeue = BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        };
                        let _ = delivery.acker.nack(requeue).await;
                    });
                }
                Some(other) => return Some(other),
            }
        }
    }

    /// Stops consuming, for the shutdown: bounded, the broker may have stopped answering.
    pub async fn stop(&mut self) {
        let _ = self.follow(0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefetch_follows_the_slots_long_jobs_leave_free() {
        assert_eq!(prefetch(8, 0), 16, "twice the slots");
        assert_eq!(prefetch(8, 6), 4);
        assert_eq!(prefetch(8, 8), 0, "every slot held by a long job: stop");
        assert_eq!(prefetch(8, 9), 0);
        assert_eq!(prefetch(10_000, 0), PREFETCH_MAX, "a few hundred at a time");
        assert_eq!(prefetch(10_000, 9_990), 20);
    }

    #[test]
    fn a_resize_is_a_start_a_stop_or_a_factor_of_two() {
        assert!(resizes(0, 2) && resizes(16, 0), "start and stop");
        assert!(!resizes(16, 16) && !resizes(0, 0));
        assert!(
            !resizes(16, 10) && !resizes(16, 30),
            "within a factor of two: kept"
        );
        assert!(resizes(16, 8) && resizes(16, 32));
        assert!(resizes(2, 4) && resizes(4, 2));
    }
}
