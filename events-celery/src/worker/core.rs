//! What the worker does with one message, whichever broker it came from: decode, route to the
//! event's handlers, run them, decide how to settle it — and tell every observer what happened
//! (the one place [`WorkerEvent`]s are emitted).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use events_core::origin::{self, PublishOrigin};
use events_core::task::{Scoped, TaskContext};
use events_core::{EventDescriptor, FailureCause, Handler, HandlerFailure, Registry};
use tracing::Instrument;

use super::WorkerConfig;
use super::control::plane::Plane;
use super::events::{HandlerFailed, Log, WorkerEvent, WorkerObserver, WorkerStats};
use super::pending;
use crate::backoff::{Backoff, Jitter};
use crate::broker::consume::{
    BrokerEvent, ConsumeSettings, Consumer, DeadLetter, Parking, Verdict,
};
use crate::broker::queues::QueueSet;
use crate::codec::{DecodeError, TaskMessage};
use crate::quiet::Quiet;

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

/// A dead letter of `message` (when it could be decoded) for `reason`.
fn dead_letter(message: Option<&TaskMessage>, reason: String) -> DeadLetter {
    DeadLetter {
        reason: bounded(reason),
        handler: None,
        replay: None,
        task: message.map(|m| m.task.clone()),
        id: message.map(|m| m.id.clone()),
    }
}

/// A decoded message ready to run.
struct Job {
    message: TaskMessage,
    event: Arc<dyn Any + Send + Sync>,
    handlers: Vec<Handler>,
    /// Where what its handlers publish comes from.
    origin: PublishOrigin,
}

/// The worker's shared state: configuration, handlers by event, observers.
pub(crate) struct Core {
    pub(crate) config: WorkerConfig,
    settings: ConsumeSettings,
    registry: &'static Registry,
    handlers: HashMap<&'static str, Vec<Handler>>,
    timings: HashMap<String, Timing>,
    /// The first observer: the counters.
    stats: Arc<WorkerStats>,
    /// The second: the log lines (rate-limited where a flood repeats them).
    pub(crate) log: Log,
    /// The observers added with `Worker::observe` (and the control plane's).
    observers: Vec<Arc<dyn WorkerObserver>>,
    /// The control plane, for the revoked ids.
    control: Option<Arc<Plane>>,
    /// This core, for what reports after the fact ([`Receipt`], [`Postponing`]).
    me: Weak<Core>,
}

/// A message received and waiting for a slot: [`Core::decide`] takes it; dropped before, it
/// went back to the broker unrun ([`WorkerEvent::Returned`]).
pub(crate) struct Receipt {
    core: Weak<Core>,
    queue: String,
    /// Taken by `decide`.
    decoded: Option<Result<TaskMessage, DecodeError>>,
    redelivered: bool,
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if let Some(decoded) = self.decoded.take()
            && let Some(core) = self.core.upgrade()
        {
            core.emit(WorkerEvent::Returned {
                task: decoded.as_ref().ok(),
                queue: &self.queue,
            });
        }
    }
}

/// A postponed message while the broker parks it: dropped by the broker's consumer once the
/// message has left the worker, which then tells [`WorkerEvent::Postponed`].
struct Postponing {
    core: Weak<Core>,
    task: TaskMessage,
    queue: String,
    eta: DateTime<Utc>,
}

impl Drop for Postponing {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            core.emit(WorkerEvent::Postponed {
                task: &self.task,
                queue: &self.queue,
                eta: self.eta,
            });
        }
    }
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

/// What a message needs, found before running it.
enum Examined {
    Dead(String),
    Expired,
    NotDue(DateTime<Utc>),
    Ready {
        event: Arc<dyn Any + Send + Sync>,
        handlers: Vec<Handler>,
        origin: PublishOrigin,
    },
}

