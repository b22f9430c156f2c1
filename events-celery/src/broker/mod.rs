//! Connections to the brokers: RabbitMQ through `lapin`, Redis through `redis`.

mod amqp;
mod amqp_guard;
mod redis;
mod url;

pub(crate) use amqp::{
    AmqpOutgoing, AmqpPublisher, QueueArguments, amqp_outgoing, connect as connect_amqp,
};
pub(crate) use redis::{
    RedisOutgoing, RedisPublisher, connect as redis_connect,
    connect_with_timeout as redis_connect_with_timeout, is_connection_error,
};
pub use url::{BrokerKind, BrokerUrl};
