//! Consuming from RabbitMQ for the worker: per-consumer prefetch, acknowledgements after the
//! handlers ran (batched with `multiple` where they are contiguous), settling each message as
//! the worker's [`Verdict`] says (the one place that turns it into RabbitMQ commands), and
//! reconnection with backoff.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::{Stream, StreamExt};
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::dead_letter::amqp_dead_letter;
use super::topology::declare_queue;
use super::{AmqpOutgoing, AmqpPublisher, amqp_outgoing};
use crate::backoff::Backoff;
use crate::broker::consume::{BrokerEvent, Consumer, Verdict};
use crate::broker::topology::QueueSpec;
use crate::codec::{AmqpMessage, Routing, TaskMessage};
use crate::error::CeleryError;
use crate::stopping::{pause, stopped};

/// Consumes until the worker stops, reconnecting (with backoff) after each failure.
pub(crate) async fn run<C: Consumer>(
    consumer: Arc<C>,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), CeleryError> {
    let settings = consumer.settings();
    let publisher = Arc::new(AmqpPublisher::with_arguments(
        settings.broker.clone(),
        settings.queue_arguments.clone(),
        settings.publish_timeout,
    ));
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let mut backoff = Backoff::reconnect(settings.reconnect_max_delay);
    loop {
        let session = Session {
            consumer: &consumer,
            publisher: &publisher,
            permits: &permits,
        };
        match session.run(&mut stopping, &mut backoff).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                let delay = backoff.step();
                let error = events_core::text::OneLine(&error).to_string();
                tracing::error!(
                    error = %error,
                    retry_in = ?delay,
                    "consuming from RabbitMQ failed; reconnecting"
                );
                consumer.report(BrokerEvent::ConnectionLost { error: &error });
                if pause(&mut stopping, delay).await {
                    return Ok(());
                }
            }
        }
    }
}

/// A delivery, with the queue it came from.
type Received = (Arc<String>, Result<lapin::message::Delivery, lapin::Error>);

/// A delivery received by the worker, waiting for a slot.
struct Waiting<R> {
    queue: Arc<String>,
    tag: u64,
    properties: BasicProperties,
    body: Vec<u8>,
    receipt: R,
}

/// One connection's worth of consuming: connect, declare, consume, drain, close.
struct Session<'a, C> {
    consumer: &'a Arc<C>,
    publisher: &'a Arc<AmqpPublisher>,
    permits: &'a Arc<Semaphore>,
}

