//! When a schedule fires: a cron expression read in an IANA time zone, or a fixed interval; and
//! what a fire that comes late does ([`Missed`], [`plan`]).
//!
//! Cron expressions are read by `croner`: 5 fields (minute granularity) or 6 with seconds
//! first, `L`, `W`, `#`, names and `@daily`-style aliases, and DST as Vixie cron handles it: a
//! fixed time that falls in a spring-forward gap runs right after the gap, one in a fall-back
//! overlap runs once; wildcard and step fields run for every wall-clock time that exists.

use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, Direction};

/// The longest interval (a year): a longer one is almost certainly a unit mistake.
pub const MAX_INTERVAL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Most jobs one late schedule makes at once under [`Missed::All`]; older fire times are dropped.
pub const MAX_CATCH_UP: usize = 100;

/// A schedule's fire times.
#[derive(Debug, Clone)]
pub enum Timing {
    /// A cron expression in a time zone.
    Cron(Box<Cron>, Tz),
    /// Every so often from the first fire time.
    Every(Duration),
}

/// Why a schedule is refused: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Invalid {
    /// The request's field.
    pub field: &'static str,
    /// What is wrong, for people.
    pub why: String,
}

impl Invalid {
    /// `field` is wrong: `why`.
    pub fn new(field: &'static str, why: impl Into<String>) -> Self {
        Self {
            field,
            why: why.into(),
        }
    }
}

fn refuse(field: &'static str, why: impl Into<String>) -> Invalid {
    Invalid::new(field, why)
}

impl Timing {
    /// Reads a request's timing: `cron` (in `time_zone`) or `interval_secs`, exactly one.
    pub fn parse(
        cron: Option<&str>,
        interval_secs: Option<u64>,
        time_zone: &str,
    ) -> Result<Self, Invalid> {
        let zone = Tz::from_str(time_zone)
            .map_err(|_| refuse("time_zone", format!("unknown IANA time zone {time_zone:?}")))?;
        match (cron, interval_secs) {
            (Some(_), Some(_)) => Err(refuse("cron", "give cron or interval_secs, not both")),
            (None, None) => Err(refuse("cron", "give cron or interval_secs")),
            (Some(expr), None) => {
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .year(Year::Disallowed)
                    .build()
                    .parse(expr)
                    .map_err(|e| {
                        refuse("cron", format!("{expr:?} is not a cron expression: {e}"))
                    })?;
                // An expression that never matches (`0 0 30 2 *`) would park the schedule forever.
                let probe = Utc::now().with_timezone(&zone);
                cron.find_next_occurrence(&probe, false)
                    .map_err(|_| refuse("cron", format!("{expr:?} never fires")))?;
                Ok(Self::Cron(Box::new(cron), zone))
            }
            (None, Some(secs)) => {
                let every = Duration::from_secs(secs);
                if secs == 0 || every > MAX_INTERVAL {
                    return Err(refuse(
                        "interval_secs",
                        format!("must be 1 to {} seconds", MAX_INTERVAL.as_secs()),
                    ));
                }
                Ok(Self::Every(every))
            }
        }
    }

    /// The first fire time strictly after `t`; `None` if there is none (a cron expression with
    /// no later match).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron(cron, zone) => cron
                .find_next_occurrence(&t.with_timezone(zone), false)
                .ok()
                .map(|at| at.with_timezone(&Utc)),
            Self::Every(every) => Some(t + *every),
        }
    }

    /// The first fire time of a new (or re-timed, or resumed) schedule: the next one after `now`.
    /// An interval starts one interval from now.
    pub fn first(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_after(now)
    }
}

/// What a schedule does with fire times that came and went while no scheduler ran (more than
/// the misfire grace late).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Missed {
    /// Nothing: the schedule goes on from its next fire time.
    Skip,
    /// One job for all of them (at the latest).
    One,
    /// One job for each, up to [`MAX_CATCH_UP`] (the latest ones).
    All,
}

impl Missed {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::One => "one",
            Self::All => "all",
        }
    }

    /// From its stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "skip" => Some(Self::Skip),
            "one" => Some(Self::One),
            "all" => Some(Self::All),
            _ => None,
        }
    }
}

/// What one scheduler tick does for a schedule that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The fire times to make a job for, oldest first.
    pub fires: Vec<DateTime<Utc>>,
    /// Fire times passed over (missed and not run), as far as they were counted.
    pub dropped: usize,
    /// The fire time to wait for next (after `now`); `None`: the expression never fires again.
    pub next: Option<DateTime<Utc>>,
}

