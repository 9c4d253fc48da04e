//! What a client sends to `POST /jobs`: the job, and when it may run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How far ahead a job may be scheduled: further than this is refused, not clamped, so a typo
/// in a year does not park a job for a decade.
pub const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);

/// A job to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The kind of job: which handler runs it.
    pub kind: String,
    /// The kind's input, checked against its schema.
    pub payload: serde_json::Value,
    /// Run no earlier than this (RFC 3339). A time in the past runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// Run no earlier than this many milliseconds from now. Not with `run_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_DELAY_MS))]
    pub delay_ms: Option<u64>,
    /// The version of the kind's payload this request was written for (default: the kind's
    /// current version). An older one is accepted while the kind can upgrade it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub payload_version: Option<u32>,
    /// 0 (default) to 9, higher first: when jobs wait (a limit, a paused kind), a higher
    /// priority is published first. On RabbitMQ 4, 5–9 are also delivered before 0–4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 9))]
    pub priority: Option<u8>,
    /// What the kind's per-key limits count the job under (e.g. a customer id): 1–128 characters,
    /// no control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[^\u0000-\u001F\u007F]+$")
    )]
    pub concurrency_key: Option<String>,
    /// Makes the job unique: while a job of the same kind and `unique_key` is unfinished (or
    /// within the kind's unique period), a submit answers with it instead of making another.
    /// 1–255 characters, no control characters. Overrides what the kind declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 255),
        regex(pattern = r"^[^\u0000-\u001F\u007F]+$")
    )]
    pub unique_key: Option<String>,
}

/// The highest priority.
pub const MAX_PRIORITY: u8 = 9;
/// The longest `concurrency_key`.
pub const MAX_CONCURRENCY_KEY: usize = 128;
/// The longest `unique_key`.
pub const MAX_UNIQUE_KEY: usize = 255;

const MAX_DELAY_MS: u64 = MAX_DELAY.as_secs() * 1000;

impl JobRequest {
    /// The JSON Schema of the fields a request has besides `kind` and `payload` (whose schemas
    /// depend on the kind): `properties` by name, for the OpenAPI document.
    pub fn schedule_properties() -> serde_json::Value {
        let schema = schemars::schema_for!(JobRequest);
        let mut props = schema.get("properties").cloned().unwrap_or_default();
        if let Some(p) = props.as_object_mut() {
            p.remove("kind");
            p.remove("payload");
        }
        props
    }
}

/// Why a request's schedule is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// Both `run_at` and `delay_ms`.
    Both,
    /// Further ahead than [`MAX_DELAY`].
    TooFar {
        /// The field at fault.
        field: &'static str,
    },
}

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Both => f.write_str("give run_at or delay_ms, not both"),
            Self::TooFar { field } => {
                write!(
                    f,
                    "{field} is more than {} days ahead",
                    MAX_DELAY.as_secs() / 86_400
                )
            }
        }
    }
}

impl std::error::Error for ScheduleError {}

impl JobRequest {
    /// Checks `priority`, `concurrency_key` and `unique_key`; the message names the field.
    pub fn check_flow(&self) -> Result<(), String> {
        if let Some(p) = self.priority
            && p > MAX_PRIORITY
        {
            return Err(format!(
                "priority must be between 0 and {MAX_PRIORITY}, not {p}"
            ));
        }
        for (field, value, max) in [
            (
                "concurrency_key",
                &self.concurrency_key,
                MAX_CONCURRENCY_KEY,
            ),
            ("unique_key", &self.unique_key, MAX_UNIQUE_KEY),
        ] {
            if let Some(v) = value
                && (v.is_empty() || v.chars().count() > max)
            {
                return Err(format!("{field} must be 1 to {max} characters"));
            }
            // PostgreSQL's text takes no NUL; the rest of C0 and DEL have no place in a key
            // either (the schema's pattern says the same).
            if let Some(v) = value
                && v.chars().any(|c| c <= '\u{1f}' || c == '\u{7f}')
            {
                return Err(format!("{field} must not contain control characters"));
            }
        }
        Ok(())
    }
}

/// When a job may run, as the request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// As soon as possible.
    Now,
    /// At this time (in the past: now).
    At(DateTime<Utc>),
    /// This long after the job is stored.
    After(Duration),
}

impl JobRequest {
    /// The request's schedule, checked against [`MAX_DELAY`] from `now`.
    pub fn schedule(&self, now: DateTime<Utc>) -> Result<Schedule, ScheduleError> {
        match (self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => Err(ScheduleError::Both),
            (Some(at), None) => {
                let ahead = (at - now).to_std().unwrap_or_default();
                if ahead > MAX_DELAY {
                    return Err(ScheduleError::TooFar { field: "run_at" });
                }
                Ok(Schedule::At(at))
            }
            (None, Some(ms)) => {
                let delay = Duration::from_millis(ms);
                if delay > MAX_DELAY {
                    return Err(ScheduleError::TooFar { field: "delay_ms" });
                }
                Ok(Schedule::After(delay))
            }
            (None, None) => Ok(Schedule::Now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: serde_json::Value) -> JobRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn schedules() {
        let now = Utc::now();
        let base = json!({"kind": "sleep", "payload": {}});
        assert_eq!(request(base.clone()).schedule(now), Ok(Schedule::Now));
        let mut r = request(base);
        r.delay_ms = Some(3000);
        assert_eq!(r.schedule(now), Ok(Schedule::After(Duration::from_secs(3))));
        r.run_at = Some(now);
        assert_eq!(r.schedule(now), Err(ScheduleError::Both));
        r.delay_ms = None;
        r.run_at = Some(now - chrono::Duration::days(400));
        assert!(
            matches!(r.schedule(now), Ok(Schedule::At(_))),
            "the past runs now"
        );
        r.run_at = Some(now + chrono::Duration::days(31));
        assert_eq!(
            r.schedule(now),
            Err(ScheduleError::TooFar { field: "run_at" })
        );
        r.run_at = None;
        r.delay_ms = Some(MAX_DELAY.as_millis() as u64 + 1);
        assert_eq!(
            r.schedule(now).unwrap_err().to_string(),
            "delay_ms is more than 30 days ahead"
        );
    }

    #[test]
    fn rfc3339_and_unknown_fields() {
        let r = request(json!({"kind": "k", "payload": 1, "run_at": "2030-01-02T03:04:05+01:00"}));
        assert_eq!(r.run_at.unwrap().to_rfc3339(), "2030-01-02T02:04:05+00:00");
        assert!(
            serde_json::from_value::<JobRequest>(json!({"kind": "k", "payload": 1, "at": 1}))
                .is_err()
        );
        assert!(
            serde_json::from_value::<JobRequest>(
                json!({"kind": "k", "payload": 1, "run_at": "tomorrow"})
            )
            .is_err()
        );
    }
}
