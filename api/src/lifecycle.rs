//! The job state machine: a job's statuses, and how an event from a worker changes a job.
//!
//! Delivery is at-least-once and events of different attempts can cross, so every rule below
//! is written to make a repeated or stale event a no-op: nothing changes once a job is final,
//! events of an older attempt or of an earlier generation (before a re-drive) are ignored,
//! progress only rises, and an attempt starts only once.
//!
//! Words: an *attempt* is one run of the handler; a failed attempt that may be tried again is
//! *retried* (automatically, after a back-off); a *generation* is the series of attempts that
//! one submission or one *re-drive* (an operator asking a failed or cancelled job to run again)
//! starts.

use chrono::{DateTime, Utc};
use jobs_contract::messages::{JobChange, JobEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A job's lifecycle state. Stored as the PostgreSQL enum `job_status`, whose labels are these
/// names (a test holds the two together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "job_status", rename_all = "lowercase")]
pub enum Status {
    /// Waiting for its `run_at`: a delayed job, or a retry waiting out its back-off.
    Scheduled,
    /// Waiting for a worker.
    Queued,
    /// An attempt is running.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished without one: permanent failure or attempts exhausted.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 6] = [
        Self::Scheduled,
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The statuses nothing changes any more.
    pub const FINAL: [Self; 3] = [Self::Succeeded, Self::Failed, Self::Cancelled];

    /// The name, as stored and as answered.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether nothing can change any more.
    pub fn is_final(self) -> bool {
        Self::FINAL.contains(&self)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an earlier generation of a job ended: one entry per re-drive, kept on the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PastGeneration {
    /// Which generation (0 for the job as first submitted).
    pub generation: u32,
    /// How it ended: `failed` or `cancelled`.
    pub status: Status,
    /// Attempts it made.
    pub attempts: u32,
    /// Its last error.
    pub error: Option<String>,
    /// When its first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// What the state machine needs to know of the row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Current {
    /// The stored status.
    pub status: Status,
    /// The latest attempt seen (0 before the first starts).
    pub attempts: u32,
    /// Attempts of this generation that failed (their worker's failure, or a lease that
    /// expired): what the retry budget counts.
    pub failures: u32,
    /// Attempts up to this one are superseded (their lease expired, or they released the job):
    /// their late events change nothing.
    pub superseded: u32,
    /// The latest progress seen.
    pub progress: f64,
    /// Whether a client asked to cancel.
    pub cancel_requested: bool,
    /// The generation under way (one more at each re-drive).
    pub generation: u32,
}

impl Current {
    /// The state once `u` is written.
    pub fn after(self, u: &Update) -> Self {
        Self {
            status: u.status,
            attempts: u.attempts,
            failures: u.failures,
            superseded: u.superseded,
            progress: u.progress,
            ..self
        }
    }
}

/// What happens to the running attempt's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// The attempt showed it is alive: its lease runs for another lease period from now.
    Renew,
    /// The attempt is over: no lease.
    End,
}

/// When the job runs again, for an update that puts it back in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// After the back-off of its `failures`-th failure: a retry.
    Retry,
    /// Now: a released job, resuming from its checkpoint.
    Now,
    /// At this time: a snoozed job (no attempt spent; the store counts the snooze).
    At(DateTime<Utc>),
}

/// The new values to write; `started_at` and `finished_at` are only set where still empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// New status.
    pub status: Status,
    /// New attempt count.
    pub attempts: u32,
    /// New failure count.
    pub failures: u32,
    /// Attempts up to this one are superseded.
    pub superseded: u32,
    /// New progress.
    pub progress: f64,
    /// When the first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the job reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The handler's result.
    pub result: Option<Value>,
    /// The last error.
    pub error: Option<String>,
    /// A checkpoint to store: its state, the attempt that saved it and when.
    pub checkpoint: Option<(Value, u32, DateTime<Utc>)>,
    /// The running attempt's span (a W3C `traceparent`), which the next attempt links to.
    pub attempt_span: Option<String>,
    /// The attempt's lease.
    pub lease: Lease,
    /// The job goes back in the outbox: the store sets `run_at` and adds the entry.
    pub next: Option<Next>,
}

