//! Flow control's state: concurrency slots, rate limits' arrival times, held outbox entries and
//! paused kinds (migration 0008). The relay reads and writes these inside its batch's
//! transaction, after taking the kinds' locks (`lock_kinds`), so two replicas never decide on
//! the same limit at once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::access::Audit;
use crate::flow::admit::State;

/// How long a held entry waits before the relay looks at it again even if nothing woke it: a
/// freed slot and a resume wake what they free at once, so this bounds what a crash between the
/// two could leave waiting; and each such look raises a job waiting for a slot by one priority
/// (its job's own priority does not change), so a priority-0 job competes at the top within
/// 9 × 5 minutes however many higher ones keep coming.
pub const RECHECK: Duration = Duration::from_secs(300);

/// Takes the flow lock of each kind (the same the slot-freeing trigger takes), in name order so
/// that two relays cannot deadlock; held until the transaction ends.
pub async fn lock_kinds(tx: &mut Transaction<'_, Postgres>, kinds: &[&str]) -> sqlx::Result<()> {
    let mut kinds: Vec<&str> = kinds.to_vec();
    kinds.sort_unstable();
    kinds.dedup();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('jobstack.flow:' || k, 0)) \
         FROM unnest($1::text[]) AS k",
    )
    .bind(&kinds)
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// Slots in use of `slot_kinds`, the rate states of `rate_kinds` (their kind limits, and the
/// key limits of `keys`), and which of `ids` hold a slot already.
pub async fn read_state(
    tx: &mut Transaction<'_, Postgres>,
    slot_kinds: &[&str],
    rate_kinds: &[&str],
    keys: &[&str],
    ids: &[Uuid],
) -> sqlx::Result<(State, HashSet<Uuid>)> {
    let mut state = State::default();
    let mut holding = HashSet::new();
    if !slot_kinds.is_empty() {
        let used: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT kind, key, count(*) FROM slots WHERE kind = ANY($1) GROUP BY kind, key",
        )
        .bind(slot_kinds)
        .fetch_all(&mut **tx)
        .await?;
        for (kind, key, n) in used {
            *state.kind_slots.entry(kind.clone()).or_default() += n as u32;
            state.key_slots.insert((kind, key), n as u32);
        }
        let held: Vec<Uuid> = sqlx::query_scalar("SELECT job_id FROM slots WHERE job_id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut **tx)
            .await?;
        holding.extend(held);
    }
    if !rate_kinds.is_empty() {
        let tats: Vec<(String, bool, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT kind, per_key, key, tat FROM rate_limits \
             WHERE kind = ANY($1) AND (NOT per_key OR key = ANY($2))",
        )
        .bind(rate_kinds)
        .bind(keys)
        .fetch_all(&mut **tx)
        .await?;
        for (kind, per_key, key, tat) in tats {
            if per_key {
                state.key_tat.insert((kind, key), tat);
            } else {
                state.kind_tat.insert(kind, tat);
            }
        }
    }
    Ok((state, holding))
}

/// Records a slot for each published job of a kind that counts them.
pub async fn take_slots(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
    kinds: &[&str],
    keys: &[&str],
) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO slots (job_id, kind, key) SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) \
         ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(ids)
    .bind(kinds)
    .bind(keys)
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// Stores the rate states the batch moved on.
pub async fn save_rates(tx: &mut Transaction<'_, Postgres>, state: &State) -> sqlx::Result<()> {
    let mut kinds = Vec::new();
    let mut per_key = Vec::new();
    let mut keys = Vec::new();
    let mut tats = Vec::new();
    for (kind, tat) in &state.kind_tat {
        kinds.push(kind.as_str());
        per_key.push(false);
        keys.push("");
        tats.push(*tat);
    }
    for ((kind, key), tat) in &state.key_tat {
        kinds.push(kind.as_str());
        per_key.push(true);
        keys.push(key.as_str());
        tats.push(*tat);
    }
    if kinds.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO rate_limits (kind, per_key, key, tat) \
         SELECT * FROM unnest($1::text[], $2::bool[], $3::text[], $4::timestamptz[]) \
         ON CONFLICT (kind, per_key, key) DO UPDATE SET tat = EXCLUDED.tat",
    )
    .bind(&kinds)
    .bind(&per_key)
    .bind(&keys)
    .bind(&tats)
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// An entry to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The job.
    pub id: Uuid,
    /// `concurrency`, `rate` or `paused`.
    pub reason: &'static str,
    /// When the relay looks at it again: the reserved time of a rate, else now + [`RECHECK`].
    pub until: Option<DateTime<Utc>>,
    /// Its kind.
    pub kind: String,
    /// Its key.
    pub key: String,
    /// Its turn in its key's line (concurrency only).
    pub turn: Option<i32>,
    /// It waited a whole [`RECHECK`] for a slot without being woken: its place in the line
    /// rises by one priority (ageing), so no priority waits behind higher ones for ever.
    pub age: bool,
}

