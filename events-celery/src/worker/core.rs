//! What the worker does with one message, whichever broker it came from: decode, route to the
//! event's handlers, run them, and decide how to settle it.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::codec::Json;
use chrono::{DateTime, Utc};
use events_core::{EventDescriptor, FailureCause, Handler, HandlerFailure, Registry};
use tracing::Instrument;

use super::WorkerConfig;
use super::quiet::Loudness;
use crate::codec::{DecodeError, TaskMessage};
use events_core::origin::{self, PublishOrigin};
use events_core::task::{Scoped, TaskContext};

use super::inbox::Delivery;
use events_core::text::OneLine;

/// The custom header a retry carries: the names of the handlers still to run.
pub const PENDING_HANDLERS_HEADER: &str = "x-events-handlers";

/// Why a message went to the dead-letter destination.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    /// What went wrong, in a sentence.
    pub(crate) reason: String,
    /// The handler that exhausted its retries, if that is the reason.
    pub(crate) handler: Option<String>,
    /// What to keep instead of the original message: for an exhausted handler, a message for
    /// that handler alone, ready to replay.
    pub(crate) replay: Option<Box<TaskMessage>>,
}

impl DeadLetter {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: bounded(reason.into()),
            handler: None,
            replay: None,
        }
    }
}

/// The longest reason kept: an error that quotes a hostile message (a 500 KiB string where a
/// number belongs) must not bloat dead letters and log lines with it.
const MAX_REASON_BYTES: usize = 1024;

/// `reason`, at most about [`MAX_REASON_BYTES`]: its beginning and its end (where serde
/// says what it expected), with the middle replaced by a note of how much was cut.
fn bounded(reason: String) -> String {
    // One line first: the reason is logged and kept, and quotes what the message held.
    let reason = events_core::text::one_line(reason);
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let mut head = MAX_REASON_BYTES * 3 / 4;
    while !reason.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = reason.len() - MAX_REASON_BYTES / 4;
    while !reason.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}…({} bytes cut)…{}",
        &reason[..head],
        tail - head,
        &reason[tail..]
    )
}

/// How to settle a message.
pub(crate) enum Verdict {
    /// Done (every handler succeeded, or it expired): acknowledge.
    Ack,
    /// Not due yet: postpone until `eta` without holding a slot, then acknowledge.
    Postpone(DateTime<Utc>),
    /// Publish these (retry and/or dead letter) first, then acknowledge.
    Forward {
        retry: Option<Box<TaskMessage>>,
        dead: Vec<DeadLetter>,
    },
}

/// A decoded message ready to run.
struct Job {
    message: TaskMessage,
    event: Arc<dyn Any + Send + Sync>,
    handlers: Vec<Handler>,
    /// Where what its handlers publish comes from.
    origin: PublishOrigin,
}

/// The worker's shared state: configuration, handlers by event, counters.
pub(crate) struct Core {
    pub(crate) config: WorkerConfig,
    registry: &'static Registry,
    handlers: HashMap<&'static str, Vec<Handler>>,
    timings: HashMap<String, Timing>,
    pub(crate) stats: Arc<WorkerStats>,
    /// Rate limits for the log lines a flood of messages repeats.
    pub(crate) quiet: super::quiet::Quiet,
}

/// Sync handlers whose runs are this short run on the async thread itself; others go to the
/// blocking pool, so a CPU-heavy handler never starves the runtime.
const INLINE_BELOW: Duration = Duration::from_micros(50);
/// Runs measured on the blocking pool before a handler may run inline.
const RUNS_BEFORE_INLINE: u32 = 16;

/// How long a sync handler's runs take: a moving average, updated without locks.
#[derive(Default)]
struct Timing {
    runs: std::sync::atomic::AtomicU32,
    average_ns: AtomicU64,
}

impl Timing {
    fn record(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let runs = self.runs.fetch_add(1, Ordering::Relaxed);
        let old = self.average_ns.load(Ordering::Relaxed);
        let new = if runs == 0 {
            ns
        } else {
            (old.saturating_mul(7) / 8).saturating_add(ns / 8)
        };
        self.average_ns.store(new, Ordering::Relaxed);
    }

