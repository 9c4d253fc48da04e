//! What travels over RabbitMQ, as JSON bodies: a job to run, events about jobs, a worker's
//! heartbeat, a control message to every worker. The W3C trace context travels beside them, in
//! the AMQP headers (in a batch of events, beside each event).
//!
//! Every field added after the first release has a default, so a message written by an older
//! service still reads.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The largest checkpoint a handler may save, serialized: it travels in every later attempt's
/// message and is stored with the job.
pub const MAX_CHECKPOINT_BYTES: usize = 64 * 1024;

/// The largest result a handler may return, serialized: it is stored with the job and answered
/// by `GET /jobs/{id}`. A larger one fails the job, with a clear error.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

/// The lease of an attempt when a message does not say (one from before leases).
pub const DEFAULT_LEASE_MS: u64 = 60_000;

/// One attempt of a job, as the worker receives it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobMessage {
    /// The job's id (also the AMQP `message_id`).
    pub id: Uuid,
    /// The handler to run.
    pub kind: String,
    /// The handler's input, validated by the api before the job was stored.
    pub payload: serde_json::Value,
    /// The payload's version: the kind's version when the job was accepted. A worker upgrades
    /// an older one before its handler sees it (see `kinds::JobKind::upgrade`).
    #[serde(default = "first_version")]
    pub payload_version: u32,
    /// 1 for the first attempt; the attempt count travels with the message, not in the broker.
    pub attempt: u32,
    /// Which generation this is: 0 at first, one more at each re-drive. Events and cancels name
    /// it, so nothing meant for an earlier generation touches a later one.
    #[serde(default)]
    pub generation: u32,
    /// When this attempt became runnable: the job's creation, or the end of its retry delay.
    /// The worker measures queue wait from here.
    pub available_at: DateTime<Utc>,
    /// Whether a transient failure of this attempt may be retried (the api keeps the budget):
    /// when 0, such a failure is final.
    #[serde(default)]
    pub retries_left: u32,
    /// How long the attempt may go without a heartbeat before the api gives it up and runs the
    /// job again. The worker heartbeats well within it, and stops the attempt itself when it
    /// cannot for half of it.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// The last checkpoint an earlier attempt saved: this attempt resumes from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    /// The span of the attempt before this one (a W3C `traceparent`): this attempt's trace links
    /// to it instead of growing the first attempt's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_attempt: Option<String>,
    /// A workflow's job: the results of the jobs it depends on, by their keys (a failed one that
    /// it runs after anyway, under `on_failure: ignore`, is null).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub inputs: serde_json::Map<String, serde_json::Value>,
    /// Times the handler snoozed this job so far (0 when absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub snoozes: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn first_version() -> u32 {
    1
}

fn default_lease_ms() -> u64 {
    DEFAULT_LEASE_MS
}

/// Where an attempt got to, saved by its handler so that the next attempt resumes there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    /// What the handler saved (at most [`MAX_CHECKPOINT_BYTES`] serialized).
    pub state: serde_json::Value,
    /// The attempt that saved it.
    pub attempt: u32,
    /// When.
    pub at: DateTime<Utc>,
}

/// Something that happened to a job in a worker. The api applies events idempotently.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobEvent {
    /// The job concerned.
    pub job_id: Uuid,
    /// The attempt the event belongs to; events of older attempts are stale.
    pub attempt: u32,
    /// The generation it belongs to (see [`JobMessage::generation`]).
    #[serde(default)]
    pub generation: u32,
    /// When it happened, by the worker's clock.
    pub at: DateTime<Utc>,
    /// When the attempt started, by the worker's clock. A job that ends within its first
    /// progress interval sends only its final event: this is then the only record of its start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// What happened.
    #[serde(flatten)]
    pub change: JobChange,
}

