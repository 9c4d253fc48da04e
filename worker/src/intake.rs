//! How many job messages a worker takes from the queue: as many as it has slots for, never more.
//!
//! A job's message is acked once its attempt has run for a moment (it then lives on its lease),
//! so the broker's prefetch no longer counts the long jobs a worker runs, only the messages it
//! holds: the ones starting and settling, and the ones waiting for a slot. A message that waits
//! for a slot taken by a job of hours would be hoarded from the other workers, and held past the
//! broker's consumer timeout. So the prefetch follows the slots that long jobs leave free: twice
//! those (the next job is here when a slot frees), at most [`PREFETCH_MAX`]; and when long jobs
//! hold every slot the worker stops consuming, and hands back whatever message still waits.

use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
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

/// The jobs consumer of a session, started, stopped and re-sized as slots free up and fill.
pub struct Intake {
    channel: Channel,
    queue: String,
    consumer: Option<Consumer>,
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
            consumer: None,
            prefetch: 0,
            waiting: CancellationToken::new(),
        }
    }

    /// Tripped when the worker stops consuming: a message still waiting for a slot is handed
    /// back then, for another worker.
    pub fn waiting(&self) -> CancellationToken {
        self.waiting.clone()
    }

    /// The current prefetch (0: not consuming).
    pub fn prefetch(&self) -> u16 {
        self.prefetch
    }

    /// Consumes with `prefetch` (or stops, at 0).
    pub async fn follow(&mut self, prefetch: u16) -> lapin::Result<()> {
        if prefetch == self.prefetch {
            return Ok(());
        }
        if prefetch == 0 {
            if let Some(consumer) = self.consumer.take() {
                let cancel = self
                    .channel
                    .basic_cancel(consumer.tag(), BasicCancelOptions::default());
                tokio::time::timeout(Duration::from_secs(2), cancel)
                    .await
                    .map_err(|_| {
                        lapin::Error::from(std::io::Error::other("basic.cancel timed out"))
                    })??;
            }
            self.waiting.cancel();
            self.waiting = CancellationToken::new();
        } else {
            // A new prefetch applies to the deliveries after it, on this channel's consumers.
            self.channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            if self.consumer.is_none() {
                self.consumer = Some(
                    self.channel
                        .basic_consume(
                            self.queue.as_str().into(),
                            "".into(),
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        )
                        .await?,
                );
            }
        }
        self.prefetch = prefetch;
        Ok(())
    }

    /// The next delivery, while consuming; pending forever while not.
    pub async fn next(&mut self) -> Option<lapin::Result<Delivery>> {
        use futures_util::StreamExt as _;
        match &mut self.consumer {
            Some(consumer) => consumer.next().await,
            None => std::future::pending().await,
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
}