    fn is_quick(&self) -> bool {
        self.runs.load(Ordering::Relaxed) >= RUNS_BEFORE_INLINE
            && self.average_ns.load(Ordering::Relaxed) < INLINE_BELOW.as_nanos() as u64
    }
}

impl Core {
    pub(crate) fn new(
        config: WorkerConfig,
        registry: &'static Registry,
        handlers: Vec<Handler>,
        stats: Arc<WorkerStats>,
    ) -> Self {
        let mut by_event: HashMap<&'static str, Vec<Handler>> = HashMap::new();
        let mut timings = HashMap::new();
        for handler in handlers {
            timings.insert(handler.name().to_owned(), Timing::default());
            by_event.entry(handler.event()).or_default().push(handler);
        }
        Self {
            config,
            registry,
            handlers: by_event,
            timings,
            stats,
            quiet: super::quiet::Quiet::default(),
        }
    }

    /// Every handler this worker runs, by event.
    pub(crate) fn handler_count(&self) -> usize {
        self.handlers.values().map(Vec::len).sum()
    }

    /// Decides what to do with a message and, when it is due, runs its handlers.
    pub(crate) async fn process(
        &self,
        decoded: Result<TaskMessage, DecodeError>,
        delivery: Delivery,
    ) -> Verdict {
        let verdict = match self.examine(decoded) {
            Examined::Dead(dead) => Verdict::Forward {
                retry: None,
                dead: vec![dead],
            },
            Examined::Expired(message) => {
                const EXPIRED: &str =
                    "task expired before it could run; discarding it as Celery does";
                if self.quiet.allow(EXPIRED, Loudness::Warn) {
                    tracing::warn!(
                        task_id = message.id.as_str(),
                        task = message.task.as_str(),
                        expires = ?message.headers.expires,
                        "{EXPIRED}"
                    );
                }
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
                Verdict::Ack
            }
            Examined::NotDue(eta) => Verdict::Postpone(eta),
            Examined::Ready(job) => {
                let span = tracing::info_span!(
                    "task",
                    task_id = job.message.id.as_str(),
                    task = job.message.task.as_str(),
                    retries = job.message.headers.retries,
                );
                self.execute(job, delivery).instrument(span).await
            }
        };
        if let Verdict::Forward { dead, .. } = &verdict {
            self.stats
                .dead_lettered
                .fetch_add(dead.len() as u64, Ordering::Relaxed);
        }
        verdict
    }

    fn examine(&self, decoded: Result<TaskMessage, DecodeError>) -> Examined {
        let message = match decoded {
            Ok(message) => message,
            Err(error) => {
                return Examined::Dead(DeadLetter::new(format!("undecodable message: {error}")));
            }
        };
        let prefix = self.config.task_prefix.as_str();
        let Some(name) = message.event_name(prefix) else {
            // An event's name sent as the task name, without the prefix.
            let hint = match self.registry.event(&message.task) {
                Some(event) => format!("; did you mean `{prefix}{}`?", event.name()),
                None => String::new(),
            };
            return Examined::Dead(DeadLetter::new(format!(
                "unknown task `{}`: this worker runs only domain-event tasks named \
                 `{prefix}<event>`{hint}",
                message.task
            )));
        };
        let Some(descriptor) = self.registry.event(name) else {
            // Only names that are actually close: none rather than the least unlike.
            let hint = match self.registry.closest_names(name).as_slice() {
                [] => String::new(),
                close => {
                    let names: Vec<String> =
                        close.iter().map(|n| format!("`{prefix}{n}`")).collect();
                    format!("; did you mean {}?", names.join(" or "))
                }
            };
            return Examined::Dead(DeadLetter::new(format!(
                "unknown task `{}`: no `#[domain_event]` named `{name}` in this worker{hint}",
                message.task
            )));
        };
        let origin = match publish_origin(&message, name) {
            Ok(origin) => origin,
            Err(dead) => return Examined::Dead(dead),
        };
        let now = Utc::now();
        if let Some(expires) = message.headers.expires
            && expires < now
        {
            return Examined::Expired(Box::new(message));
        }
        if let Some(eta) = message.headers.eta
            && eta > now
        {
            return Examined::NotDue(eta.with_timezone(&Utc));
        }
        let event = match message.decode_payload(descriptor) {
            Ok(event) => Arc::from(event),
            Err(error) => return Examined::Dead(DeadLetter::new(format!("{error}"))),
        };
        match self.handlers_for(descriptor, &message) {
            Ok(handlers) => Examined::Ready(Box::new(Job {
                message,
                event,
                handlers,
                origin,
            })),
            Err(dead) => Examined::Dead(dead),
        }
    }

