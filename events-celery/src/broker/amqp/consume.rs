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
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::ShortString;
use lapin::{Channel, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use super::consumers::{self, Consumers, Deliveries, Received};
use super::dead_letter::amqp_dead_letter;
use super::{AmqpOutgoing, AmqpPublisher, amqp_outgoing};
use crate::backoff::Backoff;
use crate::broker::consume::{BrokerEvent, Consumer, Verdict};
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
        // Closing returns every unacknowledged message to its queue. Bounded: a broker that
        // never answers the close must not keep the worker from stopping (the socket goes
        // with the connection, and RabbitMQ requeues what it delivered on that).
        let closing = connection.close(200, ShortString::from("worker stopping"));
        if tokio::time::timeout(SHUTDOWN_STEP, closing).await.is_err() {
            tracing::warn!(
                after = ?SHUTDOWN_STEP,
                "RabbitMQ did not confirm closing the connection; dropping it"
            );
        }
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
    ) -> Result<Option<Arc<Connection>>, CeleryError> {
        let settings = self.consumer.settings();
        let url = &settings.broker;
        let limit = settings.publish_timeout;
        let connecting = tokio::time::timeout(limit, super::connect(url));
        tokio::select! {
            biased;
            () = stopped(stopping) => Ok(None),
            connected = connecting => match connected {
                Ok(Ok(connection)) => Ok(Some(Arc::new(connection))),
                Ok(Err(e)) => Err(CeleryError::connect(url, &e)),
                Err(_) => Err(CeleryError::Timeout {
                    broker: url.clone(),
                    operation: "connecting",
                    after: limit,
                }),
            },
        }
    }

    /// Opens the consuming channel and starts a consumer on each queue of the set (declared
    /// through the topology), following the set from then on; returns the channel, the
    /// deliveries and the consumers.
    async fn declare_and_consume(
        &self,
        connection: &Arc<Connection>,
    ) -> Result<(Channel, Deliveries, Consumers), CeleryError> {
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
        let (deliveries, consumers) = consumers::start(self.consumer, connection, &channel).await?;
        Ok((channel, deliveries, consumers))
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
    async fn finish(&self, acks: Acks, ack_task: AckTask) {
        let settings = self.consumer.settings();
        let all = u32::try_from(settings.concurrency).unwrap_or(u32::MAX);
        let deadline = tokio::time::Instant::now() + settings.grace_period;
        match tokio::time::timeout_at(deadline, self.permits.acquire_many(all)).await {
            Ok(done) => drop(done),
            Err(_) => tracing::warn!(
                grace = ?settings.grace_period,
                "grace period over: unfinished messages go back to the queue"
            ),
        }
        let unsettled = acks.finish(ack_task, deadline).await;
        if unsettled > 0 {
            tracing::info!(unsettled, "returning unsettled messages to the queue");
            self.consumer.report(BrokerEvent::Requeued {
                count: unsettled as u64,
            });
        }
    }
}

/// The longest one step of a shutdown waits for the broker (cancelling the consumers,
/// flushing the acknowledgements, closing the connection): a broker that stops answering
/// must not keep the worker from stopping.
const SHUTDOWN_STEP: Duration = Duration::from_secs(5);

