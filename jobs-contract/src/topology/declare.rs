//! Declaring the topology on a RabbitMQ channel (the `amqp` feature): what both services run on
//! every (re)connect. Declarations are idempotent as long as the arguments stay the same; a
//! changed argument makes the broker refuse the declaration (`PRECONDITION_FAILED`), which ends
//! the session loudly instead of running on a queue that is not what the code says.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind as Kind};

use super::{Arg, ExchangeKind, Topology};

impl Topology {
    /// Declares every exchange, then every queue and its binding; safe to repeat.
    pub async fn declare(&self, ch: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (name, kind) in self.exchanges() {
            let kind = match kind {
                ExchangeKind::Topic => Kind::Topic,
                ExchangeKind::Fanout => Kind::Fanout,
            };
            ch.exchange_declare(name.into(), kind, durable, FieldTable::default())
                .await?;
        }
        for queue in self.queues() {
            let mut args = FieldTable::default();
            for (key, value) in queue.args {
                let value = match value {
                    Arg::Str(s) => AMQPValue::LongString(LongString::from(s)),
                    Arg::Int(i) => AMQPValue::LongLongInt(i),
                };
                args.insert(ShortString::from(key), value);
            }
            ch.queue_declare(
                queue.name.clone().into(),
                QueueDeclareOptions::durable(),
                args,
            )
            .await?;
            ch.queue_bind(
                queue.name.into(),
                queue.exchange.into(),
                queue.key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        Ok(())
    }
}