    /// The handlers to run: all of the event's, or on a retry those the message names.
    fn handlers_for(
        &self,
        descriptor: &EventDescriptor,
        message: &TaskMessage,
    ) -> Result<Vec<Handler>, DeadLetter> {
        let all = self
            .handlers
            .get(descriptor.name())
            .cloned()
            .unwrap_or_default();
        let Some((_, pending)) = message
            .headers
            .custom
            .iter()
            .find(|(name, _)| name == PENDING_HANDLERS_HEADER)
        else {
            return Ok(all);
        };
        let Some(names) = pending.as_array() else {
            return Err(DeadLetter::new(format!(
                "header `{PENDING_HANDLERS_HEADER}` must be a list of handler names, got {pending}"
            )));
        };
        let names: Vec<&str> = names.iter().filter_map(Json::as_str).collect();
        let chosen: Vec<Handler> = all
            .into_iter()
            .filter(|h| names.contains(&h.name()))
            .collect();
        if chosen.is_empty() && !names.is_empty() {
            return Err(DeadLetter::new(format!(
                "none of the handlers this retry is for ({}) exist in this worker",
                names.join(", ")
            )));
        }
        Ok(chosen)
    }

    async fn execute(&self, job: Box<Job>, delivery: Delivery) -> Verdict {
        let Job {
            message,
            event,
            handlers,
            origin,
        } = *job;
        if handlers.is_empty() {
            tracing::debug!("no handlers subscribed to event");
        }
        let mut failures = Vec::new();
        // Task context and inbox (worker/inbox.rs): skip what completed, record what succeeds.
        let task = super::inbox::task_context(&message, &delivery);
        let done = self.already_completed(&task, &handlers).await;
        for (handler, done) in handlers.iter().zip(done) {
            if self.skip_completed(handler, &task, done) {
                continue;
            }
            let context = task.for_handler(handler.name());
            let span = tracing::info_span!("handler", handler = handler.name());
            let outcome = self
                .run_handler(handler, &event, &origin, &context)
                .instrument(span)
                .await;
            match outcome {
                Ok(()) => self.record_completion(handler, &context).await,
                Err(failure) => failures.push((handler, failure)),
            }
        }
        self.stats.processed.fetch_add(1, Ordering::Relaxed);
        if failures.is_empty() {
            self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
            return Verdict::Ack;
        }
        let mut again = Vec::new();
        let mut dead = Vec::new();
        for (handler, failure) in failures {
            let limit = handler
                .options()
                .max_retries
                .unwrap_or(self.config.retry.max_retries);
            if message.headers.retries < limit {
                again.push(handler.name().to_owned());
            } else {
                const EXHAUSTED: &str = "handler exhausted its retries; dead-lettering";
                if self.quiet.allow(EXHAUSTED, Loudness::Error) {
                    tracing::error!(
                        handler = handler.name(),
                        retries = message.headers.retries,
                        error = %OneLine(failure.chain()),
                        "{EXHAUSTED}"
                    );
                }
                dead.push(DeadLetter {
                    reason: bounded(format!(
                        "handler `{}` failed after {} retries: {}",
                        handler.name(),
                        message.headers.retries,
                        failure.chain()
                    )),
                    handler: Some(handler.name().to_owned()),
                    replay: Some(Box::new(super::dead_letter::replayable(
                        &message,
                        handler.name(),
                    ))),
                });
            }
        }
        let retry = (!again.is_empty()).then(|| {
            self.stats.retried.fetch_add(1, Ordering::Relaxed);
            Box::new(self.retry_message(&message, again))
        });
        Verdict::Forward { retry, dead }
    }

