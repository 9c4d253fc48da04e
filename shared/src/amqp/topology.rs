//! The exchanges and queues, declared idempotently by both services on every (re)connect, so
//! whichever starts first (or comes back after a broker wipe) finds everything in place.
//!
//! With prefix `P`:
//! - `P.jobs` topic exchange → `P.jobs` quorum queue (routing key = job kind, bound `#`);
//! - `P.jobs.retry.<ms>ms` TTL queues, one per backoff delay, dead-lettering back into `P.jobs`;
//! - `P.dlx` fanout exchange → `P.jobs.dead` quorum queue: final failures and undecodable messages;
//! - `P.events` topic exchange (routing key `job.<event>`) → `P.api.events` quorum queue;
//! - `P.control` fanout exchange → `P.control` stream: cancels, which every worker reads from the
//!   start of the stream when it connects, then follows (a worker started later still sees them).

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::backoff;

/// Longest retry delay, whatever the attempt count.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);
/// Redeliveries after which the broker itself dead-letters a message (a worker that keeps
/// crashing on it). Only a backstop: attempts are counted in the message. Set explicitly so
/// RabbitMQ 3.x (unlimited by default) and 4.x (20 by default) behave alike.
const DELIVERY_LIMIT: i64 = 20;
/// The dead-letter queue keeps the newest failures only, so a demo left running stays bounded.
const DEAD_MAX_LENGTH: i64 = 100_000;
/// How long the control stream keeps a cancel: a worker that connects within this after a cancel
/// skips the job. Past it, the api answers the job's `started` event with the cancel again.
const CONTROL_MAX_AGE: &str = "7D";
/// The control stream's size cap (a cancel is ~100 bytes on disk), and its segment size:
/// retention drops whole segments, so they must be much smaller than the cap (the default is
/// 500 MB).
const CONTROL_MAX_BYTES: i64 = 64 << 20;
const CONTROL_SEGMENT_BYTES: i64 = 4 << 20;

/// Names and retry delays, derived from a prefix and the retry policy.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    max_attempts: u32,
    retry_base: Duration,
}

impl Topology {
    /// `prefix` namespaces every name (tests use a unique one each).
    pub fn new(prefix: &str, max_attempts: u32, retry_base: Duration) -> Self {
        Self {
            prefix: prefix.to_owned(),
            max_attempts,
            retry_base,
        }
    }

    /// Attempts a job gets before it is dead-lettered.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Where jobs are published (routing key = kind).
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// The work queue workers consume.
    pub fn jobs_queue(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// The delay before attempt `failed_attempt + 1`.
    pub fn retry_delay(&self, failed_attempt: u32) -> Duration {
        backoff::exponential(self.retry_base, MAX_RETRY_DELAY, failed_attempt)
    }

    /// The TTL queue that holds a job for `delay` before it returns to the work queue.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.jobs.retry.{}ms", self.prefix, delay.as_millis())
    }

    /// The dead-letter exchange.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// The dead-letter queue.
    pub fn dead_queue(&self) -> String {
        format!("{}.jobs.dead", self.prefix)
    }

    /// Where workers publish job events (routing key `job.<event>`).
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The api's durable events queue.
    pub fn events_queue(&self) -> String {
        format!("{}.api.events", self.prefix)
    }

    /// The fanout exchange for cancels.
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// The stream of cancels (and workers' sync markers) every worker reads.
    pub fn control_stream(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// Every queue [`Topology::declare`] makes.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.jobs_queue(),
            self.dead_queue(),
            self.events_queue(),
            self.control_stream(),
        ];
        queues.extend(self.retry_delays().into_iter().map(|d| self.retry_queue(d)));
        queues
    }

    /// Every exchange [`Topology::declare`] makes, with its type.
    pub fn exchanges(&self) -> [(String, ExchangeKind); 4] {
        [
            (self.jobs_exchange(), ExchangeKind::Topic),
            (self.dead_letter_exchange(), ExchangeKind::Fanout),
            (self.events_exchange(), ExchangeKind::Topic),
            (self.control_exchange(), ExchangeKind::Fanout),
        ]
    }

    fn retry_delays(&self) -> BTreeSet<Duration> {
        (1..self.max_attempts)
            .map(|a| self.retry_delay(a))
            .collect()
    }

    /// Declares everything; safe to repeat.
    pub async fn declare(&self, ch: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (name, kind) in self.exchanges() {
            ch.exchange_declare(name.into(), kind, durable, FieldTable::default())
                .await?;
        }

        let mut work = quorum();
        put(
            &mut work,
            "x-dead-letter-exchange",
            self.dead_letter_exchange(),
        );
        work.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        self.queue(ch, self.jobs_queue(), work, &self.jobs_exchange(), "#")
            .await?;

        let mut dead = quorum();
        dead.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(DEAD_MAX_LENGTH),
        );
        put(&mut dead, "x-overflow", "drop-head".into());
        self.queue(
            ch,
            self.dead_queue(),
            dead,
            &self.dead_letter_exchange(),
            "",
        )
        .await?;

        self.queue(
            ch,
            self.events_queue(),
            quorum(),
            &self.events_exchange(),
            "job.#",
        )
        .await?;

        let mut control = FieldTable::default();
        put(&mut control, "x-queue-type", "stream".into());
        put(&mut control, "x-max-age", CONTROL_MAX_AGE.into());
        control.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(CONTROL_MAX_BYTES),
        );
        control.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(CONTROL_SEGMENT_BYTES),
        );
        self.queue(
            ch,
            self.control_stream(),
            control,
            &self.control_exchange(),
            "",
        )
        .await?;

        for delay in self.retry_delays() {
            // Classic queues: a quorum queue would work too, but these hold messages for
            // seconds and per-queue TTL on classic queues is the long-standing idiom.
            let mut args = FieldTable::default();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(delay.as_millis() as i64),
            );
            put(&mut args, "x-dead-letter-exchange", self.jobs_exchange());
            ch.queue_declare(
                self.retry_queue(delay).into(),
                QueueDeclareOptions::durable(),
                args,
            )
            .await?;
        }
        Ok(())
    }

    async fn queue(
        &self,
        ch: &Channel,
        name: String,
        args: FieldTable,
        exchange: &str,
        key: &str,
    ) -> lapin::Result<()> {
        ch.queue_declare(name.clone().into(), QueueDeclareOptions::durable(), args)
            .await?;
        ch.queue_bind(
            name.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    }
}

fn quorum() -> FieldTable {
    let mut t = FieldTable::default();
    put(&mut t, "x-queue-type", "quorum".into());
    t
}

fn put(t: &mut FieldTable, key: &str, value: String) {
    t.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_retry_queue_per_distinct_delay() {
        let t = Topology::new("p", 4, Duration::from_millis(500));
        let names: Vec<_> = t
            .retry_delays()
            .into_iter()
            .map(|d| t.retry_queue(d))
            .collect();
        assert_eq!(
            names,
            [
                "p.jobs.retry.500ms",
                "p.jobs.retry.1000ms",
                "p.jobs.retry.2000ms"
            ]
        );
        assert!(
            Topology::new("p", 1, Duration::from_secs(1))
                .retry_delays()
                .is_empty()
        );
    }
}
