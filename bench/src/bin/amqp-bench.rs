//! `amqp-bench`: this machine's RabbitMQ limits for jobstack's kind of traffic — persistent
//! messages to a quorum queue with pipelined publisher confirms, and consume + ack — as one
//! JSON line per command. Uses its own queue names; `delete` removes them.

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::json;

/// RabbitMQ limits: confirmed persistent publish, consume + ack, on a quorum queue.
#[derive(Debug, Parser)]
#[command(name = "amqp-bench", version)]
struct Args {
    /// Broker URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    url: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Publish persistent messages with confirms, keeping up to --window unconfirmed.
    Publish {
        /// Quorum queue to declare and publish to (through the default exchange).
        #[arg(long)]
        queue: String,
        /// Messages to publish.
        #[arg(long, default_value_t = 50_000)]
        count: u64,
        /// Body size in bytes (a job message is about 160).
        #[arg(long, default_value_t = 160)]
        size: usize,
        /// Unconfirmed publishes in flight (1 = wait for each confirm).
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Stop after this many seconds even if --count is not reached.
        #[arg(long, default_value_t = 30)]
        max_seconds: u64,
    },
    /// Consume with manual acks (one ack per message), up to --count messages.
    Consume {
        /// Queue to consume from.
        #[arg(long)]
        queue: String,
        /// Messages to consume.
        #[arg(long, default_value_t = 50_000)]
        count: u64,
        /// basic.qos prefetch (the worker's concurrency).
        #[arg(long, default_value_t = 16)]
        prefetch: u16,
        /// Stop after this many seconds, or after 2 s without a delivery.
        #[arg(long, default_value_t = 30)]
        max_seconds: u64,
    },
    /// Delete queues.
    Delete {
        /// Queue names.
        queues: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let conn = Connection::connect(&args.url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let out = match args.cmd {
        Cmd::Publish {
            queue,
            count,
            size,
            window,
            max_seconds,
        } => {
            declare(&ch, &queue).await?;
            publish(
                &ch,
                &queue,
                count,
                size,
                window.max(1),
                Duration::from_secs(max_seconds),
            )
            .await?
        }
        Cmd::Consume {
            queue,
            count,
            prefetch,
            max_seconds,
        } => {
            consume(
                &ch,
                &queue,
                count,
                prefetch,
                Duration::from_secs(max_seconds),
            )
            .await?
        }
        Cmd::Delete { queues } => {
            for q in &queues {
                ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await?;
            }
            json!({ "op": "delete", "queues": queues })
        }
    };
    println!("{out}");
    let _ = conn.close(200, "OK".into()).await;
    Ok(())
}

async fn declare(ch: &Channel, queue: &str) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), opts, args).await.map(drop)
}

async fn publish(
    ch: &Channel,
    queue: &str,
    count: u64,
    size: usize,
    window: usize,
    limit: Duration,
) -> anyhow::Result<serde_json::Value> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = vec![b'x'; size];
    let props = BasicProperties::default().with_delivery_mode(2);
    let (mut acked, mut nacked, mut sent) = (0u64, 0u64, 0u64);
    let mut pending = FuturesUnordered::new();
    let mut tally = |c: lapin::Result<Confirmation>| match c {
        Ok(Confirmation::Ack(_)) => acked += 1,
        _ => nacked += 1,
    };
    let start = Instant::now();
    while sent < count && start.elapsed() < limit {
        // Pipelining: keep `window` publishes unconfirmed rather than waiting for each.
        if pending.len() >= window
            && let Some(c) = pending.next().await
        {
            tally(c);
        }
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await?;
        pending.push(confirm);
        sent += 1;
    }
    while let Some(c) = pending.next().await {
        tally(c);
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(json!({
        "op": "publish", "queue": queue, "window": window, "size": size,
        "sent": sent, "acked": acked, "nacked": nacked, "seconds": secs, "rate": acked as f64 / secs,
    }))
}

async fn consume(
    ch: &Channel,
    queue: &str,
    count: u64,
    prefetch: u16,
    limit: Duration,
) -> anyhow::Result<serde_json::Value> {
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "amqp-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut done = 0u64;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + limit;
    while done < count && Instant::now() < deadline {
        let next = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await;
        let Ok(Some(delivery)) = next else { break };
        first.get_or_insert_with(Instant::now);
        delivery?.ack(BasicAckOptions::default()).await?;
        done += 1;
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    Ok(json!({
        "op": "consume", "queue": queue, "prefetch": prefetch,
        "acked": done, "seconds": secs, "rate": if secs > 0.0 { done as f64 / secs } else { 0.0 },
    }))
}
