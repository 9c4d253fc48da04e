//! The lease reaper: gives up running attempts whose lease lapsed, so that a job whose worker
//! died runs again (from its last checkpoint), and keeps the gauges of running jobs.
//!
//! It must never give up an attempt that is still alive: a worker stops an attempt itself
//! after half a lease without a confirmed heartbeat, and the reaper waits for a whole lease and
//! gives up an attempt only when no renewal of it can still be on its way: with no event
//! waiting in the events queue (a lagging api), and only if its lease lapsed before the oldest
//! event still being applied was sent (less a second, the timestamps' resolution). An api that
//! was down for longer than a lease finds the heartbeats of that time waiting, and applies them
//! before it gives anything up. With several api replicas, each one knows only what it holds
//! itself: one whose PostgreSQL writes stall for longer than a lease while another reaps is the
//! case this cannot see. It runs inside the broker session, so a broker outage pauses it too: attempts
//! whose workers could not reach the broker are given up once it is back and their lease has
//! still lapsed. Why leases: docs/adr/0001-leases.md.

use std::time::Duration;

use chrono::Utc;
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::events::InFlight;
use crate::lifecycle::Status;
use crate::store::events::Timing;
use crate::store::leases;

/// Most attempts given up in one transaction.
const BATCH: i64 = 256;

/// How often the reaper looks: a quarter of the lease, between 200 ms and 10 s.
pub fn period(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_millis(200), Duration::from_secs(10))
}

/// Looks for lapsed leases every [`period`] until `shutdown`; returns an error when the broker
/// failed (the session reconnects).
pub async fn run(
    channel: Channel,
    state: AppState,
    in_flight: InFlight,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let queue = state.config.topology().events_queue();
    let backoff = |failures| state.config.retry_delay(failures);
    let timing = Timing {
        backoff: &backoff,
        lease: state.config.lease,
    };
    metrics::gauge!("jobstack_job_lease_seconds").set(state.config.lease.as_secs_f64());
    loop {
        // A round is abandoned at shutdown: its broker call may wait on a broker that stopped
        // answering, and its transaction rolls back. The first one runs at once: an api that
        // comes back after an outage finds lapsed-looking leases and the renewals that explain
        // them waiting side by side, which is exactly what the guards below are for.
        let round = reap(&channel, &queue, &state, &timing, &in_flight);
        match shared::amqp::unless_shutdown(&shutdown, round).await {
            None => return Ok(()),
            Some(done) => done?,
        }
        gauges(&state, &state.kinds).await;
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(period(state.config.lease)) => {},
        }
    }
}

/// One look: gives up the attempts whose lease lapsed, unless renewals may still be on their
/// way in. `Err` only when the broker failed.
async fn reap(
    channel: &Channel,
    queue: &str,
    state: &AppState,
    timing: &Timing<'_>,
    in_flight: &InFlight,
) -> anyhow::Result<()> {
    // A lagging api: renewals still wait in the queue.
    let waiting = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();
    if waiting > 0 {
        tracing::debug!(waiting, "events waiting: no lease is given up this round");
        return Ok(());
    }
    let before = in_flight.oldest().unwrap_or_else(Utc::now) - chrono::Duration::seconds(1);
    match leases::expire(&state.db, state.config.max_attempts, timing, before, BATCH).await {
        Ok(expired) => {
            for e in &expired {
                tracing::warn!(job.id = %e.id, job.kind = %e.kind, job.attempt = e.attempt,
                    status = %e.status, "lease lapsed: the attempt is given up");
                metrics::counter!("jobstack_job_leases_lapsed_total", "kind" => e.kind.clone())
                    .increment(1);
            }
            if expired.iter().any(|e| e.status == Status::Scheduled) {
                state.broker.wake_relay.notify_one();
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot look for lapsed leases; will retry"),
    }
    Ok(())
}

/// Running jobs by kind, and the oldest heartbeat among them; workflows of the last day by
/// status.
async fn gauges(state: &AppState, kinds: &jobs_contract::Catalog) {
    let Ok(running) = leases::running(&state.db).await else {
        return;
    };
    let now = Utc::now();
    for kind in kinds.names() {
        let (n, oldest) = running.get(kind).copied().unwrap_or((0, None));
        metrics::gauge!("jobstack_jobs_running", "kind" => kind).set(n as f64);
        let age = oldest.map_or(0.0, |at| {
            (now - at).num_milliseconds().max(0) as f64 / 1000.0
        });
        metrics::gauge!("jobstack_job_heartbeat_age_max_seconds", "kind" => kind).set(age);
    }
    if let Ok(counts) = crate::store::workflows::counts(&state.db).await {
        for status in ["running", "succeeded", "failed", "cancelled"] {
            let n = counts
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            metrics::gauge!("jobstack_workflows", "status" => status).set(n as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reaper_looks_four_times_a_lease_within_bounds() {
        assert_eq!(period(Duration::from_secs(60)), Duration::from_secs(10));
        assert_eq!(period(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(
            period(Duration::from_millis(400)),
            Duration::from_millis(200)
        );
    }
}