/// The lifecycle steps a worker reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobChange {
    /// The attempt began, and the worker holds its lease from now on (it acked the message).
    Started {
        /// The attempt's span (a W3C `traceparent`), for the next attempt's link.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    /// The handler finished a step; `progress` is 0.0–1.0.
    Progress {
        /// Share of the work done.
        progress: f64,
    },
    /// The handler saved where it got to; a later attempt resumes from here.
    Checkpoint {
        /// What it saved.
        state: serde_json::Value,
    },
    /// The handler returned a result.
    Succeeded {
        /// The handler's output.
        result: serde_json::Value,
    },
    /// The attempt failed; `retrying` says whether another attempt is due.
    Failed {
        /// What went wrong, for people.
        error: String,
        /// True when the failure is transient and the message allowed a retry; false when it
        /// is final.
        retrying: bool,
    },
    /// The attempt stopped because the job was cancelled.
    Cancelled,
    /// The attempt stopped before its end, not because of the job (the worker is shutting
    /// down), after saving what it could: the job runs again from its last checkpoint, and this
    /// attempt does not count against its retries.
    Released,
    /// The handler asked to run again at `until` (a rate-limited dependency answered 429 with
    /// `Retry-After`): the job waits until then, and this attempt does not count against its
    /// retries.
    Snoozed {
        /// When to run again.
        until: DateTime<Utc>,
    },
}

impl JobChange {
    /// The event's name, as used in routing keys and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Started { .. } => "started",
            Self::Progress { .. } => "progress",
            Self::Checkpoint { .. } => "checkpoint",
            Self::Succeeded { .. } => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Cancelled => "cancelled",
            Self::Released => "released",
            Self::Snoozed { .. } => "snoozed",
        }
    }

    /// Every event name, for metrics that start at zero.
    pub const NAMES: [&'static str; 8] = [
        "started",
        "progress",
        "checkpoint",
        "succeeded",
        "failed",
        "cancelled",
        "released",
        "snoozed",
    ];
}

/// The routing key of [`EventBatch`]es on the events exchange (the api's queue is bound `job.#`).
pub const EVENTS_ROUTING_KEY: &str = "job.events";

/// Job events reported at about the same moment, by any of a worker's jobs, in one message: a
/// busy worker pays one confirmed publish, one delivery and one ack for many events instead of
/// one each. The api applies each event as if it had come alone, and acks the message once
/// every event in it is applied (or found useless).
///
/// A worker of the first releases sends each event as a message of its own (a [`JobEvent`]
/// under `job.<event>`, its trace context in the headers); [`EventBatch::read`] reads both.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EventBatch {
    /// The events, in the order they were reported (one job's events keep their order).
    pub events: Vec<BatchedEvent>,
}

/// One event in an [`EventBatch`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchedEvent {
    /// The span that reported it (a W3C `traceparent`): a message's headers name one span, so
    /// each event of a batch names its own, and the api's span for it is that span's child.
    /// None for events reported without a span (progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The event.
    pub event: JobEvent,
}

impl EventBatch {
    /// Reads a message of the events queue other than a heartbeat: a batch under
    /// [`EVENTS_ROUTING_KEY`], else one event of its own (its span is in the message headers).
    pub fn read(routing_key: &str, body: &[u8]) -> serde_json::Result<Self> {
        if routing_key == EVENTS_ROUTING_KEY {
            return serde_json::from_slice(body);
        }
        let event = serde_json::from_slice(body)?;
        Ok(Self {
            events: vec![BatchedEvent {
                traceparent: None,
                event,
            }],
        })
    }

    /// The body of a batch of events already serialized one by one (each a [`BatchedEvent`]),
    /// without reading them back.
    pub fn body<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut body = b"{\"events\":[".to_vec();
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(event);
        }
        body.extend_from_slice(b"]}");
        body
    }
}

/// The routing key of [`Heartbeat`]s on the events exchange (the api's queue is bound `job.#`).
pub const HEARTBEAT_ROUTING_KEY: &str = "job.heartbeat";

/// A worker's heartbeat: the attempts it is running right now. One message for all of them,
/// every few seconds, so that thousands of long jobs cost one publish per interval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    /// When the worker sent it, by its clock.
    pub at: DateTime<Utc>,
    /// The attempts it runs.
    pub running: Vec<Lease>,
}

/// One running attempt, named so that only that attempt's lease is extended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The job.
    pub job_id: Uuid,
    /// Its attempt.
    pub attempt: u32,
    /// Its generation.
    pub generation: u32,
}

