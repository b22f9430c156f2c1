//! The worker's one stream of events — what happens to each message and to the worker — emitted
//! only by the worker's core, and the [`WorkerObserver`]s that hear it: [`WorkerStats`], the
//! worker's log lines, and any added with [`Worker::observe`](super::Worker::observe).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use events_core::text::OneLine;
use events_core::{Handler, HandlerFailure};

use crate::broker::topology::dead_letter_queue;
use crate::codec::{DecodeError, TaskMessage};
use crate::quiet::{Loudness, Quiet};

/// What happened in the worker, told as it happens.
///
/// Events borrow what they describe (the message, the failures), so that emitting one costs
/// nothing when nobody keeps it: an observer copies what it needs. `task` is the decoded
/// message, with everything Celery's monitoring events carry — its id (`uuid`), task name,
/// `args`/`kwargs` (its body), `retries`, `eta`, `expires`, `root_id` and `parent_id` (its
/// headers). Events of one message come in this order: `Received` (as soon as the worker takes
/// it, before it waits for a free slot), then either `Returned`, `Revoked`, `Expired`,
/// `Postponed` or `Rejected`, or `Started` followed by `Succeeded` or by `Failed` (then one
/// `Rejected` per handler out of retries, and `Retried` when some have retries left).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum WorkerEvent<'a> {
    /// The worker started (Celery's `worker-online`).
    Online {
        /// The worker's name ([`WorkerConfig::hostname`](super::WorkerConfig::hostname)).
        hostname: &'a str,
        /// The queues it consumes.
        queues: &'a [String],
    },
    /// Every [`HEARTBEAT`] while the worker runs (Celery's `worker-heartbeat`).
    Heartbeat {
        /// The worker's name.
        hostname: &'a str,
        /// Messages whose handlers ran so far.
        processed: u64,
    },
    /// The worker stopped (Celery's `worker-offline`).
    Offline {
        /// The worker's name.
        hostname: &'a str,
    },
    /// Connected to the broker and consuming (at start, and after each reconnection).
    Connected,
    /// The connection to the broker broke or could not be made; the worker reconnects.
    ConnectionLost {
        /// What went wrong.
        error: &'a str,
    },
    /// A message was taken and decoded (Celery's `task-received`): from now until it starts
    /// (or leaves), it is held by this worker — waiting for a free slot (`celery inspect
    /// reserved`) or, its `eta` still ahead, for its time (`celery inspect scheduled`).
    Received {
        /// The message.
        task: &'a TaskMessage,
        /// The queue it came from.
        queue: &'a str,
        /// When it was received.
        at: SystemTime,
    },
    /// Its handlers start (Celery's `task-started`).
    Started {
        /// The message.
        task: &'a TaskMessage,
        /// The queue it came from.
        queue: &'a str,
        /// When they started.
        at: SystemTime,
        /// The handlers about to run.
        handlers: &'a [Handler],
    },
    /// Every handler succeeded (Celery's `task-succeeded`).
    Succeeded {
        /// The message.
        task: &'a TaskMessage,
        /// The queue it came from.
        queue: &'a str,
        /// How long its handlers took, together.
        runtime: Duration,
    },
    /// Some handlers failed (Celery's `task-failed`): each is retried if it has retries left,
    /// else dead-lettered.
    Failed {
        /// The message.
        task: &'a TaskMessage,
        /// The queue it came from.
        queue: &'a str,
        /// How long its handlers took, together.
        runtime: Duration,
        /// Each failed handler: its name and error, and whether it will be retried.
        failures: &'a [HandlerFailed],
    },
    /// A retry was decided for the handlers with retries left (Celery's `task-retried`); it is
    /// published as the original message is acknowledged.
    Retried {
        /// The message that failed.
        task: &'a TaskMessage,
        /// The queue it came from (and the retry goes to).
        queue: &'a str,
        /// The retry: `retries + 1`, its `eta`, the handlers it is for.
        retry: &'a TaskMessage,
        /// The handlers retried, by name.
        handlers: &'a [String],
        /// How long the retry waits.
        delay: Duration,
    },
    /// The message goes to the dead-letter destination (Celery's `task-rejected`).
    Rejected {
        /// The message, when it could be decoded.
        task: Option<&'a TaskMessage>,
        /// The queue it came from.
        queue: &'a str,
        /// Why, in a sentence.
        reason: &'a str,
        /// The handler that exhausted its retries, if that is why.
        handler: Option<&'a str>,
    },
    /// A message over the size limit was dead-lettered by the broker without being read.
    Refused {
        /// The queue it came from.
        queue: &'a str,
        /// Its size in bytes.
        size: u64,
        /// The limit ([`WorkerConfig::max_message_bytes`](super::WorkerConfig::max_message_bytes)).
        limit: usize,
        /// Whether the dead letter was stored (else its list was full: a
        /// [`DeadLetterDropped`](Self::DeadLetterDropped) follows).
        stored: bool,
    },
    /// Its `expires` passed before it could run: discarded, as Celery does (Celery's
    /// `task-revoked` with `expired`).
    Expired {
        /// The message.
        task: &'a TaskMessage,
        /// The queue it came from.
        queue: &'a str,
    },
    /// It was revoked (`celery control revoke`) before it ran: acknowledged without running
    /// (Celery's `task-revoked`).
    Revoked {
        /// The message.
        task: &'a TaskMessage,
        /// The queue it came from.
        queue: &'a str,
    },
    /// Not due yet: it left the worker to wait in the broker until its `eta` (told once the
    /// broker holds it: parked in RabbitMQ's delay queue or Redis's postponed set, or, due
    /// within a second on RabbitMQ, back on its queue after waiting that long in memory).
    Postponed {
        /// The message.
        task: &'a TaskMessage,
        /// The queue it came from.
        queue: &'a str,
        /// When it is due.
        eta: DateTime<Utc>,
    },
    /// A message received but not run went back to the broker (the worker stopped, or lost
    /// its connection, while the message waited for a slot); the broker delivers it again.
    Returned {
        /// The message, when it could be decoded.
        task: Option<&'a TaskMessage>,
        /// The queue it came from.
        queue: &'a str,
    },
    /// A dead letter was stored at its destination.
    DeadLettered {
        /// The queue it came from.
        queue: &'a str,
        /// Why it was dead-lettered.
        reason: &'a str,
    },
    /// Redis: a dead letter was dropped, its list holding
    /// [`WorkerConfig::dead_letter_max_len`](super::WorkerConfig::dead_letter_max_len)
    /// records (the message was acknowledged without a record).
    DeadLetterDropped {
        /// The queue it came from.
        queue: &'a str,
        /// Why it was dead-lettered.
        reason: &'a str,
    },
    /// Messages went back to their queue (shutdown, or a failure to settle them).
    Requeued {
        /// How many.
        count: u64,
    },
    /// A handler was not run because the [inbox](super::WorkerConfig::inbox) says it already
    /// completed this task (a redelivery or a duplicate); it counts as succeeded.
    Skipped {
        /// The message.
        task: &'a TaskMessage,
        /// The queue it came from.
        queue: &'a str,
        /// The handler skipped.
        handler: &'a str,
    },
    /// The [inbox](super::WorkerConfig::inbox) could not be asked or written: the handlers
    /// ran anyway (at least once, as without an inbox), or a completion went unrecorded.
    InboxFailed {
        /// What went wrong.
        error: &'a str,
    },
    /// A poll of an async handler held its runtime thread longer than
    /// [`WorkerConfig::blocking_poll_warning`](super::WorkerConfig::blocking_poll_warning).
    BlockingPoll {
        /// The handler.
        handler: &'a str,
        /// How long the poll took.
        blocked: Duration,
    },
}