/// Cancels the consumers, so no new delivery arrives while the running ones finish. Bounded
/// by [`SHUTDOWN_STEP`]: if RabbitMQ does not confirm, deliveries that still arrive are never
/// handed to a handler and go back to their queue with the connection.
async fn cancel(channel: &Channel, tags: &Consumers) {
    if tokio::time::timeout(SHUTDOWN_STEP, tags.cancel_all(channel))
        .await
        .is_err()
    {
        tracing::warn!(
            after = ?SHUTDOWN_STEP,
            "RabbitMQ did not confirm cancelling the consumers; stopping anyway"
        );
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
    if !consumer.settings().queues.contains(&queue) {
        // Its queue was cancelled (`cancel_consumer`) after the broker sent it: it goes back
        // to the queue unrun, for the queue's other consumers.
        drop(receipt);
        drop(permit);
        consumer.report(BrokerEvent::Requeued { count: 1 });
        acks.requeue(tag);
        return;
    }
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
    fn spawn(channel: Channel) -> (Self, AckTask) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let (finish, finishing) = oneshot::channel();
        let handle = tokio::spawn(ack_loop(channel, receiver, finishing));
        (Self { commands }, AckTask { handle, finish })
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

    /// Flushes every pending ack; returns how many deliveries were never settled (they go
    /// back to their queue when the connection closes).
    ///
    /// Messages still settling (a postponement or a retry being published, which gave its
    /// handler slot back) hold clones of `self`: the flush waits for them until the grace
    /// period's `deadline` (at least [`SHUTDOWN_STEP`] more). What is still running after that
    /// settles nothing (its acknowledgement is dropped, and the message is redelivered), so a
    /// handler that never returns cannot keep the worker from stopping.
    async fn finish(self, mut task: AckTask, deadline: tokio::time::Instant) -> usize {
        drop(self.commands);
        let deadline = deadline.max(tokio::time::Instant::now() + SHUTDOWN_STEP);
        if let Ok(unsettled) = tokio::time::timeout_at(deadline, &mut task.handle).await {
            return unsettled.unwrap_or(0);
        }
        tracing::warn!("messages still running after the grace period go back to the queue");
        let _ = task.finish.send(());
        match tokio::time::timeout(SHUTDOWN_STEP, &mut task.handle).await {
            Ok(unsettled) => unsettled.unwrap_or(0),
            Err(_) => {
                task.handle.abort();
                tracing::warn!(
                    after = ?SHUTDOWN_STEP,
                    "RabbitMQ did not take the last acknowledgements; those messages will be \
                     redelivered"
                );
                0
            }
        }
    }
}

/// The acknowledging task: it ends when every [`Acks`] is gone, or when told to finish.
struct AckTask {
    /// Resolves to the number of deliveries never settled.
    handle: tokio::task::JoinHandle<usize>,
    /// Flush what is settled and end now, though some [`Acks`] remain (messages running past
    /// the grace period).
    finish: oneshot::Sender<()>,
}

async fn ack_loop(
    channel: Channel,
    mut commands: mpsc::UnboundedReceiver<AckCommand>,
    mut finishing: oneshot::Receiver<()>,
) -> usize {
    let mut ledger = Ledger::default();
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
                        Some(AckCommand::Received(tag)) => ledger.received(tag),
                        Some(AckCommand::Ack(tag)) => { ledger.done.insert(tag); }
                        Some(AckCommand::Requeue(tag)) => {
                            ledger.outstanding.remove(&tag);
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
            _ = &mut finishing => { open = false; }
        }
        if let Some(upto) = ledger.multiple_upto() {
            if channel
                .basic_ack(upto, BasicAckOptions { multiple: true })
                .await
                .is_err()
            {
                break;
            }
            ledger.acked_upto(upto);
        }
        // Acks stuck behind a long-running message go one by one, soon.
        if !ledger.done.is_empty() && (ledger.done.len() >= 64 || waited >= 4 || !open) {
            for tag in std::mem::take(&mut ledger.done) {
                ledger.outstanding.remove(&tag);
                let _ = channel
                    .basic_ack(tag, BasicAckOptions { multiple: false })
                    .await;
            }
        }
        if ledger.done.is_empty() {
            waited = 0;
        }
    }
    ledger.outstanding.len()
}

/// The most deliveries received ahead of a gap the [`Ledger`] keeps track of; past it, acks
/// that the gap holds back go one by one.
const EARLY_MAX: usize = 1 << 16;

