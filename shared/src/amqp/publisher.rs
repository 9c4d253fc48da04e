//! Confirmed, persistent, mandatory publishing with a deadline.
//!
//! A message counts as sent only when the broker confirms it with a plain ack: a nack, an
//! unroutable return (which RabbitMQ acks *after* returning it) or no answer within the timeout
//! (a broker under a memory or disk alarm blocks publishers silently) are all failures, so the
//! caller keeps the message and tries again later.

use std::time::{Duration, Instant};

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

/// Why a publish did not count.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The broker refused the message.
    #[error("broker nacked the message")]
    Nack,
    /// No queue was bound for the routing key (e.g. the queue was deleted).
    #[error("message returned as unroutable: {0}")]
    Returned(String),
    /// No confirm within the deadline.
    #[error("no confirm within {0:?} (broker blocked or unreachable)")]
    Timeout(Duration),
    /// No broker session to publish on (the connection is down or being re-made).
    #[error("no broker session")]
    NoSession,
    /// The channel or connection failed.
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
}

impl PublishError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Nack => "nack",
            Self::Returned(_) => "returned",
            Self::Timeout(_) => "timeout",
            Self::NoSession => "no_session",
            Self::Amqp(_) => "error",
        }
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Target exchange (`""` is the default exchange, routing by queue name).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// JSON body.
    pub body: Vec<u8>,
    /// AMQP `message_id` (the job id), for tracing and deduplication.
    pub message_id: String,
    /// Headers: trace context and anything else.
    pub headers: FieldTable,
    /// AMQP priority (0 when not set). RabbitMQ 4's quorum queues deliver 5–9 before 0–4;
    /// earlier versions ignore it on a quorum queue.
    pub priority: u8,
}

impl Outgoing {
    /// A JSON message whose headers carry `span`'s trace context (make `span` with
    /// [`super::producer_span`]).
    pub fn new(
        exchange: &str,
        routing_key: &str,
        body: Vec<u8>,
        message_id: &str,
        span: &tracing::Span,
    ) -> Self {
        let mut headers = FieldTable::default();
        crate::telemetry::propagation::inject_amqp(span, &mut headers);
        Self {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            body,
            message_id: message_id.to_owned(),
            headers,
            priority: 0,
        }
    }

    /// Sets the AMQP priority.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Adds a string header (e.g. why a message was dead-lettered).
    pub fn with_header(mut self, key: &str, value: impl Into<String>) -> Self {
        self.headers.insert(
            key.into(),
            lapin::types::AMQPValue::LongString(value.into().into()),
        );
        self
    }
}

/// A channel in confirm mode.
#[derive(Debug, Clone)]
pub struct Publisher {
    channel: Channel,
    timeout: Duration,
}

impl Publisher {
    /// Opens a channel on `conn` and turns confirms on.
    pub async fn open(conn: &Connection, timeout: Duration) -> lapin::Result<Self> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel, timeout })
    }

    /// The underlying channel (e.g. to declare the topology on it).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes one message and waits for its confirm.
    pub async fn publish(&self, msg: Outgoing) -> Result<(), PublishError> {
        self.publish_all(vec![msg])
            .await
            .pop()
            .expect("one result per message")
    }

    /// Publishes messages back to back and then awaits all their confirms: pipelining confirms
    /// is an order of magnitude faster than waiting for each. One result per message, in order.
    pub async fn publish_all(&self, msgs: Vec<Outgoing>) -> Vec<Result<(), PublishError>> {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut pending = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let exchange = msg.exchange.clone();
            let sent = tokio::time::timeout_at(deadline, self.send(msg)).await;
            pending.push((exchange, sent));
        }
        let mut results = Vec::with_capacity(pending.len());
        for (exchange, sent) in pending {
            let result = match sent {
                Err(_) => Err(PublishError::Timeout(self.timeout)),
                Ok(Err(e)) => Err(PublishError::Amqp(e)),
                Ok(Ok(confirm)) => confirmed(
                    tokio::time::timeout_at(deadline, confirm).await,
                    self.timeout,
                ),
            };
            record(&exchange, start, &result);
            results.push(result);
        }
        results
    }

    /// Sends a message now and returns the wait for its confirm, to be awaited later or
    /// elsewhere: the sender moves on at once. Messages of one channel keep the order they were
    /// sent in, whoever awaits their confirms, so a message sent later never overtakes this one.
    pub async fn send_ordered(
        &self,
        msg: Outgoing,
    ) -> Result<impl Future<Output = Result<(), PublishError>> + Send + 'static, PublishError> {
        let start = Instant::now();
        let exchange = msg.exchange.clone();
        let timeout = self.timeout;
        let confirm = match tokio::time::timeout(timeout, self.send(msg)).await {
            Ok(sent) => sent?,
            Err(_) => return Err(PublishError::Timeout(timeout)),
        };
        Ok(async move {
            let result = confirmed(tokio::time::timeout(timeout, confirm).await, timeout);
            record(&exchange, start, &result);
            result
        })
    }

    async fn send(&self, msg: Outgoing) -> lapin::Result<lapin::PublisherConfirm> {
        let props = BasicProperties::default()
            .with_delivery_mode(2) // persistent
            .with_content_type("application/json".into())
            .with_message_id(msg.message_id.into())
            .with_timestamp(chrono::Utc::now().timestamp() as u64)
            .with_headers(msg.headers);
        // Only when set: a property on every message would cost bytes for nothing.
        let props = match msg.priority {
            0 => props,
            p => props.with_priority(p),
        };
        self.channel
            .basic_publish(
                msg.exchange.into(),
                msg.routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &msg.body,
                props,
            )
            .await
    }
}

/// What a broker's answer (or its absence) means for a publish.
fn confirmed(
    answer: Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> Result<(), PublishError> {
    match answer {
        Err(_) => Err(PublishError::Timeout(timeout)),
        Ok(Err(e)) => Err(PublishError::Amqp(e)),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        // RabbitMQ acks an unroutable mandatory message after returning it: still a failure.
        Ok(Ok(Confirmation::Ack(Some(returned)))) => {
            Err(PublishError::Returned(returned.reply_text.to_string()))
        }
        Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nack),
        // Confirms are always selected on a Publisher's channel.
        Ok(Ok(Confirmation::NotRequested)) => Ok(()),
    }
}

/// Publish latency on success, the reason on failure.
fn record(exchange: &str, start: Instant, result: &Result<(), PublishError>) {
    match result {
        Ok(()) => metrics::histogram!(
            "jobstack_amqp_publish_duration_seconds",
            "exchange" => exchange.to_owned()
        )
        .record(start.elapsed().as_secs_f64()),
        Err(e) => metrics::counter!(
            "jobstack_amqp_publish_failures_total",
            "exchange" => exchange.to_owned(),
            "reason" => e.reason()
        )
        .increment(1),
    }
}
