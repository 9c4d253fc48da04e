//! The scheduler of [`crate::schedules`]: every api replica runs it; one at a time fires. Each tick is one transaction
//! that first takes a transaction-scoped advisory lock (a replica that does not get it does
//! nothing this tick), locks the due schedules, inserts each fire's job with its outbox entry,
//! moves each schedule's next fire time on, and commits; then the relay is woken. A tick that
//! fails (PostgreSQL down) changes nothing and the next one tries again.
//!
//! It sleeps until the earliest next fire time, at most [`TICK`], and wakes early when a
//! schedule changes, so an on-time fire is late by milliseconds, not by a polling period.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::telemetry::propagation;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::schedules::timing;
use crate::store::{self, Fire, NewJob, schedules::ScheduleRow};

/// The buckets of `jobstack_schedule_lateness_seconds`: milliseconds while an api runs, up to an
/// hour for a missed fire run late.
pub fn lateness_buckets() -> shared::metrics::Buckets {
    shared::metrics::Buckets {
        metric: "jobstack_schedule_lateness_seconds",
        bounds: vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            900.0, 3600.0,
        ],
    }
}

/// The longest the scheduler sleeps: how soon it sees a schedule another replica changed.
pub const TICK: Duration = Duration::from_secs(1);

/// Most schedules one tick fires; the rest wait for the next tick, which comes at once.
const BATCH: i64 = 100;

/// The shortest wait between two ticks that found nothing more to do. Only a fire time that came
/// due during the tick is already past when the scheduler goes to sleep, so the floor is short:
/// it only bounds a spin if that ever stopped being true. (At 50 ms, every schedule due within
/// 50 ms of another fired up to 50 ms late.)
const FLOOR: Duration = Duration::from_millis(2);

/// What a tick did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticked {
    /// Another replica holds the scheduler's lock: it fires now.
    NotLeading,
    /// Fired what was due.
    Done,
    /// Fired a full batch: more may be due.
    More,
}

/// What the scheduler needs.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// The database.
    pub db: PgPool,
    /// How late a fire time may be and still count as on time (`SCHEDULE_MISFIRE_GRACE_SECS`).
    pub grace: Duration,
    /// The kinds this build runs: a stored schedule of a kind it dropped is disabled, not fired.
    pub kinds: Arc<jobs_contract::Catalog>,
    /// Woken after a tick made jobs.
    pub wake_relay: Arc<Notify>,
    /// Notified when a schedule changes through the api.
    pub changed: Arc<Notify>,
}

