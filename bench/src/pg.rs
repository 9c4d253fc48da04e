//! The bench's PostgreSQL side: its databases, the step hygiene (vacuum, checkpoint) and the
//! pg_stat counters that say what each job cost in transactions and row work.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, PgPool};

use crate::results::{PgWork, TableWork};

/// An admin connection to the server, and the URL to reach any of its databases.
#[derive(Debug, Clone)]
pub struct Pg {
    admin: PgPool,
    base: reqwest::Url,
}

/// pg_stat counters of one database at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PgCounters {
    /// `xact_commit`.
    pub xacts: i64,
    /// Per table: inserted, updated, HOT-updated, deleted rows.
    pub tables: BTreeMap<String, [i64; 4]>,
}

impl PgCounters {
    /// The work between `before` and `self`, per job.
    pub fn per_job_since(&self, before: &Self, jobs: u64) -> PgWork {
        let n = jobs.max(1) as f64;
        let tables = self
            .tables
            .iter()
            .filter_map(|(table, now)| {
                let was = before.tables.get(table).copied().unwrap_or_default();
                let d: Vec<f64> = (0..4).map(|i| (now[i] - was[i]) as f64 / n).collect();
                d.iter().any(|v| *v > 0.0).then(|| TableWork {
                    table: table.clone(),
                    inserts: d[0],
                    updates: d[1],
                    hot: d[2],
                    deletes: d[3],
                })
            })
            .collect();
        PgWork {
            xacts: (self.xacts - before.xacts) as f64 / n,
            tables,
        }
    }
}

impl Pg {
    /// Connects to the server at `url` (its database is the admin one, usually `postgres`).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(url).context("BENCH_PG_URL")?;
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .with_context(|| {
                format!("connecting to PostgreSQL at {}", crate::config::redact(url))
            })?;
        Ok(Self { admin, base })
    }

    /// The URL of database `db` on the same server, as user and host of the admin URL.
    pub fn url(&self, db: &str) -> String {
        let mut url = self.base.clone();
        url.set_path(db);
        url.to_string()
    }

    /// Creates database `db`.
    pub async fn create(&self, db: &str) -> anyhow::Result<()> {
        self.exec(&format!("CREATE DATABASE \"{db}\"")).await
    }

    /// Drops database `db`, closing whatever is still connected to it.
    pub async fn drop(&self, db: &str) -> anyhow::Result<()> {
        self.exec(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .await
    }

    /// Databases whose names start with `prefix`.
    pub async fn databases_starting(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database")
            .fetch_all(&self.admin)
            .await?;
        Ok(names
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    /// Every measured step starts from the same state: dead rows vacuumed, statistics fresh,
    /// dirty pages written (so no checkpoint lands in the middle of the step by chance).
    pub async fn settle(&self, db: &str) -> anyhow::Result<()> {
        let mut conn = self.open(db).await?;
        sqlx::raw_sql("VACUUM ANALYZE").execute(&mut conn).await?;
        conn.close().await?;
        self.exec("CHECKPOINT").await
    }

    /// Waits (up to 10 s) until nothing is connected to `db`. A backend flushes its pending
    /// statistics when it exits; an idle one can hold them back for up to 10 s, so counters are
    /// only read once the services' connections are gone.
    pub async fn wait_disconnected(&self, db: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(db)
            .fetch_one(&self.admin)
            .await?;
            if n == 0 || Instant::now() > deadline {
                // The flush runs just after a backend leaves pg_stat_activity.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pg_stat counters of `db` (call [`Pg::wait_disconnected`] first).
    pub async fn counters(&self, db: &str) -> anyhow::Result<PgCounters> {
        let xacts: i64 =
            sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
                .bind(db)
                .fetch_optional(&self.admin)
                .await?
                .unwrap_or(0);
        let mut conn = self.open(db).await?;
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables",
        )
        .fetch_all(&mut conn)
        .await?;
        conn.close().await?;
        let tables = rows
            .into_iter()
            .map(|(t, i, u, h, d)| (t, [i, u, h, d]))
            .collect();
        Ok(PgCounters { xacts, tables })
    }

    /// A connection to `db`.
    pub async fn open(&self, db: &str) -> anyhow::Result<PgConnection> {
        PgConnection::connect(&self.url(db))
            .await
            .with_context(|| format!("connecting to database {db}"))
    }

    /// Waits until every job created since `since` has ended, polling `conn`; `what` names the
    /// step in the error when `limit` passes first.
    pub async fn wait_ended(
        conn: &mut PgConnection,
        since: chrono::DateTime<chrono::Utc>,
        limit: Duration,
        what: &str,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE created_at >= $1 AND finished_at IS NULL",
            )
            .bind(since)
            .fetch_one(&mut *conn)
            .await?;
            if open == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{what}: {open} jobs still unfinished after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `server_version`, and the settings that decide durability and size.
    pub async fn describe(&self) -> anyhow::Result<(String, String)> {
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&self.admin)
            .await?;
        let settings: String = sqlx::query_scalar(
            "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings \
             WHERE name IN ('synchronous_commit', 'fsync', 'wal_sync_method', 'shared_buffers', 'max_connections')",
        )
        .fetch_one(&self.admin)
        .await?;
        Ok((version, settings))
    }

    async fn exec(&self, sql: &str) -> anyhow::Result<()> {
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&self.admin)
            .await
            .with_context(|| sql.to_owned())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_per_job_between_two_readings() {
        let before = PgCounters {
            xacts: 10,
            tables: BTreeMap::from([("jobs".to_owned(), [100, 100, 0, 0])]),
        };
        let after = PgCounters {
            xacts: 1010,
            tables: BTreeMap::from([
                ("jobs".to_owned(), [1100, 2100, 500, 0]),
                ("outbox".to_owned(), [1000, 0, 0, 1000]),
                ("untouched".to_owned(), [0, 0, 0, 0]),
            ]),
        };
        let work = after.per_job_since(&before, 1000);
        assert_eq!(work.xacts, 1.0);
        assert_eq!(
            work.tables,
            vec![
                TableWork {
                    table: "jobs".into(),
                    inserts: 1.0,
                    updates: 2.0,
                    hot: 0.5,
                    deletes: 0.0
                },
                TableWork {
                    table: "outbox".into(),
                    inserts: 1.0,
                    updates: 0.0,
                    hot: 0.0,
                    deletes: 1.0
                },
            ]
        );
    }
}
