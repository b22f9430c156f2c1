//! The queues a worker consumes, as one shared and watchable set ([`QueueSet`]): the configured
//! ones at start, then what Celery's `add_consumer` / `cancel_consumer` change at run time. The
//! control plane changes it; each transport's consumer watches it and follows (RabbitMQ:
//! `basic.consume` / `basic.cancel` on its channel; Redis: the lists its fetchers take from),
//! reconnections included. Also the one check of queue, exchange and routing-key names.

use std::sync::Arc;

use tokio::sync::watch;

use super::topology::ExchangeKind;
use super::{BrokerKind, BrokerUrl};

/// The longest queue, exchange or routing-key name: what AMQP's short strings hold. Applied on
/// Redis too, so that a configuration works on both brokers.
pub(crate) const MAX_NAME_BYTES: usize = 255;

/// The most queues a worker consumes at once through `add_consumer` (configured ones above it
/// stay): each consumed queue costs a consumer on RabbitMQ and keys in every take on Redis.
pub(crate) const MAX_QUEUES: usize = 256;

/// Why `name` cannot name a `what` (queue, exchange, routing key), in a sentence; `Ok` if it can:
/// at most [`MAX_NAME_BYTES`] bytes, no control characters (kombu's Redis separator is one),
/// and, for a queue, not empty.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() && what == "queue" {
        return Err("a queue name cannot be empty".to_owned());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{what} name of {} bytes is longer than the {MAX_NAME_BYTES} bytes AMQP allows",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{what} name \"{}\" contains the control character U+{:04X}",
            name.escape_debug(),
            u32::from(c)
        ));
    }
    Ok(())
}

/// How a queue added at run time is bound, beyond the default exchange (Celery's
/// `add_consumer(queue, exchange, exchange_type, routing_key)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueBinding {
    /// The exchange (declared with `kind`, durable, as Celery declares it).
    pub(crate) exchange: String,
    pub(crate) kind: ExchangeKind,
    /// The binding key.
    pub(crate) routing_key: String,
}

/// A queue consumed: its name and, for one added with an exchange, its binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsumedQueue {
    pub(crate) name: String,
    /// `None`: reached through the default exchange only (configured queues, and queues added
    /// with the exchange `""`).
    pub(crate) binding: Option<QueueBinding>,
}

impl ConsumedQueue {
    /// A queue reached through the default exchange only.
    pub(crate) fn plain(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            binding: None,
        }
    }
}

/// What [`QueueSet::add`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Added {
    /// The queue is consumed from now on.
    Added,
    /// It was consumed already: nothing changed.
    AlreadyConsuming,
}

/// The queues consumed now, in order; shared by the worker (which changes it) and its
/// transport (which watches it). Cloning shares it.
#[derive(Clone)]
pub(crate) struct QueueSet(Arc<Shared>);

/// Shown as the names consumed now (in log lines: `queues = ["a", "b"]`).
impl std::fmt::Debug for QueueSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

struct Shared {
    kind: BrokerKind,
    /// The configured queues: re-added as they were configured, and what a transport may not
    /// give up on (their declaration failing is a connection failure, retried).
    configured: Vec<String>,
    current: watch::Sender<Arc<Vec<ConsumedQueue>>>,
}

/// The set as a transport sees it, changes included.
pub(crate) type QueueWatch = watch::Receiver<Arc<Vec<ConsumedQueue>>>;

impl QueueSet {
    /// The configured `queues` (checked by the worker), consumed from `broker`.
    pub(crate) fn new(broker: &BrokerUrl, queues: &[String]) -> Self {
        let mut configured: Vec<String> = Vec::with_capacity(queues.len());
        for queue in queues {
            if !configured.contains(queue) {
                configured.push(queue.clone());
            }
        }
        let current = configured.iter().map(ConsumedQueue::plain).collect();
        Self(Arc::new(Shared {
            kind: broker.kind(),
            configured,
            current: watch::Sender::new(Arc::new(current)),
        }))
    }

    /// The queues consumed now.
    pub(crate) fn current(&self) -> Arc<Vec<ConsumedQueue>> {
        Arc::clone(&self.0.current.borrow())
    }

    /// Their names.
    pub(crate) fn names(&self) -> Vec<String> {
        self.0
            .current
            .borrow()
            .iter()
            .map(|q| q.name.clone())
            .collect()
    }

