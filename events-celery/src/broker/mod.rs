//! Connections to the brokers: RabbitMQ through `lapin`, Redis through `redis`.

mod amqp;
mod redis;
mod url;

pub(crate) use amqp::{AmqpOutgoing, AmqpPublisher, QueueArguments, amqp_outgoing};
pub(crate) use redis::{RedisOutgoing, RedisPublisher};
pub use url::{BrokerKind, BrokerUrl};
