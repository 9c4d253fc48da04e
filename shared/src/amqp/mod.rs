//! RabbitMQ: connecting with backoff, confirmed publishing, trace context on messages.

mod publisher;
mod settings;
mod supervisor;

pub use publisher::{Outgoing, PublishError, Publisher};
pub use settings::Settings;
pub use supervisor::{BrokerStatus, supervise};

/// The largest AMQP frame we ask for, unless the URL sets `?frame_max=`. lapin keeps 32
/// frames of read and 32 of write buffer, zero-filled: at RabbitMQ's default of 128 KiB that
/// is 8 MiB of resident memory per connection. Our messages are a few hundred bytes; a larger
/// one is simply sent as several frames.
const FRAME_MAX: u32 = 16 * 1024;

/// Connects to the broker `settings` name, naming the connection so it is recognisable in the
/// management UI. `amqps://` verifies the broker's certificate against the public roots and
/// `AMQP_CA_FILE`'s authorities.
pub async fn connect(settings: &Settings, name: &str) -> lapin::Result<lapin::Connection> {
    // `config::amqp_url` has already refused a URL that does not parse.
    let mut uri: lapin::uri::AMQPUri = settings
        .url
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    let props = lapin::ConnectionProperties::default().with_connection_name(name.into());
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: settings.ca.clone(),
    };
    let runtime = lapin::runtime::default_runtime()?;
    lapin::Connection::connect_uri_with_config(uri, props, tls, runtime).await
}

/// Runs `step` (a session's set-up: channels, declarations, consumers) unless `shutdown` comes
/// first: `None` then. Broker RPCs have no deadline of their own, so a broker that stops
/// answering mid-set-up would otherwise hold the session, and the shutdown, forever.
pub async fn unless_shutdown<T>(
    shutdown: &tokio_util::sync::CancellationToken,
    step: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        done = step => Some(done),
    }
}

/// How long a closing connection waits for the broker's `Close-Ok` (part of a service's shutdown
/// budget; deploy/k8s's check reads it).
pub const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Closes `conn` cleanly if the broker answers within [`CLOSE_TIMEOUT`], and gives up otherwise:
/// a broker that stopped answering (a network partition) would hold the close, and with it the
/// service's shutdown, forever. Whatever was unacked goes back to its queue either way once the
/// broker sees the connection end.
pub async fn close(conn: &lapin::Connection, reason: &str) {
    match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, reason.into())).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(
            timeout_ms = CLOSE_TIMEOUT.as_millis() as u64,
            "the broker did not answer the connection close; dropping the connection"
        ),
    }
}

/// A producer span named and attributed per the OpenTelemetry messaging conventions. Publish
/// inside it (or pass it to [`Outgoing::new`]) so the consumer's span becomes its child.
pub fn producer_span(exchange: &str, routing_key: &str, message_id: &str) -> tracing::Span {
    let destination = if exchange.is_empty() {
        routing_key
    } else {
        exchange
    };
    tracing::info_span!(
        "amqp.publish",
        otel.name = format!("publish {destination}"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = destination,
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.message.id = message_id,
    )
}

/// The consumer span for processing `delivery` from `queue`: named and attributed per the
/// messaging conventions, and already a child of the publisher's span (read from the message
/// headers). `messaging.message.id` and the `job.*` fields are declared empty for the caller to
/// record once it has decoded the message.
pub fn consumer_span(queue: &str, delivery: &lapin::message::Delivery) -> tracing::Span {
    process_span(
        queue,
        delivery.routing_key.as_str(),
        crate::telemetry::propagation::extract_amqp(delivery.properties.headers().as_ref()),
    )
}

/// [`consumer_span`] for a part of a message whose sender named its own span for each part (a
/// batch of events): a child of `parent`.
pub fn process_span(
    queue: &str,
    routing_key: &str,
    parent: opentelemetry::Context,
) -> tracing::Span {
    let span = tracing::info_span!(
        "amqp.process",
        otel.name = format!("process {queue}"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = queue,
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.message.id = tracing::field::Empty,
        job.id = tracing::field::Empty,
        job.kind = tracing::field::Empty,
        job.attempt = tracing::field::Empty,
        job.event = tracing::field::Empty,
    );
    // Before the span is first entered, or the parent is ignored.
    crate::telemetry::propagation::set_parent(&span, parent);
    span
}