    /// Whether `name` is consumed now.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.0.current.borrow().iter().any(|q| q.name == name)
    }

    /// Whether `name` is one of the configured queues.
    pub(crate) fn is_configured(&self, name: &str) -> bool {
        self.0.configured.iter().any(|q| q == name)
    }

    /// A watch of the set: its current value, then each change.
    pub(crate) fn watch(&self) -> QueueWatch {
        self.0.current.subscribe()
    }

    /// Starts consuming `queue` (Celery's `add_task_queue`): a configured queue comes back as it
    /// was configured, whatever binding is asked. `Err` with the reason when this worker cannot
    /// consume it (too many queues; on Redis, a fanout exchange, which kombu serves by pub/sub).
    pub(crate) fn add(&self, queue: ConsumedQueue) -> Result<Added, String> {
        let queue = if self.is_configured(&queue.name) {
            ConsumedQueue::plain(queue.name)
        } else {
            queue
        };
        if self.0.kind == BrokerKind::Redis
            && queue
                .binding
                .as_ref()
                .is_some_and(|b| b.kind == ExchangeKind::Fanout)
        {
            return Err(format!(
                "cannot consume `{}` through a fanout exchange on Redis (kombu delivers those by \
                 pub/sub, not through the queue's list): add it with a direct or topic exchange",
                queue.name
            ));
        }
        let mut outcome = Ok(Added::AlreadyConsuming);
        self.0.current.send_if_modified(|current| {
            if current.iter().any(|q| q.name == queue.name) {
                return false;
            }
            let added = current
                .iter()
                .filter(|q| !self.is_configured(&q.name))
                .count();
            if added >= MAX_QUEUES {
                outcome = Err(format!(
                    "this worker consumes {added} added queues already, the most it takes: \
                     cancel one first"
                ));
                return false;
            }
            let mut next = Vec::with_capacity(current.len() + 1);
            next.extend(current.iter().cloned());
            next.push(queue.clone());
            *current = Arc::new(next);
            outcome = Ok(Added::Added);
            true
        });
        outcome
    }

    /// Stops consuming `name` (Celery's `cancel_task_queue`); `false` if it was not consumed.
    pub(crate) fn cancel(&self, name: &str) -> bool {
        self.0.current.send_if_modified(|current| {
            if !current.iter().any(|q| q.name == name) {
                return false;
            }
            let next = current.iter().filter(|q| q.name != name).cloned().collect();
            *current = Arc::new(next);
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(url: &str, queues: &[&str]) -> QueueSet {
        let queues: Vec<String> = queues.iter().map(|q| (*q).to_owned()).collect();
        QueueSet::new(&BrokerUrl::parse(url).unwrap(), &queues)
    }

    fn bound(name: &str, kind: ExchangeKind) -> ConsumedQueue {
        ConsumedQueue {
            name: name.to_owned(),
            binding: Some(QueueBinding {
                exchange: name.to_owned(),
                kind,
                routing_key: name.to_owned(),
            }),
        }
    }

    #[test]
    fn adding_and_cancelling_change_the_set_once_and_wake_watchers() {
        let queues = set("amqp://localhost//", &["a", "a", "b"]);
        assert_eq!(queues.names(), ["a", "b"]);
        let mut watch = queues.watch();
        watch.borrow_and_update();
        assert_eq!(
            queues.add(bound("c", ExchangeKind::Direct)),
            Ok(Added::Added)
        );
        assert!(watch.has_changed().unwrap());
        watch.borrow_and_update();
        assert_eq!(
            queues.add(bound("c", ExchangeKind::Topic)),
            Ok(Added::AlreadyConsuming)
        );
        assert!(!watch.has_changed().unwrap(), "a duplicate changes nothing");
        assert_eq!(queues.names(), ["a", "b", "c"]);
        assert!(queues.cancel("a"));
        assert!(!queues.cancel("a"));
        assert!(!queues.cancel("zzz"));
        assert_eq!(queues.names(), ["b", "c"]);
        // A configured queue comes back as configured.
        assert_eq!(
            queues.add(bound("a", ExchangeKind::Topic)),
            Ok(Added::Added)
        );
        assert_eq!(queues.current()[2], ConsumedQueue::plain("a"));
        // The last queue can go: the set is empty, not refused.
        for name in ["a", "b", "c"] {
            assert!(queues.cancel(name));
        }
        assert!(queues.current().is_empty());
    }

    #[test]
    fn added_queues_are_bounded_and_fanout_is_refused_on_redis() {
        let queues = set("redis://localhost/0", &["a"]);
        assert!(
            queues
                .add(bound("f", ExchangeKind::Fanout))
                .unwrap_err()
                .contains("fanout")
        );
        for n in 0..MAX_QUEUES {
            assert_eq!(
                queues.add(ConsumedQueue::plain(format!("q{n}"))),
                Ok(Added::Added)
            );
        }
        assert!(
            queues
                .add(ConsumedQueue::plain("one-more"))
                .unwrap_err()
                .contains("cancel one first")
        );
        assert!(queues.cancel("q0"));
        assert_eq!(
            queues.add(ConsumedQueue::plain("one-more")),
            Ok(Added::Added)
        );
        // Fanout is fine on RabbitMQ.
        let amqp = set("amqp://localhost//", &["a"]);
        assert_eq!(amqp.add(bound("f", ExchangeKind::Fanout)), Ok(Added::Added));
    }

    #[test]
    fn names_are_checked_as_amqp_takes_them() {
        assert!(check_name("queue", "orders.v2-é").is_ok());
        assert!(check_name("queue", "").unwrap_err().contains("empty"));
        assert!(check_name("routing key", "").is_ok());
        assert!(
            check_name("queue", &"x".repeat(256))
                .unwrap_err()
                .contains("256 bytes")
        );
        assert!(check_name("queue", &"x".repeat(255)).is_ok());
        assert!(
            check_name("exchange", "a\u{6}\u{16}b")
                .unwrap_err()
                .contains("U+0006")
        );
        assert!(check_name("queue", "a\nb").is_err());
    }
}