/// On the control stream, which every worker reads from its start when it connects and then
/// follows: a worker started after a cancel still knows of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Stop this job at its next step, or skip it if it has not started.
    Cancel {
        /// The job to cancel.
        job_id: Uuid,
        /// The generation cancelled; a later re-drive is not.
        #[serde(default)]
        generation: u32,
    },
    /// Written by a worker that has just connected, and read back by it: every message before
    /// its own marker is one it has now seen (a stream is read in order).
    Marker {
        /// Unique per connection.
        nonce: Uuid,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_wire_format_is_flat() {
        let e = JobEvent {
            job_id: Uuid::nil(),
            attempt: 2,
            generation: 1,
            at: DateTime::from_timestamp(0, 0).unwrap(),
            started_at: None,
            change: JobChange::Failed {
                error: "boom".into(),
                retrying: true,
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "failed");
        assert_eq!(v["retrying"], true);
        assert_eq!(v["attempt"], 2);
        assert_eq!(serde_json::from_value::<JobEvent>(v).unwrap(), e);
    }

    fn event(id: u128, change: JobChange) -> JobEvent {
        JobEvent {
            job_id: Uuid::from_u128(id),
            attempt: 1,
            generation: 0,
            at: DateTime::from_timestamp(0, 0).unwrap(),
            started_at: None,
            change,
        }
    }

    #[test]
    fn a_batch_assembled_from_its_parts_reads_back_whole() {
        let parts = [
            BatchedEvent {
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
                event: event(
                    1,
                    JobChange::Succeeded {
                        result: serde_json::json!({"n": 1}),
                    },
                ),
            },
            BatchedEvent {
                traceparent: None,
                event: event(2, JobChange::Progress { progress: 0.5 }),
            },
        ];
        let bytes: Vec<Vec<u8>> = parts
            .iter()
            .map(|p| serde_json::to_vec(p).unwrap())
            .collect();
        let body = EventBatch::body(bytes.iter().map(Vec::as_slice));
        let batch = EventBatch::read(EVENTS_ROUTING_KEY, &body).unwrap();
        assert_eq!(batch.events, parts);
        let empty = EventBatch::body(std::iter::empty());
        assert_eq!(
            EventBatch::read(EVENTS_ROUTING_KEY, &empty).unwrap(),
            EventBatch::default()
        );
    }

    #[test]
    fn an_event_of_its_own_reads_as_a_batch_of_one() {
        let e = event(7, JobChange::Cancelled);
        let batch = EventBatch::read("job.cancelled", &serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].event, e);
        assert_eq!(batch.events[0].traceparent, None);
        // A single event is no batch, and a batch no single event.
        assert!(EventBatch::read(EVENTS_ROUTING_KEY, &serde_json::to_vec(&e).unwrap()).is_err());
        assert!(EventBatch::read("job.cancelled", br#"{"events":[]}"#).is_err());
    }

    #[test]
    fn messages_of_an_older_service_still_read() {
        // A job message and a `started` event as the first release wrote them.
        let job: JobMessage = serde_json::from_value(serde_json::json!({
            "id": Uuid::nil(), "kind": "sleep", "payload": {}, "attempt": 1,
            "available_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        assert_eq!(
            (
                job.payload_version,
                job.retries_left,
                job.lease_ms,
                job.checkpoint
            ),
            (1, 0, DEFAULT_LEASE_MS, None)
        );
        let started: JobEvent = serde_json::from_value(serde_json::json!({
            "job_id": Uuid::nil(), "attempt": 1, "at": "2026-01-01T00:00:00Z", "event": "started"
        }))
        .unwrap();
        assert_eq!(started.change, JobChange::Started { traceparent: None });
    }

    #[test]
    fn every_event_has_its_name_in_the_list() {
        let all = [
            JobChange::Started { traceparent: None },
            JobChange::Progress { progress: 0.5 },
            JobChange::Checkpoint {
                state: serde_json::json!(1),
            },
            JobChange::Succeeded {
                result: serde_json::json!(1),
            },
            JobChange::Failed {
                error: String::new(),
                retrying: false,
            },
            JobChange::Cancelled,
            JobChange::Released,
            JobChange::Snoozed {
                until: DateTime::<Utc>::MIN_UTC,
            },
        ];
        let names: Vec<&str> = all.iter().map(JobChange::name).collect();
        assert_eq!(names, JobChange::NAMES);
        for change in all {
            let wire = serde_json::to_value(&change).unwrap();
            assert_eq!(wire["event"], change.name());
        }
    }
}
