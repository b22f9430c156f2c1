//! The RabbitMQ transport: the one way to connect (through the frame guard), publishing with
//! confirms over a few shared channels (reconnected after the broker goes away), and the
//! conversions between the codec's AMQP message and `lapin`'s.

pub(crate) mod consume;
mod consumers;
pub(crate) mod control;
pub(crate) mod dead_letter;
mod guard;
pub(crate) mod topology;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_rs::util::RuntimeParts;
use async_rs::{Runtime, Tokio};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::{AMQPUriTcpExt, AsyncTcpStream, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use tokio::sync::Mutex;

use self::guard::{FrameGuard, GuardedReactor};
use self::topology::Declared;
use super::consume::Consumer;
use super::topology::{DelayBucket, QueueArguments, QueueSpec};
use super::{BrokerUrl, Publication, PublishSettings, Reply, Transport};
use crate::codec::TaskMessage;
use crate::error::CeleryError;
use futures_util::future::join_all;

/// Opens a connection to RabbitMQ: the one way the crate connects, for publishers and workers.
///
/// Plain or TLS as the URL says (lapin's TLS defaults: the platform's roots, `SSL_CERT_FILE`),
/// on the current tokio runtime, with every byte from the broker passing the frame guard
/// (`amqp_guard`) before lapin parses it, so no message can overflow the parser's stack.
pub(crate) async fn connect(url: &BrokerUrl) -> Result<Connection, lapin::Error> {
    url.check_tls_files()
        .map_err(|problem| lapin::Error::from(std::io::Error::other(problem)))?;
    let uri: AMQPUri = url
        .amqp_uri()
        .parse()
        .map_err(|e: String| lapin::Error::from(std::io::Error::other(e)))?;
    let tokio = Tokio::current();
    let plain = Runtime::new(tokio.clone());
    let runtime = Runtime::new(RuntimeParts::new(tokio.clone(), GuardedReactor(tokio)));
    Connection::connector(
        uri,
        runtime,
        async move |uri: AMQPUri, _runtime| {
            let stream = uri
                .connect_with_config_async(OwnedTLSConfig::default().as_ref(), &plain)
                .await
                .map_err(|e| {
                    if plain.is_runtime_shutdown_error(&e) {
                        lapin::Error::from(ErrorKind::RuntimeShutdownError(Arc::new(e)))
                    } else {
                        lapin::Error::from(e)
                    }
                })?;
            Ok(AsyncTcpStream::Plain(FrameGuard::new(stream)))
        },
        ConnectionProperties::default(),
    )
    .await
}

/// How many confirm-mode channels concurrent publishes are spread over.
const PUBLISH_CHANNELS: usize = 2;

/// A message ready for `basic.publish`.
#[derive(Debug, Clone)]
pub(crate) struct AmqpOutgoing {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    /// The queue to declare before the first publish to it (the routing key when publishing
    /// through the default exchange).
    pub(crate) declare_queue: Option<String>,
    pub(crate) properties: BasicProperties,
    pub(crate) body: Vec<u8>,
}

struct Link {
    connection: Connection,
    channels: Vec<Channel>,
    next: AtomicUsize,
    declared: Declared,
}

impl Link {
    fn is_usable(&self) -> bool {
        self.connection.status().connected() && self.channels.iter().all(|c| c.status().connected())
    }
}

/// The RabbitMQ transport: publishes with publisher confirms; consumes through [`consume`].
pub(crate) struct AmqpPublisher {
    url: BrokerUrl,
    queue_arguments: QueueArguments,
    /// How long one publish may take.
    timeout: std::time::Duration,
    /// The connection in use: read on every publish without waiting.
    current: std::sync::RwLock<Option<Arc<Link>>>,
    /// Held while (re)connecting, so one caller connects and the others wait for it.
    link: Mutex<()>,
}

impl AmqpPublisher {
    /// A publisher declaring the queues it publishes to with `queue_arguments`.
    pub(crate) fn with_arguments(
        url: BrokerUrl,
        queue_arguments: QueueArguments,
        timeout: std::time::Duration,
    ) -> Self {
        Self {
            url,
            queue_arguments,
            timeout,
            current: std::sync::RwLock::new(None),
            link: Mutex::new(()),
        }
    }

    fn broker_error(&self, operation: &'static str, source: lapin::Error) -> CeleryError {
        CeleryError::broker(&self.url, operation, &source)
    }

    /// The current link, connecting (again) if there is none or it broke.
    async fn link(&self) -> Result<Arc<Link>, CeleryError> {
        if let Some(link) = self.usable_link() {
            return Ok(link);
        }
        let _connecting = self.link.lock().await;
        // Another caller may have reconnected while this one waited.
        if let Some(link) = self.usable_link() {
            return Ok(link);
        }
        if self.take_link().is_some() {
            tracing::warn!(broker = %self.url, "AMQP connection lost; reconnecting");
        }
        let link = Arc::new(self.connect().await?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&link));
        Ok(link)
    }

    fn usable_link(&self) -> Option<Arc<Link>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .filter(|link| link.is_usable())
            .map(Arc::clone)
    }

    fn take_link(&self) -> Option<Arc<Link>> {
        self.current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    async fn connect(&self) -> Result<Link, CeleryError> {
        let connect_error = |source: lapin::Error| CeleryError::connect(&self.url, &source);
        let connection = connect(&self.url).await.map_err(connect_error)?;
        let mut channels = Vec::with_capacity(PUBLISH_CHANNELS);
        for _ in 0..PUBLISH_CHANNELS {
            let channel = connection.create_channel().await.map_err(connect_error)?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(connect_error)?;
            channels.push(channel);
        }
        tracing::info!(broker = %self.url, "connected to RabbitMQ");
        Ok(Link {
            connection,
            channels,
            next: AtomicUsize::new(0),
            declared: Declared::default(),
        })
    }

    /// Declares `queue` durable with Celery's arguments, once per connection.
    async fn declare(
        &self,
        link: &Link,
        channel: &Channel,
        queue: &str,
    ) -> Result<(), CeleryError> {
        let spec = QueueSpec::durable(queue, self.queue_arguments.clone());
        link.declared
            .queue(channel, &spec)
            .await
            .map_err(|(operation, e)| self.broker_error(operation, e))
    }

    /// Publishes one message and waits for the broker's confirm. Unroutable (returned) and
    /// nacked messages are errors.
    pub(crate) async fn publish(&self, message: AmqpOutgoing) -> Result<(), CeleryError> {
        let link = self.link().await?;
        let index = link.next.fetch_add(1, Ordering::Relaxed) % link.channels.len();
        let channel = &link.channels[index];
        if let Some(queue) = &message.declare_queue {
            self.declare(&link, channel, queue).await?;
        }
        let confirm = channel
            .basic_publish(
                ShortString::from(message.exchange.as_str()),
                ShortString::from(message.routing_key.as_str()),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                message.properties,
            )
            .await
            .map_err(|e| self.broker_error("basic.publish", e))?
            .await
            .map_err(|e| self.broker_error("publisher confirm", e))?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(CeleryError::Unroutable {
                broker: self.url.clone(),
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
            }),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(CeleryError::Nacked {
                broker: self.url.clone(),
                routing_key: message.routing_key.clone(),
            }),
        }
    }

    /// A plain (non-confirm) channel on the current connection, for `basic.get` and the like.
    pub(crate) async fn consumer_channel(&self) -> Result<Channel, CeleryError> {
        let link = self.link().await?;
        link.connection
            .create_channel()
            .await
            .map_err(|e| self.broker_error("channel.open", e))
    }

    /// Declares the delay bucket for a wait of `remaining` once per connection (see
    /// [`DelayBucket`]); returns the exchange to publish to.
    pub(crate) async fn delay_bucket(
        &self,
        remaining: std::time::Duration,
    ) -> Result<String, CeleryError> {
        let bucket = DelayBucket::for_wait(remaining);
        let link = self.link().await?;
        link.declared
            .delay_bucket(&link.channels[0], &bucket)
            .await
            .map_err(|(operation, e)| self.broker_error(operation, e))?;
        Ok(bucket.exchange.name)
    }

    /// What a publish that ran out of time fails with.
    pub(crate) fn timeout_error(&self) -> CeleryError {
        CeleryError::Timeout {
            broker: self.url.clone(),
            operation: "publishing",
            after: self.timeout,
        }
    }

    /// Drops the current connection; the next publish reconnects.
    pub(crate) async fn reset(&self) {
        let taken = {
            let _connecting = self.link.lock().await;
            self.take_link()
        };
        if let Some(link) = taken {
            let _ = link
                .connection
                .close(200, ShortString::from("reconnecting"))
                .await;
        }
    }
}

