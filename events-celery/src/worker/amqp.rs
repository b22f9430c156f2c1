//! Consuming from RabbitMQ: per-consumer prefetch, acknowledgements after the handlers ran
//! (batched with `multiple` where they are contiguous), reconnection with backoff.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::core::{Core, Verdict};
use super::dead_letter::amqp_dead_letter;
use super::quiet::Loudness;
use super::{Backoff, pause};
use crate::broker::{AmqpOutgoing, AmqpPublisher, QueueArguments, amqp_outgoing};
use crate::codec::{AmqpMessage, Routing, TaskMessage};
use crate::error::CeleryError;

/// The longest delay bucket: 2^21 s, about 24 days; longer waits take several hops.
const MAX_BUCKET_EXPONENT: u32 = 21;

pub(crate) async fn run(
    core: Arc<Core>,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), CeleryError> {
    let publisher = Arc::new(AmqpPublisher::new(
        core.config.broker.clone(),
        QueueArguments {
            max_priority: core.config.queue_max_priority,
        },
    ));
    let permits = Arc::new(Semaphore::new(core.config.concurrency));
    let mut backoff = Backoff::new(core.config.reconnect_max_delay);
    loop {
        match session(&core, &publisher, &permits, &mut stopping, &mut backoff).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                let delay = backoff.step();
                tracing::error!(
                    error = %events_core::text::OneLine(&error),
                    retry_in = ?delay,
                    "consuming from RabbitMQ failed; reconnecting"
                );
                if pause(&mut stopping, delay).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Resolves once the worker is asked to stop.
pub(crate) async fn stopped(stopping: &mut watch::Receiver<bool>) {
    loop {
        if *stopping.borrow_and_update() {
            return;
        }
        if stopping.changed().await.is_err() {
            return;
        }
    }
}

async fn session(
    core: &Arc<Core>,
    publisher: &Arc<AmqpPublisher>,
    permits: &Arc<Semaphore>,
    stopping: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Result<(), CeleryError> {
    let url = &core.config.broker;
    let broker_error =
        |operation: &'static str| move |e: lapin::Error| CeleryError::broker(url, operation, &e);
    // Connecting is bounded in time and gives way to a stop: a broker that accepts the socket
    // but never completes the handshake must not wedge the worker.
    let limit = core.config.publish_timeout;
    let connecting = tokio::time::timeout(limit, crate::broker::connect_amqp(url));
    let connection = tokio::select! {
        biased;
        () = stopped(stopping) => return Ok(()),
        connected = connecting => match connected {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                return Err(CeleryError::connect(url, &e));
            }
            Err(_) => {
                return Err(CeleryError::Timeout {
                    broker: url.clone(),
                    operation: "connecting",
                    after: limit,
                });
            }
        },
    };
    let channel = connection
        .create_channel()
        .await
        .map_err(broker_error("channel.open"))?;
    // Per-consumer prefetch (global = false): what RabbitMQ and quorum queues support.
    channel
        .basic_qos(core.config.prefetch, BasicQosOptions { global: false })
        .await
        .map_err(broker_error("basic.qos"))?;
    let arguments = QueueArguments {
        max_priority: core.config.queue_max_priority,
    }
    .to_field_table();
    let mut streams = Vec::new();
    let mut tags = Vec::new();
    for queue in &core.config.queues {
        channel
            .queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments.clone(),
            )
            .await
            .map_err(broker_error("queue.declare"))?;
        let tag = format!("events-celery-{}", uuid::Uuid::new_v4().simple());
        let consumer = channel
            .basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from(tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker_error("basic.consume"))?;
        let queue = Arc::new(queue.clone());
        streams.push(consumer.map(move |d| (Arc::clone(&queue), d)));
        tags.push(tag);
    }
    backoff.reset();
    tracing::info!(broker = %url, queues = ?core.config.queues, "consuming from RabbitMQ");
    let (acks, ack_task) = Acks::spawn(channel.clone());
    let mut deliveries = futures_util::stream::select_all(streams);
    let outcome = loop {
        tokio::select! {
            biased;
            () = stopped(stopping) => break Ok(()),
            next = deliveries.next() => match next {
                None => break Err(CeleryError::Broker {
                    broker: url.clone(),
                    operation: "consuming",
                    source: "the broker closed the consumer".into(),
                }),
                Some((_, Err(error))) => break Err(broker_error("consuming")(error)),
                Some((queue, Ok(delivery))) => {
                    acks.received(delivery.delivery_tag);
                    let permit = Arc::clone(permits)
                        .acquire_owned()
                        .await
                        .expect("the semaphore is never closed");
                    tokio::spawn(handle(
                        Arc::clone(core),
                        Arc::clone(publisher),
                        acks.clone(),
                        queue,
                        delivery,
                        permit,
                    ));
                }
            }
        }
    };
    if outcome.is_ok() {
        for tag in &tags {
            let _ = channel
                .basic_cancel(
                    ShortString::from(tag.as_str()),
                    BasicCancelOptions::default(),
                )
                .await;
        }
    }
    // Let running messages finish (or, after a connection failure, fail to settle and be
    // redelivered) within the grace period.
    let all = u32::try_from(core.config.concurrency).unwrap_or(u32::MAX);
    match tokio::time::timeout(core.config.grace_period, permits.acquire_many(all)).await {
        Ok(done) => drop(done),
        Err(_) => tracing::warn!(
            grace = ?core.config.grace_period,
            "grace period over: unfinished messages go back to the queue"
        ),
    }
    let unsettled = acks.finish(ack_task).await;
    if unsettled > 0 {
        core.stats
            .requeued
            .fetch_add(unsettled as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(unsettled, "returning unsettled messages to the queue");
    }
    // Closing returns every unacknowledged message to its queue.
    let _ = connection
        .close(200, ShortString::from("worker stopping"))
        .await;
    outcome
}

async fn handle(
    core: Arc<Core>,
    publisher: Arc<AmqpPublisher>,
    acks: Acks,
    queue: Arc<String>,
    delivery: Delivery,
    permit: OwnedSemaphorePermit,
) {
    let tag = delivery.delivery_tag;
    let original = AmqpMessage::from_lapin(
        delivery.exchange.as_str(),
        delivery.routing_key.as_str(),
        &delivery.properties,
        delivery.data,
    );
    let decoded = TaskMessage::decode_amqp(&original, &core.config.decode);
    let delivered = super::inbox::Delivery {
        queue: queue.to_string(),
        redelivered: delivery.redelivered,
    };
    let verdict = core.process(decoded, delivered).await;
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
        properties: delivery.properties,
        body: original.body,
    };
    // Boxed: retries, dead letters and postponements are the rare case, and their publishing
    // futures would otherwise make every message's task several times larger.
    let settled = Box::pin(tokio::time::timeout(
        core.config.publish_timeout * 2,
        settle(&core, &publisher, &queue, raw, verdict, permit),
    ))
    .await
    .unwrap_or_else(|_| {
        Err(CeleryError::Config(
            "settling the message timed out".to_owned(),
        ))
    });
    match settled {
        Ok(()) => acks.ack(tag),
        Err(error) => {
            tracing::error!(
                error = %events_core::text::OneLine(&error),
                "could not publish what this message leads to; returning it to the queue"
            );
            core.stats
                .requeued
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            acks.requeue(tag);
        }
    }
}

async fn settle(
    core: &Core,
    publisher: &AmqpPublisher,
    queue: &str,
    raw: AmqpOutgoing,
    verdict: Verdict,
    permit: OwnedSemaphorePermit,
) -> Result<(), CeleryError> {
    let publish = |message: AmqpOutgoing| async move {
        tokio::time::timeout(core.config.publish_timeout, publisher.publish(message))
            .await
            .unwrap_or_else(|_| {
                Err(CeleryError::Timeout {
                    broker: core.config.broker.clone(),
                    operation: "publishing",
                    after: core.config.publish_timeout,
                })
            })
    };
    match verdict {
        Verdict::Ack => Ok(()),
        Verdict::Postpone(eta) => {
            drop(permit);
            core.stats
                .postponed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let remaining = (eta - Utc::now()).to_std().unwrap_or_default();
            let mut message = raw;
            if remaining < Duration::from_secs(1) {
                // Too close for a delay bucket: wait here (not in a handler slot), then put it
                // back on its queue.
                tokio::time::sleep(remaining).await;
                message.declare_queue = Some(queue.to_owned());
            } else {
                let exponent = (63 - remaining.as_secs().leading_zeros()).min(MAX_BUCKET_EXPONENT);
                message.exchange = publisher.delay_bucket(1 << exponent).await?;
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
                publish(amqp_dead_letter(base, letter, queue)).await?;
                const DEAD: &str = "message dead-lettered";
                if core.quiet.allow(DEAD, Loudness::Error) {
                    tracing::error!(reason = letter.reason.as_str(), queue, "{DEAD}");
                }
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
