//! The schedules this service ships with, like Celery's `beat_schedule` or Oban's crontab: synced
//! at every start (created, changed, removed; see [`crate::store::schedules::sync`]). The api
//! may pause and resume them; their definition changes here, with a deploy.

use serde_json::json;

use super::{Missed, ScheduleRequest};

/// The declared schedules. Add one to add a schedule that every environment has.
pub fn declared() -> Vec<ScheduleRequest> {
    vec![ScheduleRequest {
        // Makes the demo's dashboards move on their own: a small hash every minute.
        name: "demo-hash-every-minute".into(),
        kind: "hash".into(),
        payload: json!({ "rounds": 1000 }),
        payload_version: None,
        cron: Some("* * * * *".into()),
        interval_secs: None,
        time_zone: Some("UTC".into()),
        missed: Some(Missed::Skip),
        enabled: Some(true),
    }]
}
