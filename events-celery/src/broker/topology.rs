//! What gets declared at a broker, described once for both: queues with their kind and
//! arguments, exchanges, bindings, and the names derived from a queue (its dead-letter
//! destination). Each broker's own `topology` module turns these descriptions into its commands
//! (`queue.declare` on RabbitMQ, kombu's binding sets and lists on Redis).
//!
//! The Celery control plane lands here as further descriptions — the `celeryev` topic exchange
//! for monitoring events, the `celery.pidbox` fanout mailbox and the `reply.celery.pidbox`
//! direct exchange — each one [`ExchangeSpec`] (plus its queue and binding), declared by the
//! same functions as the task queues.

use std::time::Duration;

/// The suffix of dead-letter queues and lists: `<queue>.dead_letter`.
pub const DEAD_LETTER_SUFFIX: &str = ".dead_letter";

/// The dead-letter destination of `queue`.
pub(crate) fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}{DEAD_LETTER_SUFFIX}")
}

/// A queue's type (RabbitMQ's `x-queue-type`; Redis has lists only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum QueueKind {
    /// A classic queue: no `x-queue-type` argument, as Celery declares them by default.
    #[default]
    Classic,
    /// A quorum queue (`x-queue-type: quorum`): replicated; what kombu's native delayed
    /// delivery requires.
    #[allow(dead_code, reason = "described for quorum queues; not declared yet")]
    Quorum,
}

/// What happens when a queue is full (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code, reason = "described for quorum queues; not declared yet")]
pub(crate) enum Overflow {
    /// Drop the oldest message (the default).
    DropHead,
    /// Refuse new publishes (nack them): what quorum queues with at-least-once dead lettering
    /// need.
    RejectPublish,
}

/// How a queue is declared beyond its name: its kind and arguments. As Celery declares them,
/// so that both can declare the same queue without `PRECONDITION_FAILED`: a field left `None`
/// sends no argument.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct QueueArguments {
    /// `x-queue-type`.
    pub(crate) kind: QueueKind,
    /// `x-max-priority` (Celery's `task_queue_max_priority`).
    pub(crate) max_priority: Option<u8>,
    /// `x-message-ttl`: how long a message stays before it expires (or is dead-lettered).
    pub(crate) message_ttl: Option<Duration>,
    /// `x-dead-letter-exchange`: where expired or rejected messages go (`""`: the default
    /// exchange, by their routing key).
    pub(crate) dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`: the routing key they go with, instead of their own.
    pub(crate) dead_letter_routing_key: Option<String>,
    /// `x-overflow`.
    pub(crate) overflow: Option<Overflow>,
    /// `x-dead-letter-strategy: at-least-once` (quorum queues).
    pub(crate) at_least_once_dead_letters: bool,
}

impl QueueArguments {
    /// A classic queue with `x-max-priority` when `max_priority` says.
    pub(crate) fn with_max_priority(max_priority: Option<u8>) -> Self {
        Self {
            max_priority,
            ..Self::default()
        }
    }
}

/// A queue to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueSpec {
    pub(crate) name: String,
    /// Survives a broker restart (every queue the crate declares is durable, as Celery's).
    pub(crate) durable: bool,
    pub(crate) arguments: QueueArguments,
}

impl QueueSpec {
    /// A durable queue `name` declared with `arguments`.
    pub(crate) fn durable(name: impl Into<String>, arguments: QueueArguments) -> Self {
        Self {
            name: name.into(),
            durable: true,
            arguments,
        }
    }
}

/// How an exchange routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExchangeKind {
    /// By exact routing key (Celery's task exchanges, `reply.celery.pidbox`).
    Direct,
    /// To every bound queue (delay buckets, `celery.pidbox`).
    Fanout,
    /// By routing-key pattern (`celeryev`).
    Topic,
}

impl ExchangeKind {
    /// The kind kombu names `name` (`direct`, `fanout`, `topic`); `None` for others (`headers`
    /// needs binding arguments this crate does not take).
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "direct" => Some(Self::Direct),
            "fanout" => Some(Self::Fanout),
            "topic" => Some(Self::Topic),
            _ => None,
        }
    }

    /// kombu's name for it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
        }
    }
}

/// An exchange to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExchangeSpec {
    pub(crate) name: String,
    pub(crate) kind: ExchangeKind,
    pub(crate) durable: bool,
}

/// A binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Binding {
    pub(crate) queue: String,
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
}

/// The longest delay bucket: 2^21 s, about 24 days; longer waits take several hops.
const MAX_DELAY_BUCKET_EXPONENT: u32 = 21;

/// The delay infrastructure of the AMQP transport: one bucket per power of two seconds — a
/// fanout exchange and a durable queue `events.delay.<seconds>s` whose messages expire after
/// `seconds` into the default exchange, keeping their routing key, so they land back on their
/// queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DelayBucket {
    pub(crate) exchange: ExchangeSpec,
    pub(crate) queue: QueueSpec,
    pub(crate) binding: Binding,
}

impl DelayBucket {
    /// The bucket for a wait of `remaining` (at least a second): the largest power of two
    /// seconds not over it, at most 2^21 s.
    pub(crate) fn for_wait(remaining: Duration) -> Self {
        let exponent =
            (63 - remaining.as_secs().max(1).leading_zeros()).min(MAX_DELAY_BUCKET_EXPONENT);
        Self::of_seconds(1 << exponent)
    }

    fn of_seconds(seconds: u64) -> Self {
        let name = format!("events.delay.{seconds}s");
        Self {
            exchange: ExchangeSpec {
                name: name.clone(),
                kind: ExchangeKind::Fanout,
                durable: true,
            },
            queue: QueueSpec::durable(
                name.clone(),
                QueueArguments {
                    message_ttl: Some(Duration::from_secs(seconds)),
                    dead_letter_exchange: Some(String::new()),
                    ..QueueArguments::default()
                },
            ),
            binding: Binding {
                queue: name.clone(),
                exchange: name,
                routing_key: String::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_buckets_are_powers_of_two_seconds_up_to_24_days() {
        let bucket = DelayBucket::for_wait(Duration::from_millis(1500));
        assert_eq!(bucket.exchange.name, "events.delay.1s");
        assert_eq!(
            bucket.queue.arguments.message_ttl,
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            DelayBucket::for_wait(Duration::from_secs(100)).queue.name,
            "events.delay.64s"
        );
        assert_eq!(
            DelayBucket::for_wait(Duration::from_secs(u64::MAX))
                .queue
                .name,
            format!("events.delay.{}s", 1u64 << 21)
        );
    }

    #[test]
    fn dead_letter_destinations_are_suffixed() {
        assert_eq!(dead_letter_queue("celery"), "celery.dead_letter");
    }
}