impl Transport for AmqpPublisher {
    type Outgoing = AmqpOutgoing;

    fn new(url: BrokerUrl, settings: PublishSettings) -> Self {
        Self::with_arguments(url, settings.queue_arguments, settings.timeout)
    }

    async fn ensure_connected(&self) -> Result<(), CeleryError> {
        self.link().await.map(drop)
    }

    fn prepare(&self, message: TaskMessage, _queue: &str) -> Result<AmqpOutgoing, CeleryError> {
        Ok(amqp_outgoing(message.into_amqp()?))
    }

    async fn publish_batch<R: Reply>(&self, batch: Vec<Publication<AmqpOutgoing, R>>) {
        // Each caller hears back as soon as its own confirm arrives.
        let timed_out = std::sync::atomic::AtomicBool::new(false);
        join_all(batch.into_iter().map(|publication| {
            let timed_out = &timed_out;
            async move {
                let Publication {
                    outgoing,
                    deadline,
                    reply,
                } = publication;
                let result = tokio::time::timeout_at(
                    tokio::time::Instant::from_std(deadline),
                    self.publish(outgoing),
                )
                .await
                .unwrap_or_else(|_| {
                    timed_out.store(true, Ordering::Relaxed);
                    Err(self.timeout_error())
                });
                reply.send(result);
            }
        }))
        .await;
        if timed_out.into_inner() {
            // A publish that timed out may leave the link half-broken: start afresh.
            self.reset().await;
        }
    }

