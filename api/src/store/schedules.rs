//! Periodic schedules: what the `/schedules` routes change, what the start-up sync declares, and
//! what the scheduler locks, fires and advances.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use crate::access::Audit;
use crate::schedules::{Invalid, Missed, NewSchedule, Timing};

/// Identifies the scheduler's lock among PostgreSQL advisory locks ("jobsched" in ASCII). Taken
/// per transaction, never per session: a session lock breaks behind a transaction pooler
/// (PgBouncer, CloudNativePG's Pooler), where one session serves many clients.
pub const SCHEDULER_LOCK: i64 = 0x6a6f_6273_6368_6564;

/// A schedule row, as read.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScheduleRow {
    /// Its name.
    pub name: String,
    /// The kind of job it makes.
    pub kind: String,
    /// Its jobs' payload.
    pub payload: Value,
    /// The payload's version.
    pub payload_version: i32,
    /// Its cron expression, or
    pub cron: Option<String>,
    /// its interval.
    pub interval_secs: Option<i64>,
    /// The zone its cron expression is read in.
    pub time_zone: String,
    /// Its missed-fire policy, as stored.
    pub missed: String,
    /// Whether it fires.
    pub enabled: bool,
    /// Declared in the service's code (synced at start-up).
    pub declared: bool,
    /// Its next fire time.
    pub next_fire_at: DateTime<Utc>,
    /// When it last made a job.
    pub last_fire_at: Option<DateTime<Utc>>,
    /// Jobs it made.
    pub fires: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed (its definition, a pause or a resume): a change made from a read of
    /// it names this, and is refused if the row changed since.
    pub updated_at: DateTime<Utc>,
}

impl ScheduleRow {
    /// Its missed-fire policy (the column's constraint admits no other value).
    pub fn missed(&self) -> Missed {
        Missed::parse(&self.missed).unwrap_or(Missed::One)
    }

    /// Its timing (checked when it was stored; a zone the tz database dropped since is an `Err`).
    pub fn timing(&self) -> Result<Timing, Invalid> {
        Timing::parse(
            self.cron.as_deref(),
            self.interval_secs.map(|i| i.max(0) as u64),
            &self.time_zone,
        )
    }
}

/// The columns of [`ScheduleRow`], for `concat!` (sqlx only takes static SQL).
macro_rules! columns {
    () => {
        "name, kind, payload, payload_version, cron, interval_secs, time_zone, missed, enabled, \
         declared, next_fire_at, last_fire_at, fires, created_at, updated_at"
    };
}

/// Every schedule, by name.
pub async fn list(db: &PgPool) -> sqlx::Result<Vec<ScheduleRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM schedules ORDER BY name"
    ))
    .fetch_all(db)
    .await
}

/// One schedule.
pub async fn get(db: &PgPool, name: &str) -> sqlx::Result<Option<ScheduleRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM schedules WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(db)
    .await
}

/// Creates a schedule made through the api, recorded by `audit`; `None` if the name is taken.
pub async fn create(
    db: &PgPool,
    s: &NewSchedule,
    audit: &Audit,
) -> sqlx::Result<Option<ScheduleRow>> {
    let mut tx = db.begin().await?;
    let row: Option<ScheduleRow> = sqlx::query_as(concat!(
        "INSERT INTO schedules (name, kind, payload, payload_version, cron, interval_secs, \
                                time_zone, missed, enabled, next_fire_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (name) DO NOTHING RETURNING ",
        columns!(),
        ""
    ))
    .bind(&s.name)
    .bind(&s.kind)
    .bind(&s.payload)
    .bind(s.payload_version as i32)
    .bind(&s.cron)
    .bind(s.interval_secs.map(|i| i as i64))
    .bind(&s.time_zone)
    .bind(s.missed.as_str())
    .bind(s.enabled)
    .bind(s.first)
    .fetch_optional(&mut *tx)
    .await?;
    recorded(tx, audit, row).await
}

/// Commits `tx`, with `audit` recorded in it if `row` says something changed.
async fn recorded<T>(
    mut tx: Transaction<'_, Postgres>,
    audit: &Audit,
    row: Option<T>,
) -> sqlx::Result<Option<T>> {
    if row.is_some() {
        super::audit::record(&mut tx, audit, &[]).await?;
    }
    tx.commit().await?;
    Ok(row)
}

