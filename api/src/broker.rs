//! The api's broker session: declare the topology, run the outbox relay and the events
//! consumer on one connection, and share the publisher (for cancel broadcasts) while it lives.

use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use shared::amqp::{BrokerStatus, Publisher};
use tokio_util::sync::CancellationToken;

use crate::{AppState, events, relay};

/// The api's view of RabbitMQ, shared with the HTTP handlers.
#[derive(Debug, Clone, Default)]
pub struct Broker {
    /// Up while a session runs; `/readyz` reads it.
    pub status: BrokerStatus,
    publisher: Arc<RwLock<Option<Publisher>>>,
    /// Wakes the relay after a job is committed, so it need not wait for its next poll.
    pub wake_relay: Arc<tokio::sync::Notify>,
}

impl Broker {
    /// The current session's publisher, if connected.
    pub fn publisher(&self) -> Option<Publisher> {
        self.publisher.read().expect("not poisoned").clone()
    }

    fn set_publisher(&self, p: Option<Publisher>) {
        *self.publisher.write().expect("not poisoned") = p;
    }
}

/// Runs one session on `conn` until `shutdown` (`Ok`) or a broker failure (`Err`: reconnect).
pub async fn session(
    conn: lapin::Connection,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = &state.config;
    let publisher = Publisher::open(&conn, config.amqp.publish_timeout).await?;
    config
        .amqp
        .topology
        .declare(publisher.channel())
        .await
        .context("declaring the topology")?;
    state.broker.set_publisher(Some(publisher.clone()));
    state.broker.status.set_up(true);
    let relay = relay::run(
        state.db.clone(),
        publisher,
        config.amqp.topology.clone(),
        state.broker.wake_relay.clone(),
        config.relay_interval,
        shutdown.clone(),
    );
    let events = events::consume(
        &conn,
        config.amqp.topology.events_queue(),
        state.db.clone(),
        shutdown.clone(),
    );
    tokio::pin!(relay, events);
    // A failure of either ends the session at once; a clean stop (shutdown) waits for the
    // other, so the relay's final flush is not cut short.
    let outcome = tokio::select! {
        r = &mut relay => if r.is_ok() { events.await } else { r },
        r = &mut events => if r.is_ok() { relay.await } else { r },
    };
    state.broker.set_publisher(None);
    let _ = conn.close(200, "api session over".into()).await;
    outcome
}
