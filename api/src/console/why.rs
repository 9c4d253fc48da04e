//! "Why is this job not running?": the reason for a waiting job, in words, from what the api
//! knows of it (its row, its kind's pause, the relay's hold, its workflow, the broker session).

use chrono::{DateTime, Utc};

use crate::lifecycle::Status;

/// What is known of a job that has not started (or is waiting to run again).
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    /// Its status.
    pub status: Option<Status>,
    /// When it may run.
    pub run_at: Option<DateTime<Utc>>,
    /// Its kind is paused.
    pub paused: bool,
    /// What the relay holds it for: `concurrency`, `rate` or `paused`.
    pub held: Option<&'a str>,
    /// Its concurrency key.
    pub key: Option<&'a str>,
    /// Dependencies it still waits for (a workflow's job).
    pub dependencies: i32,
    /// The api's broker session is up.
    pub broker_up: bool,
    /// Attempts it has had.
    pub attempts: i32,
}

/// The reason, or `None` for a job that is running or finished.
pub fn reason(f: &Facts<'_>, now: DateTime<Utc>) -> Option<String> {
    let key = |k: Option<&str>| k.map_or(String::new(), |k| format!(" of key {k:?}"));
    let status = f.status?;
    if !matches!(status, Status::Scheduled | Status::Queued) {
        return None;
    }
    Some(if f.dependencies > 0 {
        format!(
            "waiting on {} unfinished dependenc{} in its workflow",
            f.dependencies,
            if f.dependencies == 1 { "y" } else { "ies" }
        )
    } else if f.paused || f.held == Some("paused") {
        "its kind is paused: it runs when an operator resumes the kind".into()
    } else if f.held == Some("concurrency") {
        format!(
            "at its concurrency limit{}: it starts when a running job of it ends",
            key(f.key)
        )
    } else if f.held == Some("rate") {
        format!(
            "held by the rate limit{}: its turn comes at {}",
            key(f.key),
            f.run_at
                .map_or("-".into(), |t| t.format("%H:%M:%S UTC").to_string())
        )
    } else if let Some(at) = f.run_at.filter(|at| *at > now) {
        let what = if f.attempts > 0 {
            "its retry is due"
        } else {
            "scheduled for later"
        };
        format!(
            "{what}: {} (in {}s)",
            at.format("%Y-%m-%d %H:%M:%S UTC"),
            (at - now).num_seconds().max(1)
        )
    } else if !f.broker_up {
        "the api cannot reach RabbitMQ: it is kept in PostgreSQL and sent once the broker is back"
            .into()
    } else if status == Status::Scheduled {
        "due: the relay sends it to RabbitMQ within a moment".into()
    } else {
        "queued in RabbitMQ and no worker has taken it yet: are workers running, and are they busy?"
            .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn each_reason_in_its_order() {
        let now = at(0);
        let queued = Facts {
            status: Some(Status::Queued),
            run_at: Some(at(-5)),
            broker_up: true,
            ..Default::default()
        };
        let says = |f: Facts<'_>| reason(&f, now).unwrap();
        assert!(says(queued.clone()).contains("no worker has taken it"));
        assert!(
            says(Facts {
                broker_up: false,
                ..queued.clone()
            })
            .contains("cannot reach RabbitMQ")
        );
        let later = Facts {
            status: Some(Status::Scheduled),
            run_at: Some(at(90)),
            ..queued.clone()
        };
        assert!(
            says(later.clone()).contains("scheduled for later"),
            "{}",
            says(later.clone())
        );
        assert!(
            says(Facts {
                attempts: 1,
                ..later.clone()
            })
            .contains("retry")
        );
        assert!(
            says(Facts {
                held: Some("rate"),
                key: Some("acme"),
                ..later.clone()
            })
            .contains(r#"rate limit of key "acme""#)
        );
        assert!(
            says(Facts {
                held: Some("concurrency"),
                ..queued.clone()
            })
            .contains("concurrency limit")
        );
        assert!(
            says(Facts {
                paused: true,
                held: Some("concurrency"),
                ..queued.clone()
            })
            .contains("paused")
        );
        assert!(
            says(Facts {
                dependencies: 2,
                paused: true,
                ..queued.clone()
            })
            .contains("2 unfinished dependencies")
        );
        for status in [
            Status::Running,
            Status::Succeeded,
            Status::Failed,
            Status::Cancelled,
        ] {
            assert_eq!(
                reason(
                    &Facts {
                        status: Some(status),
                        ..queued.clone()
                    },
                    now
                ),
                None
            );
        }
    }
}