impl<C: Consumer> Session<'_, C> {
    async fn run(
        &self,
        stopping: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> Result<(), CeleryError> {
        let Some(connection) = self.connect(stopping).await? else {
            return Ok(());
        };
        let (channel, deliveries, tags) = self.declare_and_consume(&connection).await?;
        backoff.reset();
        let settings = self.consumer.settings();
        tracing::info!(broker = %settings.broker, queues = ?settings.queues, "consuming from RabbitMQ");
        self.consumer.report(BrokerEvent::Consuming);
        let (acks, ack_task) = Acks::spawn(channel.clone());
        let outcome = self.drain(deliveries, &acks, stopping).await;
        if outcome.is_ok() {
            cancel(&channel, &tags).await;
        }
        self.finish(acks, ack_task).await;
        // Closing returns every unacknowledged message to its queue.
        let _ = connection
            .close(200, ShortString::from("worker stopping"))
            .await;
        outcome
    }

    fn broker_error(&self, operation: &'static str) -> impl Fn(lapin::Error) -> CeleryError + '_ {
        move |e| CeleryError::broker(&self.consumer.settings().broker, operation, &e)
    }

    /// Connects, bounded in time and giving way to a stop: a broker that accepts the socket but
    /// never completes the handshake must not wedge the worker. `None` when stopping.
    async fn connect(
        &self,
        stopping: &mut watch::Receiver<bool>,
    ) -> Result<Option<Connection>, CeleryError> {
        let settings = self.consumer.settings();
        let url = &settings.broker;
        let limit = settings.publish_timeout;
        let connecting = tokio::time::timeout(limit, super::connect(url));
        tokio::select! {
            biased;
            () = stopped(stopping) => Ok(None),
            connected = connecting => match connected {
                Ok(Ok(connection)) => Ok(Some(connection)),
                Ok(Err(e)) => Err(CeleryError::connect(url, &e)),
                Err(_) => Err(CeleryError::Timeout {
                    broker: url.clone(),
                    operation: "connecting",
                    after: limit,
                }),
            },
        }
    }

    /// Opens the consuming channel, declares every queue (through the topology) and starts a
    /// consumer on each; returns the channel, the deliveries and the consumer tags.
    async fn declare_and_consume(
        &self,
        connection: &Connection,
    ) -> Result<
        (
            Channel,
            impl Stream<Item = Received> + Unpin + Send + use<C>,
            Vec<String>,
        ),
        CeleryError,
    > {
        let settings = self.consumer.settings();
        let channel = connection
            .create_channel()
            .await
            .map_err(self.broker_error("channel.open"))?;
        // Per-consumer prefetch (global = false): what RabbitMQ and quorum queues support.
        channel
            .basic_qos(settings.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(self.broker_error("basic.qos"))?;
        let mut streams = Vec::new();
        let mut tags = Vec::new();
        for queue in &settings.queues {
            let spec = QueueSpec::durable(queue.as_str(), settings.queue_arguments.clone());
            declare_queue(&channel, &spec)
                .await
                .map_err(self.broker_error("queue.declare"))?;
            let tag = format!("events-celery-{}", uuid::Uuid::new_v4().simple());
            let consumer = channel
                .basic_consume(
                    ShortString::from(queue.as_str()),
                    ShortString::from(tag.as_str()),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(self.broker_error("basic.consume"))?;
            let queue = Arc::new(queue.clone());
            streams.push(consumer.map(move |d| (Arc::clone(&queue), d)));
            tags.push(tag);
        }
        Ok((channel, futures_util::stream::select_all(streams), tags))
    }

    /// Receives each delivery as it arrives (RabbitMQ's prefetch bounds how many) and hands
    /// them, in the order delivered, each to a task of its own as slots free up (the
    /// concurrency), until the worker stops (`Ok`) or the consumer fails (`Err`). Those still
    /// waiting then go back to the queue with the connection.
    async fn drain(
        &self,
        mut deliveries: impl Stream<Item = Received> + Unpin,
        acks: &Acks,
        stopping: &mut watch::Receiver<bool>,
    ) -> Result<(), CeleryError> {
        let mut waiting: VecDeque<Waiting<C::Receipt>> = VecDeque::new();
        loop {
            tokio::select! {
                biased;
                () = stopped(stopping) => return Ok(()),
                permit = Arc::clone(self.permits).acquire_owned(), if !waiting.is_empty() => {
                    let permit = permit.expect("the semaphore is never closed");
                    let Some(next) = waiting.pop_front() else {
                        unreachable!("a slot is awaited only for a waiting message")
                    };
                    tokio::spawn(handle(
                        Arc::clone(self.consumer),
                        Arc::clone(self.publisher),
                        acks.clone(),
                        next,
                        permit,
                    ));
                }
                next = deliveries.next() => match next {
                    None => return Err(CeleryError::Broker {
                        broker: self.consumer.settings().broker.clone(),
                        operation: "consuming",
                        source: "the broker closed the consumer".into(),
                    }),
                    Some((_, Err(error))) => return Err(self.broker_error("consuming")(error)),
                    Some((queue, Ok(delivery))) => {
                        acks.received(delivery.delivery_tag);
                        let original = AmqpMessage::from_lapin(
                            delivery.exchange.as_str(),
                            delivery.routing_key.as_str(),
                            &delivery.properties,
                            delivery.data,
                        );
                        let settings = self.consumer.settings();
                        let decoded = TaskMessage::decode_amqp(&original, &settings.decode);
                        let receipt = self.consumer.receive(&queue, decoded, delivery.redelivered);
                        waiting.push_back(Waiting {
                            queue,
                            tag: delivery.delivery_tag,
                            properties: delivery.properties,
                            body: original.body,
                            receipt,
                        });
                    }
                }
            }
        }
    }

    /// Lets running messages finish (or, after a connection failure, fail to settle and be
    /// redelivered) within the grace period, then flushes the acknowledgements.
    async fn finish(&self, acks: Acks, ack_task: tokio::task::JoinHandle<usize>) {
        let settings = self.consumer.settings();
        let all = u32::try_from(settings.concurrency).unwrap_or(u32::MAX);
        match tokio::time::timeout(settings.grace_period, self.permits.acquire_many(all)).await {
            Ok(done) => drop(done),
            Err(_) => tracing::warn!(
                grace = ?settings.grace_period,
                "grace period over: unfinished messages go back to the queue"
            ),
        }
        let unsettled = acks.finish(ack_task).await;
        if unsettled > 0 {
            tracing::info!(unsettled, "returning unsettled messages to the queue");
            self.consumer.report(BrokerEvent::Requeued {
                count: unsettled as u64,
            });
        }
    }
}

/// Cancels the consumers, so no new delivery arrives while the running ones finish.
async fn cancel(channel: &Channel, tags: &[String]) {
    for tag in tags {
        let _ = channel
            .basic_cancel(
                ShortString::from(tag.as_str()),
                BasicCancelOptions::default(),
            )
            .await;
    }
}

/// Runs a received message in the slot it got, and settles it.
async fn handle<C: Consumer>(
    consumer: Arc<C>,
    publisher: Arc<AmqpPublisher>,
    acks: Acks,
    message: Waiting<C::Receipt>,
    permit: OwnedSemaphorePermit,
) {
    let Waiting {
        queue,
        tag,
        properties,
        body,
        receipt,
    } = message;
    let verdict = consumer.process(receipt).await;
    if matches!(verdict, Verdict::Ack) {
        // The common case, kept out of the settling future: this task stays small (it is
        // allocated per message), and nothing is published.
        drop(permit);
        acks.ack(tag);
        return;
    }
    let raw = AmqpOutgoing {
        exchange: String::new(),
        routing_key: queue.to_string(),
        declare_queue: None,
        properties,
        body,
    };
    // Boxed: retries, dead letters and postponements are the rare case, and their publishing
    // futures would otherwise make every message's task several times larger.
    let settled = Box::pin(tokio::time::timeout(
        consumer.settings().publish_timeout * 2,
        settle(&*consumer, &publisher, &queue, raw, verdict, permit),
    ))
    .await
    .unwrap_or_else(|_| {
        Err(CeleryError::Timeout {
            broker: consumer.settings().broker.clone(),
            operation: "publishing what a message leads to (retry, dead letter, postponement)",
            after: consumer.settings().publish_timeout * 2,
        })
    });
    match settled {
        Ok(()) => acks.ack(tag),
        Err(error) => {
            tracing::error!(
                error = %events_core::text::OneLine(&error),
                "could not publish what this message leads to; returning it to the queue"
            );
            consumer.report(BrokerEvent::Requeued { count: 1 });
            acks.requeue(tag);
        }
    }
}

/// Carries out a verdict other than a plain ack: postpones (through a delay bucket, or here
/// when nearly due), publishes the retry and dead letters. The message is acknowledged after.
async fn settle<C: Consumer>(
    consumer: &C,
    publisher: &AmqpPublisher,
    queue: &str,
    raw: AmqpOutgoing,
    verdict: Verdict,
    permit: OwnedSemaphorePermit,
) -> Result<(), CeleryError> {
    let settings = consumer.settings();
    let publish = |message: AmqpOutgoing| async move {
        tokio::time::timeout(settings.publish_timeout, publisher.publish(message))
            .await
            .unwrap_or_else(|_| Err(publisher.timeout_error()))
    };
    match verdict {
        Verdict::Ack => Ok(()),
        Verdict::Postpone(eta, ..) => {
            drop(permit);
            let remaining = (eta - Utc::now()).to_std().unwrap_or_default();
            let mut message = raw;
            if remaining < Duration::from_secs(1) {
                // Too close for a delay bucket: wait here (not in a handler slot), then put it
                // back on its queue.
                tokio::time::sleep(remaining).await;
                message.declare_queue = Some(queue.to_owned());
            } else {
                message.exchange = publisher.delay_bucket(remaining).await?;
            }
            publish(message).await
        }
        Verdict::Forward { retry, dead } => {
            if let Some(mut retry) = retry {
                retry.routing = Routing::queue(queue);
                let mut outgoing = amqp_outgoing(retry.to_amqp()?);
                outgoing.declare_queue = Some(queue.to_owned());
                publish(outgoing).await?;
            }
            for letter in &dead {
                let base = match &letter.replay {
                    Some(replay) => amqp_outgoing(replay.to_amqp()?),
                    None => raw.clone(),
                };
                publish(amqp_dead_letter(base, letter, queue, &settings.hostname)).await?;
                consumer.report(BrokerEvent::DeadLettered {
                    queue,
                    reason: &letter.reason,
                    stored: true,
                });
            }
            drop(permit);
            Ok(())
        }
    }
}

enum AckCommand {
    Received(u64),
    Ack(u64),
    Requeue(u64),
}

/// Acknowledges deliveries of one channel: contiguous runs with one `multiple` ack, the rest
/// one by one when they have waited.
#[derive(Clone)]
struct Acks {
    commands: mpsc::UnboundedSender<AckCommand>,
}

impl Acks {
    fn spawn(channel: Channel) -> (Self, tokio::task::JoinHandle<usize>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(ack_loop(channel, receiver));
        (Self { commands }, task)
    }

    fn received(&self, tag: u64) {
        let _ = self.commands.send(AckCommand::Received(tag));
    }

    fn ack(&self, tag: u64) {
        let _ = self.commands.send(AckCommand::Ack(tag));
    }

    fn requeue(&self, tag: u64) {
        let _ = self.commands.send(AckCommand::Requeue(tag));
    }

    /// Flushes every pending ack; returns how many deliveries were never settled.
    async fn finish(self, task: tokio::task::JoinHandle<usize>) -> usize {
        drop(self.commands);
        task.await.unwrap_or(0)
    }
}

async fn ack_loop(channel: Channel, mut commands: mpsc::UnboundedReceiver<AckCommand>) -> usize {
    let mut outstanding = BTreeSet::new();
    let mut done = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waited = 0u32;
    let mut open = true;
    while open {
        tokio::select! {
            command = commands.recv() => {
                let mut next = command;
                let mut drained = 0;
                loop {
                    match next {
                        None => { open = false; break; }
                        Some(AckCommand::Received(tag)) => { outstanding.insert(tag); }
                        Some(AckCommand::Ack(tag)) => { done.insert(tag); }
                        Some(AckCommand::Requeue(tag)) => {
                            outstanding.remove(&tag);
                            let _ = channel
                                .basic_nack(tag, BasicNackOptions { multiple: false, requeue: true })
                                .await;
                        }
                    }
                    drained += 1;
                    if drained >= 4096 { break; }
                    match commands.try_recv() {
                        Ok(command) => next = Some(command),
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => { waited += 1; }
        }
        // Everything below the lowest unsettled delivery goes in one `multiple` ack.
        let floor = outstanding.iter().find(|t| !done.contains(*t)).copied();
        let contiguous = match floor {
            Some(floor) => done.range(..floor).next_back().copied(),
            None => done.iter().next_back().copied(),
        };
        if let Some(upto) = contiguous {
            if channel
                .basic_ack(upto, BasicAckOptions { multiple: true })
                .await
                .is_err()
            {
                break;
            }
            outstanding = outstanding.split_off(&(upto + 1));
            done = done.split_off(&(upto + 1));
        }
        // Acks stuck behind a long-running message go one by one, soon.
        if !done.is_empty() && (done.len() >= 64 || waited >= 4 || !open) {
            for tag in std::mem::take(&mut done) {
                outstanding.remove(&tag);
                let _ = channel
                    .basic_ack(tag, BasicAckOptions { multiple: false })
                    .await;
            }
        }
        if done.is_empty() {
            waited = 0;
        }
    }
    outstanding.len()
}
