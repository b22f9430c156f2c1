//! The errors of the Celery backend and worker.

use std::time::Duration;

use crate::broker::BrokerUrl;
use crate::codec::{DecodeError, EncodeError};

/// What can go wrong talking to a broker. Messages never contain a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CeleryError {
    /// The configuration is unusable.
    #[error("invalid Celery configuration: {0}")]
    Config(String),

    /// The broker could not be reached or refused the connection.
    #[error("cannot connect to the broker at {broker}: {source}")]
    Connect {
        /// The broker, without password.
        broker: BrokerUrl,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The broker failed or went away during an operation.
    #[error("the broker at {broker} failed during {operation}: {source}")]
    Broker {
        /// The broker, without password.
        broker: BrokerUrl,
        /// What was being done.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The operation did not finish in time; for a publish, the message may or may not have
    /// reached the broker, so treat it as not sent and publish again if needed.
    #[error(
        "{operation} on the broker at {broker} did not finish within {after:?}; the broker may be \
         down or overloaded (the time limit is `CeleryConfig::publish_timeout`)"
    )]
    Timeout {
        /// The broker, without password.
        broker: BrokerUrl,
        /// What was being done.
        operation: &'static str,
        /// The limit.
        after: Duration,
    },

    /// RabbitMQ refused to take responsibility for the message (a negative confirm).
    #[error("the broker at {broker} refused the message for `{routing_key}` (nack)")]
    Nacked {
        /// The broker, without password.
        broker: BrokerUrl,
        /// Where it was sent.
        routing_key: String,
    },

    /// RabbitMQ could not route the message to any queue, so it returned it.
    #[error(
        "no queue is bound to exchange `{exchange}` with routing key `{routing_key}` on {broker}: \
         the message was returned, not stored; declare the queue or fix the route"
    )]
    Unroutable {
        /// The broker, without password.
        broker: BrokerUrl,
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },

    /// The event could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),

    /// A message could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),

    /// The link-time registry of events and handlers is unusable (two events or two handlers
    /// with one name, …): the core error says which and where.
    #[error(transparent)]
    Registry(events_core::Error),

    /// A worker was run outside a tokio runtime: it needs tokio's I/O, timers and blocking
    /// pool (the publishing backend works under any executor).
    #[error(
        "`Worker::{0}` must be awaited inside a tokio runtime (it uses tokio's I/O, timers and \
         blocking pool): run it from `#[tokio::main]` (tokio features `rt-multi-thread` and \
         `macros`) or `tokio::runtime::Runtime::block_on`"
    )]
    NoRuntime(&'static str),

    /// [`CeleryBackend::send`](crate::CeleryBackend::send) was given a message it cannot send
    /// as an event: its task is not `<task prefix><event>` under the backend's configuration,
    /// or names one undeclared event too many.
    #[error("cannot send task `{}`: {reason}", events_core::text::OneLine(task))]
    UnsendableTask {
        /// The message's task name.
        task: String,
        /// Why, and what to do.
        reason: String,
    },
}

impl From<CeleryError> for events_core::Error {
    fn from(error: CeleryError) -> Self {
        events_core::Error::Backend {
            backend: "celery",
            source: Box::new(error),
        }
    }
}

impl CeleryError {
    /// The broker could not be reached: the client's error as short text, with the URL's
    /// password removed wherever the client echoed it (the clients' own `Debug` forms are raw
    /// structures, and some repeat the URL they were given).
    pub(crate) fn connect(broker: &BrokerUrl, error: &dyn std::fmt::Display) -> Self {
        CeleryError::Connect {
            broker: broker.clone(),
            source: Box::new(ErrorText(broker.scrub(&error.to_string()))),
        }
    }

    /// The broker failed during `operation`: the client's error as for
    /// [`connect`](Self::connect).
    pub(crate) fn broker(
        broker: &BrokerUrl,
        operation: &'static str,
        error: &dyn std::fmt::Display,
    ) -> Self {
        CeleryError::Broker {
            broker: broker.clone(),
            operation,
            source: Box::new(ErrorText(broker.scrub(&error.to_string()))),
        }
    }

    /// The same failure for another publish of a batch that failed as a whole (the client's
    /// error is kept as its text: it cannot be cloned).
    pub(crate) fn duplicate(&self) -> Self {
        let text = |source: &(dyn std::error::Error + Send + Sync)| {
            Box::new(ErrorText(source.to_string())) as Box<dyn std::error::Error + Send + Sync>
        };
        match self {
            CeleryError::Config(message) => CeleryError::Config(message.clone()),
            CeleryError::Connect { broker, source } => CeleryError::Connect {
                broker: broker.clone(),
                source: text(source.as_ref()),
            },
            CeleryError::Broker {
                broker,
                operation,
                source,
            } => CeleryError::Broker {
                broker: broker.clone(),
                operation,
                source: text(source.as_ref()),
            },
            CeleryError::Timeout {
                broker,
                operation,
                after,
            } => CeleryError::Timeout {
                broker: broker.clone(),
                operation,
                after: *after,
            },
            CeleryError::Nacked {
                broker,
                routing_key,
            } => CeleryError::Nacked {
                broker: broker.clone(),
                routing_key: routing_key.clone(),
            },
            CeleryError::Unroutable {
                broker,
                exchange,
                routing_key,
            } => CeleryError::Unroutable {
                broker: broker.clone(),
                exchange: exchange.clone(),
                routing_key: routing_key.clone(),
            },
            CeleryError::NoRuntime(method) => CeleryError::NoRuntime(method),
            other => CeleryError::Config(other.to_string()),
        }
    }
}

/// A client error kept as text (without the URL's password).
struct ErrorText(String);

impl std::fmt::Debug for ErrorText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for ErrorText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ErrorText {}