/// Holds entries: out of the relay's way until `until`, with the reason `GET /jobs/{id}` shows.
pub async fn hold(tx: &mut Transaction<'_, Postgres>, holds: &[Hold]) -> sqlx::Result<()> {
    if holds.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = holds.iter().map(|h| h.id).collect();
    let reasons: Vec<&str> = holds.iter().map(|h| h.reason).collect();
    let untils: Vec<Option<DateTime<Utc>>> = holds.iter().map(|h| h.until).collect();
    let kinds: Vec<&str> = holds.iter().map(|h| h.kind.as_str()).collect();
    let keys: Vec<&str> = holds.iter().map(|h| h.key.as_str()).collect();
    let turns: Vec<Option<i32>> = holds.iter().map(|h| h.turn).collect();
    let ages: Vec<bool> = holds.iter().map(|h| h.age).collect();
    sqlx::query(
        "UPDATE outbox AS o SET held = h.reason, held_kind = h.kind, held_key = h.key, \
             turn = h.turn, run_at = COALESCE(h.until, now() + make_interval(secs => $7)), \
             priority = CASE WHEN h.age THEN least(o.priority + 1, 9) ELSE o.priority END \
         FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::int4[], \
                     $8::bool[]) \
              AS h(id, reason, until, kind, key, turn, age) \
         WHERE o.job_id = h.id",
    )
    .bind(&ids)
    .bind(&reasons)
    .bind(&untils)
    .bind(&kinds)
    .bind(&keys)
    .bind(&turns)
    .bind(RECHECK.as_secs_f64())
    .bind(&ages)
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// For a kind's new concurrency holds: the last turn of each of `keys` already in line, and the
/// lowest turn of the kind in line (a key that joins starts there, not ahead of the others).
pub async fn turns(
    tx: &mut Transaction<'_, Postgres>,
    kind: &str,
    keys: &[&str],
) -> sqlx::Result<(HashMap<String, i32>, i32)> {
    let last: Vec<(String, i32)> = sqlx::query_as(
        "SELECT held_key, max(turn) FROM outbox \
         WHERE held = 'concurrency' AND held_kind = $1 AND held_key = ANY($2) AND turn IS NOT NULL \
         GROUP BY held_key",
    )
    .bind(kind)
    .bind(keys)
    .fetch_all(&mut **tx)
    .await?;
    let lowest: Option<i32> = sqlx::query_scalar(
        "SELECT min(turn) FROM outbox WHERE held = 'concurrency' AND held_kind = $1",
    )
    .bind(kind)
    .fetch_one(&mut **tx)
    .await?;
    Ok((last.into_iter().collect(), lowest.unwrap_or(0)))
}

/// Wakes every entry held for a slot: at start-up, when a limit may have been raised.
pub async fn wake_held(db: &PgPool) -> sqlx::Result<u64> {
    sqlx::query("UPDATE outbox SET run_at = now(), held = NULL WHERE held = 'concurrency'")
        .execute(db)
        .await
        .map(|r| r.rows_affected())
}

/// Pauses `kind`, recorded by `audit`; false if it already was (and nothing is recorded).
pub async fn pause(db: &PgPool, kind: &str, audit: &Audit) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let paused = sqlx::query("INSERT INTO paused_kinds (kind) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(kind)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if paused {
        super::audit::record(&mut tx, audit, &[]).await?;
    }
    tx.commit().await?;
    Ok(paused)
}

/// Resumes `kind` and wakes its held entries; false if it was not paused. Two transactions: the
/// first ends the pause, so no relay holds for it from then on; the second waits for the row
/// locks of every relay batch that saw the pause before that (`FOR UPDATE` over the kind's
/// entries) and then wakes what they held.
/// The first transaction records `audit` when it resumed the kind.
pub async fn resume(db: &PgPool, kind: &str, audit: &Audit) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let resumed = sqlx::query("DELETE FROM paused_kinds WHERE kind = $1")
        .bind(kind)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if resumed {
        super::audit::record(&mut tx, audit, &[]).await?;
    }
    tx.commit().await?;
    let mut tx = db.begin().await?;
    sqlx::query(
        "SELECT o.job_id FROM outbox AS o JOIN jobs AS j ON j.id = o.job_id \
         WHERE j.kind = $1 FOR UPDATE OF o",
    )
    .bind(kind)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE outbox SET run_at = now(), held = NULL WHERE held = 'paused' AND held_kind = $1",
    )
    .bind(kind)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(resumed)
}

/// The paused kinds, with when.
pub async fn paused(db: &PgPool) -> sqlx::Result<Vec<(String, DateTime<Utc>)>> {
    sqlx::query_as("SELECT kind, paused_at FROM paused_kinds ORDER BY kind")
        .fetch_all(db)
        .await
}

/// What flow control holds right now, per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Slots in use.
    pub running: i64,
    /// Entries held, by reason.
    pub held: HashMap<String, i64>,
}

/// Slots in use and held entries of every kind (the relay's gauges read this every second).
pub async fn usage(db: &PgPool) -> sqlx::Result<HashMap<String, Usage>> {
    let mut out: HashMap<String, Usage> = HashMap::new();
    let running: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, count(*) FROM slots GROUP BY kind")
            .fetch_all(db)
            .await?;
    for (kind, n) in running {
        out.entry(kind).or_default().running = n;
    }
    let held: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT held_kind, held, count(*) FROM outbox WHERE held IS NOT NULL GROUP BY 1, 2",
    )
    .fetch_all(db)
    .await?;
    for (kind, reason, n) in held {
        out.entry(kind).or_default().held.insert(reason, n);
    }
    Ok(out)
}

/// Per kind, the keys with the most entries held, most first (at most 10 a kind).
pub async fn top_keys(db: &PgPool) -> sqlx::Result<HashMap<String, Vec<(String, i64)>>> {
    let mut out: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    let keys: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT held_kind, held_key, n FROM ( \
             SELECT held_kind, held_key, count(*) AS n, \
                    row_number() OVER (PARTITION BY held_kind ORDER BY count(*) DESC, held_key) AS r \
             FROM outbox WHERE held IS NOT NULL GROUP BY 1, 2) AS t \
         WHERE r <= 10 ORDER BY held_kind, n DESC, held_key",
    )
    .fetch_all(db)
    .await?;
    for (kind, key, n) in keys {
        out.entry(kind).or_default().push((key, n));
    }
    Ok(out)
}