    async fn consume<C: Consumer>(
        consumer: Arc<C>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), CeleryError> {
        consume::run(consumer, stopping).await
    }

    async fn replay_dead_letters(
        url: &BrokerUrl,
        queue: &str,
        limit: usize,
    ) -> Result<usize, CeleryError> {
        dead_letter::replay(url, queue, limit).await
    }
}

/// The codec's AMQP message as `lapin` publishes it.
pub(crate) fn amqp_outgoing(message: crate::codec::AmqpMessage) -> AmqpOutgoing {
    let p = message.properties;
    let mut properties = BasicProperties::default().with_headers(to_field_table(message.headers));
    if let Some(v) = p.content_type {
        properties = properties.with_content_type(ShortString::from(v));
    }
    if let Some(v) = p.content_encoding {
        properties = properties.with_content_encoding(ShortString::from(v));
    }
    if let Some(v) = p.delivery_mode {
        properties = properties.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        properties = properties.with_priority(v);
    }
    if let Some(v) = p.correlation_id {
        properties = properties.with_correlation_id(ShortString::from(v));
    }
    if let Some(v) = p.reply_to {
        properties = properties.with_reply_to(ShortString::from(v));
    }
    if let Some(v) = p.expiration {
        properties = properties.with_expiration(ShortString::from(v));
    }
    let declare_queue = message
        .exchange
        .is_empty()
        .then(|| message.routing_key.clone());
    AmqpOutgoing {
        exchange: message.exchange,
        routing_key: message.routing_key,
        declare_queue,
        properties,
        body: message.body,
    }
}

fn to_field_table(table: crate::codec::AmqpTable) -> FieldTable {
    let mut out = FieldTable::default();
    for (name, value) in table.0 {
        out.insert(ShortString::from(name), to_amqp_value(value));
    }
    out
}