/// The fires of a schedule whose next fire time `due` has come (`due <= now`). The latest due
/// fire time is on time if it is at most `grace` late, and runs; every other one was missed (a
/// later one came too, or it is later than the grace) and follows `missed`.
pub fn plan(
    timing: &Timing,
    missed: Missed,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: Duration,
) -> Plan {
    let Due {
        times,
        mut dropped,
        next,
    } = due_times(timing, due, now);
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let mut late = times;
    let mut fires = Vec::new();
    if late.last().is_some_and(|t| now - *t <= grace) {
        fires.extend(late.pop());
    }
    match missed {
        Missed::Skip => dropped += late.len(),
        Missed::One => {
            // The latest of them stands for all, unless an on-time fire already does.
            dropped += late.len();
            if fires.is_empty() && !late.is_empty() {
                fires.push(*late.last().expect("not empty"));
                dropped -= 1;
            }
        }
        Missed::All => {
            let take = MAX_CATCH_UP.saturating_sub(fires.len()).min(late.len());
            dropped += late.len() - take;
            fires.splice(0..0, late[late.len() - take..].iter().copied());
        }
    }
    Plan {
        fires,
        dropped,
        next,
    }
}

/// The fire times from `due` to `now`.
struct Due {
    /// The latest [`MAX_CATCH_UP`] of them, oldest first.
    times: Vec<DateTime<Utc>>,
    /// How many older ones were not looked at (as far as known: counted for an interval; for a
    /// cron expression, 1 stands for "some").
    dropped: usize,
    /// The first fire time after `now`.
    next: Option<DateTime<Utc>>,
}

