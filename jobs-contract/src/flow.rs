//! Flow control a kind declares with its payload: how many of its jobs may run at once and how
//! fast they may start, across every worker and api replica, and whether its jobs are unique.
//! The api enforces them (its relay decides what reaches the broker); configuration may
//! override them per deployment (`JOB_LIMITS` in the api).

use std::fmt;
use std::time::Duration;

/// A kind's limits. A job's `concurrency_key` (e.g. a customer id) is what the per-key limits
/// count it under; a job without one counts under the key `""`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Most jobs of the kind running at once.
    pub concurrency: Option<u32>,
    /// Most jobs of one key running at once.
    pub concurrency_per_key: Option<u32>,
    /// Most jobs of the kind started per period.
    pub rate: Option<Rate>,
    /// Most jobs of one key started per period.
    pub rate_per_key: Option<Rate>,
}

impl Limits {
    /// No limit.
    pub const NONE: Self = Self {
        concurrency: None,
        concurrency_per_key: None,
        rate: None,
        rate_per_key: None,
    };

    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        *self != Self::NONE
    }

    /// Whether a concurrency limit is set.
    pub fn counts_slots(&self) -> bool {
        self.concurrency.is_some() || self.concurrency_per_key.is_some()
    }

    /// Whether a rate limit is set.
    pub fn counts_rate(&self) -> bool {
        self.rate.is_some() || self.rate_per_key.is_some()
    }
}

/// `count` jobs per `per`, spread evenly: one every `per / count`, with bursts of up to `count`
/// after a quiet period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Jobs per period, at least 1.
    pub count: u32,
    /// The period, at least 1 s.
    pub per: Duration,
}

impl Rate {
    /// `count` per second.
    pub const fn per_second(count: u32) -> Self {
        Self {
            count,
            per: Duration::from_secs(1),
        }
    }

    /// The time between two jobs at the steady rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count.max(1)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.count, self.per.as_secs())
    }
}

/// Jobs of a kind that are the same job: a submit matching an unfinished one (or one created
/// within `within`) answers with that job instead of making another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unique {
    /// The payload fields that make two jobs the same; empty: the whole payload.
    pub fields: &'static [&'static str],
    /// Unique for this long after the job's creation, whatever its state; `None`: while it is
    /// unfinished (scheduled, queued or running).
    pub within: Option<Duration>,
}

impl Unique {
    /// The same payload, while unfinished.
    pub const PAYLOAD: Self = Self {
        fields: &[],
        within: None,
    };
}
