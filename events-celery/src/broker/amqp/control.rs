//! RabbitMQ for the control plane: events to the `celeryev` topic exchange, replies to the
//! `reply.celery.pidbox` direct exchange, the worker's mailbox queue `{hostname}.celery.pidbox`
//! (exclusive, auto-delete, `x-message-ttl` 300 s, `x-expires` 10 s) bound to the
//! `celery.pidbox` fanout exchange — declared as kombu declares them.

use std::collections::HashSet;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use tokio::sync::Mutex;

use super::{amqp_outgoing, connect};
use crate::broker::BrokerUrl;
use crate::broker::control::Mailbox;
use crate::codec::{
    AmqpMessage, EVENT_EXCHANGE, KombuMessage, PIDBOX_EXCHANGE, PIDBOX_QUEUE_EXPIRES_MS,
    PIDBOX_QUEUE_TTL_MS, PidboxRequest, PreparedMessage, pidbox_queue,
};
use crate::error::CeleryError;

struct Open {
    connection: Connection,
    channel: Channel,
    declared: HashSet<String>,
}

/// The control plane's RabbitMQ connection.
pub(crate) struct AmqpControl {
    url: BrokerUrl,
    open: Mutex<Option<Open>>,
}

impl AmqpControl {
    pub(crate) fn new(url: BrokerUrl) -> Self {
        Self {
            url,
            open: Mutex::new(None),
        }
    }