impl Update {
    /// This update followed by `next`, as one write: what applying both in turn would store
    /// (the first start stays, the latest error, checkpoint and span win; counts, the lease and
    /// the requeue are the later update's, and so are the end and the result: only a final
    /// update sets them, and nothing follows a final update).
    pub fn then(self, next: Self) -> Self {
        Self {
            started_at: self.started_at.or(next.started_at),
            error: next.error.or(self.error),
            checkpoint: next.checkpoint.or(self.checkpoint),
            attempt_span: next.attempt_span.or(self.attempt_span),
            ..next
        }
    }
}

/// The change `event` makes to a job in state `cur`, or `None` when it changes nothing.
pub fn apply(cur: Current, event: &JobEvent) -> Option<Update> {
    let a = event.attempt;
    if cur.status.is_final()
        || event.generation != cur.generation
        || a < cur.attempts
        || a <= cur.superseded
    {
        return None;
    }
    let newer = a > cur.attempts;
    let running = newer || cur.status == Status::Running;
    let at = Some(event.at);
    let base = Update {
        status: cur.status,
        attempts: a,
        failures: cur.failures,
        superseded: cur.superseded,
        progress: cur.progress,
        started_at: event.started_at.or(at),
        finished_at: None,
        result: None,
        error: None,
        checkpoint: None,
        attempt_span: None,
        lease: Lease::End,
        next: None,
    };
    match &event.change {
        // An attempt starts once; a repeat (redelivery) or a late start of a finished attempt
        // (waiting for its retry, with the same count) is ignored. From here the worker holds
        // the attempt's lease.
        JobChange::Started { traceparent } => newer.then(|| Update {
            status: Status::Running,
            progress: 0.0,
            attempt_span: traceparent.clone(),
            lease: Lease::Renew,
            ..base
        }),
        JobChange::Progress { progress } => {
            let rises = cur.status == Status::Running && *progress > cur.progress;
            (newer || rises).then_some(Update {
                status: Status::Running,
                progress: *progress,
                lease: Lease::Renew,
                ..base
            })
        }
        JobChange::Checkpoint { state } => running.then(|| Update {
            status: Status::Running,
            checkpoint: Some((state.clone(), a, event.at)),
            lease: Lease::Renew,
            ..base
        }),
        JobChange::Succeeded { result } => Some(Update {
            status: Status::Succeeded,
            progress: 1.0,
            finished_at: at,
            result: Some(result.clone()),
            ..base
        }),
        // A job the client cancelled is not retried, whatever the worker planned.
        JobChange::Failed { error, retrying } if *retrying && !cur.cancel_requested => running
            .then(|| Update {
                status: Status::Scheduled,
                failures: cur.failures + 1,
                // The attempt is over: anything it (or a copy of it) reports later is stale.
                superseded: a,
                progress: 0.0,
                error: Some(error.clone()),
                next: Some(Next::Retry),
                ..base
            }),
        JobChange::Failed { error, retrying } => Some(Update {
            status: if *retrying {
                Status::Cancelled
            } else {
                Status::Failed
            },
            failures: cur.failures + 1,
            finished_at: at,
            error: Some(error.clone()),
            ..base
        }),
        JobChange::Cancelled => Some(Update {
            status: Status::Cancelled,
            started_at: None,
            finished_at: at,
            ..base
        }),
        // Handed back unfinished (a shutdown): it runs again now, from its checkpoint, and this
        // attempt costs nothing from the budget; its late events, if any, are stale.
        JobChange::Released if cur.cancel_requested => Some(Update {
            status: Status::Cancelled,
            finished_at: at,
            ..base
        }),
        JobChange::Released => running.then_some(Update {
            status: Status::Queued,
            superseded: a,
            next: Some(Next::Now),
            ..base
        }),
        // Asked to run later (a 429 upstream): back to `scheduled` until then, the attempt
        // superseded and not counted as a failure; a job the client cancelled stops here.
        JobChange::Snoozed { .. } if cur.cancel_requested => Some(Update {
            status: Status::Cancelled,
            finished_at: at,
            ..base
        }),
        JobChange::Snoozed { until } => running.then_some(Update {
            status: Status::Scheduled,
            superseded: a,
            next: Some(Next::At(*until)),
            ..base
        }),
    }
}

