//! The job state machine: how an event from a worker changes a job row.
//!
//! Delivery is at-least-once and events of different attempts can cross, so every rule below
//! is written to make a repeated or stale event a no-op: nothing changes once a job is final,
//! events of an older attempt or of an earlier series of attempts (before a re-drive) are
//! ignored, progress only rises, and an attempt starts only once.

use chrono::{DateTime, Utc};
use jobs_contract::messages::{JobChange, JobEvent};
use serde_json::Value;

/// A job's lifecycle state, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for its `run_at`; not yet published.
    Scheduled,
    /// Waiting for a worker (also between attempts).
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

    /// The stored name.
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

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether nothing can change any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// What the state machine needs to know of the row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Current {
    /// The stored status.
    pub status: Status,
    /// The latest attempt seen (0 before the first starts).
    pub attempts: u32,
    /// The latest progress seen.
    pub progress: f64,
    /// Whether a client asked to cancel.
    pub cancel_requested: bool,
    /// The series of attempts under way (one more at each re-drive).
    pub generation: u32,
}

impl Current {
    /// The state once `u` is written.
    pub fn after(self, u: &Update) -> Self {
        Self {
            status: u.status,
            attempts: u.attempts,
            progress: u.progress,
            ..self
        }
    }
}

/// The new values to write; `started_at` and `finished_at` are only set where still empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// New status.
    pub status: Status,
    /// New attempt count.
    pub attempts: u32,
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
}

impl Update {
    /// This update followed by `next`, as one write: what applying both in turn would store
    /// (the first timestamps stay, the latest result and error win).
    pub fn then(self, next: Self) -> Self {
        Self {
            started_at: self.started_at.or(next.started_at),
            finished_at: self.finished_at.or(next.finished_at),
            result: next.result.or(self.result),
            error: next.error.or(self.error),
            ..next
        }
    }
}

