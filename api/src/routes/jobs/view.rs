//! What the `/jobs` routes answer: the public shape of a job, which is not its row.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::lifecycle::{PastGeneration, Status};
use crate::store::JobRow;

/// A job, as answered.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Job {
    /// The job's id.
    pub(crate) id: Uuid,
    /// Which handler runs it.
    pub(crate) kind: String,
    /// The handler's input, as submitted.
    #[schema(value_type = Object)]
    pub(crate) payload: Value,
    /// The version of the kind's payload it was submitted in.
    pub(crate) payload_version: u32,
    /// Where it is in its lifecycle.
    pub(crate) status: Status,
    /// Share of the work done, 0.0–1.0.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub(crate) progress: f64,
    /// Attempts started in this generation (0 before the first); a run that snoozed is not
    /// one (see `snoozes`).
    pub(crate) attempts: u32,
    /// Times the handler asked to run later without spending an attempt.
    pub(crate) snoozes: u32,
    /// 0–9, higher first.
    #[schema(minimum = 0, maximum = 9)]
    pub(crate) priority: u8,
    /// What its kind's per-key limits count it under.
    pub(crate) concurrency_key: Option<String>,
    /// Why it waits though due, if it does (`GET /jobs/{id}` only): a concurrency limit with no
    /// free slot, a rate limit (it runs at `run_at`), or its kind is paused.
    pub(crate) held: Option<Held>,
    /// Its generation: 0, and one more at each re-drive.
    pub(crate) generation: u32,
    /// The handler's output, once succeeded.
    #[schema(value_type = Option<Object>)]
    pub(crate) result: Option<Value>,
    /// The last error, if any: of the failed attempt, or why it ended.
    pub(crate) error: Option<String>,
    /// When the api accepted it.
    pub(crate) created_at: DateTime<Utc>,
    /// When it may run: `created_at`, later for a delayed job, and the end of its back-off
    /// while a retry waits (status `scheduled` until then).
    pub(crate) run_at: DateTime<Utc>,
    /// When its first attempt started.
    pub(crate) started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub(crate) finished_at: Option<DateTime<Utc>>,
    /// The trace that created it (32 hex digits).
    #[schema(pattern = "^[0-9a-f]{32}$")]
    pub(crate) trace_id: String,
    /// How each earlier generation ended, oldest first: one entry per re-drive.
    pub(crate) history: Vec<PastGeneration>,
    /// The running attempt's last sign of life (a heartbeat or an event); its lease lapses a
    /// lease period (`JOB_LEASE_SECS`) after it.
    pub(crate) heartbeat_at: Option<DateTime<Utc>>,
    /// The last checkpoint, if an attempt saved one: the next attempt resumes from it.
    pub(crate) checkpoint: Option<CheckpointInfo>,
    /// The schedule fire that made it, if one did.
    pub(crate) fired_by: Option<FiredBy>,
    /// The client (API key name) that submitted it; `null` for a schedule's fire.
    pub(crate) client: Option<String>,
}

/// Why a due job waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Held {
    /// Its kind (or its key) has as many jobs running as its concurrency limit allows; it
    /// starts when one ends.
    Concurrency,
    /// Its kind's (or key's) rate limit gave it a turn at `run_at`.
    Rate,
    /// Its kind is paused.
    Paused,
}

impl Held {
    /// As stored in `outbox.held`.
    pub(crate) fn parse(stored: &str) -> Option<Self> {
        match stored {
            "concurrency" => Some(Self::Concurrency),
            "rate" => Some(Self::Rate),
            "paused" => Some(Self::Paused),
            _ => None,
        }
    }
}

/// The schedule fire that made a job.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FiredBy {
    /// The schedule's name.
    pub(crate) schedule: String,
    /// The fire time (the job may have been made later, if the fire was late).
    pub(crate) fire_at: DateTime<Utc>,
}

/// Where a job's last checkpoint came from (its state goes to the next attempt, not here).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CheckpointInfo {
    /// The attempt that saved it.
    pub(crate) attempt: u32,
    /// When.
    pub(crate) at: DateTime<Utc>,
}

impl From<JobRow> for Job {
    fn from(row: JobRow) -> Self {
        Self {
            id: row.id,
            kind: row.kind,
            payload: row.payload,
            payload_version: row.payload_version.max(1) as u32,
            status: row.status,
            progress: row.progress,
            attempts: (row.attempts - row.snoozes).max(0) as u32,
            snoozes: row.snoozes.max(0) as u32,
            priority: row.priority.clamp(0, 9) as u8,
            concurrency_key: row.concurrency_key,
            held: None,
            generation: row.generation.max(0) as u32,
            result: row.result,
            error: row.error,
            created_at: row.created_at,
            run_at: row.run_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            trace_id: row.trace_id,
            history: row.history.0,
            heartbeat_at: row.heartbeat_at,
            checkpoint: row
                .checkpoint_at
                .zip(row.checkpoint_attempt)
                .map(|(at, attempt)| CheckpointInfo {
                    attempt: attempt.max(0) as u32,
                    at,
                }),
            fired_by: row
                .schedule_name
                .zip(row.fire_at)
                .map(|(schedule, fire_at)| FiredBy { schedule, fire_at }),
            client: row.client,
        }
    }
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobPage {
    /// The jobs.
    pub(crate) items: Vec<Job>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(pattern = "^[0-9]{1,18}_[0-9a-f]{32}$")]
    pub(crate) next_cursor: Option<String>,
}

/// What a bulk re-drive did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Redriven {
    /// How many jobs were queued again.
    pub(crate) requeued: usize,
    /// Their ids.
    pub(crate) ids: Vec<Uuid>,
}