    async fn run_handler(
        &self,
        handler: &Handler,
        event: &Arc<dyn Any + Send + Sync>,
        origin: &PublishOrigin,
        context: &TaskContext,
    ) -> Result<(), HandlerFailure> {
        let limit = handler.options().time_limit.or(self.config.time_limit);
        if handler.is_async() {
            let run = PollWatch {
                inner: std::pin::pin!(Scoped::new(Some(context.clone()), handler.run(&**event))),
                handler: handler.name(),
                threshold: self.config.blocking_poll,
                stats: &self.stats,
                origin,
            };
            return match limit {
                Some(limit) => tokio::time::timeout(limit, run)
                    .await
                    .unwrap_or_else(|_| Err(timed_out(handler, limit))),
                None => run.await,
            };
        }
        let timing = self.timings.get(handler.name());
        if limit.is_none() && timing.is_some_and(Timing::is_quick) {
            // Measured quick: a thread hop would cost more than the handler.
            let started = std::time::Instant::now();
            let outcome = origin::scope(Some(origin.clone()), || {
                events_core::task::scope(Some(context.clone()), || handler.run_sync(&**event))
            })
            .unwrap_or_else(|| unreachable!("a sync handler runs synchronously"));
            if let Some(timing) = timing {
                timing.record(started.elapsed());
            }
            return outcome;
        }
        // Sync handlers may be CPU-heavy or block: run them off the async threads.
        let (h, e, o, c) = (
            handler.clone(),
            Arc::clone(event),
            origin.clone(),
            context.clone(),
        );
        let task = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let outcome = origin::scope(Some(o), || {
                events_core::task::scope(Some(c), || h.run_sync(&*e))
            })
            .unwrap_or_else(|| unreachable!("a sync handler runs synchronously"));
            (outcome, started.elapsed())
        });
        let joined = match limit {
            Some(limit) => match tokio::time::timeout(limit, task).await {
                Ok(joined) => joined,
                Err(_) => {
                    tracing::error!(
                        handler = handler.name(),
                        "sync handler overran its time limit; its thread is left to finish, the \
                         run counts as failed"
                    );
                    return Err(timed_out(handler, limit));
                }
            },
            None => task.await,
        };
        match joined {
            Ok((outcome, took)) => {
                if let Some(timing) = timing {
                    timing.record(took);
                }
                outcome
            }
            Err(join) => Err(HandlerFailure::new(
                handler,
                FailureCause::Panic(format!("the handler's thread failed: {join}")),
            )),
        }
    }

    /// The retry of `message` for the handlers named, as Celery's `Task.retry` writes it.
    fn retry_message(&self, message: &TaskMessage, handlers: Vec<String>) -> TaskMessage {
        let mut retry = message.clone();
        let delay = self.config.retry.delay(message.headers.retries);
        retry.headers.retries = message.headers.retries + 1;
        retry.headers.parent_id = Some(message.id.clone());
        retry.headers.root_id = message
            .headers
            .root_id
            .clone()
            .or_else(|| Some(message.id.clone()));
        retry.headers.eta = Some((Utc::now() + delay).fixed_offset());
        retry.headers.ignore_result = Some(false);
        retry
            .headers
            .custom
            .retain(|(name, _)| name != PENDING_HANDLERS_HEADER);
        retry.headers.custom.push((
            PENDING_HANDLERS_HEADER.to_owned(),
            Json::Array(handlers.into_iter().map(Json::String).collect()),
        ));
        retry.properties.delivery_tag = None;
        retry.raw_envelope = None;
        tracing::warn!(
            retries = retry.headers.retries,
            delay = ?delay,
            handlers = ?retry.headers.custom.last().map(|(_, v)| v),
            "retrying failed handlers"
        );
        retry
    }
}

/// Where what the handlers of `message` (event `name`) publish comes from; a message already
/// [`MAX_PUBLISH_DEPTH`](events_core::MAX_PUBLISH_DEPTH) publishes deep is a cycle of handlers
/// publishing through the broker, dead-lettered naming it instead of looping forever.
fn publish_origin(message: &TaskMessage, name: &str) -> Result<PublishOrigin, DeadLetter> {
    let header = |wanted: &str| {
        message
            .headers
            .custom
            .iter()
            .find(|(header, _)| header == wanted)
            .map(|(_, value)| value)
    };
    let depth = header(crate::codec::PUBLISH_DEPTH_HEADER)
        .and_then(|depth| depth.as_u64())
        .map_or(0, |depth| u32::try_from(depth).unwrap_or(u32::MAX));
    let chain: Vec<String> = header(crate::codec::PUBLISH_CHAIN_HEADER)
        .and_then(|chain| chain.as_array())
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let origin = PublishOrigin::handling(name, depth, chain);
    if depth as usize >= events_core::MAX_PUBLISH_DEPTH {
        return Err(DeadLetter::new(format!(
            "publish cycle through the broker: this message is {depth} publishes deep ({}); a \
             handler must not publish, directly or through other events' handlers, the event \
             it handles — dead-lettered at the limit of {} instead of looping forever",
            origin.chain().join(" -> "),
            events_core::MAX_PUBLISH_DEPTH
        )));
    }
    Ok(origin)
}

