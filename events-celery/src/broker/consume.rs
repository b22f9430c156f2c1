//! The contract between the worker and a broker's consumer: what the consumer needs to know
//! ([`ConsumeSettings`]), what the worker decides for each message ([`Verdict`]), what the
//! consumer tells back ([`BrokerEvent`]), and the [`Consumer`] the worker implements.
//!
//! Each message goes through the consumer in two steps: as soon as it is taken from the broker
//! and decoded, [`Consumer::receive`] announces it (it is then *reserved*: held by this worker,
//! waiting for a slot); once a slot is free, [`Consumer::process`] decides and runs it. A
//! receipt dropped without being processed means the message went back to the broker unrun.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::BrokerUrl;
use super::queues::QueueSet;
use super::topology::QueueArguments;
use crate::codec::{DecodeError, DecodeOptions, TaskMessage};
use crate::quiet::Quiet;

/// What a broker's consumer needs to know: the worker's configuration, as far as it concerns
/// the broker.
#[derive(Debug, Clone)]
pub(crate) struct ConsumeSettings {
    pub(crate) broker: BrokerUrl,
    /// The queues consumed: the configured ones at start, then as `add_consumer` /
    /// `cancel_consumer` change them; each transport follows it.
    pub(crate) queues: QueueSet,
    /// How the consumed queues (and their dead-letter queues) are declared.
    pub(crate) queue_arguments: QueueArguments,
    /// How many messages run at once.
    pub(crate) concurrency: usize,
    /// How many messages may be fetched ahead (RabbitMQ: per consumer; Redis: in all).
    pub(crate) prefetch: u16,
    pub(crate) grace_period: Duration,
    pub(crate) visibility_timeout: Duration,
    pub(crate) restore_interval: Duration,
    pub(crate) decode: DecodeOptions,
    pub(crate) redis_fetchers: usize,
    pub(crate) redis_idle_poll: Duration,
    /// How long publishing a retry, dead letter or postponed message may take; also bounds
    /// connecting.
    pub(crate) publish_timeout: Duration,
    pub(crate) reconnect_max_delay: Duration,
    pub(crate) dead_letter_max_len: usize,
    /// This worker's name, for dead-letter records.
    pub(crate) hostname: String,
}

/// Why a message goes to the dead-letter destination.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    /// What went wrong, in a sentence (bounded).
    pub(crate) reason: String,
    /// The handler that exhausted its retries, if that is the reason.
    pub(crate) handler: Option<String>,
    /// What to keep instead of the original message: for an exhausted handler, a message for
    /// that handler alone, ready to replay.
    pub(crate) replay: Option<Box<TaskMessage>>,
    /// The message's task and id, when it could be decoded.
    pub(crate) task: Option<String>,
    pub(crate) id: Option<String>,
}

/// How to settle a message: decided by the worker, carried out by the broker's consumer (one
/// place per broker).
pub(crate) enum Verdict {
    /// Done (every handler succeeded, or it expired): acknowledge.
    Ack,
    /// Not due yet: postpone until `eta` without holding a slot, then acknowledge. The
    /// [`Parking`] is dropped once the message has left the worker (parked in the broker, or
    /// back on its queue after a short wait in memory): keep the verdict until then.
    Postpone(
        DateTime<Utc>,
        #[allow(dead_code, reason = "kept for its `Drop` alone")] Parking,
    ),
    /// Publish these (retry and/or dead letters) first, then acknowledge.
    Forward {
        retry: Option<Box<TaskMessage>>,
        dead: Vec<DeadLetter>,
    },
}

/// What the worker keeps of a postponed message while the broker's consumer carries the
/// postponement out: dropping it tells the worker that the message is no longer held here.
pub(crate) struct Parking(#[allow(dead_code, reason = "kept for its `Drop` alone")] Box<dyn Send>);

impl Parking {
    /// Wraps the worker's guard (whatever its `Drop` does when the message has left).
    pub(crate) fn new(guard: impl Send + 'static) -> Self {
        Self(Box::new(guard))
    }
}

/// What a broker's consumer tells the worker, beyond the messages themselves.
#[derive(Debug)]
pub(crate) enum BrokerEvent<'a> {
    /// Connected and consuming (first time, or after a loss).
    Consuming,
    /// The connection broke (or could not be made); the consumer is reconnecting.
    ConnectionLost { error: &'a str },
    /// A message over the size limit went to the dead-letter destination without being read
    /// (`stored`), or was dropped because that destination was full.
    Refused {
        queue: &'a str,
        size: u64,
        stored: bool,
    },
    /// A dead letter was stored (`stored`), or dropped because its destination was full.
    DeadLettered {
        queue: &'a str,
        reason: &'a str,
        stored: bool,
    },
    /// Messages went back to their queue (shutdown, or a failure to settle them).
    Requeued { count: u64 },
}

/// The worker, as a broker's consumer sees it.
pub(crate) trait Consumer: Send + Sync + 'static {
    /// A message [received](Self::receive) and not processed yet; dropped unprocessed, it tells
    /// the worker that the message went back to the broker without running.
    type Receipt: Send + 'static;

    /// The settings.
    fn settings(&self) -> &ConsumeSettings;

    /// Rate limits for the consumer's own repeated log lines.
    fn quiet(&self) -> &Quiet;

    /// Announces a message taken from `queue`, as soon as it is taken and decoded — before it
    /// waits for a slot; `redelivered` when the broker says it delivered the message before.
    fn receive(
        &self,
        queue: &str,
        decoded: Result<TaskMessage, DecodeError>,
        redelivered: bool,
    ) -> Self::Receipt;

    /// Decides what to do with a received message and, when it is due, runs it (called with a
    /// slot held).
    fn process(&self, receipt: Self::Receipt) -> impl Future<Output = Verdict> + Send;

    /// Hears what happened at the broker.
    fn report(&self, event: BrokerEvent<'_>);
}