/// Looks at the latest [`MAX_CATCH_UP`] fire times at most, so a schedule that fires every
/// second and waited a month costs no more than one that missed two.
fn due_times(timing: &Timing, due: DateTime<Utc>, now: DateTime<Utc>) -> Due {
    match timing {
        Timing::Every(every) => {
            let step = chrono::Duration::from_std(*every).expect("bounded by MAX_INTERVAL");
            let behind = (now - due).num_milliseconds().max(0);
            let count = (behind / step.num_milliseconds()) as usize + 1;
            let look = count.min(MAX_CATCH_UP);
            let times = (count - look..count)
                .map(|i| due + step * i as i32)
                .collect::<Vec<_>>();
            let next = times.last().map(|last| *last + step);
            Due {
                times,
                dropped: count - look,
                next,
            }
        }
        Timing::Cron(cron, zone) => {
            let mut times: Vec<_> = cron
                .iter_from(now.with_timezone(zone), Direction::Backward)
                .map(|t| t.with_timezone(&Utc))
                .take_while(|t| *t >= due)
                .take(MAX_CATCH_UP + 1)
                .collect();
            let dropped = times.len().saturating_sub(MAX_CATCH_UP);
            times.truncate(MAX_CATCH_UP);
            times.reverse();
            Due {
                times,
                dropped,
                next: timing.next_after(now),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cron(expr: &str, zone: &str) -> Timing {
        Timing::parse(Some(expr), None, zone).unwrap()
    }

    #[test]
    fn refuses_what_it_cannot_read_naming_the_field() {
        let field =
            |c: Option<&str>, i: Option<u64>, z: &str| Timing::parse(c, i, z).unwrap_err().field;
        assert_eq!(field(Some("61 * * * *"), None, "UTC"), "cron");
        assert_eq!(field(Some("every day"), None, "UTC"), "cron");
        assert_eq!(
            field(Some("* * * * * * *"), None, "UTC"),
            "cron",
            "no year field"
        );
        assert_eq!(
            field(Some("0 0 30 2 *"), None, "UTC"),
            "cron",
            "never fires"
        );
        assert_eq!(field(Some("* * * * *"), None, "Mars/Olympus"), "time_zone");
        assert_eq!(field(Some("* * * * *"), Some(5), "UTC"), "cron");
        assert_eq!(field(None, None, "UTC"), "cron");
        assert_eq!(field(None, Some(0), "UTC"), "interval_secs");
        assert_eq!(
            field(None, Some(MAX_INTERVAL.as_secs() + 1), "UTC"),
            "interval_secs"
        );
        assert!(
            Timing::parse(Some("*/10 * * * * *"), None, "UTC").is_ok(),
            "seconds first"
        );
        assert!(Timing::parse(Some("@daily"), None, "Europe/Paris").is_ok());
    }

    #[test]
    fn reads_cron_in_its_zone() {
        let t = cron("30 9 * * *", "America/New_York");
        // 2026-01-15 09:30 in New York is 14:30 UTC (EST, UTC-5).
        assert_eq!(
            t.next_after(utc("2026-01-15T12:00:00Z")),
            Some(utc("2026-01-15T14:30:00Z"))
        );
    }

    #[test]
    fn a_daily_local_time_keeps_its_local_time_across_dst() {
        // Europe/Berlin springs forward on 2026-03-29 (02:00 → 03:00) and falls back on
        // 2026-10-25 (03:00 → 02:00): 09:00 local is 08:00 UTC before, 07:00 UTC between.
        let t = cron("0 9 * * *", "Europe/Berlin");
        let mut at = utc("2026-03-27T12:00:00Z");
        let mut fires = vec![];
        for _ in 0..4 {
            at = t.next_after(at).unwrap();
            fires.push(at);
        }
        assert_eq!(
            fires,
            [
                utc("2026-03-28T08:00:00Z"),
                utc("2026-03-29T07:00:00Z"),
                utc("2026-03-30T07:00:00Z"),
                utc("2026-03-31T07:00:00Z"),
            ]
        );
        let back = t.next_after(utc("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(back, utc("2026-10-25T08:00:00Z"));
    }

    #[test]
    fn a_time_in_the_spring_gap_runs_once_right_after_it_and_one_in_the_overlap_once() {
        // 02:30 does not exist in Berlin on 2026-03-29: it runs at 03:00 local (01:00 UTC).
        let t = cron("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            t.next_after(utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        // 02:30 happens twice on 2026-10-25 (00:30 and 01:30 UTC): it runs once, at the first.
        let first = t.next_after(utc("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(first, utc("2026-10-25T00:30:00Z"));
        assert_eq!(t.next_after(first), Some(utc("2026-10-26T01:30:00Z")));
    }

    #[test]
    fn an_interval_counts_from_its_last_fire_time() {
        let t = Timing::parse(None, Some(90), "UTC").unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(t.next_after(at), Some(at + chrono::Duration::seconds(90)));
    }

    fn every(secs: u64) -> Timing {
        Timing::parse(None, Some(secs), "UTC").unwrap()
    }

    const GRACE: Duration = Duration::from_secs(5);

    #[test]
    fn an_on_time_fire_runs_whatever_the_policy() {
        let due = utc("2026-01-01T00:00:10Z");
        let now = utc("2026-01-01T00:00:11Z");
        for missed in [Missed::Skip, Missed::One, Missed::All] {
            let p = plan(&every(10), missed, due, now, GRACE);
            assert_eq!(p.fires, [due], "{missed:?}");
            assert_eq!(p.dropped, 0);
            assert_eq!(p.next, Some(utc("2026-01-01T00:00:20Z")));
        }
    }

    #[test]
    fn missed_fires_follow_the_policy() {
        // Due at :10, the scheduler came back at :43: :10, :20 and :30 are missed (more than 5 s
        // late), :40 is on time.
        let due = utc("2026-01-01T00:00:10Z");
        let now = utc("2026-01-01T00:00:43Z");
        let at = |s: u32| utc(&format!("2026-01-01T00:00:{s}Z"));
        let skip = plan(&every(10), Missed::Skip, due, now, GRACE);
        assert_eq!((skip.fires, skip.dropped), (vec![at(40)], 3));
        let one = plan(&every(10), Missed::One, due, now, GRACE);
        assert_eq!(
            (one.fires, one.dropped),
            (vec![at(40)], 3),
            "the on-time fire stands for all"
        );
        let all = plan(&every(10), Missed::All, due, now, GRACE);
        assert_eq!(
            (all.fires, all.dropped),
            (vec![at(10), at(20), at(30), at(40)], 0)
        );
        assert_eq!(all.next, Some(at(50)));
        // Back at :48: nothing on time.
        let now = utc("2026-01-01T00:00:48Z");
        let skip = plan(&every(10), Missed::Skip, due, now, GRACE);
        assert_eq!((skip.fires, skip.dropped), (vec![], 4));
        let one = plan(&every(10), Missed::One, due, now, GRACE);
        assert_eq!((one.fires, one.dropped), (vec![at(40)], 3));
    }

    #[test]
    fn a_grace_longer_than_the_period_runs_only_the_latest_on_time() {
        // A 1 s interval, a 60 s grace, 10 s without a scheduler: 11 fire times are due; only
        // the latest is on time, the 10 before it were missed.
        let due = utc("2026-01-01T00:00:00Z");
        let now = utc("2026-01-01T00:00:10Z");
        let grace = Duration::from_secs(60);
        let skip = plan(&every(1), Missed::Skip, due, now, grace);
        assert_eq!((skip.fires, skip.dropped), (vec![now], 10));
        let all = plan(&every(1), Missed::All, due, now, grace);
        assert_eq!((all.fires.len(), all.dropped), (11, 0));
    }

    #[test]
    fn catching_up_is_bounded() {
        let due = utc("2026-01-01T00:00:00Z");
        let now = utc("2026-01-31T00:00:00Z"); // a month of one-second fires
        let all = plan(&every(1), Missed::All, due, now, GRACE);
        assert_eq!(all.fires.len(), MAX_CATCH_UP);
        assert_eq!(all.fires.last(), Some(&now));
        assert!(all.fires.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(all.next, Some(now + chrono::Duration::seconds(1)));
        let c = cron("* * * * * *", "UTC");
        let all = plan(
            &c,
            Missed::All,
            now - chrono::Duration::hours(1),
            now,
            GRACE,
        );
        assert_eq!(all.fires.len(), MAX_CATCH_UP);
        assert_eq!(all.fires.last(), Some(&now));
    }
}
