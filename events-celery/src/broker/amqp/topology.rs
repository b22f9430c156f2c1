//! Every declaration the crate makes on RabbitMQ — queues (task, dead-letter, delay), exchanges
//! and bindings — from the broker-neutral descriptions of [`super::super::topology`], once per
//! connection.

use std::collections::HashSet;
use std::sync::Mutex;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind as LapinExchangeKind};

use crate::broker::queues::ConsumedQueue;
use crate::broker::topology::{
    Binding, DelayBucket, ExchangeKind, ExchangeSpec, Overflow, QueueArguments, QueueKind,
    QueueSpec,
};

/// The queue arguments as RabbitMQ takes them (the types Celery sends: `x-max-priority` a
/// long int, `x-message-ttl` a long long int).
pub(crate) fn field_table(arguments: &QueueArguments) -> FieldTable {
    let mut table = FieldTable::default();
    let mut put = |name: &str, value: AMQPValue| {
        table.insert(ShortString::from(name), value);
    };
    match arguments.kind {
        QueueKind::Classic => {}
        QueueKind::Quorum => put("x-queue-type", AMQPValue::LongString("quorum".into())),
    }
    if let Some(max) = arguments.max_priority {
        put("x-max-priority", AMQPValue::LongInt(i32::from(max)));
    }
    if let Some(ttl) = arguments.message_ttl {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        put("x-message-ttl", AMQPValue::LongLongInt(ms));
    }
    if let Some(exchange) = &arguments.dead_letter_exchange {
        put(
            "x-dead-letter-exchange",
            AMQPValue::LongString(exchange.as_str().into()),
        );
    }
    if let Some(key) = &arguments.dead_letter_routing_key {
        put(
            "x-dead-letter-routing-key",
            AMQPValue::LongString(key.as_str().into()),
        );
    }
    if let Some(overflow) = arguments.overflow {
        let value = match overflow {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
        };
        put("x-overflow", AMQPValue::LongString(value.into()));
    }
    if arguments.at_least_once_dead_letters {
        put(
            "x-dead-letter-strategy",
            AMQPValue::LongString("at-least-once".into()),
        );
    }
    table
}

/// `queue.declare` of `spec`.
pub(crate) async fn declare_queue(channel: &Channel, spec: &QueueSpec) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            ShortString::from(spec.name.as_str()),
            QueueDeclareOptions {
                durable: spec.durable,
                ..QueueDeclareOptions::default()
            },
            field_table(&spec.arguments),
        )
        .await
        .map(drop)
}

/// `exchange.declare` of `spec`.
pub(crate) async fn declare_exchange(
    channel: &Channel,
    spec: &ExchangeSpec,
) -> Result<(), lapin::Error> {
    let kind = match spec.kind {
        ExchangeKind::Direct => LapinExchangeKind::Direct,
        ExchangeKind::Fanout => LapinExchangeKind::Fanout,
        ExchangeKind::Topic => LapinExchangeKind::Topic,
    };
    channel
        .exchange_declare(
            ShortString::from(spec.name.as_str()),
            kind,
            ExchangeDeclareOptions {
                durable: spec.durable,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// `queue.bind` of `binding`.
pub(crate) async fn bind(channel: &Channel, binding: &Binding) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            ShortString::from(binding.queue.as_str()),
            ShortString::from(binding.exchange.as_str()),
            ShortString::from(binding.routing_key.as_str()),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Declares a queue to consume as Celery's worker declares it: its exchange (durable, of its
/// kind; RabbitMQ's own `amq.*` exchanges exist already and are only bound to), the queue with
/// `arguments`, and the binding. A queue without a binding is only declared (the default
/// exchange reaches it). The failing operation on error.
pub(crate) async fn declare_consumed(
    channel: &Channel,
    queue: &ConsumedQueue,
    arguments: &QueueArguments,
) -> Result<(), (&'static str, lapin::Error)> {
    if let Some(binding) = &queue.binding
        && !binding.exchange.starts_with("amq.")
    {
        let exchange = ExchangeSpec {
            name: binding.exchange.clone(),
            kind: binding.kind,
            durable: true,
        };
        declare_exchange(channel, &exchange)
            .await
            .map_err(|e| ("exchange.declare", e))?;
    }
    let spec = QueueSpec::durable(queue.name.as_str(), arguments.clone());
    declare_queue(channel, &spec)
        .await
        .map_err(|e| ("queue.declare", e))?;
    if let Some(binding) = &queue.binding {
        let binding = Binding {
            queue: queue.name.clone(),
            exchange: binding.exchange.clone(),
            routing_key: binding.routing_key.clone(),
        };
        bind(channel, &binding)
            .await
            .map_err(|e| ("queue.bind", e))?;
    }
    Ok(())
}

/// What one connection has declared: each name once.
#[derive(Debug, Default)]
pub(crate) struct Declared(Mutex<HashSet<String>>);

impl Declared {
    fn contains(&self, name: &str) -> bool {
        self.0.lock().expect("not poisoned").contains(name)
    }

    fn insert(&self, name: &str) {
        self.0.lock().expect("not poisoned").insert(name.to_owned());
    }

    /// Declares `spec` unless this connection already did; the failing operation on error.
    pub(crate) async fn queue(
        &self,
        channel: &Channel,
        spec: &QueueSpec,
    ) -> Result<(), (&'static str, lapin::Error)> {
        if self.contains(&spec.name) {
            return Ok(());
        }
        declare_queue(channel, spec)
            .await
            .map_err(|e| ("queue.declare", e))?;
        self.insert(&spec.name);
        Ok(())
    }

    /// Declares `bucket` (exchange, queue, binding) unless this connection already did.
    pub(crate) async fn delay_bucket(
        &self,
        channel: &Channel,
        bucket: &DelayBucket,
    ) -> Result<(), (&'static str, lapin::Error)> {
        if self.contains(&bucket.exchange.name) {
            return Ok(());
        }
        declare_exchange(channel, &bucket.exchange)
            .await
            .map_err(|e| ("exchange.declare", e))?;
        declare_queue(channel, &bucket.queue)
            .await
            .map_err(|e| ("queue.declare", e))?;
        bind(channel, &bucket.binding)
            .await
            .map_err(|e| ("queue.bind", e))?;
        self.insert(&bucket.exchange.name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn arguments_are_sent_as_celery_sends_them() {
        let table = field_table(&QueueArguments::with_max_priority(Some(9)));
        assert_eq!(
            table.inner().get("x-max-priority"),
            Some(&AMQPValue::LongInt(9))
        );
        assert_eq!(table.inner().len(), 1);
        assert!(field_table(&QueueArguments::default()).inner().is_empty());
    }

    #[test]
    fn quorum_queues_with_dead_lettering_can_be_described() {
        let table = field_table(&QueueArguments {
            kind: QueueKind::Quorum,
            message_ttl: Some(Duration::from_secs(2)),
            dead_letter_exchange: Some("celery_delayed_27".to_owned()),
            dead_letter_routing_key: Some("x".to_owned()),
            overflow: Some(Overflow::RejectPublish),
            at_least_once_dead_letters: true,
            ..QueueArguments::default()
        });
        let get = |name: &str| table.inner().get(name).cloned();
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(2000)));
        assert_eq!(
            get("x-overflow"),
            Some(AMQPValue::LongString("reject-publish".into()))
        );
        assert_eq!(
            get("x-dead-letter-strategy"),
            Some(AMQPValue::LongString("at-least-once".into()))
        );
        assert_eq!(table.inner().len(), 6);
    }
}
