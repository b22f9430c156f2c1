//! The errors of the Celery backend and worker.

use std::time::Duration;

use crate::broker::BrokerUrl;
use crate::codec::{DecodeError, EncodeError};

/// What can go wrong talking to a broker. Messages never contain a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CeleryError {
    /// The configuration is unusable (a broker URL, an environment variable, a worker
    /// setting); the text says which and what to write instead.
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
         down or overloaded (the limit is `CeleryConfig::publish_timeout` for a publish, twice \
         `WorkerConfig::publish_timeout` for the worker's own publishes)"
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

    /// The backend is shutting down: its I/O runtime stopped (the program is exiting, or the
    /// last clone of the backend was dropped) before the publish finished.
    #[error(
        "the Celery backend is shutting down (its I/O runtime stopped) before the publish \
         finished, so the message may not have been sent: publish before the program exits and \
         keep a clone of the backend alive while publishing"
    )]
    ShuttingDown,

    /// The backend's I/O runtime could not be started.
    #[error(
        "cannot start the Celery backend's I/O runtime (one thread): {0}; the system may be out \
         of threads or memory"
    )]
    Runtime(#[source] std::io::Error),

    /// A task of this crate panicked: a bug.
    #[error("{what} panicked: {message}; this is a bug in events-celery, please report it")]
    Panicked {
        /// Which task.
        what: &'static str,
        /// The panic, as text.
        message: String,
    },

    /// Dead letters could not be replayed.
    #[error("cannot replay the dead letters of `{queue}`: {reason}")]
    Replay {
        /// The queue whose dead letters were replayed.
        queue: String,
        /// Why, and what to do.
        reason: String,
    },

    /// A batch of publishes failed as a whole with an error that cannot be copied for each
    /// publish: each gets its text.
    #[error("the batch this publish was part of failed: {source}")]
    Batch {
        /// The batch's error, as text.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
    /// A registry error stays the core error it is; everything else is a failure of the
    /// `celery` backend ([`events_core::Error::Backend`]).
    fn from(error: CeleryError) -> Self {
        match error {
            CeleryError::Registry(error) => error,
            error => events_core::Error::Backend {
                backend: "celery",
                source: Box::new(error),
            },
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
            CeleryError::ShuttingDown => CeleryError::ShuttingDown,
            CeleryError::Panicked { what, message } => CeleryError::Panicked {
                what,
                message: message.clone(),
            },
            CeleryError::Replay { queue, reason } => CeleryError::Replay {
                queue: queue.clone(),
                reason: reason.clone(),
            },
            CeleryError::UnsendableTask { task, reason } => CeleryError::UnsendableTask {
                task: task.clone(),
                reason: reason.clone(),
            },
            CeleryError::Batch { source } => CeleryError::Batch {
                source: text(source.as_ref()),
            },
            // Not copyable (the client or codec error inside): kept as text.
            other @ (CeleryError::Runtime(_)
            | CeleryError::Encode(_)
            | CeleryError::Decode(_)
            | CeleryError::Registry(_)) => CeleryError::Batch {
                source: Box::new(ErrorText(other.to_string())),
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each failure a batch shares keeps its own variant when it can be copied, and its text
    /// (never a configuration error) when it cannot.
    #[test]
    fn a_batch_failure_is_duplicated_as_what_it_is() {
        let copied = CeleryError::ShuttingDown.duplicate();
        assert!(matches!(copied, CeleryError::ShuttingDown), "{copied:?}");
        let panicked = CeleryError::Panicked {
            what: "the publish task",
            message: "boom".to_owned(),
        };
        assert!(matches!(
            panicked.duplicate(),
            CeleryError::Panicked { what: "the publish task", ref message } if message == "boom"
        ));
        let registry = CeleryError::Registry(events_core::Error::NotInitialized);
        let copied = registry.duplicate();
        assert!(matches!(copied, CeleryError::Batch { .. }), "{copied:?}");
        assert!(copied.to_string().contains("not initialized"), "{copied}");
    }

    #[test]
    fn messages_say_what_went_wrong_and_what_to_do() {
        for (error, says) in [
            (
                CeleryError::ShuttingDown,
                "keep a clone of the backend alive",
            ),
            (
                CeleryError::Runtime(std::io::Error::other("no threads")),
                "out of threads or memory",
            ),
            (
                CeleryError::Panicked {
                    what: "the publish task",
                    message: "boom".to_owned(),
                },
                "a bug in events-celery",
            ),
            (
                CeleryError::Replay {
                    queue: "q".to_owned(),
                    reason: "inspect it".to_owned(),
                },
                "cannot replay the dead letters of `q`: inspect it",
            ),
        ] {
            let message = error.to_string();
            assert!(message.contains(says), "{message}");
            assert!(
                !message.contains("invalid Celery configuration"),
                "{message}"
            );
        }
    }

    /// A registry error stays the core error it is, not a failure of the Celery backend.
    #[test]
    fn registry_errors_convert_to_the_core_error_itself() {
        let core: events_core::Error =
            CeleryError::Registry(events_core::Error::NotInitialized).into();
        assert!(
            matches!(core, events_core::Error::NotInitialized),
            "{core:?}"
        );
        let core: events_core::Error = CeleryError::ShuttingDown.into();
        assert!(
            matches!(
                core,
                events_core::Error::Backend {
                    backend: "celery",
                    ..
                }
            ),
            "{core:?}"
        );
    }
}