enum Examined {
    Dead(DeadLetter),
    Expired(Box<TaskMessage>),
    NotDue(DateTime<Utc>),
    Ready(Box<Job>),
}

/// An async handler's future, timed poll by poll: a poll longer than `threshold` held a runtime
/// thread (nothing else ran on it meanwhile, and no time limit could fire), which is reported.
struct PollWatch<'a, F> {
    inner: F,
    handler: &'a str,
    threshold: Duration,
    stats: &'a WorkerStats,
    /// Current while the handler is polled: what it publishes comes from here.
    origin: &'a PublishOrigin,
}

impl<F: Future + Unpin> Future for PollWatch<'_, F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.get_mut();
        let started = std::time::Instant::now();
        let inner = &mut this.inner;
        let polled = origin::scope(Some(this.origin.clone()), || {
            std::pin::Pin::new(inner).poll(cx)
        });
        let took = started.elapsed();
        if took >= this.threshold {
            this.stats.blocking_polls.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                handler = this.handler,
                blocked_ms = took.as_millis() as u64,
                "async handler blocked its runtime thread for {took:?} without yielding: other \
                 messages on that thread waited and its time limit could not interrupt it; do \
                 blocking work in a sync handler (run on the blocking pool) or in \
                 tokio::task::spawn_blocking"
            );
        }
        polled
    }
}

fn timed_out(handler: &Handler, limit: Duration) -> HandlerFailure {
    HandlerFailure::new(handler, FailureCause::TimedOut(limit))
}

/// How failed handlers are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries per handler when `#[handler(max_retries = …)]` does not say (default 3).
    pub max_retries: u32,
    /// The delay before the first retry (default 1 s); it doubles each time.
    pub base_delay: Duration,
    /// The longest delay (default 5 minutes).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retries + 1`: exponential backoff, capped, with jitter
    /// (a random amount between half of it and all of it).
    pub fn delay(&self, retries: u32) -> Duration {
        let factor = 2u32.saturating_pow(retries.min(31));
        let full = self.base_delay.saturating_mul(factor).min(self.max_delay);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Counters for each outcome, updated as the worker runs.
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
    /// [`WorkerConfig::blocking_poll_warning`]: each blocked a runtime thread.
    pub blocking_polls: AtomicU64,
    /// Handlers skipped because the [inbox](WorkerConfig::inbox) said they had completed
    /// the task (a redelivery or duplicate); they count as succeeded.
    pub inbox_skipped: AtomicU64,
    /// Inbox calls that failed (the handlers ran, or their completion went unrecorded).
    pub inbox_errors: AtomicU64,
    /// Redis: dead letters dropped because their list held
    /// [`WorkerConfig::dead_letter_max_len`] records (their messages were acknowledged
    /// without a record; also counted in `dead_lettered`).
    pub dead_letters_dropped: AtomicU64,
}

impl WorkerStats {
    /// A snapshot of the counters as `(name, value)` pairs.
    pub fn snapshot(&self) -> [(&'static str, u64); 11] {
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
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_on_character_boundaries() {
        assert_eq!(bounded("short".to_owned()), "short");
        let long = format!(
            "invalid type: string \"{}\", expected u64",
            "é".repeat(300_000)
        );
        let cut = bounded(long);
        assert!(cut.len() < MAX_REASON_BYTES + 40, "{}", cut.len());
        assert!(cut.starts_with("invalid type: string \"éé"), "{cut}");
        assert!(cut.ends_with("éé\", expected u64"), "{cut}");
        assert!(cut.contains(" bytes cut)"), "{cut}");
    }
}
