//! What travels over RabbitMQ, as JSON bodies: a job to run, an event about a job, a control
//! message to every worker. The W3C trace context travels beside them, in the AMQP headers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One attempt of a job, as the worker receives it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobMessage {
    /// The job's id (also the AMQP `message_id`).
    pub id: Uuid,
    /// The handler to run.
    pub kind: String,
    /// The handler's input, validated by the api before the job was stored.
    pub payload: serde_json::Value,
    /// 1 for the first attempt; the attempt count travels with the message, not in the broker.
    pub attempt: u32,
    /// Which series of attempts this is: 0 at first, one more at each re-drive. Events and
    /// cancels name it, so nothing meant for an earlier series touches a later one.
    #[serde(default)]
    pub generation: u32,
    /// When this attempt became runnable: the job's creation, or the end of its retry delay.
    /// The worker measures queue wait from here.
    pub available_at: DateTime<Utc>,
}

/// Something that happened to a job in a worker. The api applies events idempotently.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobEvent {
    /// The job concerned.
    pub job_id: Uuid,
    /// The attempt the event belongs to; events of older attempts are stale.
    pub attempt: u32,
    /// The series of attempts it belongs to (see [`JobMessage::generation`]).
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
    /// The attempt began.
    Started,
    /// The handler finished a step; `progress` is 0.0–1.0.
    Progress {
        /// Share of the work done.
        progress: f64,
    },
    /// The handler returned a result.
    Succeeded {
        /// The handler's output.
        result: serde_json::Value,
    },
    /// The attempt failed; `retrying` says whether another attempt is scheduled.
    Failed {
        /// What went wrong, for people.
        error: String,
        /// True when the job was sent to a retry queue, false when it is final.
        retrying: bool,
    },
    /// The attempt stopped because the job was cancelled.
    Cancelled,
}

impl JobChange {
    /// The event's name, as used in routing keys and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Progress { .. } => "progress",
            Self::Succeeded { .. } => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Cancelled => "cancelled",
        }
    }
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
        /// The series of attempts cancelled; a later re-drive is not.
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
}
