//! The brokers behind one [`Transport`] interface — RabbitMQ through `lapin` (`amqp`), Redis as
//! kombu uses it (`redis`) — each with its own topology module; [`AnyTransport`] picks one from
//! the broker URL, and nothing outside this module matches on the broker.

mod amqp;
pub(crate) mod consume;
pub(crate) mod control;
pub(crate) mod queues;
mod redis;
pub(crate) mod topology;
mod url;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub(crate) use self::amqp::AmqpOutgoing;
// The one Redis connect path, for the Redis stores beside the worker (the inbox).
use self::amqp::AmqpPublisher;
use self::consume::Consumer;
use self::redis::{RedisOutgoing, RedisPublisher};
pub(crate) use self::redis::{connect as redis_connect, is_connection_error};
use self::topology::QueueArguments;
pub use self::url::{BrokerKind, BrokerUrl};
use crate::codec::TaskMessage;
use crate::error::CeleryError;

/// Where a publish's result goes (the backend's callers).
pub(crate) trait Reply: Send + 'static {
    /// Hands over the result; the caller may have given up.
    fn send(self, result: Result<(), CeleryError>);
}

/// A message to publish, with when its result is due and where it goes.
pub(crate) struct Publication<O, R> {
    pub(crate) outgoing: O,
    /// When the publish fails with [`CeleryError::Timeout`], connecting and waiting included.
    pub(crate) deadline: Instant,
    pub(crate) reply: R,
}

/// How a transport publishes.
#[derive(Debug, Clone)]
pub(crate) struct PublishSettings {
    /// How queues it declares before publishing to them are declared.
    pub(crate) queue_arguments: QueueArguments,
    /// How long one publish may take (also the reply timeout of the Redis connection).
    pub(crate) timeout: Duration,
}

/// What each broker implements once: connect, prepare and publish messages (declaring through
/// its topology), consume for the worker — settling each message as the worker's
/// [`Verdict`](consume::Verdict) says, postponing what is not due — and replay dead letters.
pub(crate) trait Transport: Send + Sync + Sized + 'static {
    /// A message encoded for this broker, ready to publish.
    type Outgoing: Send + 'static;

    /// A publisher for `url`; connects on first use.
    fn new(url: BrokerUrl, settings: PublishSettings) -> Self;

    /// Connects now if not connected.
    fn ensure_connected(&self) -> impl Future<Output = Result<(), CeleryError>> + Send;

    /// Encodes `message` for `queue`.
    fn prepare(&self, message: TaskMessage, queue: &str) -> Result<Self::Outgoing, CeleryError>;

    /// Publishes a batch: each publication's result goes to its reply, by its deadline.
    fn publish_batch<R: Reply>(
        &self,
        batch: Vec<Publication<Self::Outgoing, R>>,
    ) -> impl Future<Output = ()> + Send;

    /// Consumes the worker's queues until `stopping`, reconnecting after failures.
    fn consume<C: Consumer>(
        consumer: Arc<C>,
        stopping: watch::Receiver<bool>,
    ) -> impl Future<Output = Result<(), CeleryError>> + Send;

    /// Moves up to `limit` dead letters of `queue` back onto `queue`, oldest first.
    fn replay_dead_letters(
        url: &BrokerUrl,
        queue: &str,
        limit: usize,
    ) -> impl Future<Output = Result<usize, CeleryError>> + Send;
}

/// The transport for a broker URL: the one place that picks it.
pub(crate) enum AnyTransport {
    Amqp(AmqpPublisher),
    Redis(RedisPublisher),
}

/// A message prepared by an [`AnyTransport`].
pub(crate) enum AnyOutgoing {
    Amqp(Box<AmqpOutgoing>),
    Redis(RedisOutgoing),
}

/// The batch's messages, all prepared by the transport of one variant.
fn narrow<O, R>(
    batch: Vec<Publication<AnyOutgoing, R>>,
    pick: impl Fn(AnyOutgoing) -> Option<O>,
) -> Vec<Publication<O, R>> {
    batch
        .into_iter()
        .map(|p| Publication {
            outgoing: pick(p.outgoing).expect("prepared by this transport"),
            deadline: p.deadline,
            reply: p.reply,
        })
        .collect()
}

impl Transport for AnyTransport {
    type Outgoing = AnyOutgoing;

    fn new(url: BrokerUrl, settings: PublishSettings) -> Self {
        match url.kind() {
            BrokerKind::Amqp => Self::Amqp(AmqpPublisher::new(url, settings)),
            BrokerKind::Redis => Self::Redis(RedisPublisher::new(url, settings)),
        }
    }

    async fn ensure_connected(&self) -> Result<(), CeleryError> {
        match self {
            Self::Amqp(t) => t.ensure_connected().await,
            Self::Redis(t) => t.ensure_connected().await,
        }
    }

    fn prepare(&self, message: TaskMessage, queue: &str) -> Result<AnyOutgoing, CeleryError> {
        Ok(match self {
            Self::Amqp(t) => AnyOutgoing::Amqp(Box::new(t.prepare(message, queue)?)),
            Self::Redis(t) => AnyOutgoing::Redis(t.prepare(message, queue)?),
        })
    }

    async fn publish_batch<R: Reply>(&self, batch: Vec<Publication<AnyOutgoing, R>>) {
        match self {
            Self::Amqp(t) => {
                let batch = narrow(batch, |o| match o {
                    AnyOutgoing::Amqp(m) => Some(*m),
                    AnyOutgoing::Redis(_) => None,
                });
                t.publish_batch(batch).await;
            }
            Self::Redis(t) => {
                let batch = narrow(batch, |o| match o {
                    AnyOutgoing::Redis(m) => Some(m),
                    AnyOutgoing::Amqp(_) => None,
                });
                t.publish_batch(batch).await;
            }
        }
    }

    async fn consume<C: Consumer>(
        consumer: Arc<C>,
        stopping: watch::Receiver<bool>,
    ) -> Result<(), CeleryError> {
        match consumer.settings().broker.kind() {
            BrokerKind::Amqp => AmqpPublisher::consume(consumer, stopping).await,
            BrokerKind::Redis => RedisPublisher::consume(consumer, stopping).await,
        }
    }

    async fn replay_dead_letters(
        url: &BrokerUrl,
        queue: &str,
        limit: usize,
    ) -> Result<usize, CeleryError> {
        match url.kind() {
            BrokerKind::Amqp => AmqpPublisher::replay_dead_letters(url, queue, limit).await,
            BrokerKind::Redis => RedisPublisher::replay_dead_letters(url, queue, limit).await,
        }
    }
}