/// How often [`WorkerEvent::Heartbeat`] comes (Celery's default heartbeat interval).
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// A handler that failed, as [`WorkerEvent::Failed`] tells it.
#[derive(Debug)]
#[non_exhaustive]
pub struct HandlerFailed {
    /// The failure: the handler's name and its error.
    pub failure: HandlerFailure,
    /// Whether it will be retried (else it is dead-lettered).
    pub will_retry: bool,
}

/// Hears every [`WorkerEvent`], as it happens, on the thread where it happens.
///
/// `on_event` runs inside the worker's hot path: keep it short and never block (hand the work
/// to a channel or a task instead). A closure `Fn(&WorkerEvent<'_>)` is an observer too.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use events_celery::{WorkerEvent, WorkerObserver};
///
/// #[derive(Default)]
/// struct Failures(AtomicU64);
///
/// impl WorkerObserver for Failures {
///     fn on_event(&self, event: &WorkerEvent<'_>) {
///         if let WorkerEvent::Failed { failures, .. } = event {
///             self.0.fetch_add(failures.len() as u64, Ordering::Relaxed);
///         }
///     }
/// }
/// // let worker = Worker::new(config)?.observe(Failures::default());
/// ```
pub trait WorkerObserver: Send + Sync + 'static {
    /// Hears one event.
    fn on_event(&self, event: &WorkerEvent<'_>);
}

