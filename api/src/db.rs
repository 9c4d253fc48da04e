//! The PostgreSQL pool: created (with its database, if missing) and migrated at start-up,
//! retrying with backoff until the server answers. Later outages are the pool's business: each
//! acquire reconnects, and requests meanwhile get 503.

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::migrate::MigrateDatabase as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use tokio_util::sync::CancellationToken;

use crate::Config;
use shared::backoff::{self, Policy};
use shared::config::{ConfigError, redact_url};

/// Migrations embedded in the binary, applied at every start (idempotent).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects, creating the database if needed, and migrates.
pub async fn connect(
    config: &Config,
    faults: &shared::faults::Faults,
    shutdown: &CancellationToken,
) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(&config.database_url).map_err(|e| ConfigError {
        var: "DATABASE_URL",
        value: redact_url(&config.database_url),
        reason: e.to_string(),
    })?;
    let policy = Policy {
        base: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };
    let url = redact_url(&config.database_url);
    let connected = backoff::retry(
        policy,
        shutdown,
        || try_connect(config, faults, options.clone()),
        |e, _| tracing::warn!(%url, error = format!("{e:#}"), "PostgreSQL not ready; retrying"),
    );
    connected
        .await
        .ok_or_else(|| anyhow::anyhow!("stopped before PostgreSQL was reachable"))
}

async fn try_connect(
    config: &Config,
    faults: &shared::faults::Faults,
    options: PgConnectOptions,
) -> anyhow::Result<PgPool> {
    if !Postgres::database_exists(&config.database_url).await? {
        // Two replicas may race to create it; losing that race is fine.
        if let Err(e) = Postgres::create_database(&config.database_url).await {
            tracing::debug!(error = %e, "create database");
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        // Waiting longer than this for a connection means PostgreSQL is down or saturated:
        // answer 503 rather than hold the request.
        .acquire_timeout(Duration::from_secs(3))
        // The demo's database latency fault: every pooled connection handed out waits first.
        .before_acquire({
            let faults = faults.clone();
            move |_, _| {
                let faults = faults.clone();
                Box::pin(async move {
                    faults.db_latency().await;
                    Ok(true)
                })
            }
        })
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}