/// The change `event` makes to a job in state `cur`, or `None` when it changes nothing.
pub fn apply(cur: Current, event: &JobEvent) -> Option<Update> {
    let a = event.attempt;
    if cur.status.is_final() || event.generation != cur.generation || a < cur.attempts {
        return None;
    }
    let newer = a > cur.attempts;
    let at = Some(event.at);
    let base = Update {
        status: cur.status,
        attempts: a,
        progress: cur.progress,
        started_at: event.started_at.or(at),
        finished_at: None,
        result: None,
        error: None,
    };
    match &event.change {
        // An attempt starts once; a repeat (redelivery) or a late start of a finished attempt
        // (status back to queued with the same count) is ignored.
        JobChange::Started => newer.then_some(Update {
            status: Status::Running,
            progress: 0.0,
            ..base
        }),
        JobChange::Progress { progress } => {
            let rises = cur.status == Status::Running && *progress > cur.progress;
            (newer || rises).then_some(Update {
                status: Status::Running,
                progress: *progress,
                ..base
            })
        }
        JobChange::Succeeded { result } => Some(Update {
            status: Status::Succeeded,
            progress: 1.0,
            finished_at: at,
            result: Some(result.clone()),
            ..base
        }),
        // A job the client cancelled is not retried, whatever the worker planned.
        JobChange::Failed { error, retrying } if *retrying && !cur.cancel_requested => {
            (newer || cur.status == Status::Running).then_some(Update {
                status: Status::Queued,
                progress: 0.0,
                error: Some(error.clone()),
                ..base
            })
        }
        JobChange::Failed { error, retrying } => Some(Update {
            status: if *retrying {
                Status::Cancelled
            } else {
                Status::Failed
            },
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
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

    fn cur(status: Status, attempts: u32, progress: f64) -> Current {
        Current {
            status,
            attempts,
            progress,
            cancel_requested: false,
            generation: 0,
        }
    }

    /// Runs events through the machine like the api does.
    fn run(events: &[JobEvent]) -> Current {
        events
            .iter()
            .fold(cur(Status::Queued, 0, 0.0), |c, e| match apply(c, e) {
                Some(u) => c.after(&u),
                None => c,
            })
    }

    #[test]
    fn happy_path() {
        let end = run(&[
            ev(1, JobChange::Started),
            ev(1, JobChange::Progress { progress: 0.5 }),
            ev(1, JobChange::Succeeded { result: json!(1) }),
        ]);
        assert_eq!(end, cur(Status::Succeeded, 1, 1.0));
    }

    #[test]
    fn duplicates_change_nothing() {
        let once = [
            ev(1, JobChange::Started),
            ev(1, JobChange::Progress { progress: 0.5 }),
        ];
        let c = run(&once);
        for e in &once {
            assert_eq!(apply(c, e), None, "{e:?} repeated");
        }
    }

    #[test]
    fn progress_never_goes_back() {
        let c = run(&[
            ev(1, JobChange::Started),
            ev(1, JobChange::Progress { progress: 0.7 }),
        ]);
        assert_eq!(
            apply(c, &ev(1, JobChange::Progress { progress: 0.3 })),
            None
        );
    }

    #[test]
    fn nothing_changes_a_final_job() {
        for status in [Status::Succeeded, Status::Failed, Status::Cancelled] {
            let c = cur(status, 1, 1.0);
            for change in [
                JobChange::Started,
                JobChange::Progress { progress: 0.9 },
                JobChange::Succeeded {
                    result: json!(null),
                },
                JobChange::Cancelled,
            ] {
                assert_eq!(apply(c, &ev(2, change)), None);
            }
        }
    }

    #[test]
    fn stale_attempt_is_ignored() {
        let c = run(&[
            ev(1, JobChange::Started),
            ev(
                1,
                JobChange::Failed {
                    error: "x".into(),
                    retrying: true,
                },
            ),
            ev(2, JobChange::Started),
        ]);
        assert_eq!(c, cur(Status::Running, 2, 0.0));
        assert_eq!(
            apply(c, &ev(1, JobChange::Succeeded { result: json!(1) })),
            None
        );
        assert_eq!(
            apply(c, &ev(1, JobChange::Progress { progress: 0.9 })),
            None
        );
    }

    #[test]
    fn retry_then_late_start_of_the_failed_attempt_is_ignored() {
        let c = run(&[
            ev(1, JobChange::Started),
            ev(
                1,
                JobChange::Failed {
                    error: "x".into(),
                    retrying: true,
                },
            ),
        ]);
        assert_eq!(c, cur(Status::Queued, 1, 0.0));
        assert_eq!(apply(c, &ev(1, JobChange::Started)), None);
    }

    #[test]
    fn next_attempt_overtaking_the_retry_event_wins() {
        // The worker publishes the retry before the failed event: attempt 2 may start first.
        let c = run(&[
            ev(1, JobChange::Started),
            ev(2, JobChange::Started),
            ev(
                1,
                JobChange::Failed {
                    error: "x".into(),
                    retrying: true,
                },
            ),
        ]);
        assert_eq!(c, cur(Status::Running, 2, 0.0));
    }

    #[test]
    fn final_failure_and_cancel_requested_retry() {
        let c = run(&[
            ev(1, JobChange::Started),
            ev(
                1,
                JobChange::Failed {
                    error: "x".into(),
                    retrying: false,
                },
            ),
        ]);
        assert_eq!(c.status, Status::Failed);

        let mut c = run(&[ev(1, JobChange::Started)]);
        c.cancel_requested = true;
        let u = apply(
            c,
            &ev(
                1,
                JobChange::Failed {
                    error: "x".into(),
                    retrying: true,
                },
            ),
        )
        .unwrap();
        assert_eq!(
            u.status,
            Status::Cancelled,
            "a cancelled job is not retried"
        );
    }

    #[test]
    fn events_of_an_earlier_series_are_ignored() {
        // Re-driven: generation 1, attempts start again from 0.
        let c = Current {
            generation: 1,
            ..cur(Status::Queued, 0, 0.0)
        };
        let mut late = ev(
            3,
            JobChange::Failed {
                error: "old".into(),
                retrying: false,
            },
        );
        assert_eq!(apply(c, &late), None, "a late event of series 0");
        late.generation = 1;
        assert_eq!(apply(c, &late).map(|u| u.status), Some(Status::Failed));
    }

    #[test]
    fn a_lone_final_event_records_when_the_attempt_started() {
        let started = Utc::now() - chrono::Duration::milliseconds(40);
        let mut done = ev(1, JobChange::Succeeded { result: json!(1) });
        done.started_at = Some(started);
        let u = apply(cur(Status::Queued, 0, 0.0), &done).unwrap();
        assert_eq!((u.status, u.started_at), (Status::Succeeded, Some(started)));
        assert_eq!(u.finished_at, Some(done.at));
    }

    #[test]
    fn missed_start_is_implied() {
        let c = run(&[ev(1, JobChange::Progress { progress: 0.2 })]);
        assert_eq!(c, cur(Status::Running, 1, 0.2));
    }

    #[test]
    fn status_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("done"), None);
    }

    #[test]
    fn a_batch_writes_what_its_events_would_one_by_one() {
        let started = ev(1, JobChange::Started);
        let retrying = ev(
            1,
            JobChange::Failed {
                error: "flaky".into(),
                retrying: true,
            },
        );
        let succeeded = ev(2, JobChange::Succeeded { result: json!(7) });
        let mut c = cur(Status::Queued, 0, 0.0);
        let mut merged: Option<Update> = None;
        for e in [&started, &retrying, &succeeded] {
            let u = apply(c, e).expect("each event changes the job");
            c = c.after(&u);
            merged = Some(match merged {
                Some(before) => before.then(u),
                None => u,
            });
        }
        let m = merged.unwrap();
        assert_eq!(
            (m.status, m.attempts, m.progress),
            (Status::Succeeded, 2, 1.0)
        );
        assert_eq!(m.started_at, Some(started.at), "the first start stays");
        assert_eq!(m.finished_at, Some(succeeded.at));
        assert_eq!(m.result, Some(json!(7)));
        assert_eq!(
            m.error.as_deref(),
            Some("flaky"),
            "an earlier error is kept"
        );
    }
}
