//! The api's broker session: declare the topology, run the outbox relay, the events consumer
//! and the lease reaper on one connection.

use std::sync::Arc;

use anyhow::Context as _;
use shared::amqp::{BrokerStatus, Publisher};
use tokio_util::sync::CancellationToken;

use crate::events::InFlight;
use crate::{AppState, events, leases, relay};

/// The api's view of RabbitMQ, shared with the HTTP handlers.
#[derive(Debug, Clone, Default)]
pub struct Broker {
    /// Up while a session runs; `/readyz` reads it.
    pub status: BrokerStatus,
    /// Wakes the relay after a job or a cancel is committed, so it need not wait for its next
    /// poll.
    pub wake_relay: Arc<tokio::sync::Notify>,
    /// The relay's rounds over the cancel outbox, which a cancel's request waits for.
    pub cancel_rounds: Arc<relay::CancelRounds>,
}

impl Broker {
    /// After a commit of cancels: wakes the relay and, while the broker is up, waits (at most
    /// `bound`) until they are in the control stream; see [`relay::CancelRounds`].
    pub async fn broadcast_cancels(&self, bound: std::time::Duration) {
        if !self.status.is_up() {
            // The relay broadcasts them once the broker is back; nothing to wait for now.
            self.wake_relay.notify_one();
            return;
        }
        if !self.cancel_rounds.next(&self.wake_relay, bound).await {
            tracing::debug!("cancel answered before the relay's broadcast of it");
        }
    }
}

/// Runs one session on `conn` until `shutdown` (`Ok`) or a broker failure (`Err`: reconnect).
pub async fn session(
    conn: lapin::Connection,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = &state.config;
    let topology = config.topology();
    let setup = async {
        let publisher = Publisher::open(&conn, config.amqp.publish_timeout).await?;
        topology
            .declare(publisher.channel())
            .await
            .context("declaring the topology")?;
        let events = events::subscribe(&conn, &topology.events_queue()).await?;
        let reaper = conn.create_channel().await?;
        anyhow::Ok((publisher, events, reaper))
    };
    let Some(ready) = shared::amqp::unless_shutdown(&shutdown, setup).await else {
        shared::amqp::close(&conn, "api stopped before its session was ready").await;
        return Ok(());
    };
    let (publisher, consumer, reaper) = ready?;
    state.broker.status.set_up(true);
    let in_flight = InFlight::default();
    let relay = relay::run(
        state.db.clone(),
        publisher,
        config.dispatch(),
        state.flow.clone(),
        state.broker.clone(),
        config.relay_interval,
        shutdown.clone(),
    );
    let events = events::consume(consumer, state.clone(), in_flight.clone(), shutdown.clone());
    let reaper = leases::run(reaper, state.clone(), in_flight, shutdown.clone());
    tokio::pin!(relay, events, reaper);
    // A failure of any ends the session at once; a clean stop (shutdown) waits for the others,
    // so the relay's final flush is not cut short.
    let outcome = tokio::select! {
        r = &mut relay => match r { Ok(()) => tokio::try_join!(events, reaper).map(drop), e => e },
        r = &mut events => match r { Ok(()) => tokio::try_join!(relay, reaper).map(drop), e => e },
        r = &mut reaper => match r { Ok(()) => tokio::try_join!(relay, events).map(drop), e => e },
    };
    shared::amqp::close(&conn, "api session over").await;
    outcome
}