fn to_amqp_value(value: crate::codec::AmqpValue) -> AMQPValue {
    use crate::codec::AmqpValue as V;
    match value {
        V::Bool(b) => AMQPValue::Boolean(b),
        V::ShortShortInt(n) => AMQPValue::ShortShortInt(n),
        V::ShortShortUInt(n) => AMQPValue::ShortShortUInt(n),
        V::ShortInt(n) => AMQPValue::ShortInt(n),
        V::ShortUInt(n) => AMQPValue::ShortUInt(n),
        V::LongInt(n) => AMQPValue::LongInt(n),
        V::LongUInt(n) => AMQPValue::LongUInt(n),
        V::LongLongInt(n) => AMQPValue::LongLongInt(n),
        V::Float(n) => AMQPValue::Float(n),
        V::Double(n) => AMQPValue::Double(n),
        V::Decimal { scale, value } => {
            AMQPValue::DecimalValue(lapin::types::DecimalValue { scale, value })
        }
        V::LongString(bytes) => AMQPValue::LongString(bytes.into()),
        V::Array(items) => AMQPValue::FieldArray(
            items
                .into_iter()
                .map(to_amqp_value)
                .collect::<Vec<_>>()
                .into(),
        ),
        V::Timestamp(t) => AMQPValue::Timestamp(t),
        V::Table(table) => AMQPValue::FieldTable(to_field_table(table)),
        V::ByteArray(bytes) => AMQPValue::ByteArray(bytes.into()),
        V::Void => AMQPValue::Void,
    }
}

impl crate::codec::AmqpMessage {
    /// A delivery as `lapin` hands it over, in the codec's form (to decode with
    /// [`TaskMessage::decode_amqp`](crate::TaskMessage::decode_amqp)).
    pub fn from_lapin(
        exchange: &str,
        routing_key: &str,
        properties: &BasicProperties,
        body: Vec<u8>,
    ) -> Self {
        let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_owned());
        Self {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            properties: crate::codec::AmqpProperties {
                content_type: text(properties.content_type()),
                content_encoding: text(properties.content_encoding()),
                delivery_mode: *properties.delivery_mode(),
                priority: *properties.priority(),
                correlation_id: text(properties.correlation_id()),
                reply_to: text(properties.reply_to()),
                expiration: text(properties.expiration()),
            },
            headers: properties
                .headers()
                .as_ref()
                .map(from_field_table)
                .unwrap_or_default(),
            body,
        }
    }
}

fn from_field_table(table: &FieldTable) -> crate::codec::AmqpTable {
    crate::codec::AmqpTable(
        table
            .inner()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), from_amqp_value(value)))
            .collect(),
    )
}

fn from_amqp_value(value: &AMQPValue) -> crate::codec::AmqpValue {
    use crate::codec::AmqpValue as V;
    match value {
        AMQPValue::Boolean(b) => V::Bool(*b),
        AMQPValue::ShortShortInt(n) => V::ShortShortInt(*n),
        AMQPValue::ShortShortUInt(n) => V::ShortShortUInt(*n),
        AMQPValue::ShortInt(n) => V::ShortInt(*n),
        AMQPValue::ShortUInt(n) => V::ShortUInt(*n),
        AMQPValue::LongInt(n) => V::LongInt(*n),
        AMQPValue::LongUInt(n) => V::LongUInt(*n),
        AMQPValue::LongLongInt(n) => V::LongLongInt(*n),
        AMQPValue::Float(n) => V::Float(*n),
        AMQPValue::Double(n) => V::Double(*n),
        AMQPValue::DecimalValue(d) => V::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::ShortString(s) => V::LongString(s.as_str().as_bytes().to_vec()),
        AMQPValue::LongString(s) => V::LongString(s.as_bytes().to_vec()),
        AMQPValue::FieldArray(items) => {
            V::Array(items.as_slice().iter().map(from_amqp_value).collect())
        }
        AMQPValue::Timestamp(t) => V::Timestamp(*t),
        AMQPValue::FieldTable(table) => V::Table(from_field_table(table)),
        AMQPValue::ByteArray(bytes) => V::ByteArray(bytes.as_slice().to_vec()),
        AMQPValue::Void => V::Void,
    }
}
