//! Every SQL statement the api runs, one module per use. A job's state lives in `jobs`; what is
//! still to be published lives in `outbox` (jobs) and in `jobs.cancel_outbox` (cancels); the
//! `Idempotency-Key` answers live in `idempotency_keys`. The SQL sits beside the Rust that binds
//! it, and each module owns the transactions it needs.
//!
//! - [`insert`]: accepting jobs (grouped, or with an idempotency key).
//! - [`read`]: one job, or a page of them.
//! - [`cancel`]: cancelling a job.
//! - [`events`]: applying workers' events through the state machine.
//! - [`outbox`]: what the relay publishes and takes out.
//! - [`redrive`]: running failed or cancelled jobs again.
//! - [`leases`]: workers' heartbeats, and giving up attempts whose lease lapsed.
//! - [`retention`]: deleting old finished jobs and expired keys.
//! - [`schedules`]: periodic schedules, and the jobs their fires make.
//! - [`workflows`]: workflows, their jobs and dependencies.
//! - [`keys`]: API keys and console sessions; [`audit`]: the audit trail.

pub mod audit;
pub mod cancel;
pub mod events;
pub mod flow;
pub mod insert;
pub mod keys;
pub mod leases;
pub mod outbox;
pub mod read;
pub mod redrive;
pub mod retention;
pub mod schedules;
pub mod workflows;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use crate::lifecycle::{Current, PastGeneration, Status};

pub use cancel::{Cancel, cancel};
pub use events::{Applied, apply_events};
pub use insert::{Claim, Fire, Inserted, Key, NewJob, Stored, Submission, insert, insert_fired};
pub use read::{Cursor, Filter, get, held, list};
pub use redrive::{Redrive, RedriveOne, redrive, redrive_one};
pub use retention::{Pruned, RETENTION_LOCK, prune};

/// A job row, as read.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    /// The job's id.
    pub id: Uuid,
    /// Which handler runs it.
    pub kind: String,
    /// The handler's input.
    pub payload: Value,
    /// Where it is in its lifecycle.
    pub status: Status,
    /// 0.0–1.0.
    pub progress: f64,
    /// The version of its kind's payload it was accepted under.
    pub payload_version: i32,
    /// Attempts started in this generation.
    pub attempts: i32,
    /// The handler's output, once succeeded.
    pub result: Option<Value>,
    /// The last error, if any.
    pub error: Option<String>,
    /// When the api accepted it.
    pub created_at: DateTime<Utc>,
    /// When it may run (its next attempt, while it waits for a retry).
    pub run_at: DateTime<Utc>,
    /// When its first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The trace that created it (32 hex).
    pub trace_id: String,
    /// Its generation: 0, and one more at each re-drive.
    pub generation: i32,
    /// How each earlier generation ended, oldest first.
    pub history: Json<Vec<PastGeneration>>,
    /// The running attempt's last sign of life.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// When the last checkpoint was saved.
    pub checkpoint_at: Option<DateTime<Utc>>,
    /// The attempt that saved it.
    pub checkpoint_attempt: Option<i32>,
    /// The schedule whose fire made it, if one did.
    pub schedule_name: Option<String>,
    /// That fire's time.
    pub fire_at: Option<DateTime<Utc>>,
    /// 0–9, higher first.
    pub priority: i16,
    /// What its kind's per-key limits count it under.
    pub concurrency_key: Option<String>,
    /// Times its handler snoozed it.
    pub snoozes: i32,
    /// Its unique claim, while it holds one.
    pub unique_key: Option<String>,
    /// The client (API key name) that submitted it; `None` for a schedule's fire.
    pub client: Option<String>,
}

/// The columns of [`JobRow`], for `concat!` (sqlx only takes static SQL).
macro_rules! job_columns {
    () => {
        "id, kind, payload, payload_version, status, progress, attempts, result, error, \
         created_at, run_at, started_at, finished_at, trace_id, generation, history, \
         heartbeat_at, checkpoint_at, checkpoint_attempt, schedule_name, fire_at, priority, \
         concurrency_key, snoozes, unique_key, client"
    };
}
use job_columns;

/// The state machine's columns of a row, as locked for a change.
#[derive(sqlx::FromRow)]
struct StateRow {
    id: Uuid,
    status: Status,
    attempts: i32,
    failures: i32,
    superseded: i32,
    progress: f64,
    cancel_requested: bool,
    generation: i32,
}

/// The columns of [`StateRow`].
macro_rules! state_columns {
    () => {
        "id, status, attempts, failures, superseded, progress, cancel_requested, generation"
    };
}
use state_columns;

impl StateRow {
    fn current(&self) -> Current {
        Current {
            status: self.status,
            attempts: self.attempts.max(0) as u32,
            failures: self.failures.max(0) as u32,
            superseded: self.superseded.max(0) as u32,
            progress: self.progress,
            cancel_requested: self.cancel_requested,
            generation: self.generation.max(0) as u32,
        }
    }
}
