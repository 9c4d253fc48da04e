//! API keys and console sessions: their digests, roles, quotas and lifetimes.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::audit;
use crate::access::{Audit, Caller, Role};

/// A key, as listed (never its secret, which is not stored).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    /// Its id.
    pub id: Uuid,
    /// The client it speaks for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The secret's first characters.
    pub hint: String,
    /// Its submit rate per second, if it has its own.
    pub submit_rate: Option<f64>,
    /// Its in-flight cap, if it has its own.
    pub max_in_flight: Option<i32>,
    /// Who made it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if it does.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl KeyRow {
    /// The caller this key makes.
    pub fn caller(&self) -> Caller {
        Caller {
            key_id: Some(self.id),
            client: self.name.clone(),
            role: self.role,
            submit_rate: self.submit_rate,
            max_in_flight: self.max_in_flight.map(|n| n.max(1) as u32),
        }
    }
}

/// A key to make.
#[derive(Debug, Clone)]
pub struct NewKey<'a> {
    /// The client's name.
    pub name: &'a str,
    /// Its role.
    pub role: Role,
    /// The digest of its secret.
    pub digest: &'a [u8],
    /// The secret's first characters.
    pub hint: &'a str,
    /// Its own submit rate.
    pub submit_rate: Option<f64>,
    /// Its own in-flight cap.
    pub max_in_flight: Option<u32>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// Who makes it.
    pub created_by: &'a str,
}

/// The columns of [`KeyRow`], for `concat!`.
macro_rules! key_columns {
    () => {
        "id, name, role, hint, submit_rate, max_in_flight, created_by, created_at, expires_at, \
         revoked_at"
    };
}

/// The unrevoked, unexpired key with this digest.
pub async fn active(db: &PgPool, digest: &[u8]) -> sqlx::Result<Option<KeyRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE digest = $1 AND revoked_at IS NULL \
         AND (expires_at IS NULL OR expires_at > now())"
    ))
    .bind(digest)
    .fetch_optional(db)
    .await
}

/// Every key, newest first.
pub async fn list(db: &PgPool) -> sqlx::Result<Vec<KeyRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys ORDER BY created_at DESC, id DESC"
    ))
    .fetch_all(db)
    .await
}

/// Makes a key, recorded by `audit` (none for the command line's first key or the demo key,
/// which no caller made).
pub async fn create(db: &PgPool, key: &NewKey<'_>, audit: Option<&Audit>) -> sqlx::Result<KeyRow> {
    let mut tx = db.begin().await?;
    let row = insert(&mut tx, key).await?;
    if let Some(a) = audit {
        let a = a.clone().with(serde_json::json!({
            "name": row.name, "role": row.role, "expires_at": row.expires_at,
        }));
        audit::record(
            &mut tx,
            &Audit {
                target: row.id.to_string(),
                ..a
            },
            &[],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(row)
}

async fn insert(tx: &mut Transaction<'_, Postgres>, key: &NewKey<'_>) -> sqlx::Result<KeyRow> {
    sqlx::query_as(concat!(
        "INSERT INTO api_keys (id, name, role, digest, hint, submit_rate, max_in_flight, \
                               created_by, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ",
        key_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(key.name)
    .bind(key.role)
    .bind(key.digest)
    .bind(key.hint)
    .bind(key.submit_rate)
    .bind(key.max_in_flight.map(|n| n as i32))
    .bind(key.created_by)
    .bind(key.expires_at)
    .fetch_one(&mut **tx)
    .await
}

/// Makes the demo key if no key has its digest (start-up; replicas race harmlessly).
pub async fn ensure(db: &PgPool, key: &NewKey<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, name, role, digest, hint, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (digest) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(key.name)
    .bind(key.role)
    .bind(key.digest)
    .bind(key.hint)
    .bind(key.created_by)
    .execute(db)
    .await?;
    Ok(())
}

/// Who made a key from configuration: the api makes it again at every start.
pub const FROM_CONFIG: &str = "API_DEMO_KEY";

/// What a revoke found.
#[derive(Debug, PartialEq, Eq)]
pub enum Revoked {
    /// No such key.
    NotFound,
    /// The demo key, which configuration owns: unset `API_DEMO_KEY` instead.
    Configured,
    /// Revoked before.
    Already,
    /// Revoked now.
    Now,
}

/// Revokes a key and ends its sessions, recorded by `audit`.
pub async fn revoke(db: &PgPool, id: Uuid, audit: &Audit) -> sqlx::Result<Revoked> {
    let mut tx = db.begin().await?;
    let found: Option<(String, bool)> = sqlx::query_as(
        "SELECT created_by, revoked_at IS NOT NULL FROM api_keys WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let revoked = match found {
        None => Revoked::NotFound,
        Some((by, _)) if by == FROM_CONFIG => Revoked::Configured,
        Some((_, true)) => Revoked::Already,
        Some(_) => {
            sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM sessions WHERE key_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            audit::record(&mut tx, audit, &[]).await?;
            Revoked::Now
        }
    };
    tx.commit().await?;
    Ok(revoked)
}

/// A console session: the key it was opened with, and its CSRF token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    /// The key's columns.
    #[sqlx(flatten)]
    pub key: KeyRow,
    /// The token every form must carry.
    pub csrf: String,
}

/// Opens a session for `key_id` until `expires_at`.
pub async fn open_session(
    db: &PgPool,
    digest: &[u8],
    key_id: Uuid,
    csrf: &str,
    expires_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO sessions (digest, key_id, csrf, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(digest)
        .bind(key_id)
        .bind(csrf)
        .bind(expires_at)
        .execute(db)
        .await?;
    Ok(())
}

/// The live session with this digest, whose key still works.
pub async fn session(db: &PgPool, digest: &[u8]) -> sqlx::Result<Option<SessionRow>> {
    sqlx::query_as(
        "SELECT k.id, k.name, k.role, k.hint, k.submit_rate, k.max_in_flight, k.created_by, \
                k.created_at, k.expires_at, k.revoked_at, s.csrf \
         FROM sessions s JOIN api_keys k ON k.id = s.key_id \
         WHERE s.digest = $1 AND s.expires_at > now() AND k.revoked_at IS NULL \
           AND (k.expires_at IS NULL OR k.expires_at > now())",
    )
    .bind(digest)
    .fetch_optional(db)
    .await
}

/// Ends a session.
pub async fn close_session(db: &PgPool, digest: &[u8]) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM sessions WHERE digest = $1")
        .bind(digest)
        .execute(db)
        .await?;
    Ok(())
}
