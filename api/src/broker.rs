//! The api's broker session: declare the topology, run the outbox relay and the events
//! consumer on one connection.

use std::sync::Arc;

use anyhow::Context as _;
use shared::amqp::{BrokerStatus, Publisher};
use tokio_util::sync::CancellationToken;

use crate::{AppState, events, relay};

/// The api's view of RabbitMQ, shared with the HTTP handlers.
#[derive(Debug, Clone, Default)]
pub struct Broker {
    /// Up while a session runs; `/readyz` reads it.
    pub status: BrokerStatus,
    /// Wakes the relay after a job or a cancel is committed, so it need not wait for its next
    /// poll.
    pub wake_relay: Arc<tokio::sync::Notify>,
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
        anyhow::Ok((publisher, events))
    };
    let Some(ready) = shared::amqp::unless_shutdown(&shutdown, setup).await else {
        shared::amqp::close(&conn, "api stopped before its session was ready").await;
        return Ok(());
    };
    let (publisher, consumer) = ready?;
    state.broker.status.set_up(true);
    let relay = relay::run(
        state.db.clone(),
        publisher,
        topology,
        state.broker.wake_relay.clone(),
        config.relay_interval,
        shutdown.clone(),
    );
    let events = events::consume(consumer, state.clone(), shutdown.clone());
    tokio::pin!(relay, events);
    // A failure of either ends the session at once; a clean stop (shutdown) waits for the
    // other, so the relay's final flush is not cut short.
    let outcome = tokio::select! {
        r = &mut relay => if r.is_ok() { events.await } else { r },
        r = &mut events => if r.is_ok() { relay.await } else { r },
    };
    shared::amqp::close(&conn, "api session over").await;
    outcome
}