impl<F> WorkerObserver for F
where
    F: Fn(&WorkerEvent<'_>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &WorkerEvent<'_>) {
        self(event);
    }
}

/// Counters for each outcome, updated as the worker runs: the first observer of the worker's
/// events.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Messages whose handlers ran (successfully or not).
    pub processed: AtomicU64,
    /// Messages whose handlers all succeeded.
    pub succeeded: AtomicU64,
    /// Retry messages published.
    pub retried: AtomicU64,
    /// Dead letters published.
    pub dead_lettered: AtomicU64,
    /// Messages discarded because they expired.
    pub expired: AtomicU64,
    /// Messages postponed until their eta.
    pub postponed: AtomicU64,
    /// Messages returned to the queue (shutdown, or a failure to settle them).
    pub requeued: AtomicU64,
    /// Polls of async handlers that ran longer than
    /// [`WorkerConfig::blocking_poll_warning`](super::WorkerConfig::blocking_poll_warning):
    /// each blocked a runtime thread.
    pub blocking_polls: AtomicU64,
    /// Redis: dead letters dropped because their list held
    /// [`WorkerConfig::dead_letter_max_len`](super::WorkerConfig::dead_letter_max_len) records
    /// (their messages were acknowledged without a record; also counted in `dead_lettered`).
    pub dead_letters_dropped: AtomicU64,
    /// Handlers skipped because the [inbox](super::WorkerConfig::inbox) said they had
    /// completed the task (a redelivery or duplicate); they count as succeeded.
    pub inbox_skipped: AtomicU64,
    /// Inbox calls that failed (the handlers ran, or their completion went unrecorded).
    pub inbox_errors: AtomicU64,
    /// Monitoring events (Celery's `worker-*` / `task-*`) not sent: the background
    /// publisher's queue was full ([`WorkerConfig::event_queue_capacity`](super::WorkerConfig::event_queue_capacity)),
    /// the broker refused them, or they were still unsent when the worker stopped. The worker
    /// never waits for its events.
    pub events_dropped: AtomicU64,
    /// Task results not stored in the [result backend](super::WorkerConfig::result_backend):
    /// the writer's queue was full, the backend could not be reached (the writer retries with
    /// backoff; results made meanwhile wait in the queue), or they were still unwritten when
    /// the worker stopped. The worker never waits for its results.
    pub results_dropped: AtomicU64,
}

impl WorkerStats {
    /// A snapshot of the counters as `(name, value)` pairs.
    pub fn snapshot(&self) -> [(&'static str, u64); 13] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("processed", get(&self.processed)),
            ("succeeded", get(&self.succeeded)),
            ("retried", get(&self.retried)),
            ("dead_lettered", get(&self.dead_lettered)),
            ("expired", get(&self.expired)),
            ("postponed", get(&self.postponed)),
            ("requeued", get(&self.requeued)),
            ("blocking_polls", get(&self.blocking_polls)),
            ("dead_letters_dropped", get(&self.dead_letters_dropped)),
            ("inbox_skipped", get(&self.inbox_skipped)),
            ("inbox_errors", get(&self.inbox_errors)),
            ("events_dropped", get(&self.events_dropped)),
            ("results_dropped", get(&self.results_dropped)),
        ]
    }
}

impl WorkerObserver for WorkerStats {
    fn on_event(&self, event: &WorkerEvent<'_>) {
        let add = |counter: &AtomicU64, n: u64| {
            counter.fetch_add(n, Ordering::Relaxed);
        };
        match *event {
            WorkerEvent::Succeeded { .. } => {
                add(&self.processed, 1);
                add(&self.succeeded, 1);
            }
            WorkerEvent::Failed { .. } => add(&self.processed, 1),
            WorkerEvent::Retried { .. } => add(&self.retried, 1),
            WorkerEvent::Rejected { .. } | WorkerEvent::Refused { .. } => {
                add(&self.dead_lettered, 1);
            }
            WorkerEvent::Expired { .. } => add(&self.expired, 1),
            WorkerEvent::Postponed { .. } => add(&self.postponed, 1),
            WorkerEvent::Requeued { count } => add(&self.requeued, count),
            WorkerEvent::BlockingPoll { .. } => add(&self.blocking_polls, 1),
            WorkerEvent::DeadLetterDropped { .. } => add(&self.dead_letters_dropped, 1),
            WorkerEvent::Skipped { .. } => add(&self.inbox_skipped, 1),
            WorkerEvent::InboxFailed { .. } => add(&self.inbox_errors, 1),
            WorkerEvent::Online { .. }
            | WorkerEvent::Heartbeat { .. }
            | WorkerEvent::Offline { .. }
            | WorkerEvent::Connected
            | WorkerEvent::ConnectionLost { .. }
            | WorkerEvent::Received { .. }
            | WorkerEvent::Started { .. }
            | WorkerEvent::Revoked { .. }
            | WorkerEvent::Returned { .. }
            | WorkerEvent::DeadLettered { .. } => {}
        }
    }
}