/// What the ack loop knows of one channel's deliveries, to decide what one `multiple` ack may
/// cover: only deliveries received and handled. RabbitMQ numbers a channel's deliveries 1, 2,
/// 3…, but deliveries of several consumers (several queues) reach the worker out of that order;
/// a `multiple` ack past a delivery not received yet would acknowledge it before it ran (lost
/// if the worker then dies) and make its own ack an error that closes the channel.
struct Ledger {
    /// Received, not acknowledged at the broker yet.
    outstanding: BTreeSet<u64>,
    /// Handled, their ack not sent yet.
    done: BTreeSet<u64>,
    /// Every delivery numbered below it was received.
    seen_below: u64,
    /// Deliveries received above a gap.
    early: BTreeSet<u64>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            outstanding: BTreeSet::new(),
            done: BTreeSet::new(),
            seen_below: 1,
            early: BTreeSet::new(),
        }
    }
}

impl Ledger {
    fn received(&mut self, tag: u64) {
        self.outstanding.insert(tag);
        if tag == self.seen_below {
            self.seen_below += 1;
            while self.early.remove(&self.seen_below) {
                self.seen_below += 1;
            }
        } else if tag > self.seen_below {
            self.early.insert(tag);
            if self.early.len() > EARLY_MAX {
                // Forgetting them only holds `multiple` acks back: never wrong, only slower.
                self.early.clear();
            }
        }
    }

    /// The delivery a `multiple` ack may go up to: the highest handled one with every delivery
    /// below it received and handled (or settled already).
    fn multiple_upto(&self) -> Option<u64> {
        let unhandled = self
            .outstanding
            .iter()
            .find(|t| !self.done.contains(*t))
            .copied()
            .unwrap_or(u64::MAX);
        self.done
            .range(..unhandled.min(self.seen_below))
            .next_back()
            .copied()
    }

    /// A `multiple` ack up to `upto` went out.
    fn acked_upto(&mut self, upto: u64) {
        self.outstanding = self.outstanding.split_off(&(upto + 1));
        self.done = self.done.split_off(&(upto + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multiple_ack_never_covers_a_delivery_not_received_yet() {
        let mut ledger = Ledger::default();
        // Queue A got deliveries 1 and 2, queue B delivery 3; B's came out before A's second.
        ledger.received(1);
        ledger.received(3);
        ledger.done.insert(3);
        ledger.done.insert(1);
        assert_eq!(ledger.multiple_upto(), Some(1), "2 is not received yet");
        ledger.acked_upto(1);
        ledger.received(2);
        assert_eq!(ledger.multiple_upto(), None, "2 is running");
        ledger.done.insert(2);
        assert_eq!(ledger.multiple_upto(), Some(3));
        ledger.acked_upto(3);
        assert!(ledger.outstanding.is_empty() && ledger.done.is_empty());
        // In order, as with one queue: everything handled in one ack.
        for tag in 4..=10 {
            ledger.received(tag);
            ledger.done.insert(tag);
        }
        assert_eq!(ledger.multiple_upto(), Some(10));
    }

    #[test]
    fn a_running_delivery_holds_multiple_acks_below_it() {
        let mut ledger = Ledger::default();
        for tag in 1..=5 {
            ledger.received(tag);
        }
        for tag in [1, 2, 4, 5] {
            ledger.done.insert(tag);
        }
        assert_eq!(ledger.multiple_upto(), Some(2));
        // A requeued delivery is settled: no longer holds anything back.
        ledger.outstanding.remove(&3);
        assert_eq!(ledger.multiple_upto(), Some(5));
    }

    #[test]
    fn too_many_deliveries_past_a_gap_only_hold_multiple_acks_back() {
        let mut ledger = Ledger::default();
        for tag in 2..(EARLY_MAX as u64 + 3) {
            ledger.received(tag);
            ledger.done.insert(tag);
        }
        assert!(ledger.early.len() <= EARLY_MAX);
        assert_eq!(ledger.multiple_upto(), None, "1 is still missing");
        ledger.received(1);
        ledger.done.insert(1);
        assert_eq!(ledger.multiple_upto(), Some(1));
    }
}