/// What a change of a schedule made through the api found.
#[derive(Debug)]
pub enum Changed {
    /// Changed; the row as it is now.
    Done(Box<ScheduleRow>),
    /// No such schedule.
    NotFound,
    /// Declared in the service's code: change it there.
    Declared,
    /// It changed since it was read (a pause, a resume or another change came between).
    Moved,
}

/// Replaces a schedule's definition (`s.name` names it), if it has not changed since
/// `read_at` (its `updated_at` as read). Its next fire time becomes `s.first` when `retimed`
/// (its timing, zone or enabled state changed), and stays as it was otherwise.
pub async fn replace(
    db: &PgPool,
    s: &NewSchedule,
    retimed: bool,
    read_at: DateTime<Utc>,
    audit: &Audit,
) -> sqlx::Result<Changed> {
    let mut tx = db.begin().await?;
    let row: Option<ScheduleRow> = sqlx::query_as(concat!(
        "UPDATE schedules SET kind = $2, payload = $3, payload_version = $4, cron = $5, \
                interval_secs = $6, time_zone = $7, missed = $8, enabled = $9, \
                next_fire_at = CASE WHEN $11 THEN $10 ELSE next_fire_at END, updated_at = now() \
         WHERE name = $1 AND NOT declared AND updated_at = $12 RETURNING ",
        columns!(),
        ""
    ))
    .bind(&s.name)
    .bind(&s.kind)
    .bind(&s.payload)
    .bind(s.payload_version as i32)
    .bind(&s.cron)
    .bind(s.interval_secs.map(|i| i as i64))
    .bind(&s.time_zone)
    .bind(s.missed.as_str())
    .bind(s.enabled)
    .bind(s.first)
    .bind(retimed)
    .bind(read_at)
    .fetch_optional(&mut *tx)
    .await?;
    match recorded(tx, audit, row).await? {
        Some(row) => Ok(Changed::Done(Box::new(row))),
        None => not_changed(db, &s.name).await,
    }
}

/// Pauses a schedule (`resume_at` `None`) or resumes it, to fire next at `resume_at` (computed
/// from the row as read at `read_at`; refused if it changed since): the fire times it passed
/// while paused are not missed, they were not wanted. Declared ones too.
pub async fn set_enabled(
    db: &PgPool,
    name: &str,
    resume_at: Option<(DateTime<Utc>, DateTime<Utc>)>,
    audit: &Audit,
) -> sqlx::Result<Option<ScheduleRow>> {
    let mut tx = db.begin().await?;
    let row: Option<ScheduleRow> = sqlx::query_as(concat!(
        "UPDATE schedules SET enabled = $2, updated_at = now(), \
                next_fire_at = CASE WHEN $2 AND NOT enabled THEN $3 ELSE next_fire_at END \
         WHERE name = $1 AND ($4::timestamptz IS NULL OR updated_at = $4) RETURNING ",
        columns!(),
        ""
    ))
    .bind(name)
    .bind(resume_at.is_some())
    .bind(resume_at.map_or_else(Utc::now, |(at, _)| at))
    .bind(resume_at.map(|(_, read_at)| read_at))
    .fetch_optional(&mut *tx)
    .await?;
    recorded(tx, audit, row).await
}

/// Deletes a schedule made through the api, recorded by `audit`. The jobs it made stay.
pub async fn delete(db: &PgPool, name: &str, audit: &Audit) -> sqlx::Result<Changed> {
    let mut tx = db.begin().await?;
    let row: Option<ScheduleRow> = sqlx::query_as(concat!(
        "DELETE FROM schedules WHERE name = $1 AND NOT declared RETURNING ",
        columns!(),
        ""
    ))
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    match recorded(tx, audit, row).await? {
        Some(row) => Ok(Changed::Done(Box::new(row))),
        None => not_changed(db, name).await,
    }
}

async fn not_changed(db: &PgPool, name: &str) -> sqlx::Result<Changed> {
    Ok(match get(db, name).await? {
        Some(row) if row.declared => Changed::Declared,
        Some(_) => Changed::Moved,
        None => Changed::NotFound,
    })
}

