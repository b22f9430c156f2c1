//! The broker I/O of Celery's control plane, one interface for both brokers: publishing
//! monitoring events (`celeryev`) and control replies (`reply.celery.pidbox`), reading the
//! worker's mailbox (`celery.pidbox`), and storing task results in Redis as Celery's Redis
//! result backend does. The wire forms come from the codec; this module only moves them.

use std::pin::Pin;

use futures_util::Stream;

use super::amqp::control::AmqpControl;
use super::redis::control::RedisControl;
pub(crate) use super::redis::control::ResultStore;
use super::{BrokerKind, BrokerUrl};
use crate::codec::{KombuMessage, PidboxError, PidboxRequest};
use crate::error::CeleryError;

/// The requests read from a worker's mailbox; it ends when the connection breaks.
pub(crate) type Mailbox = Pin<Box<dyn Stream<Item = Result<PidboxRequest, PidboxError>> + Send>>;

/// A control-plane connection to the worker's broker (its own connection: a flood of task
/// messages never delays a reply, and the reverse).
pub(crate) enum ControlLink {
    Amqp(Box<AmqpControl>),
    Redis(RedisControl),
}

impl ControlLink {
    /// A link to `url`; connects on first use.
    pub(crate) fn new(url: &BrokerUrl) -> Self {
        match url.kind() {
            BrokerKind::Amqp => Self::Amqp(Box::new(AmqpControl::new(url.clone()))),
            BrokerKind::Redis => Self::Redis(RedisControl::new(url.clone())),
        }
    }

    /// Publishes an event (exchange `celeryev`) or a control reply (`reply.celery.pidbox`) as
    /// Celery does on this broker; after a failure the next call reconnects.
    pub(crate) async fn publish(&self, message: &KombuMessage) -> Result<(), CeleryError> {
        match self {
            Self::Amqp(link) => link.publish(message).await,
            Self::Redis(link) => link.publish(message).await,
        }
    }

    /// Publishes several events at once (Redis: one pipelined round trip).
    pub(crate) async fn publish_many(&self, messages: &[KombuMessage]) -> Result<(), CeleryError> {
        match self {
            Self::Amqp(link) => {
                for message in messages {
                    link.publish(message).await?;
                }
                Ok(())
            }
            Self::Redis(link) => link.publish_many(messages).await,
        }
    }

    /// Opens `hostname`'s mailbox (`{hostname}.celery.pidbox` bound to `celery.pidbox`):
    /// the requests, parsed with at most `max_bytes` read of each.
    pub(crate) async fn mailbox(
        &self,
        hostname: &str,
        max_bytes: usize,
    ) -> Result<Mailbox, CeleryError> {
        match self {
            Self::Amqp(link) => link.mailbox(hostname, max_bytes).await,
            Self::Redis(link) => link.mailbox(hostname, max_bytes).await,
        }
    }

    /// Closes the connections (the AMQP mailbox queue goes with them).
    pub(crate) async fn close(&self) {
        match self {
            Self::Amqp(link) => link.close().await,
            Self::Redis(link) => link.close().await,
        }
    }
}

/// The Redis database number of `url` (for `inspect stats`).
pub(crate) fn redis_database(url: &BrokerUrl) -> u32 {
    super::redis::control::database(url)
}
