//! The consumers of the worker's RabbitMQ channel, kept in line with its queue set
//! ([`QueueSet`](crate::broker::queues::QueueSet)): at connect one `basic.consume` per queue of
//! the set as it is then; afterwards, while the channel lives, `basic.cancel` for each queue
//! cancelled and, once declared on a channel of its own, `basic.consume` for each queue added
//! (Celery's `add_consumer` / `cancel_consumer`). Every consumer's deliveries come out of one
//! stream, [`Deliveries`], which never ends by itself: a worker whose last queue was cancelled
//! waits, idle, for the next.
//!
//! A queue added that cannot be declared (declared elsewhere with other arguments, a missing
//! exchange…) fails on its own channel: it is logged and dropped from the set, and the worker
//! goes on. A configured queue that cannot be declared fails the connection, which is retried
//! with backoff, as at start.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::stream::SelectAll;
use futures_util::{Stream, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::topology::declare_consumed;
use crate::broker::consume::{ConsumeSettings, Consumer};
use crate::broker::queues::{ConsumedQueue, QueueWatch};
use crate::error::CeleryError;

/// A delivery, with the queue it came from.
pub(super) type Received = (Arc<String>, Result<Delivery, lapin::Error>);

/// What the follower hands the stream of deliveries.
enum Feed {
    /// A consumer started.
    Started(Tracked),
    /// Following the set failed (the channel or connection broke, or a configured queue cannot
    /// be declared): the session ends and reconnects.
    Failed(Arc<String>, lapin::Error),
}

/// One consumer's deliveries: it ends quietly when this worker cancelled it, and with an error
/// when the broker did (its queue was deleted), so that the session reconnects and declares
/// the queue again, as kombu does.
struct Tracked {
    queue: Arc<String>,
    consumer: lapin::Consumer,
    cancelled: Arc<AtomicBool>,
    ended: bool,
}

impl Stream for Tracked {
    type Item = Received;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.consumer.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(delivery)) => Poll::Ready(Some((Arc::clone(&self.queue), delivery))),
            Poll::Ready(None) => {
                self.ended = true;
                if self.cancelled.load(Ordering::Acquire) {
                    return Poll::Ready(None);
                }
                let error = std::io::Error::other(format!(
                    "the broker cancelled the consumer of queue `{}` (was the queue deleted?)",
                    self.queue
                ));
                Poll::Ready(Some((Arc::clone(&self.queue), Err(error.into()))))
            }
        }
    }
}

/// The deliveries of every consumer of the channel, those started later included.
pub(super) struct Deliveries {
    consumers: SelectAll<Tracked>,
    feed: mpsc::UnboundedReceiver<Feed>,
}