/// What [`sync`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Declared schedules created or changed.
    pub upserted: u64,
    /// Declared schedules no longer declared, deleted.
    pub removed: u64,
}

/// Makes the declared schedules what `declared` says, in one transaction under the scheduler's
/// lock (replicas starting together take turns): new ones are created; changed ones are
/// updated, their next fire time kept unless their timing or zone changed (a restart must not
/// lose or move a fire); ones no longer declared are deleted. A declared schedule keeps its
/// `enabled` as an operator left it: a pause survives a deploy.
pub async fn sync(db: &PgPool, declared: &[NewSchedule]) -> sqlx::Result<Synced> {
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEDULER_LOCK)
        .execute(&mut *tx)
        .await?;
    let mut synced = Synced::default();
    for s in declared {
        let done = sqlx::query(
            "INSERT INTO schedules (name, kind, payload, payload_version, cron, interval_secs, \
                                    time_zone, missed, enabled, declared, next_fire_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, true, $10) \
             ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, payload = EXCLUDED.payload, \
                 payload_version = EXCLUDED.payload_version, cron = EXCLUDED.cron, \
                 interval_secs = EXCLUDED.interval_secs, time_zone = EXCLUDED.time_zone, \
                 missed = EXCLUDED.missed, declared = true, updated_at = now(), \
                 next_fire_at = CASE \
                     WHEN (schedules.cron, schedules.interval_secs, schedules.time_zone) \
                          IS NOT DISTINCT FROM (EXCLUDED.cron, EXCLUDED.interval_secs, EXCLUDED.time_zone) \
                     THEN schedules.next_fire_at ELSE EXCLUDED.next_fire_at END \
             WHERE NOT schedules.declared \
                OR (schedules.kind, schedules.payload, schedules.payload_version, schedules.cron, \
                    schedules.interval_secs, schedules.time_zone, schedules.missed) \
                   IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.payload, EXCLUDED.payload_version, \
                    EXCLUDED.cron, EXCLUDED.interval_secs, EXCLUDED.time_zone, EXCLUDED.missed)",
        )
        .bind(&s.name)
        .bind(&s.kind)
        .bind(&s.payload)
        .bind(s.payload_version as i32)
        .bind(&s.cron)
        .bind(s.interval_secs.map(|i| i as i64))
        .bind(&s.time_zone)
        .bind(s.missed.as_str())
        .bind(s.enabled)
        .bind(s.first)
        .execute(&mut *tx)
        .await?;
        synced.upserted += done.rows_affected();
    }
    let names: Vec<&str> = declared.iter().map(|s| s.name.as_str()).collect();
    synced.removed = sqlx::query("DELETE FROM schedules WHERE declared AND NOT (name = ANY($1))")
        .bind(&names)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(synced)
}

/// Starts a scheduler tick: a transaction holding the scheduler's lock, or `None` when another
/// replica holds it (that one is firing now).
pub async fn lead(db: &PgPool) -> sqlx::Result<Option<Transaction<'static, Postgres>>> {
    let mut tx = db.begin().await?;
    let leading: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(SCHEDULER_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    Ok(leading.then_some(tx))
}

/// Enabled schedules due at `now`, locked for the tick, at most `limit`, the most overdue first.
pub async fn due(
    tx: &mut Transaction<'_, Postgres>,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<ScheduleRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM schedules WHERE enabled AND next_fire_at <= $1 \
         ORDER BY next_fire_at LIMIT $2 FOR UPDATE"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

/// Moves a schedule on after a tick: its next fire time (`None`: it never fires again, so it is
/// disabled) and the jobs the tick made.
pub async fn advance(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    next: Option<DateTime<Utc>>,
    made: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE schedules SET next_fire_at = COALESCE($2, next_fire_at), enabled = $2 IS NOT NULL, \
                fires = fires + $3, last_fire_at = CASE WHEN $3 > 0 THEN now() ELSE last_fire_at END \
         WHERE name = $1",
    )
    .bind(name)
    .bind(next)
    .bind(made)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The earliest next fire time of an enabled schedule: when the scheduler should look again.
pub async fn next_due(db: &PgPool) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT min(next_fire_at) FROM schedules WHERE enabled")
        .fetch_one(db)
        .await
}