impl Scheduler {
    /// Fires schedules until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0;
        loop {
            let ticked = tokio::select! {
                () = shutdown.cancelled() => return,
                ticked = self.tick(Utc::now()) => ticked,
            };
            if ticked.is_ok() {
                failures = 0;
            }
            let wait = match ticked {
                Ok(Ticked::More) => Duration::ZERO,
                Ok(Ticked::Done) => self.until_next_due().await.max(FLOOR),
                Ok(Ticked::NotLeading) => {
                    // Every replica reports the schedules' state: a stuck leader's show as late.
                    self.refresh_gauges().await;
                    TICK
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "the scheduler could not tick; will retry");
                    shared::backoff::full_jitter(TICK, TICK * 30, failures)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {},
                () = self.changed.notified() => {},
            }
        }
    }

    /// How long until the earliest fire time, at most [`TICK`].
    async fn until_next_due(&self) -> Duration {
        self.refresh_gauges().await;
        match store::schedules::next_due(&self.db).await {
            Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or_default().min(TICK),
            _ => TICK,
        }
    }

    /// One tick at `now`, if this replica gets the lock.
    pub async fn tick(&self, now: DateTime<Utc>) -> sqlx::Result<Ticked> {
        let Some(mut tx) = store::schedules::lead(&self.db).await? else {
            return Ok(Ticked::NotLeading);
        };
        let due = store::schedules::due(&mut tx, now, BATCH).await?;
        let mut made = 0;
        let mut fired = Vec::new();
        for schedule in &due {
            // Checked when stored; a zone the tz database dropped since, or a kind this build
            // dropped, would land here: the schedule is disabled, and says why in the log.
            let Ok(timing) = schedule.timing() else {
                tracing::error!(schedule = %schedule.name, "a stored schedule's timing no longer parses; disabled");
                store::schedules::advance(&mut tx, &schedule.name, None, 0).await?;
                continue;
            };
            if !self.kinds.contains(&schedule.kind) {
                tracing::error!(schedule = %schedule.name, kind = %schedule.kind, "a stored schedule's kind is not one this build runs; disabled");
                store::schedules::advance(&mut tx, &schedule.name, None, 0).await?;
                continue;
            }
            let plan = timing::plan(
                &timing,
                schedule.missed(),
                schedule.next_fire_at,
                now,
                self.grace,
            );
            let jobs: Vec<NewJob> = plan
                .fires
                .iter()
                .map(|at| fire_job(schedule, *at))
                .collect();
            let rows = store::insert_fired(&mut tx, &jobs).await?;
            store::schedules::advance(&mut tx, &schedule.name, plan.next, rows.len() as i64)
                .await?;
            made += rows.len();
            fired.push((schedule.name.clone(), plan, rows));
        }
        tx.commit().await?;
        // Counted once committed: a rolled-back tick made nothing.
        for (name, plan, rows) in fired {
            metrics::counter!("jobstack_schedule_fires_total", "schedule" => name.clone())
                .increment(rows.len() as u64);
            // As `job accepted` for a submitted job: every job has a line from its creation on.
            for row in &rows {
                tracing::info!(job.id = %row.id, job.kind = %row.kind, schedule = %name, "job made by its schedule");
            }
            metrics::counter!("jobstack_schedule_missed_total", "schedule" => name.clone())
                .increment(plan.dropped as u64);
            for at in &plan.fires {
                let late = (now - *at).to_std().unwrap_or_default();
                metrics::histogram!("jobstack_schedule_lateness_seconds", "schedule" => name.clone())
                    .record(late.as_secs_f64());
            }
            if plan.dropped > 0 {
                tracing::info!(schedule = %name, missed = plan.dropped, "fire times missed and not run, as the schedule says");
            }
            if plan.next.is_none() {
                tracing::warn!(schedule = %name, "the schedule never fires again; disabled");
            }
        }
        if made > 0 {
            self.wake_relay.notify_one();
        }
        Ok(if due.len() as i64 == BATCH {
            Ticked::More
        } else {
            Ticked::Done
        })
    }

    /// Sets the schedule gauges from the table (on every replica, leader or not, at most once a
    /// tick: a stuck leader's schedules show as late).
    async fn refresh_gauges(&self) {
        let Ok(all) = store::schedules::list(&self.db).await else {
            return;
        };
        let now = Utc::now();
        for s in &all {
            // Each schedule's series exist from the start, so `rate()` sees its first fire.
            metrics::counter!("jobstack_schedule_fires_total", "schedule" => s.name.clone())
                .increment(0);
            metrics::counter!("jobstack_schedule_missed_total", "schedule" => s.name.clone())
                .increment(0);
        }
        let enabled: Vec<_> = all.iter().filter(|s| s.enabled).collect();
        let late = enabled
            .iter()
            .filter(|s| {
                let period = s
                    .timing()
                    .ok()
                    .and_then(|t| t.next_after(s.next_fire_at))
                    .map_or(chrono::Duration::zero(), |after| after - s.next_fire_at);
                let grace = chrono::Duration::from_std(self.grace).unwrap_or_default();
                now - s.next_fire_at > period + grace
            })
            .count();
        metrics::gauge!("jobstack_schedules", "state" => "enabled").set(enabled.len() as f64);
        metrics::gauge!("jobstack_schedules", "state" => "paused")
            .set((all.len() - enabled.len()) as f64);
        metrics::gauge!("jobstack_schedules_late").set(late as f64);
    }
}

/// The job a fire makes, in a trace of its own (a fire answers no request).
fn fire_job(schedule: &ScheduleRow, at: DateTime<Utc>) -> NewJob {
    let span = tracing::info_span!(
        parent: None,
        "schedule.fire",
        schedule.name = %schedule.name,
        schedule.fire_at = %at,
        job.kind = %schedule.kind,
    );
    let version = schedule.payload_version.max(1) as u32;
    NewJob {
        trace_id: propagation::trace_id(&span).unwrap_or_default(),
        traceparent: propagation::traceparent(&span),
        fire: Some(Fire {
            schedule: schedule.name.clone(),
            at,
        }),
        ..NewJob::now(&schedule.kind, schedule.payload.clone(), version)
    }
}