    async fn ensure<'a>(&self, open: &'a mut Option<Open>) -> Result<&'a mut Open, CeleryError> {
        let usable = open
            .as_ref()
            .is_some_and(|o| o.connection.status().connected() && o.channel.status().connected());
        if !usable {
            let error = |e: lapin::Error| CeleryError::connect(&self.url, &e);
            let connection = connect(&self.url).await.map_err(error)?;
            let channel = connection.create_channel().await.map_err(error)?;
            *open = Some(Open {
                connection,
                channel,
                declared: HashSet::new(),
            });
        }
        Ok(open.as_mut().expect("just opened"))
    }

    /// Publishes without a confirm (events and replies are transient, as kombu sends them).
    pub(crate) async fn publish(&self, message: &KombuMessage) -> Result<(), CeleryError> {
        let amqp = message
            .to_amqp()
            .map_err(|e| CeleryError::Config(format!("cannot encode a control message: {e}")))?;
        let mut guard = self.open.lock().await;
        let result = self.publish_on(&mut guard, amqp).await;
        if result.is_err() {
            *guard = None;
        }
        result
    }

    /// Publishes `messages` in order, each sent before any is waited for (lapin queues a
    /// message's frames on the first poll of its publish): one wait for the lot, not one per
    /// message.
    pub(crate) async fn publish_many(
        &self,
        messages: Vec<PreparedMessage>,
    ) -> Result<(), CeleryError> {
        let amqp = messages
            .into_iter()
            .map(PreparedMessage::into_amqp)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CeleryError::Config(format!("cannot encode a control message: {e}")))?;
        let mut guard = self.open.lock().await;
        let result = self.publish_all(&mut guard, amqp).await;
        if result.is_err() {
            *guard = None;
        }
        result
    }

    async fn publish_all(
        &self,
        guard: &mut Option<Open>,
        messages: Vec<AmqpMessage>,
    ) -> Result<(), CeleryError> {
        let open = self.ensure(guard).await?;
        for message in &messages {
            self.declare_exchange(open, &message.exchange).await?;
        }
        let broker_error = |e: lapin::Error| CeleryError::broker(&self.url, "basic.publish", &e);
        let mut bodies = Vec::with_capacity(messages.len());
        let mut frames = Vec::with_capacity(messages.len());
        for outgoing in messages.into_iter().map(amqp_outgoing) {
            bodies.push(outgoing.body);
            frames.push((outgoing.exchange, outgoing.routing_key, outgoing.properties));
        }
        let mut sending = Vec::with_capacity(bodies.len());
        for (body, (exchange, routing_key, properties)) in bodies.iter().zip(frames) {
            let mut send = Box::pin(open.channel.basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions::default(),
                body,
                properties,
            ));
            // The first poll queues the frames, so they go out in this order.
            match send.as_mut().now_or_never() {
                Some(result) => {
                    result.map_err(broker_error)?;
                }
                None => sending.push(send),
            }
        }
        for send in sending {
            send.await.map_err(broker_error)?;
        }
        Ok(())
    }

    /// Declares `exchange` once per connection: `celeryev` a durable topic,
    /// `reply.celery.pidbox` a transient direct exchange (as kombu does).
    async fn declare_exchange(&self, open: &mut Open, exchange: &str) -> Result<(), CeleryError> {
        if open.declared.contains(exchange) {
            return Ok(());
        }
        let (kind, durable) = if exchange == EVENT_EXCHANGE {
            (ExchangeKind::Topic, true)
        } else {
            (ExchangeKind::Direct, false)
        };
        open.channel
            .exchange_declare(
                ShortString::from(exchange),
                kind,
                ExchangeDeclareOptions {
                    durable,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| CeleryError::broker(&self.url, "exchange.declare", &e))?;
        open.declared.insert(exchange.to_owned());
        Ok(())
    }

    async fn publish_on(
        &self,
        guard: &mut Option<Open>,
        amqp: AmqpMessage,
    ) -> Result<(), CeleryError> {
        let open = self.ensure(guard).await?;
        let broker_error =
            |operation, e: lapin::Error| CeleryError::broker(&self.url, operation, &e);
        self.declare_exchange(open, &amqp.exchange).await?;
        let outgoing = amqp_outgoing(amqp);
        open.channel
            .basic_publish(
                ShortString::from(outgoing.exchange.as_str()),
                ShortString::from(outgoing.routing_key.as_str()),
                BasicPublishOptions::default(),
                &outgoing.body,
                outgoing.properties,
            )
            .await
            .map_err(|e| broker_error("basic.publish", e))?;
        Ok(())
    }

    /// Declares and consumes the mailbox queue on a channel of its own.
    pub(crate) async fn mailbox(
        &self,
        hostname: &str,
        max_bytes: usize,
    ) -> Result<Mailbox, CeleryError> {
        let mut guard = self.open.lock().await;
        let open = match self.ensure(&mut guard).await {
            Ok(open) => open,
            Err(error) => {
                *guard = None;
                return Err(error);
            }
        };
        let broker_error =
            |operation, e: lapin::Error| CeleryError::broker(&self.url, operation, &e);
        let channel = open
            .connection
            .create_channel()
            .await
            .map_err(|e| broker_error("channel.open", e))?;
        drop(guard);
        channel
            .exchange_declare(
                ShortString::from(PIDBOX_EXCHANGE),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker_error("exchange.declare", e))?;
        let queue = pidbox_queue(hostname);
        let mut arguments = FieldTable::default();
        arguments.insert(
            ShortString::from("x-message-ttl"),
            AMQPValue::LongInt(PIDBOX_QUEUE_TTL_MS as i32),
        );
        arguments.insert(
            ShortString::from("x-expires"),
            AMQPValue::LongInt(PIDBOX_QUEUE_EXPIRES_MS as i32),
        );
        channel
            .queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .map_err(|e| broker_error("queue.declare", e))?;
        channel
            .queue_bind(
                ShortString::from(queue.as_str()),
                ShortString::from(PIDBOX_EXCHANGE),
                ShortString::from(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker_error("queue.bind", e))?;
        let consumer = channel
            .basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker_error("basic.consume", e))?;
        let stream = consumer
            .take_while(|delivery| std::future::ready(delivery.is_ok()))
            .filter_map(move |delivery| {
                let request = delivery.ok().map(|delivery| {
                    let message = AmqpMessage::from_lapin(
                        delivery.exchange.as_str(),
                        delivery.routing_key.as_str(),
                        &delivery.properties,
                        delivery.data,
                    );
                    PidboxRequest::from_amqp(&message, max_bytes)
                });
                std::future::ready(request)
            });
        // The channel lives as long as the stream.
        let stream = stream.map(move |request| {
            let _ = &channel;
            request
        });
        Ok(Box::pin(stream))
    }

    pub(crate) async fn close(&self) {
        if let Some(open) = self.open.lock().await.take() {
            let _ = open
                .connection
                .close(200, ShortString::from("worker stopping"))
                .await;
        }
    }
}
