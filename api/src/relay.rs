//! The outbox relay: publishes committed jobs to RabbitMQ and takes them out of the outbox.
//!
//! Why an outbox: the 202 promises the job will run, so it must not depend on the broker being
//! up at that moment, nor on the api surviving the next millisecond. The handler only commits
//! the row; this loop publishes rows in batches with pipelined confirms (an order of magnitude
//! faster than a confirm per request) and marks them only after the broker confirmed them. A
//! crash between the two publishes a job twice, which at-least-once delivery allows.

use std::sync::Arc;
use std::time::Duration;

use jobs_contract::messages::JobMessage;
use shared::amqp::{Outgoing, Publisher, Topology, producer_span};
use shared::telemetry::propagation;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store;

/// Rows per batch: large enough to amortise the round trips, small enough to bound the time a
/// batch holds its row locks.
const BATCH: i64 = 256;

/// Publishes outbox entries until `shutdown`, then flushes once more; returns an error when the
/// broker failed us (the caller reconnects). `wake` is notified after each accepted job.
pub async fn run(
    db: PgPool,
    publisher: Publisher,
    topology: Topology,
    wake: Arc<Notify>,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        loop {
            match relay_batch(&db, &publisher, &topology).await {
                Ok(n) if n < BATCH as usize => break,
                Ok(_) => continue,
                Err(Failure::Database(e)) => {
                    tracing::warn!(error = %e, "outbox relay cannot reach PostgreSQL; will retry");
                    break;
                }
                Err(Failure::Broker(e)) => return Err(e),
            }
        }
        if let Ok(backlog) = store::outbox_backlog(&db).await {
            metrics::gauge!("jobstack_outbox_backlog").set(backlog as f64);
        }
        if shutdown.is_cancelled() {
            // The loop above was the final flush: jobs committed before the signal are out.
            return Ok(());
        }
        tokio::select! {
            () = wake.notified() => {},
            () = tokio::time::sleep(interval) => {},
            () = shutdown.cancelled() => {},
        }
    }
}

enum Failure {
    Database(sqlx::Error),
    Broker(anyhow::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

async fn relay_batch(
    db: &PgPool,
    publisher: &Publisher,
    topology: &Topology,
) -> Result<usize, Failure> {
    let mut tx = db.begin().await?;
    let rows = store::lock_outbox(&mut tx, BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let exchange = topology.jobs_exchange();
    let mut spans = Vec::with_capacity(rows.len());
    let mut messages = Vec::with_capacity(rows.len());
    for row in &rows {
        let id = row.id.to_string();
        // The producer span continues the request's trace, however long after it we publish.
        let span = producer_span(&exchange, &row.kind, &id);
        if let Some(tp) = &row.traceparent {
            propagation::set_parent(&span, propagation::from_traceparent(tp));
        }
        let body = JobMessage {
            id: row.id,
            kind: row.kind.clone(),
            payload: row.payload.clone(),
            attempt: 1,
            available_at: row.created_at,
        };
        let body = serde_json::to_vec(&body).expect("messages serialize");
        messages.push(Outgoing::new(&exchange, &row.kind, body, &id, &span));
        spans.push(span);
    }
    let results = publisher.publish_all(messages).await;
    let mut published = Vec::with_capacity(rows.len());
    let mut failure = None;
    for ((row, result), span) in rows.iter().zip(results).zip(&spans) {
        match result {
            Ok(()) => published.push(row.id),
            Err(e) => {
                propagation::record_error(span, &e.to_string());
                failure.get_or_insert(e);
            }
        }
    }
    store::mark_published(&mut tx, &published).await?;
    tx.commit().await?;
    metrics::counter!("jobstack_outbox_published_total").increment(published.len() as u64);
    match failure {
        None => Ok(published.len()),
        Some(e) => Err(Failure::Broker(anyhow::Error::new(e).context(format!(
            "outbox relay: {} of {} jobs not published",
            rows.len() - published.len(),
            rows.len()
        )))),
    }
}