impl Stream for Deliveries {
    type Item = Received;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        while let Poll::Ready(Some(fed)) = self.feed.poll_recv(cx) {
            match fed {
                Feed::Started(consumer) => self.consumers.push(consumer),
                Feed::Failed(queue, error) => return Poll::Ready(Some((queue, Err(error)))),
            }
        }
        match self.consumers.poll_next_unpin(cx) {
            Poll::Ready(Some(received)) => Poll::Ready(Some(received)),
            // No consumer (yet, or any more): wait for the follower to start one.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// A consumer started on the channel.
struct Active {
    queue: String,
    tag: String,
    cancelled: Arc<AtomicBool>,
}

/// The consumers of one channel and the task that keeps them in line with the queue set.
pub(super) struct Consumers {
    active: Arc<Mutex<Vec<Active>>>,
    follower: Mutex<Option<JoinHandle<()>>>,
}

impl Consumers {
    /// Stops following the set and cancels every consumer, so no new delivery arrives while
    /// the running ones finish.
    pub(super) async fn cancel_all(&self, channel: &Channel) {
        let follower = lock(&self.follower).take();
        if let Some(follower) = follower {
            follower.abort();
            // Once it is over, no consumer starts behind this cancel.
            let _ = follower.await;
        }
        let active = std::mem::take(&mut *lock(&self.active));
        for consumer in active {
            consumer.cancelled.store(true, Ordering::Release);
            let _ = channel
                .basic_cancel(
                    ShortString::from(consumer.tag.as_str()),
                    BasicCancelOptions::default(),
                )
                .await;
        }
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        if let Some(follower) = lock(&self.follower).take() {
            follower.abort();
        }
    }
}

/// Starts a consumer on `channel` for every queue of the set (declaring each), then follows
/// the set while the session lasts.
pub(super) async fn start<C: Consumer>(
    consumer: &Arc<C>,
    connection: &Arc<Connection>,
    channel: &Channel,
) -> Result<(Deliveries, Consumers), CeleryError> {
    let mut watch = consumer.settings().queues.watch();
    let wanted = Arc::clone(&watch.borrow_and_update());
    let (feed, fed) = mpsc::unbounded_channel();
    let follower = Follower {
        consumer: Arc::clone(consumer),
        connection: Arc::clone(connection),
        channel: channel.clone(),
        active: Arc::default(),
        feed,
    };
    follower.apply(&wanted, false).await?;
    let active = Arc::clone(&follower.active);
    let task = tokio::spawn(follower.follow(watch));
    Ok((
        Deliveries {
            consumers: SelectAll::new(),
            feed: fed,
        },
        Consumers {
            active,
            follower: Mutex::new(Some(task)),
        },
    ))
}

/// Keeps the consumers of a channel in line with the queue set.
struct Follower<C> {
    consumer: Arc<C>,
    connection: Arc<Connection>,
    channel: Channel,
    active: Arc<Mutex<Vec<Active>>>,
    feed: mpsc::UnboundedSender<Feed>,
}

impl<C: Consumer> Follower<C> {
    fn settings(&self) -> &ConsumeSettings {
        self.consumer.settings()
    }

    fn broker_error(&self, operation: &'static str, error: &lapin::Error) -> CeleryError {
        CeleryError::broker(&self.settings().broker, operation, error)
    }

    /// Follows each change of the set until the session ends (the task is aborted) or the
    /// channel breaks (then the session hears it and reconnects).
    async fn follow(self, mut watch: QueueWatch) {
        while watch.changed().await.is_ok() {
            let wanted = Arc::clone(&watch.borrow_and_update());
            if let Err(error) = self.apply(&wanted, true).await {
                let text = events_core::text::OneLine(&error).to_string();
                let _ = self.feed.send(Feed::Failed(
                    Arc::new(String::new()),
                    std::io::Error::other(text).into(),
                ));
                return;
            }
        }
    }

    /// Cancels the consumers of queues no longer wanted, then starts one for each queue wanted
    /// and not consumed yet; `announce`: log each change (not the consumers started at
    /// connect, which the session logs).
    async fn apply(&self, wanted: &[ConsumedQueue], announce: bool) -> Result<(), CeleryError> {
        let gone: Vec<Active> = {
            let mut active = lock(&self.active);
            let (kept, gone) = std::mem::take(&mut *active)
                .into_iter()
                .partition(|a| wanted.iter().any(|q| q.name == a.queue));
            *active = kept;
            gone
        };
        for consumer in gone {
            consumer.cancelled.store(true, Ordering::Release);
            self.channel
                .basic_cancel(
                    ShortString::from(consumer.tag.as_str()),
                    BasicCancelOptions::default(),
                )
                .await
                .map_err(|e| self.broker_error("basic.cancel", &e))?;
            tracing::info!(queue = %consumer.queue, "no longer consuming from this queue");
        }
        let mut side: Option<Channel> = None;
        let outcome = self.start_new(wanted, &mut side, announce).await;
        if let Some(side) = side {
            let _ = side.close(200, ShortString::from("declared")).await;
        }
        outcome
    }

    async fn start_new(
        &self,
        wanted: &[ConsumedQueue],
        side: &mut Option<Channel>,
        announce: bool,
    ) -> Result<(), CeleryError> {
        for queue in wanted {
            if lock(&self.active).iter().any(|a| a.queue == queue.name) {
                continue;
            }
            match self.declare(queue, side).await {
                Ok(()) => {
                    self.consume(&queue.name).await?;
                    if announce {
                        tracing::info!(queue = %queue.name, "started consuming from this queue");
                    }
                }
                Err(error)
                    if self.connection.status().connected()
                        && !self.settings().queues.is_configured(&queue.name) =>
                {
                    // This queue's own problem: the others go on.
                    tracing::error!(
                        queue = %queue.name,
                        error = %events_core::text::OneLine(&error),
                        "cannot declare the queue added by remote control; not consuming it"
                    );
                    self.settings().queues.cancel(&queue.name);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Declares `queue` on a channel apart from the consuming one (a refused declaration
    /// closes the channel it was made on), opened when first needed.
    async fn declare(
        &self,
        queue: &ConsumedQueue,
        side: &mut Option<Channel>,
    ) -> Result<(), CeleryError> {
        let channel = match side.take() {
            Some(channel) if channel.status().connected() => channel,
            _ => self
                .connection
                .create_channel()
                .await
                .map_err(|e| self.broker_error("channel.open", &e))?,
        };
        let declared = declare_consumed(&channel, queue, &self.settings().queue_arguments).await;
        *side = Some(channel);
        declared.map_err(|(operation, e)| self.broker_error(operation, &e))
    }

    /// `basic.consume` of `queue` on the channel; its deliveries join the stream.
    async fn consume(&self, queue: &str) -> Result<(), CeleryError> {
        let tag = format!("events-celery-{}", uuid::Uuid::new_v4().simple());
        let cancelled = Arc::new(AtomicBool::new(false));
        // Listed before it starts, so that a stop cancels it whatever the moment.
        lock(&self.active).push(Active {
            queue: queue.to_owned(),
            tag: tag.clone(),
            cancelled: Arc::clone(&cancelled),
        });
        let consumer = self
            .channel
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.broker_error("basic.consume", &e))?;
        let _ = self.feed.send(Feed::Started(Tracked {
            queue: Arc::new(queue.to_owned()),
            consumer,
            cancelled,
            ended: false,
        }));
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
