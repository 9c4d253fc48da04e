//! Periodic schedules: a job of a kind made at each fire time of a cron expression or an
//! interval, like Celery beat or Oban's cron plugin, on the state PostgreSQL already owns.
//!
//! - [`timing`]: when a schedule fires, and what a late fire does.
//! - [`declared`]: the schedules the service's code ships with, synced at every start.
//!
//! [`crate::scheduler`] fires them; one api replica at a time, chosen in PostgreSQL.
//!
//! Guarantees: a schedule's next fire time is stored, so a restart or a new leader goes on
//! where the last fire left off (and applies the schedule's `missed` policy to what it missed);
//! a fire makes its job and the job's outbox entry in one transaction, unique on (schedule,
//! fire time), so two leaders or a tick run twice still make one job; from there the job has
//! every guarantee of a submitted one.

pub mod declared;
pub mod timing;

use chrono::{DateTime, Utc};
use jobs_contract::Catalog;
use jobs_contract::kinds::PayloadError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

pub use timing::{Invalid, Missed, Timing};

/// The longest schedule name: it appears in URLs, metric labels and log lines.
pub const MAX_NAME: usize = 64;

/// A schedule as a client or the service's code declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// Its name, unique: letters, digits, `.`, `_` and `-`, at most 64, starting with a letter
    /// or a digit.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub name: String,
    /// The kind of job it makes.
    pub kind: String,
    /// The payload of every job it makes, checked against the kind's schema.
    pub payload: Value,
    /// The version of the kind's payload `payload` is written in (default: the kind's current).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub payload_version: Option<u32>,
    /// A cron expression: 5 fields (minute hour day-of-month month day-of-week) or 6 with
    /// seconds first; `L`, `W`, `#`, names and `@daily`-style aliases. Not with `interval_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Fire every this many seconds (1 s to 366 days), the first one interval from its
    /// creation. Not with `cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 31622400)]
    pub interval_secs: Option<u64>,
    /// The IANA time zone `cron` is read in (default `UTC`); DST is handled as cron does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// What fire times missed while no scheduler ran do (default `one`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<Missed>,
    /// Whether it fires (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A schedule checked against the kinds: what the store keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSchedule {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Its jobs' payload, valid for the kind.
    pub payload: Value,
    /// The payload's version.
    pub payload_version: u32,
    /// Its cron expression, or
    pub cron: Option<String>,
    /// its interval.
    pub interval_secs: Option<u64>,
    /// Its time zone.
    pub time_zone: String,
    /// Its missed-fire policy.
    pub missed: Missed,
    /// Whether it fires.
    pub enabled: bool,
    /// Its first fire time from now.
    pub first: DateTime<Utc>,
}

impl ScheduleRequest {
    /// Checks every field (the error names the first bad one) and computes the first fire time.
    pub fn check(&self, kinds: &Catalog, now: DateTime<Utc>) -> Result<NewSchedule, Invalid> {
        check_name(&self.name)?;
        if !kinds.contains(&self.kind) {
            let known: Vec<_> = kinds.names().collect();
            return Err(Invalid::new(
                "kind",
                format!(
                    "unknown kind {:?}; known kinds: {}",
                    self.kind,
                    known.join(", ")
                ),
            ));
        }
        let current = kinds.version(&self.kind).unwrap_or(1);
        let version = self.payload_version.unwrap_or(current);
        kinds
            .read(&self.kind, version, self.payload.clone())
            .map_err(|e| match e {
                PayloadError::Version { .. } => Invalid::new("payload_version", e.to_string()),
                other => Invalid::new("payload", other.to_string()),
            })?;
        let time_zone = self.time_zone.clone().unwrap_or_else(|| "UTC".into());
        let timing = Timing::parse(self.cron.as_deref(), self.interval_secs, &time_zone)?;
        let first = timing
            .first(now)
            .ok_or_else(|| Invalid::new("cron", "it never fires again"))?;
        Ok(NewSchedule {
            name: self.name.clone(),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            payload_version: version,
            cron: self.cron.clone(),
            interval_secs: self.interval_secs,
            time_zone,
            missed: self.missed.unwrap_or(Missed::One),
            enabled: self.enabled.unwrap_or(true),
            first,
        })
    }
}

/// Whether `name` may name a schedule; `Err` says why not.
pub fn check_name(name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            "name",
            format!(
                "{name:?}: letters, digits, '.', '_' and '-', at most {MAX_NAME}, starting with a letter or a digit"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> ScheduleRequest {
        serde_json::from_value(json!({
            "name": "nightly-digest", "kind": "hash", "payload": {"rounds": 10},
            "cron": "0 3 * * *", "time_zone": "Europe/Paris"
        }))
        .unwrap()
    }

    #[test]
    fn checks_every_field_naming_the_bad_one() {
        let kinds = jobs_contract::kinds::catalog();
        let now = Utc::now();
        let ok = request().check(&kinds, now).unwrap();
        assert_eq!(
            (ok.missed, ok.enabled, ok.payload_version),
            (Missed::One, true, 1)
        );
        assert!(ok.first > now);
        let field = |edit: &dyn Fn(&mut ScheduleRequest)| {
            let mut r = request();
            edit(&mut r);
            r.check(&kinds, now).unwrap_err().field
        };
        assert_eq!(field(&|r| r.name = "".into()), "name");
        assert_eq!(field(&|r| r.name = "a/b".into()), "name");
        assert_eq!(field(&|r| r.name = "-a".into()), "name");
        assert_eq!(field(&|r| r.name = "a".repeat(MAX_NAME + 1)), "name");
        assert_eq!(field(&|r| r.kind = "nope".into()), "kind");
        assert_eq!(field(&|r| r.payload = json!({"rounds": 0})), "payload");
        assert_eq!(field(&|r| r.payload_version = Some(9)), "payload_version");
        assert_eq!(field(&|r| r.cron = Some("0 25 * * *".into())), "cron");
        assert_eq!(
            field(&|r| r.time_zone = Some("Europe/Atlantis".into())),
            "time_zone"
        );
        assert_eq!(field(&|r| r.interval_secs = Some(60)), "cron");
    }
}