/// What a lapsed lease does to a running job: the attempt is given up (superseded, so that
/// anything it still reports changes nothing) and counts as a failure; the job is retried
/// while its budget of `max_attempts` allows, and fails otherwise. `None` when the job is not
/// running. `at` is now; `lease` the lease that lapsed, for the error.
pub fn expire(
    cur: Current,
    max_attempts: u32,
    lease: std::time::Duration,
    at: DateTime<Utc>,
) -> Option<Update> {
    if cur.status != Status::Running {
        return None;
    }
    let failures = cur.failures + 1;
    let error = format!(
        "attempt {} lost: no heartbeat from its worker for {}s (the worker died, or lost the broker)",
        cur.attempts,
        lease.as_secs()
    );
    let base = Update {
        status: Status::Failed,
        attempts: cur.attempts,
        failures,
        superseded: cur.attempts,
        progress: cur.progress,
        started_at: None,
        finished_at: Some(at),
        result: None,
        error: Some(error),
        checkpoint: None,
        attempt_span: None,
        lease: Lease::End,
        next: None,
    };
    Some(if cur.cancel_requested {
        Update {
            status: Status::Cancelled,
            ..base
        }
    } else if failures < max_attempts {
        Update {
            status: Status::Scheduled,
            finished_at: None,
            next: Some(Next::Retry),
            ..base
        }
    } else {
        base
    })
}

/// What a run of events did to one job.
#[derive(Debug, Clone, PartialEq)]
pub struct Folded {
    /// Per event, whether it changed anything.
    pub changed: Vec<bool>,
    /// The one write that stores them all, if any changed anything.
    pub update: Option<Update>,
}

