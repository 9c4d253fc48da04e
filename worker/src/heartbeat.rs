//! The worker's heartbeat: one message, every sixth of a lease, naming every attempt it holds a
//! lease for, so that the api renews them all with one statement; thousands of long jobs cost
//! one publish per interval, not one each.
//!
//! The other half of the lease is the worker's own fence: an attempt whose lease could not be
//! renewed (no confirmed heartbeat) for half of it is stopped here, well before the api, which
//! waits for the whole lease, gives it up and runs the job again. A broker hiccup shorter than
//! that costs nothing; a longer one stops the attempt rather than let two run at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use jobs_contract::messages::{HEARTBEAT_ROUTING_KEY, Heartbeat};
use shared::amqp::{Outgoing, PublishError};
use tokio_util::sync::CancellationToken;

use crate::WorkerState;

/// How often to heartbeat for attempts whose shortest lease is `lease`: a sixth of it, between
/// 100 ms and 10 s (so a lease of a minute is renewed every 10 s).
pub fn interval(lease: Duration) -> Duration {
    (lease / 6).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// Heartbeats until `stop` (after the last job task is done: the drain at shutdown needs its
/// leases too).
pub async fn run(state: Arc<WorkerState>, stop: CancellationToken) {
    let mut renewed: Option<Instant> = None;
    loop {
        let (running, shortest) = state.attempts.leases();
        let every = shortest.map_or(Duration::from_secs(1), interval);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {},
        }
        if running.is_empty() {
            continue;
        }
        // The api renews from when it reads the heartbeat, never earlier than it was sent: the
        // fence counts from the send. A beat waits for its confirm at most one interval, so the
        // fence below runs at least every two: it trips within 5/6 of a lease, before the api.
        let sent = Instant::now();
        let beat = tokio::time::timeout(every, beat(&state, running)).await;
        match beat.unwrap_or(Err(PublishError::Timeout(every))) {
            Ok(()) => {
                renewed = Some(sent);
                metrics::counter!("jobstack_worker_heartbeats_total", "result" => "confirmed")
                    .increment(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat not confirmed; leases are not renewed");
                metrics::counter!("jobstack_worker_heartbeats_total", "result" => "failed")
                    .increment(1);
            }
        }
        let fenced = state.attempts.fence(renewed);
        if fenced > 0 {
            tracing::warn!(
                fenced,
                "no confirmed heartbeat for half a lease: stopping those attempts before the api runs them again"
            );
        }
    }
}

/// One heartbeat for `running`, confirmed by the broker.
async fn beat(
    state: &WorkerState,
    running: Vec<jobs_contract::messages::Lease>,
) -> Result<(), PublishError> {
    let Some(publisher) = state.link.current() else {
        return Err(PublishError::NoSession);
    };
    let body = Heartbeat {
        at: Utc::now(),
        running,
    };
    let body = serde_json::to_vec(&body).expect("heartbeats serialize");
    // No span: a heartbeat per interval for every job would grow traces without bound.
    let msg = Outgoing::new(
        &state.topology.events_exchange(),
        HEARTBEAT_ROUTING_KEY,
        body,
        "",
        &tracing::Span::none(),
    );
    publisher.publish(msg).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_heartbeats_a_lease_within_bounds() {
        assert_eq!(interval(Duration::from_secs(60)), Duration::from_secs(10));
        assert_eq!(interval(Duration::from_secs(3)), Duration::from_millis(500));
        assert_eq!(
            interval(Duration::from_millis(300)),
            Duration::from_millis(100)
        );
        assert_eq!(interval(Duration::from_secs(3600)), Duration::from_secs(10));
    }
}