impl Core {
    // Called once, by `Worker::run_until`, with every part the core owns.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: WorkerConfig,
        queues: QueueSet,
        registry: &'static Registry,
        handlers: Vec<Handler>,
        stats: Arc<WorkerStats>,
        observers: Vec<Arc<dyn WorkerObserver>>,
        control: Option<Arc<Plane>>,
        me: Weak<Core>,
    ) -> Self {
        let mut by_event: HashMap<&'static str, Vec<Handler>> = HashMap::new();
        let mut timings = HashMap::new();
        for handler in handlers {
            timings.insert(handler.name().to_owned(), Timing::default());
            by_event.entry(handler.event()).or_default().push(handler);
        }
        let settings = config.consume_settings(queues);
        Self {
            log: Log {
                quiet: Quiet::default(),
                dead_letter_max_len: config.dead_letter_max_len,
            },
            config,
            settings,
            registry,
            handlers: by_event,
            timings,
            stats,
            observers,
            control,
            me,
        }
    }

    /// Every handler this worker runs, by event.
    pub(crate) fn handler_count(&self) -> usize {
        self.handlers.values().map(Vec::len).sum()
    }

    /// Messages whose handlers ran so far.
    pub(crate) fn processed(&self) -> u64 {
        self.stats.processed.load(Ordering::Relaxed)
    }

    /// This worker's name.
    pub(crate) fn hostname(&self) -> &str {
        &self.settings.hostname
    }

    /// Tells every observer: the counters, the log, then those added.
    pub(crate) fn emit(&self, event: WorkerEvent<'_>) {
        self.stats.on_event(&event);
        self.log.on_event(&event);
        for observer in &self.observers {
            observer.on_event(&event);
        }
    }

    /// Announces a message taken from `queue`, before it waits for a slot.
    pub(crate) fn receive(
        &self,
        queue: &str,
        decoded: Result<TaskMessage, DecodeError>,
        redelivered: bool,
    ) -> Receipt {
        if let Ok(message) = &decoded {
            self.emit(WorkerEvent::Received {
                task: message,
                queue,
                at: SystemTime::now(),
            });
        }
        Receipt {
            core: Weak::clone(&self.me),
            queue: queue.to_owned(),
            decoded: Some(decoded),
            redelivered,
        }
    }

    /// Decides what to do with a received message and, when it is due, runs its handlers.
    pub(crate) async fn decide(&self, mut receipt: Receipt) -> Verdict {
        let redelivered = receipt.redelivered;
        let decoded = receipt.decoded.take().expect("a receipt is decided once");
        let queue = receipt.queue.as_str();
        let message = match decoded {
            Ok(message) => message,
            Err(error) => {
                return self.reject(queue, None, format!("undecodable message: {error}"));
            }
        };
        if self
            .control
            .as_ref()
            .is_some_and(|control| control.is_revoked(&message.id))
        {
            self.emit(WorkerEvent::Revoked {
                task: &message,
                queue,
            });
            return Verdict::Ack;
        }
        match self.examine(&message) {
            Examined::Dead(reason) => self.reject(queue, Some(&message), reason),
            Examined::Expired => {
                self.emit(WorkerEvent::Expired {
                    task: &message,
                    queue,
                });
                Verdict::Ack
            }
            // Told once the broker holds it (the consumer drops the parking then).
            Examined::NotDue(eta) => Verdict::Postpone(
                eta,
                Parking::new(Postponing {
                    core: Weak::clone(&self.me),
                    task: message,
                    queue: queue.to_owned(),
                    eta,
                }),
            ),
            Examined::Ready {
                event,
                handlers,
                origin,
            } => {
                let span = tracing::info_span!(
                    "task",
                    task_id = message.id.as_str(),
                    task = message.task.as_str(),
                    retries = message.headers.retries,
                );
                let job = Job {
                    message,
                    event,
                    handlers,
                    origin,
                };
                self.execute(queue, job, redelivered).instrument(span).await
            }
        }
    }

    /// Dead-letters a message that cannot run.
    fn reject(&self, queue: &str, message: Option<&TaskMessage>, reason: String) -> Verdict {
        let dead = dead_letter(message, reason);
        self.emit(WorkerEvent::Rejected {
            task: message,
            queue,
            reason: &dead.reason,
            handler: None,
        });
        Verdict::Forward {
            retry: None,
            dead: vec![dead],
        }
    }

    fn examine(&self, message: &TaskMessage) -> Examined {
        let prefix = self.config.task_prefix.as_str();
        let Some(name) = message.event_name(prefix) else {
            // An event's name sent as the task name, without the prefix.
            let hint = match self.registry.event(&message.task) {
                Some(event) => format!("; did you mean `{prefix}{}`?", event.name()),
                None => String::new(),
            };
            return Examined::Dead(format!(
                "unknown task `{}`: this worker runs only domain-event tasks named \
                 `{prefix}<event>`{hint}",
                message.task
            ));
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
            return Examined::Dead(format!(
                "unknown task `{}`: no `#[domain_event]` named `{name}` in this worker{hint}",
                message.task
            ));
        };
        let origin = match publish_origin(message, name) {
            Ok(origin) => origin,
            Err(reason) => return Examined::Dead(reason),
        };
        let now = Utc::now();
        if let Some(expires) = message.headers.expires
            && expires < now
        {
            return Examined::Expired;
        }
        if let Some(eta) = message.headers.eta
            && eta > now
        {
            return Examined::NotDue(eta.with_timezone(&Utc));
        }
        let event = match message.decode_payload(descriptor) {
            Ok(event) => Arc::from(event),
            Err(error) => return Examined::Dead(format!("{error}")),
        };
        match self.handlers_for(descriptor, message) {
            Ok(handlers) => Examined::Ready {
                event,
                handlers,
                origin,
            },
            Err(reason) => Examined::Dead(reason),
        }
    }

    /// The handlers to run: all of the event's, or on a retry those the message names.
    fn handlers_for(
        &self,
        descriptor: &EventDescriptor,
        message: &TaskMessage,
    ) -> Result<Vec<Handler>, String> {
        let all = self
            .handlers
            .get(descriptor.name())
            .cloned()
            .unwrap_or_default();
        let names = match pending::read(message) {
            None => return Ok(all),
            Some(Ok(names)) => names,
            Some(Err(pending)) => {
                return Err(format!(
                    "header `{}` must be a list of handler names, got {pending}",
                    pending::PENDING_HANDLERS_HEADER
                ));
            }
        };
        let chosen: Vec<Handler> = all
            .into_iter()
            .filter(|h| names.contains(&h.name()))
            .collect();
        if chosen.is_empty() && !names.is_empty() {
            return Err(format!(
                "none of the handlers this retry is for ({}) exist in this worker",
                names.join(", ")
            ));
        }
        Ok(chosen)
    }

    async fn execute(&self, queue: &str, job: Job, redelivered: bool) -> Verdict {
        let Job {
            message,
            event,
            handlers,
            origin,
        } = job;
        if handlers.is_empty() {
            tracing::debug!("no handlers subscribed to event");
        }
        self.emit(WorkerEvent::Started {
            task: &message,
            queue,
            at: SystemTime::now(),
            handlers: &handlers,
        });
        let started = Instant::now();
        let mut failures = Vec::new();
        // The task context (set around each handler) and the inbox (worker/inbox.rs): skip
        // what already completed this task, record what succeeds.
        let task = super::inbox::task_context(&message, queue, redelivered);
        let done = self.already_completed(&task, &handlers).await;
        for (handler, done) in handlers.iter().zip(done) {
            if done {
                self.emit(WorkerEvent::Skipped {
                    task: &message,
                    queue,
                    handler: handler.name(),
                });
                continue;
            }
            let context = task.for_handler(handler.name());
            let span = tracing::info_span!("handler", handler = handler.name());
            let outcome = self
                .run_handler(handler, &event, &origin, &context)
                .instrument(span)
                .await;
            if outcome.is_ok() {
                self.record_completion(handler, &context).await;
            }
            if let Err(failure) = outcome {
                let limit = handler
                    .options()
                    .max_retries
                    .unwrap_or(self.config.retry.max_retries);
                failures.push(HandlerFailed {
                    failure,
                    will_retry: message.headers.retries < limit,
                });
            }
        }
        let runtime = started.elapsed();
        if failures.is_empty() {
            self.emit(WorkerEvent::Succeeded {
                task: &message,
                queue,
                runtime,
            });
            return Verdict::Ack;
        }
        self.emit(WorkerEvent::Failed {
            task: &message,
            queue,
            runtime,
            failures: &failures,
        });
        let mut again = Vec::new();
        let mut dead = Vec::new();
        for failed in failures {
            let handler = failed.failure.handler();
            if failed.will_retry {
                again.push(handler.to_owned());
                continue;
            }
            let letter = DeadLetter {
                reason: bounded(format!(
                    "handler `{handler}` failed after {} retries: {}",
                    message.headers.retries,
                    failed.failure.chain()
                )),
                handler: Some(handler.to_owned()),
                replay: Some(Box::new(pending::replayable(&message, handler))),
                task: Some(message.task.clone()),
                id: Some(message.id.clone()),
            };
            self.emit(WorkerEvent::Rejected {
                task: Some(&message),
                queue,
                reason: &letter.reason,
                handler: Some(handler),
            });
            dead.push(letter);
        }
        let retry = (!again.is_empty()).then(|| {
            let (retry, delay) = self.retry_message(&message, &again);
            self.emit(WorkerEvent::Retried {
                task: &message,
                queue,
                retry: &retry,
                handlers: &again,
                delay,
            });
            Box::new(retry)
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
                core: self,
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
            let started = Instant::now();
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
            let started = Instant::now();
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

    /// The retry of `message` for the handlers named, as Celery's `Task.retry` writes it, and
    /// how long it waits.
    fn retry_message(&self, message: &TaskMessage, handlers: &[String]) -> (TaskMessage, Duration) {
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
        pending::set(&mut retry, handlers.iter().cloned());
        (retry, delay)
    }
}

impl Consumer for Core {
    type Receipt = Receipt;

    fn settings(&self) -> &ConsumeSettings {
        &self.settings
    }

    fn quiet(&self) -> &Quiet {
        &self.log.quiet
    }

    fn receive(
        &self,
        queue: &str,
        decoded: Result<TaskMessage, DecodeError>,
        redelivered: bool,
    ) -> Receipt {
        Core::receive(self, queue, decoded, redelivered)
    }

    fn process(&self, receipt: Receipt) -> impl Future<Output = Verdict> + Send {
        self.decide(receipt)
    }

    fn report(&self, event: BrokerEvent<'_>) {
        match event {
            BrokerEvent::Consuming => self.emit(WorkerEvent::Connected),
            BrokerEvent::ConnectionLost { error } => {
                self.emit(WorkerEvent::ConnectionLost { error });
            }
            BrokerEvent::Refused {
                queue,
                size,
                stored,
            } => {
                self.emit(WorkerEvent::Refused {
                    queue,
                    size,
                    limit: self.settings.decode.limit(),
                    stored,
                });
                if !stored {
                    let reason = format!("message of {size} bytes over the size limit");
                    self.emit(WorkerEvent::DeadLetterDropped {
                        queue,
                        reason: &reason,
                    });
                }
            }
            BrokerEvent::DeadLettered {
                queue,
                reason,
                stored: true,
            } => self.emit(WorkerEvent::DeadLettered { queue, reason }),
            BrokerEvent::DeadLettered {
                queue,
                reason,
                stored: false,
            } => self.emit(WorkerEvent::DeadLetterDropped { queue, reason }),
            BrokerEvent::Requeued { count } => self.emit(WorkerEvent::Requeued { count }),
        }
    }
}

/// Where what the handlers of `message` (event `name`) publish comes from; a message already
/// [`MAX_PUBLISH_DEPTH`](events_core::MAX_PUBLISH_DEPTH) publishes deep is a cycle of handlers
/// publishing through the broker, dead-lettered naming it instead of looping forever.
fn publish_origin(message: &TaskMessage, name: &str) -> Result<PublishOrigin, String> {
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
        return Err(format!(
            "publish cycle through the broker: this message is {depth} publishes deep ({}); a \
             handler must not publish, directly or through other events' handlers, the event \
             it handles — dead-lettered at the limit of {} instead of looping forever",
            origin.chain().join(" -> "),
            events_core::MAX_PUBLISH_DEPTH
        ));
    }
    Ok(origin)
}

/// An async handler's future, timed poll by poll: a poll longer than `threshold` held a runtime
/// thread (nothing else ran on it meanwhile, and no time limit could fire), which is reported.
struct PollWatch<'a, F> {
    inner: F,
    handler: &'a str,
    threshold: Duration,
    core: &'a Core,
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
        let started = Instant::now();
        let inner = &mut this.inner;
        let polled = origin::scope(Some(this.origin.clone()), || {
            std::pin::Pin::new(inner).poll(cx)
        });
        let took = started.elapsed();
        if took >= this.threshold {
            this.core.emit(WorkerEvent::BlockingPoll {
                handler: this.handler,
                blocked: took,
            });
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
        Backoff::nth(self.base_delay, self.max_delay, retries, Jitter::Below)
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
