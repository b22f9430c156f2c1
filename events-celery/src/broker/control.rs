//! The broker I/O of Celery's control plane, one interface for both brokers: publishing
//! monitoring events (`celeryev`) and control replies (`reply.celery.pidbox`), reading the
//! worker's mailbox (`celery.pidbox`), and storing task results in Redis as Celery's Redis
//! result backend does. The wire forms come from the codec; this module only moves them.

use std::pin::Pin;

use futures_util::Stream;

use super::amqp::control::AmqpControl;
use super::redis::control::RedisControl;
use super::redis::control::RedisResultStore;
use super::{BrokerKind, BrokerUrl};
use crate::codec::{KombuMessage, PidboxError, PidboxRequest, PreparedMessage, RedisResultWrite};
use crate::error::CeleryError;

/// The requests read from a worker's mailbox; it ends when the connection breaks.
pub(crate) type Mailbox = Pin<Box<dyn Stream<Item = Result<PidboxRequest, PidboxError>> + Send>>;

/// A control-plane connection to the worker's broker (its own connection: a flood of task
/// messages never delays a reply, and the reverse).
pub(crate) enum ControlLink {
    Amqp(Box<AmqpControl>),
    Redis(RedisControl),
    /// In memory, for the control plane's tests.
    #[cfg(test)]
    Memory(std::sync::Arc<testing::MemoryBroker>),
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
            #[cfg(test)]
            Self::Memory(broker) => {
                let message = message.clone().prepare().map_err(testing::encode_error)?;
                broker.publish(vec![message]).await
            }
        }
    }

    /// Publishes events (exchange `celeryev`), in order, without waiting for each in turn:
    /// Redis pipelines the `PUBLISH`es in one round trip, RabbitMQ sends every message before
    /// waiting for them to be written.
    pub(crate) async fn publish_many(
        &self,
        messages: Vec<PreparedMessage>,
    ) -> Result<(), CeleryError> {
        match self {
            Self::Amqp(link) => link.publish_many(messages).await,
            Self::Redis(link) => link.publish_many(&messages).await,
            #[cfg(test)]
            Self::Memory(broker) => broker.publish(messages).await,
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
            #[cfg(test)]
            Self::Memory(_) => Ok(Box::pin(futures_util::stream::pending())),
        }
    }

    /// Closes the connections (the AMQP mailbox queue goes with them).
    pub(crate) async fn close(&self) {
        match self {
            Self::Amqp(link) => link.close().await,
            Self::Redis(link) => link.close().await,
            #[cfg(test)]
            Self::Memory(broker) => broker.close().await,
        }
    }
}

/// Where task results go: Celery's Redis result backend.
pub(crate) enum ResultStore {
    Redis(RedisResultStore),
    /// In memory, for the results writer's tests.
    #[cfg(test)]
    Memory(std::sync::Arc<testing::MemoryBroker>),
}

impl ResultStore {
    /// A store at `url` (`redis://…`); connects on first use, and again after a failure.
    pub(crate) fn new(url: BrokerUrl) -> Self {
        Self::Redis(RedisResultStore::new(url))
    }

    /// Writes `writes` (each `SETEX` then `PUBLISH`), in order, in one round trip.
    pub(crate) async fn write_many(&self, writes: &[RedisResultWrite]) -> Result<(), CeleryError> {
        match self {
            Self::Redis(store) => store.write_many(writes).await,
            #[cfg(test)]
            Self::Memory(broker) => broker.store(writes).await,
        }
    }
}

/// The Redis database number of `url` (for `inspect stats`).
pub(crate) fn redis_database(url: &BrokerUrl) -> u32 {
    super::redis::control::database(url)
}

/// An in-memory broker for the tests of the control plane and the results writer: records
/// what is published or stored, or fails, or hangs, as a test sets it.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

    use crate::codec::{EncodeError, PreparedMessage, RedisResultWrite};
    use crate::error::CeleryError;

    /// What the broker does with the next calls.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(u8)]
    pub(crate) enum Behaviour {
        /// Takes everything.
        Take = 0,
        /// Refuses everything (as a broker that cannot be reached).
        Fail = 1,
        /// Never answers (as a broker that stopped responding), closing included.
        Hang = 2,
    }

    /// The broker.
    #[derive(Debug, Default)]
    pub(crate) struct MemoryBroker {
        behaviour: AtomicU8,
        /// Calls made (publishes, stores), whatever their outcome.
        pub(crate) attempts: AtomicUsize,
        /// The messages published, in order.
        pub(crate) published: Mutex<Vec<PreparedMessage>>,
        /// The results stored, in order.
        pub(crate) stored: Mutex<Vec<RedisResultWrite>>,
    }

    impl MemoryBroker {
        pub(crate) fn set(&self, behaviour: Behaviour) {
            self.behaviour.store(behaviour as u8, Ordering::SeqCst);
        }

        async fn behave(&self) -> Result<(), CeleryError> {
            match self.behaviour.load(Ordering::SeqCst) {
                0 => Ok(()),
                1 => Err(CeleryError::Config(
                    "the in-memory broker refuses (as the test set it)".into(),
                )),
                _ => std::future::pending().await,
            }
        }

        pub(crate) async fn publish(
            &self,
            messages: Vec<PreparedMessage>,
        ) -> Result<(), CeleryError> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            self.behave().await?;
            self.published.lock().unwrap().extend(messages);
            Ok(())
        }

        pub(crate) async fn store(&self, writes: &[RedisResultWrite]) -> Result<(), CeleryError> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            self.behave().await?;
            self.stored.lock().unwrap().extend(writes.iter().cloned());
            Ok(())
        }

        pub(crate) async fn close(&self) {
            if self.behaviour.load(Ordering::SeqCst) == Behaviour::Hang as u8 {
                std::future::pending::<()>().await;
            }
        }
    }

    pub(crate) fn encode_error(error: EncodeError) -> CeleryError {
        CeleryError::Config(format!("cannot encode a control message: {error}"))
    }
}
