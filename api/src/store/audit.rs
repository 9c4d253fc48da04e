//! The audit trail: one row per mutating action, written in the transaction of its effect.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::access::Audit;

/// Records `audit`, which changed `jobs`, in `tx`.
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    audit: &Audit,
    jobs: &[Uuid],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO audit (actor, role, key_id, action, target, jobs, detail, trace_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&audit.actor)
    .bind(&audit.role)
    .bind(audit.key_id)
    .bind(audit.action)
    .bind(&audit.target)
    .bind(jobs)
    .bind(&audit.detail)
    .bind(&audit.trace_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An entry, as read.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    /// Its place in the trail.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who (the key's client name).
    pub actor: String,
    /// With which role.
    pub role: String,
    /// With which key.
    pub key_id: Option<Uuid>,
    /// What.
    pub action: String,
    /// To what.
    pub target: String,
    /// The jobs it changed.
    pub jobs: Vec<Uuid>,
    /// The rest.
    pub detail: Value,
    /// The request's trace.
    pub trace_id: String,
}

/// Entries older than `before` (all when `None`), newest first; filtered by `actor`/`action`.
pub async fn list(
    db: &PgPool,
    actor: Option<&str>,
    action: Option<&str>,
    before: Option<i64>,
    limit: u32,
) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as(
        "SELECT id, at, actor, role, key_id, action, target, jobs, detail, trace_id FROM audit \
         WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2) \
           AND ($3::int8 IS NULL OR id < $3) \
         ORDER BY id DESC LIMIT $4",
    )
    .bind(actor)
    .bind(action)
    .bind(before)
    .bind(i64::from(limit))
    .fetch_all(db)
    .await
}
