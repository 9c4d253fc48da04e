//! One broker connection's life: declare the topology, read every cancel so far from the control
//! stream, then consume jobs while following the stream; on shutdown stop intake, let in-flight
//! jobs finish within the grace period, then close (the broker requeues whatever is unacked).
//!
//! Why a stream: a cancel must hold for a job whose message is already in the queue, whenever a
//! worker takes it — also a worker that was not running when the cancel was accepted. A stream
//! keeps its messages for every reader, so each worker reads it from the start when it
//! connects. To know it has read everything that was there, it writes a marker of its own and
//! reads up to it (a stream is read in order) before it takes its first job.

use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use jobs_contract::messages::ControlMessage;
use lapin::Consumer;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use shared::amqp::{BrokerStatus, Outgoing, Publisher, producer_span};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::WorkerState;
use crate::attempts::StopReason;
use crate::intake::{self, Intake};
use crate::runner;

/// Unacked control messages in flight to us: a stream consumer needs a prefetch, and a larger
/// one reads a long stream faster at start-up.
const CONTROL_PREFETCH: u16 = 1000;
/// How long reading the control stream up to our marker may take before the session fails
/// (and reconnects): the stream holds at most 64 MB.
const CATCH_UP: Duration = Duration::from_secs(60);

/// Consumes until `shutdown` (then drains and returns `Ok`) or until the connection fails.
pub async fn run(
    conn: lapin::Connection,
    state: Arc<WorkerState>,
    status: BrokerStatus,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topology = &state.topology;
    let Some(ready) = shared::amqp::unless_shutdown(&shutdown, open(&conn, &state)).await else {
        shared::amqp::close(&conn, "worker stopped before its session was ready").await;
        return Ok(());
    };
    let Channels {
        publisher,
        mut control,
        mut intake,
    } = ready?;
    let _link = state.link.up(publisher);
    // Jobs still waiting for a slot when this session ends (a broker failure) must not start:
    // the broker hands their deliveries out again.
    let session_over = shutdown.child_token();
    let _session_over = session_over.clone().drop_guard();

    status.set_up(true);
    tracing::info!(queue = %topology.jobs_queue(), concurrency = state.config.concurrency, "consuming jobs");
    loop {
        let prefetch = intake::prefetch(state.config.concurrency, state.attempts.holding());
        // A broker call like any other: one that never answers must not hold the shutdown.
        match shared::amqp::unless_shutdown(&shutdown, intake.follow(prefetch)).await {
            Some(followed) => followed?,
            None => break,
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = state.attempts.leases_changed() => {},
            delivery = intake.next() => {
                let delivery = delivery.context("job consumer closed")??;
                tracker.spawn(runner::handle(
                    delivery,
                    state.clone(),
                    session_over.clone(),
                    intake.waiting(),
                ));
            }
            delivery = control.next() => {
                let delivery = delivery.context("control consumer closed")??;
                on_control(&delivery, &state).await;
            }
        }
    }

    // Stop intake first, so no new job starts while we drain (bounded like every broker call at
    // shutdown: a broker that stopped answering must not hold it).
    status.set_up(false);
    intake.stop().await;
    tracker.close();
    // Every running attempt is asked to stop: a handler that checks between steps saves its
    // checkpoint and hands its job back, to resume on the next worker.
    let in_flight = state.attempts.stop_all(StopReason::Shutdown);
    tracing::info!(
        in_flight,
        grace_s = state.config.grace.as_secs(),
        "draining in-flight jobs"
    );
    if tokio::time::timeout(state.config.grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            unfinished = tracker.len(),
            "grace period over; unfinished jobs run again once their message or lease lapses"
        );
    }
    // Closing the connection hands every unacked delivery back to the broker.
    shared::amqp::close(&conn, "worker shutting down").await;
    Ok(())
}

/// What a session consumes and publishes on.
struct Channels {
    publisher: Publisher,
    control: Consumer,
    intake: Intake,
}

/// Declares the topology, reads the control stream up to a marker of our own (every cancel so
/// far is then known), and only then starts consuming jobs.
async fn open(conn: &lapin::Connection, state: &WorkerState) -> anyhow::Result<Channels> {
    let topology = &state.topology;
    let publisher = Publisher::open(conn, state.config.amqp.publish_timeout).await?;
    topology
        .declare(publisher.channel())
        .await
        .context("declaring the topology")?;

    let control_channel = conn.create_channel().await?;
    control_channel
        .basic_qos(CONTROL_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut offset = FieldTable::default();
    offset.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut control = control_channel
        .basic_consume(
            topology.control_stream().into(),
            "".into(),
            BasicConsumeOptions::default(),
            offset,
        )
        .await?;
    let read = tokio::time::timeout(CATCH_UP, catch_up(&mut control, &publisher, state))
        .await
        .context("reading the control stream up to our marker")??;
    tracing::info!(
        control_messages = read,
        "control stream read; cancels known"
    );

    // Jobs on a channel of their own, whose prefetch follows the free slots (see `intake`).
    let intake = Intake::new(conn.create_channel().await?, topology.jobs_queue());
    Ok(Channels {
        publisher,
        control,
        intake,
    })
}

/// Writes a marker to the control stream and applies every control message up to it; returns
/// how many were read.
async fn catch_up(
    control: &mut Consumer,
    publisher: &Publisher,
    state: &WorkerState,
) -> anyhow::Result<usize> {
    let nonce = Uuid::new_v4();
    let exchange = state.topology.control_exchange();
    let body = serde_json::to_vec(&ControlMessage::Marker { nonce }).expect("serializes");
    let span = producer_span(&exchange, "", "");
    let marker = Outgoing::new(&exchange, "", body, "", &span);
    publisher.publish(marker).instrument(span).await?;
    let mut read = 0;
    loop {
        let delivery = control.next().await.context("control consumer closed")??;
        read += 1;
        if on_control(&delivery, state).await == Some(nonce) {
            return Ok(read);
        }
    }
}

/// Applies one control message; returns the nonce if it is a marker.
async fn on_control(delivery: &Delivery, state: &WorkerState) -> Option<Uuid> {
    // Acks only move a stream consumer's credit on; the message stays for other readers.
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "control ack failed");
    }
    match serde_json::from_slice::<ControlMessage>(&delivery.data) {
        Ok(ControlMessage::Cancel { job_id, generation }) => {
            if state.attempts.cancel(job_id, generation) {
                tracing::info!(job.id = %job_id, "cancel requested; stopping the running job");
            }
            None
        }
        Ok(ControlMessage::Marker { nonce }) => Some(nonce),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable control message");
            None
        }
    }
}