/// Applies `events` of one job, in order, starting from `cur`: each sees the state the ones
/// before it left, and their updates merge into one write.
pub fn fold<'a>(mut cur: Current, events: impl IntoIterator<Item = &'a JobEvent>) -> Folded {
    let mut folded = Folded {
        changed: Vec::new(),
        update: None,
    };
    for event in events {
        let update = apply(cur, event);
        folded.changed.push(update.is_some());
        if let Some(u) = update {
            cur = cur.after(&u);
            folded.update = Some(match folded.update.take() {
                Some(before) => before.then(u),
                None => u,
            });
        }
    }
    folded
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;
    use uuid::Uuid;

    fn ev(attempt: u32, change: JobChange) -> JobEvent {
        JobEvent {
            job_id: Uuid::nil(),
            attempt,
            generation: 0,
            at: Utc::now(),
            started_at: None,
            change,
        }
    }

    fn started(attempt: u32) -> JobEvent {
        ev(
            attempt,
            JobChange::Started {
                traceparent: Some(format!("span of {attempt}")),
            },
        )
    }

    fn failed(attempt: u32, retrying: bool) -> JobEvent {
        ev(
            attempt,
            JobChange::Failed {
                error: format!("attempt {attempt}"),
                retrying,
            },
        )
    }

    fn progress(attempt: u32, progress: f64) -> JobEvent {
        ev(attempt, JobChange::Progress { progress })
    }

    fn checkpoint(attempt: u32, step: u32) -> JobEvent {
        ev(
            attempt,
            JobChange::Checkpoint {
                state: json!({ "step": step }),
            },
        )
    }

    fn succeeded(attempt: u32) -> JobEvent {
        ev(attempt, JobChange::Succeeded { result: json!(1) })
    }

    fn cur(status: Status, attempts: u32, progress: f64) -> Current {
        Current {
            status,
            attempts,
            progress,
            ..FRESH
        }
    }

    const FRESH: Current = Current {
        status: Status::Queued,
        attempts: 0,
        failures: 0,
        superseded: 0,
        progress: 0.0,
        cancel_requested: false,
        generation: 0,
    };

    /// Runs events through the machine from `from`; the state they leave.
    fn run_from(from: Current, events: &[JobEvent]) -> Current {
        let folded = fold(from, events);
        folded.update.map_or(from, |u| from.after(&u))
    }

    fn run(events: &[JobEvent]) -> Current {
        run_from(FRESH, events)
    }

    #[test]
    fn happy_path() {
        let end = run(&[started(1), progress(1, 0.5), succeeded(1)]);
        assert_eq!(end, cur(Status::Succeeded, 1, 1.0));
    }

    #[test]
    fn a_start_is_running_at_zero_holding_a_lease_and_naming_its_span() {
        let start = started(1);
        let u = apply(FRESH, &start).unwrap();
        assert_eq!(
            (u.status, u.attempts, u.progress),
            (Status::Running, 1, 0.0)
        );
        assert_eq!((u.started_at, u.lease), (Some(start.at), Lease::Renew));
        assert_eq!(u.attempt_span.as_deref(), Some("span of 1"));
        assert_eq!((u.finished_at, u.next, u.checkpoint), (None, None, None));
        assert_eq!((u.result, u.error, u.failures), (None, None, 0));
    }

    #[test]
    fn duplicates_change_nothing() {
        let once = [started(1), progress(1, 0.5), checkpoint(1, 3)];
        let c = run(&once);
        for e in &once[..2] {
            assert_eq!(apply(c, e), None, "{e:?} repeated");
        }
    }

    #[test]
    fn progress_never_goes_back_and_only_rises_while_running() {
        let c = run(&[started(1), progress(1, 0.7)]);
        assert_eq!(apply(c, &progress(1, 0.3)), None);
        assert_eq!(apply(c, &progress(1, 0.7)), None, "equal is not a rise");
        let u = apply(c, &progress(1, 0.8)).unwrap();
        assert_eq!(
            (u.status, u.progress, u.lease),
            (Status::Running, 0.8, Lease::Renew)
        );
        // Waiting for a retry with the same attempt count: a late progress report of the
        // failed attempt does not bring it back to running.
        let waiting = run(&[started(1), failed(1, true)]);
        assert_eq!(apply(waiting, &progress(1, 0.9)), None);
    }

    #[test]
    fn a_checkpoint_is_stored_with_its_attempt_and_time_and_renews_the_lease() {
        let c = run(&[started(2)]);
        let e = checkpoint(2, 7);
        let u = apply(c, &e).unwrap();
        assert_eq!(u.checkpoint, Some((json!({"step": 7}), 2, e.at)));
        assert_eq!(
            (u.status, u.lease, u.progress),
            (Status::Running, Lease::Renew, 0.0)
        );
        // Of a newer attempt whose start was missed: it implies the start.
        assert_eq!(apply(FRESH, &e).unwrap().status, Status::Running);
        // Of an attempt that is over (waiting for its retry): ignored.
        let waiting = run(&[started(1), failed(1, true)]);
        assert_eq!(apply(waiting, &checkpoint(1, 9)), None);
    }

    #[test]
    fn nothing_changes_a_final_job() {
        for status in Status::FINAL {
            let c = cur(status, 1, 1.0);
            for change in [
                JobChange::Started { traceparent: None },
                JobChange::Progress { progress: 0.9 },
                JobChange::Checkpoint { state: json!(1) },
                JobChange::Succeeded {
                    result: json!(null),
                },
                JobChange::Failed {
                    error: "x".into(),
                    retrying: false,
                },
                JobChange::Cancelled,
                JobChange::Released,
            ] {
                assert_eq!(
                    apply(c, &ev(2, change.clone())),
                    None,
                    "{status} {change:?}"
                );
                assert_eq!(apply(c, &ev(1, change)), None, "{status}");
            }
        }
    }

    #[test]
    fn stale_attempt_is_ignored() {
        let c = run(&[started(1), failed(1, true), started(2)]);
        assert_eq!(c.status, Status::Running);
        assert_eq!((c.attempts, c.failures), (2, 1));
        for stale in [
            succeeded(1),
            progress(1, 0.9),
            checkpoint(1, 1),
            failed(1, false),
            ev(1, JobChange::Cancelled),
            ev(1, JobChange::Released),
        ] {
            assert_eq!(apply(c, &stale), None, "{stale:?}");
        }
    }

    #[test]
    fn a_retry_waits_scheduled_and_a_late_start_of_the_failed_attempt_is_ignored() {
        let c = run(&[started(1), failed(1, true)]);
        assert_eq!(c.status, Status::Scheduled);
        assert_eq!((c.attempts, c.failures), (1, 1));
        assert_eq!(apply(c, &started(1)), None);
        assert_eq!(apply(c, &failed(1, true)), None, "a repeated failure");
        for late in [
            ev(1, JobChange::Succeeded { result: json!(1) }),
            failed(1, false),
            ev(1, JobChange::Cancelled),
            ev(1, JobChange::Released),
        ] {
            assert_eq!(
                apply(c, &late),
                None,
                "a copy of the failed attempt: {late:?}"
            );
        }
        let u = apply(c, &started(2)).expect("the next attempt starts");
        assert_eq!((u.status, u.attempts, u.failures), (Status::Running, 2, 1));
    }

    #[test]
    fn a_retry_is_scheduled_with_its_error_counted_and_no_end() {
        let running = run(&[started(1), progress(1, 0.4)]);
        let e = failed(1, true);
        let u = apply(running, &e).unwrap();
        assert_eq!(
            (u.status, u.attempts, u.progress),
            (Status::Scheduled, 1, 0.0)
        );
        assert_eq!(
            (u.next, u.failures, u.lease),
            (Some(Next::Retry), 1, Lease::End)
        );
        assert_eq!(u.error.as_deref(), Some("attempt 1"));
        assert_eq!((u.finished_at, u.result), (None, None));
        // A failure reported without any other event of its attempt (it failed at once).
        let alone = apply(FRESH, &e).unwrap();
        assert_eq!(
            (alone.status, alone.next),
            (Status::Scheduled, Some(Next::Retry))
        );
    }

    #[test]
    fn a_final_failure_ends_the_job_with_its_error() {
        let running = run(&[started(1)]);
        let e = failed(1, false);
        let u = apply(running, &e).unwrap();
        assert_eq!(u.status, Status::Failed);
        assert_eq!(u.finished_at, Some(e.at));
        assert_eq!(u.error.as_deref(), Some("attempt 1"));
        assert_eq!((u.next, u.failures, u.lease), (None, 1, Lease::End));
        assert_eq!(u.progress, 0.0, "progress stays where it was");
    }

    #[test]
    fn a_cancel_requested_job_is_not_retried_nor_released() {
        let mut c = run(&[started(1)]);
        c.cancel_requested = true;
        let u = apply(c, &failed(1, true)).unwrap();
        assert_eq!(
            u.status,
            Status::Cancelled,
            "a cancelled job is not retried"
        );
        assert_eq!(u.next, None);
        assert!(u.finished_at.is_some());
        // And a final failure of a cancel-requested job is still a failure.
        assert_eq!(apply(c, &failed(1, false)).unwrap().status, Status::Failed);
        let released = apply(c, &ev(1, JobChange::Released)).unwrap();
        assert_eq!((released.status, released.next), (Status::Cancelled, None));
        assert!(released.finished_at.is_some());
    }

    #[test]
    fn success_is_complete_with_its_result_and_ends_the_lease() {
        let running = run(&[started(1), progress(1, 0.3)]);
        let e = succeeded(1);
        let u = apply(running, &e).unwrap();
        assert_eq!((u.status, u.progress), (Status::Succeeded, 1.0));
        assert_eq!((u.result, u.finished_at), (Some(json!(1)), Some(e.at)));
        assert_eq!((u.next, u.lease), (None, Lease::End));
    }

    #[test]
    fn a_cancelled_attempt_ends_the_job_without_claiming_a_start() {
        let running = run(&[started(1)]);
        let e = ev(1, JobChange::Cancelled);
        let u = apply(running, &e).unwrap();
        assert_eq!(u.status, Status::Cancelled);
        assert_eq!((u.started_at, u.finished_at), (None, Some(e.at)));
    }

    #[test]
    fn a_released_attempt_goes_back_now_costs_nothing_and_is_superseded() {
        let running = run(&[started(3), progress(3, 0.6), checkpoint(3, 4)]);
        let u = apply(running, &ev(3, JobChange::Released)).unwrap();
        assert_eq!(
            (u.status, u.next, u.lease),
            (Status::Queued, Some(Next::Now), Lease::End)
        );
        assert_eq!((u.superseded, u.failures, u.finished_at), (3, 0, None));
        let c = running.after(&u);
        // Anything the released attempt still says is stale; the next attempt starts.
        assert_eq!(apply(c, &progress(3, 0.9)), None);
        assert_eq!(apply(c, &succeeded(3)), None);
        assert_eq!(apply(c, &ev(3, JobChange::Released)), None);
        let next = apply(c, &started(4)).unwrap();
        assert_eq!(
            (next.status, next.progress),
            (Status::Running, 0.0),
            "the next attempt reports its own progress, from its checkpoint"
        );
        // A release that is not of the running attempt changes nothing.
        assert_eq!(
            apply(
                run(&[started(1), failed(1, true)]),
                &ev(1, JobChange::Released)
            ),
            None
        );
    }

    #[test]
    fn a_lapsed_lease_supersedes_the_attempt_and_retries_within_the_budget() {
        let lease = Duration::from_secs(30);
        let now = Utc::now();
        let running = run(&[started(1), progress(1, 0.5)]);
        let u = expire(running, 3, lease, now).unwrap();
        assert_eq!(
            (u.status, u.next, u.lease),
            (Status::Scheduled, Some(Next::Retry), Lease::End)
        );
        assert_eq!((u.superseded, u.failures, u.attempts), (1, 1, 1));
        assert_eq!(u.finished_at, None);
        assert!(
            u.error
                .as_deref()
                .unwrap()
                .contains("no heartbeat from its worker for 30s")
        );
        // The lost attempt's late events change nothing, its successor's do.
        let c = running.after(&u);
        assert_eq!(apply(c, &succeeded(1)), None, "fenced");
        assert_eq!(apply(c, &started(2)).unwrap().status, Status::Running);
        // The last attempt's budget: the job fails, when it lost its lease.
        let last = Current {
            failures: 2,
            ..running
        };
        let u = expire(last, 3, lease, now).unwrap();
        assert_eq!(
            (u.status, u.next, u.finished_at),
            (Status::Failed, None, Some(now))
        );
        assert_eq!((u.failures, u.superseded), (3, 1));
        // A cancel was pending: cancelled, not run again.
        let cancelling = Current {
            cancel_requested: true,
            ..running
        };
        let u = expire(cancelling, 3, lease, now).unwrap();
        assert_eq!((u.status, u.next), (Status::Cancelled, None));
        // Only a running job has a lease to lose.
        for status in [Status::Scheduled, Status::Queued, Status::Succeeded] {
            assert_eq!(expire(cur(status, 1, 0.0), 3, lease, now), None, "{status}");
        }
    }

    #[test]
    fn events_of_an_earlier_generation_are_ignored() {
        // Re-driven: generation 1, attempts start again from 0.
        let c = Current {
            generation: 1,
            ..FRESH
        };
        let mut late = failed(3, false);
        assert_eq!(apply(c, &late), None, "a late event of generation 0");
        late.generation = 1;
        assert_eq!(apply(c, &late).map(|u| u.status), Some(Status::Failed));
        late.generation = 2;
        assert_eq!(apply(c, &late), None, "a generation not started yet");
    }

    #[test]
    fn a_lone_final_event_records_when_the_attempt_started() {
        let started_at = Utc::now() - chrono::Duration::milliseconds(40);
        let mut done = succeeded(1);
        done.started_at = Some(started_at);
        let u = apply(FRESH, &done).unwrap();
        assert_eq!(
            (u.status, u.started_at),
            (Status::Succeeded, Some(started_at))
        );
        assert_eq!(u.finished_at, Some(done.at));
    }

    #[test]
    fn missed_start_is_implied() {
        let c = run(&[progress(1, 0.2)]);
        assert_eq!(c, cur(Status::Running, 1, 0.2));
    }

    #[test]
    fn status_names_are_the_serialized_names() {
        for s in Status::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
            assert_eq!(s.to_string(), s.as_str());
            assert_eq!(s.is_final(), Status::FINAL.contains(&s));
        }
        assert!(serde_json::from_value::<Status>(json!("done")).is_err());
    }

    #[test]
    fn a_fold_writes_what_its_events_would_one_by_one() {
        let first = started(1);
        let retrying = failed(1, true);
        let again = started(2);
        let saved = checkpoint(2, 5);
        let stale = progress(1, 0.9);
        let done = succeeded(2);
        let events = [&first, &retrying, &again, &saved, &stale, &done];
        let folded = fold(FRESH, events);
        assert_eq!(folded.changed, [true, true, true, true, false, true]);
        let m = folded.update.unwrap();
        assert_eq!(
            (
                m.status, m.attempts, m.failures, m.progress, m.next, m.lease
            ),
            (Status::Succeeded, 2, 1, 1.0, None, Lease::End)
        );
        assert_eq!(m.started_at, Some(first.at), "the first start stays");
        assert_eq!(m.finished_at, Some(done.at));
        assert_eq!(m.result, Some(json!(1)));
        assert_eq!(
            m.error.as_deref(),
            Some("attempt 1"),
            "an earlier error is kept"
        );
        assert_eq!(m.checkpoint, Some((json!({"step": 5}), 2, saved.at)));
        assert_eq!(
            m.attempt_span.as_deref(),
            Some("span of 2"),
            "the latest span"
        );
        // The same events one at a time, each written before the next is applied.
        let mut c = FRESH;
        for e in events {
            if let Some(u) = apply(c, e) {
                c = c.after(&u);
            }
        }
        assert_eq!(c, FRESH.after(&m));
    }

    #[test]
    fn a_fold_ending_in_a_retry_or_a_release_requeues_it() {
        let folded = fold(FRESH, [&started(1), &failed(1, true)]);
        let u = folded.update.unwrap();
        assert_eq!((u.status, u.next), (Status::Scheduled, Some(Next::Retry)));
        let folded = fold(FRESH, [&started(1), &ev(1, JobChange::Released)]);
        let u = folded.update.unwrap();
        assert_eq!((u.status, u.next), (Status::Queued, Some(Next::Now)));
        assert_eq!(fold(FRESH, []).update, None);
        assert!(fold(FRESH, []).changed.is_empty());
    }
}
