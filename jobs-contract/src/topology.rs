//! The queues and exchanges the services agree on: their names, derived from one prefix, and how
//! each is declared. Both services declare all of it, idempotently, on every (re)connect, so
//! whichever starts first (or comes back after a broker wipe) finds everything in place.
//!
//! With prefix `P`:
//! - `P.jobs` topic exchange → `P.jobs` quorum queue (routing key = job kind, bound `#`);
//! - `P.dlx` fanout exchange → `P.jobs.dead` quorum queue: final failures and undecodable messages;
//! - `P.events` topic exchange (routing key `job.<event>`) → `P.api.events` quorum queue;
//! - `P.control` fanout exchange → `P.control` stream: cancels, which every worker reads from the
//!   start of the stream when it connects, then follows (a worker started later still sees them).
//!
//! Every queue is replicated (quorum queues and a stream): nothing waits in a classic queue that
//! lives on one node. Retries are not queues either: the api schedules the next attempt in
//! PostgreSQL, and its outbox relay publishes it when it is due.
//!
//! This module is plain data; the `amqp` feature adds [`Topology::declare`] (lapin), so the
//! contract itself stays free of any runtime.

#[cfg(feature = "amqp")]
mod declare;

/// Redeliveries after which the broker itself dead-letters a message (a worker that keeps
/// crashing on it). Only a backstop: attempts are counted by the api. Set explicitly so RabbitMQ
/// 3.x (unlimited by default) and 4.x (20 by default) behave alike.
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

/// The names, derived from a prefix (tests use a unique one each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

/// How an exchange routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// By routing-key pattern.
    Topic,
    /// To every bound queue.
    Fanout,
}

/// A queue argument's value (`x-…` arguments are strings or integers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A string argument.
    Str(String),
    /// An integer argument.
    Int(i64),
}

/// One queue: its name, its declaration arguments and the exchange (and key) it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    /// The queue's name.
    pub name: String,
    /// `x-queue-type` and the rest.
    pub args: Vec<(&'static str, Arg)>,
    /// The exchange it is bound to.
    pub exchange: String,
    /// The binding key.
    pub key: &'static str,
}

impl Topology {
    /// The topology under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix every name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where jobs are published (routing key = kind).
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// The work queue workers consume.
    pub fn jobs_queue(&self) -> String {
        format!("{}.jobs", self.prefix)
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

    /// Every exchange, with its kind.
    pub fn exchanges(&self) -> [(String, ExchangeKind); 4] {
        [
            (self.jobs_exchange(), ExchangeKind::Topic),
            (self.dead_letter_exchange(), ExchangeKind::Fanout),
            (self.events_exchange(), ExchangeKind::Topic),
            (self.control_exchange(), ExchangeKind::Fanout),
        ]
    }

    /// Every queue, with its arguments and binding.
    pub fn queues(&self) -> [Queue; 4] {
        let quorum = || ("x-queue-type", Arg::Str("quorum".into()));
        [
            Queue {
                name: self.jobs_queue(),
                args: vec![
                    quorum(),
                    (
                        "x-dead-letter-exchange",
                        Arg::Str(self.dead_letter_exchange()),
                    ),
                    ("x-delivery-limit", Arg::Int(DELIVERY_LIMIT)),
                ],
                exchange: self.jobs_exchange(),
                key: "#",
            },
            Queue {
                name: self.dead_queue(),
                args: vec![
                    quorum(),
                    ("x-max-length", Arg::Int(DEAD_MAX_LENGTH)),
                    ("x-overflow", Arg::Str("drop-head".into())),
                ],
                exchange: self.dead_letter_exchange(),
                key: "",
            },
            Queue {
                name: self.events_queue(),
                args: vec![quorum()],
                exchange: self.events_exchange(),
                key: "job.#",
            },
            Queue {
                name: self.control_stream(),
                args: vec![
                    ("x-queue-type", Arg::Str("stream".into())),
                    ("x-max-age", Arg::Str(CONTROL_MAX_AGE.into())),
                    ("x-max-length-bytes", Arg::Int(CONTROL_MAX_BYTES)),
                    (
                        "x-stream-max-segment-size-bytes",
                        Arg::Int(CONTROL_SEGMENT_BYTES),
                    ),
                ],
                exchange: self.control_exchange(),
                key: "",
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_is_replicated_and_bound_to_one_of_the_exchanges() {
        let t = Topology::new("p");
        let exchanges: Vec<String> = t.exchanges().into_iter().map(|(name, _)| name).collect();
        for q in t.queues() {
            assert!(q.name.starts_with("p."), "{q:?}");
            assert!(exchanges.contains(&q.exchange), "{q:?}");
            let kind = q.args.iter().find(|(k, _)| *k == "x-queue-type");
            assert!(
                matches!(kind, Some((_, Arg::Str(k))) if k == "quorum" || k == "stream"),
                "{q:?}"
            );
        }
    }
}