/// The worker's log lines about messages, as an observer: the lines a flood repeats are rate
/// limited ([`Quiet`]).
#[derive(Debug)]
pub(crate) struct Log {
    pub(crate) quiet: Quiet,
    /// For the "dead-letter list full" line.
    pub(crate) dead_letter_max_len: usize,
}

impl WorkerObserver for Log {
    fn on_event(&self, event: &WorkerEvent<'_>) {
        match *event {
            WorkerEvent::Expired { task, .. } => {
                const EXPIRED: &str =
                    "task expired before it could run; discarding it as Celery does";
                if self.quiet.allow(EXPIRED, Loudness::Warn) {
                    tracing::warn!(
                        task_id = task.id.as_str(),
                        task = task.task.as_str(),
                        expires = ?task.headers.expires,
                        "{EXPIRED}"
                    );
                }
            }
            WorkerEvent::Failed { task, failures, .. } => {
                for failed in failures.iter().filter(|f| !f.will_retry) {
                    const EXHAUSTED: &str = "handler exhausted its retries; dead-lettering";
                    if self.quiet.allow(EXHAUSTED, Loudness::Error) {
                        tracing::error!(
                            handler = failed.failure.handler(),
                            retries = task.headers.retries,
                            error = %OneLine(failed.failure.chain()),
                            "{EXHAUSTED}"
                        );
                    }
                }
            }
            WorkerEvent::Retried {
                retry,
                handlers,
                delay,
                ..
            } => {
                tracing::warn!(
                    retries = retry.headers.retries,
                    delay = ?delay,
                    handlers = ?handlers,
                    "retrying failed handlers"
                );
            }
            WorkerEvent::Refused {
                queue,
                size,
                limit,
                stored: true,
            } => {
                const REFUSED: &str = "message dead-lettered without being read: raise \
                    `WorkerConfig::max_message_bytes` and replay it if it should run";
                if self.quiet.allow(REFUSED, Loudness::Error) {
                    let size = usize::try_from(size).unwrap_or(usize::MAX);
                    tracing::error!(
                        reason = %DecodeError::TooLarge { size, limit },
                        queue,
                        "{REFUSED}"
                    );
                }
            }
            WorkerEvent::DeadLettered { queue, reason } => {
                const DEAD: &str = "message dead-lettered";
                if self.quiet.allow(DEAD, Loudness::Error) {
                    tracing::error!(reason, queue, "{DEAD}");
                }
            }
            WorkerEvent::DeadLetterDropped { queue, reason } => {
                const DROPPED: &str = "dead-letter list full: message dropped without a record \
                    (replay or trim `<queue>.dead_letter`, or raise \
                    `WorkerConfig::dead_letter_max_len`)";
                if self.quiet.allow(DROPPED, Loudness::Error) {
                    tracing::error!(
                        queue,
                        dead_letter_list = %dead_letter_queue(queue),
                        max_len = self.dead_letter_max_len,
                        reason = %OneLine(reason),
                        "{DROPPED}"
                    );
                }
            }
            WorkerEvent::Skipped { task, handler, .. } => {
                tracing::debug!(
                    task_id = task.id.as_str(),
                    handler,
                    "handler already completed this task (inbox): skipped"
                );
            }
            WorkerEvent::InboxFailed { error } => {
                const FAILED: &str = "inbox unavailable; handlers run at least once without it";
                if self.quiet.allow(FAILED, Loudness::Warn) {
                    tracing::warn!(error = %OneLine(error), "{FAILED}");
                }
            }
            WorkerEvent::BlockingPoll { handler, blocked } => {
                tracing::warn!(
                    handler,
                    blocked_ms = blocked.as_millis() as u64,
                    "async handler blocked its runtime thread for {blocked:?} without yielding: \
                     other messages on that thread waited and its time limit could not \
                     interrupt it; do blocking work in a sync handler (run on the blocking \
                     pool) or in tokio::task::spawn_blocking"
                );
            }
            _ => {}
        }
    }
}
