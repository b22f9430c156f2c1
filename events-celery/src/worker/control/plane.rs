//! The control plane at work: the observer that turns the worker's events into Celery
//! monitoring events (published by a background task through a bounded queue, so a slow
//! broker never slows the worker: events that do not fit are dropped and counted), the loop
//! that answers the worker's mailbox (`celery inspect`, `celery control`, Flower) through the
//! dispatcher and carries out its actions, and the view of the tasks this worker holds that
//! those answers show (`inspect active`, `reserved`, `scheduled`, `query_task`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, FixedOffset, Utc};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{
    Action, BrokerInfo, ControlConfig, ControlState, EventBuilder, LamportClock, QueueInfo,
    ScheduledTask, TaskInfo, WorkerCounters, WorkerSnapshot,
};
use crate::backoff::{Backoff, Jitter};
use crate::broker::control::ControlLink;
use crate::broker::queues::{Added, ConsumedQueue, QueueSet};
use crate::broker::{BrokerKind, BrokerUrl};
use crate::codec::{
    EventSource, Json, JsonMap, PidboxRequest, PreparedMessage, TaskEvent, TaskEventBatch,
    TaskMessage, WorkerEventKind, pidbox_reply, round_loadavg, utcoffset_hours,
};
use crate::worker::WorkerConfig;
use crate::worker::events::{WorkerEvent, WorkerObserver, WorkerStats};

/// What the observer hands the publisher: built into a message there, off the hot path.
enum Pending {
    Worker(WorkerEventKind),
    Task(TaskEvent, f64),
    /// Everything before it has been published (or given up): tell the sender.
    Flush(oneshot::Sender<()>),
}

/// Celery's timer priority of every eta task (`inspect scheduled` shows it, not the message's).
const SCHEDULED_PRIORITY: i64 = 6;

/// A task this worker holds, as `inspect` shows it.
struct Held {
    /// The order it was received in (listings follow it).
    seq: u64,
    info: TaskInfo,
    /// Its `eta`, if it has one.
    eta: Option<DateTime<FixedOffset>>,
}

/// Tasks by id. One id may be held twice (a duplicate message, or a postponed message
/// received again before its parking was told): each id holds a list, oldest first.
#[derive(Default)]
struct ById(HashMap<String, Vec<Held>>);

impl ById {
    fn insert(&mut self, id: &str, held: Held) {
        match self.0.get_mut(id) {
            Some(list) => list.push(held),
            None => {
                self.0.insert(id.to_owned(), vec![held]);
            }
        }
    }

    /// Removes the oldest held under `id`.
    fn take(&mut self, id: &str) -> Option<Held> {
        let list = self.0.get_mut(id)?;
        let held = list.remove(0);
        if list.is_empty() {
            self.0.remove(id);
        }
        Some(held)
    }

    fn len(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }

    /// Every task held, in the order received.
    fn in_order(&self) -> Vec<&Held> {
        let mut all: Vec<&Held> = self.0.values().flatten().collect();
        all.sort_unstable_by_key(|held| held.seq);
        all
    }
}

/// A round of events for the broker: its messages, how many events they hold, and the
/// flushes waiting for it.
struct Round {
    messages: Vec<PreparedMessage>,
    count: u64,
    flushed: Vec<oneshot::Sender<()>>,
}

/// A round being published.
type Sending<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), crate::error::CeleryError>> + Send + 'a>,
>;

/// The publisher's attempts: after a failure, none before the backoff says.
struct Attempts {
    failures: u32,
    backoff: Backoff,
    retry_at: Option<tokio::time::Instant>,
}

impl Attempts {
    fn new() -> Self {
        Self {
            failures: 0,
            backoff: Backoff::new(
                Duration::from_millis(200),
                Duration::from_secs(30),
                Jitter::Below,
            ),
            retry_at: None,
        }
    }

    /// Whether the backoff after a failure still runs.
    fn waiting(&self) -> bool {
        self.retry_at
            .is_some_and(|at| tokio::time::Instant::now() < at)
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!("monitoring events are published again");
        }
        self.failures = 0;
        self.backoff.reset();
        self.retry_at = None;
    }

    fn failed(&mut self, error: &crate::error::CeleryError) {
        if self.failures == 0 {
            tracing::warn!(%error, "cannot publish monitoring events; dropping them until the broker takes them again");
        }
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(tokio::time::Instant::now() + self.backoff.step());
    }
}

/// The worker's state the control plane reports.
#[derive(Default)]
struct Tracked {
    /// Received, not started: waiting for a slot, or (their eta ahead) for their time.
    waiting: ById,
    /// Running.
    active: ById,
    /// Messages received so far (the next `seq`).
    received: u64,
    /// Tasks processed, per name, in first-seen order.
    total: Vec<(String, u64)>,
}

impl Tracked {
    /// Whether `event` changes what is tracked.
    fn follows(event: &WorkerEvent<'_>) -> bool {
        matches!(
            event,
            WorkerEvent::Received { .. }
                | WorkerEvent::Started { .. }
                | WorkerEvent::Succeeded { .. }
                | WorkerEvent::Failed { .. }
                | WorkerEvent::Revoked { .. }
                | WorkerEvent::Expired { .. }
                | WorkerEvent::Postponed { .. }
                | WorkerEvent::Returned { .. }
                | WorkerEvent::Rejected { .. }
        )
    }

    /// Follows one event: a task is received (held, waiting), then started (active), then
    /// done — or it leaves without running (revoked, expired, postponed into the broker,
    /// returned to it, rejected).
    fn hear(&mut self, event: &WorkerEvent<'_>) {
        match *event {
            WorkerEvent::Received { task, queue, .. } => {
                let info = task_info(task, queue, None);
                let seq = self.received;
                self.received += 1;
                self.waiting.insert(
                    &task.id,
                    Held {
                        seq,
                        info,
                        eta: task.headers.eta,
                    },
                );
            }
            WorkerEvent::Started {
                task, queue, at, ..
            } => {
                let mut held = self.waiting.take(&task.id).unwrap_or_else(|| {
                    let seq = self.received;
                    self.received += 1;
                    Held {
                        seq,
                        info: task_info(task, queue, None),
                        eta: task.headers.eta,
                    }
                });
                held.info.time_start = Some(unix(at));
                held.info.worker_pid = Some(std::process::id());
                self.active.insert(&task.id, held);
            }
            WorkerEvent::Revoked { task, .. }
            | WorkerEvent::Expired { task, .. }
            | WorkerEvent::Postponed { task, .. }
            | WorkerEvent::Returned {
                task: Some(task), ..
            }
            | WorkerEvent::Rejected {
                task: Some(task),
                handler: None,
                ..
            } => {
                self.waiting.take(&task.id);
            }
            WorkerEvent::Succeeded { task, .. } | WorkerEvent::Failed { task, .. } => {
                self.active.take(&task.id);
                match self.total.iter_mut().find(|(name, _)| *name == task.task) {
                    Some((_, count)) => *count += 1,
                    None => self.total.push((task.task.clone(), 1)),
                }
            }
            _ => {}
        }
    }

    /// The tasks held, into `snapshot`, as Celery's timer sorts them at `now`: a task whose
    /// eta is ahead is scheduled; once it has come, the task is reserved (waiting for a slot).
    fn fill(&self, snapshot: &mut WorkerSnapshot, now: DateTime<Utc>) {
        snapshot.active = self
            .active
            .in_order()
            .into_iter()
            .map(|held| held.info.clone())
            .collect();
        for held in self.waiting.in_order() {
            match held.eta {
                Some(eta) if eta > now => snapshot.scheduled.push(ScheduledTask {
                    eta: Some(crate::codec::isoformat(&eta)),
                    priority: SCHEDULED_PRIORITY,
                    request: held.info.clone(),
                }),
                _ => snapshot.reserved.push(held.info.clone()),
            }
        }
        snapshot.total = self.total.clone();
    }
}

/// The control plane of one worker.
pub(crate) struct Plane {
    hostname: String,
    link: ControlLink,
    clock: Mutex<LamportClock>,
    builder: Mutex<EventBuilder>,
    worker_events: bool,
    task_events: AtomicBool,
    state: Mutex<ControlState>,
    any_revoked: AtomicBool,
    tracked: Mutex<Tracked>,
    queue: mpsc::Sender<Pending>,
    /// Events in the queue.
    queued: AtomicU64,
    /// Events the publisher has taken from the queue and not yet sent or given up (the round
    /// being sent and the next one).
    in_flight: AtomicU64,
    stats: Arc<WorkerStats>,
    stop: Arc<watch::Sender<bool>>,
    started: Instant,
    snapshot_base: WorkerSnapshot,
    max_request_bytes: usize,
    /// The queues consumed, which `add_consumer` / `cancel_consumer` change.
    queues: QueueSet,
    /// `x-max-priority` of every queue consumed (`inspect active_queues`).
    max_priority: Option<u8>,
}

/// The tasks the plane runs; [`Plane::finish`] ends them.
pub(crate) struct PlaneTasks {
    publisher: JoinHandle<()>,
    mailbox: Option<JoinHandle<()>>,
}

/// How long the last events (`worker-offline`) may take to go out at shutdown.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// How long closing the connection may take at shutdown (a broker that stopped answering
/// never acknowledges the close).
pub(crate) const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// Events the publisher takes from its queue in one round at most (all that queued up, at the
/// default capacity): a round's messages go out in one pipelined write.
const ROUND: usize = 16_384;

/// Task events in one `task.multi` message at most.
const MULTI: usize = 256;

impl Plane {
    /// Starts the plane for a worker with `config`, running `registered` task names.
    pub(crate) fn start(
        config: &WorkerConfig,
        registered: Vec<String>,
        queues: QueueSet,
        stats: Arc<WorkerStats>,
        stop: Arc<watch::Sender<bool>>,
    ) -> (Arc<Self>, PlaneTasks) {
        let link = ControlLink::new(&config.broker);
        Self::start_with(config, link, registered, queues, stats, stop)
    }

    /// [`start`](Self::start) with the broker link given.
    pub(super) fn start_with(
        config: &WorkerConfig,
        link: ControlLink,
        registered: Vec<String>,
        queues: QueueSet,
        stats: Arc<WorkerStats>,
        stop: Arc<watch::Sender<bool>>,
    ) -> (Arc<Self>, PlaneTasks) {
        let hostname = config.node_name();
        let source = EventSource {
            hostname: hostname.clone(),
            pid: std::process::id(),
            utcoffset: utcoffset_hours(chrono::Local::now().offset().local_minus_utc()),
        };
        let task_events = config.task_events;
        let builder = EventBuilder::new(source, super::super::HEARTBEAT.as_secs_f64(), task_events);
        let state = ControlState::new(
            ControlConfig {
                hostname: hostname.clone(),
                read_only: config.control_read_only,
                events_available: true,
            },
            task_events,
        );
        let (queue, receiver) = mpsc::channel(config.event_queue_capacity.max(16));
        let plane = Arc::new(Self {
            link,
            clock: Mutex::new(LamportClock::new()),
            builder: Mutex::new(builder),
            worker_events: config.worker_events,
            task_events: AtomicBool::new(task_events),
            state: Mutex::new(state),
            any_revoked: AtomicBool::new(false),
            tracked: Mutex::new(Tracked::default()),
            queue,
            queued: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            stats,
            stop,
            started: Instant::now(),
            snapshot_base: base_snapshot(config, registered),
            max_request_bytes: crate::codec::DEFAULT_MAX_PIDBOX_BYTES,
            queues,
            max_priority: config.queue_max_priority,
            hostname,
        });
        let publisher = tokio::spawn(Arc::clone(&plane).publish_loop(receiver));
        let mailbox = config
            .remote_control
            .then(|| tokio::spawn(Arc::clone(&plane).mailbox_loop()));
        (plane, PlaneTasks { publisher, mailbox })
    }

    /// Whether `id` was revoked (`celery control revoke`): the worker drops it unrun.
    pub(crate) fn is_revoked(&self, id: &str) -> bool {
        self.any_revoked.load(Ordering::Relaxed) && lock(&self.state).revoked.contains(id)
    }

    /// Publishes what is queued (`worker-offline` last), stops reading the mailbox, closes:
    /// within [`FLUSH_LIMIT`] and [`CLOSE_LIMIT`], whatever the broker does. Events not sent
    /// by then are counted as dropped.
    pub(crate) async fn finish(&self, tasks: PlaneTasks) {
        if let Some(mailbox) = tasks.mailbox {
            mailbox.abort();
        }
        let deadline = tokio::time::Instant::now() + FLUSH_LIMIT;
        let (done, flushed) = oneshot::channel();
        let sent = tokio::time::timeout_at(deadline, self.queue.send(Pending::Flush(done))).await;
        if matches!(sent, Ok(Ok(()))) {
            let _ = tokio::time::timeout_at(deadline, flushed).await;
        }
        // What is still queued or being sent will not go out.
        tasks.publisher.abort();
        let _ = tokio::time::timeout(CLOSE_LIMIT, tasks.publisher).await;
        let unsent =
            self.queued.swap(0, Ordering::Relaxed) + self.in_flight.swap(0, Ordering::Relaxed);
        self.stats
            .events_dropped
            .fetch_add(unsent, Ordering::Relaxed);
        if tokio::time::timeout(CLOSE_LIMIT, self.link.close())
            .await
            .is_err()
        {
            tracing::warn!(
                "the broker did not answer the closing of the control-plane connection within \
                 {CLOSE_LIMIT:?}; it was left to close by itself"
            );
        }
        let dropped = self.stats.events_dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "monitoring events dropped because the broker could not take them as fast as \
                 the worker made them, or at all (the worker never waits for them)"
            );
        }
    }

    fn enqueue(&self, pending: Pending) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.queue.try_send(pending).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counters(&self) -> WorkerCounters {
        WorkerCounters {
            active: lock(&self.tracked).active.len() as u64,
            processed: self.stats.processed.load(Ordering::Relaxed),
            loadavg: round_loadavg(loadavg()),
        }
    }

    /// The messages of a round of queued events, in their order: task events gathered into
    /// `task.multi` messages of up to [`MULTI`] events, worker events alone; the count is of
    /// the events in the messages (those of a disabled group are not sent, and not counted).
    fn prepare(&self, pending: &mut Vec<Pending>, batch: &mut TaskEventBatch) -> Round {
        let builder = lock(&self.builder);
        let mut messages = Vec::new();
        let mut flushed = Vec::new();
        let mut count = 0;
        let taken = pending
            .iter()
            .filter(|item| !matches!(item, Pending::Flush(_)))
            .count();
        self.queued.fetch_sub(taken as u64, Ordering::Relaxed);
        for item in pending.drain(..) {
            match item {
                Pending::Task(event, at) => {
                    match builder.push_task_event(batch, &event, &mut lock(&self.clock), at) {
                        Ok(sent) => count += u64::from(sent),
                        Err(error) => self.unsendable(&error),
                    }
                    if batch.len() >= MULTI {
                        messages.extend(batch.take_message());
                    }
                }
                Pending::Worker(kind) => {
                    messages.extend(batch.take_message());
                    let counters = self.counters();
                    let message =
                        builder.worker_event(kind, counters, &mut lock(&self.clock), now());
                    match message.map(|m| m.prepare()) {
                        Some(Ok(message)) => {
                            messages.push(message);
                            count += 1;
                        }
                        Some(Err(error)) => self.unsendable(&error),
                        None => {}
                    }
                }
                Pending::Flush(done) => flushed.push(done),
            }
        }
        messages.extend(batch.take_message());
        Round {
            messages,
            count,
            flushed,
        }
    }

    fn unsendable(&self, error: &dyn std::fmt::Display) {
        self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%error, "a monitoring event cannot be encoded; dropped");
    }

    async fn publish_loop(self: Arc<Self>, mut receiver: mpsc::Receiver<Pending>) {
        let batch = TaskEventBatch::new(lock(&self.builder).source());
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(%error, "cannot encode this worker's name in monitoring events; none are sent");
                return;
            }
        };
        let mut attempts = Attempts::new();
        let mut pending = Vec::with_capacity(ROUND);
        // The round being sent, and the next one, prepared meanwhile (whatever queued up):
        // rounds go out in order, one at a time, and grow with the backlog.
        let mut sending: Option<(Sending<'_>, Round)> = None;
        let mut ready: Option<Round> = None;
        let mut open = true;
        loop {
            if sending.is_none()
                && let Some(mut round) = ready.take()
            {
                if round.messages.is_empty() || attempts.waiting() {
                    // Nothing to send, or in the backoff after a failure (events meanwhile
                    // are dropped: an unreachable broker gets one reconnect loop from here,
                    // not one attempt per event).
                    self.settle(round, None, &mut attempts);
                } else {
                    let messages = std::mem::take(&mut round.messages);
                    sending = Some((Box::pin(self.link.publish_many(messages)), round));
                }
            }
            if sending.is_none() && ready.is_none() && !open {
                return;
            }
            tokio::select! {
                biased;
                result = async { sending.as_mut().expect("checked").0.as_mut().await },
                    if sending.is_some() =>
                {
                    let (_, round) = sending.take().expect("checked");
                    self.settle(round, Some(result), &mut attempts);
                }
                taken = receiver.recv_many(&mut pending, ROUND), if ready.is_none() && open => {
                    if taken == 0 {
                        open = false;
                    } else {
                        let round = self.prepare(&mut pending, &mut batch);
                        self.in_flight.fetch_add(round.count, Ordering::Relaxed);
                        ready = Some(round);
                    }
                }
            }
        }
    }

    /// After a round was sent (`Some(result)`) or not (`None`): counts what was dropped,
    /// keeps the backoff, and answers the flushes that waited for the round.
    fn settle(
        &self,
        round: Round,
        result: Option<Result<(), crate::error::CeleryError>>,
        attempts: &mut Attempts,
    ) {
        self.in_flight.fetch_sub(round.count, Ordering::Relaxed);
        let sent = match result {
            Some(Ok(())) => {
                attempts.succeeded();
                true
            }
            Some(Err(error)) => {
                attempts.failed(&error);
                false
            }
            None => false,
        };
        if !sent && round.count > 0 {
            self.stats
                .events_dropped
                .fetch_add(round.count, Ordering::Relaxed);
        }
        for done in round.flushed {
            let _ = done.send(());
        }
    }

    async fn mailbox_loop(self: Arc<Self>) {
        let mut attempt = 0u32;
        loop {
            match self
                .link
                .mailbox(&self.hostname, self.max_request_bytes)
                .await
            {
                Ok(mut requests) => {
                    attempt = 0;
                    tracing::debug!(hostname = %self.hostname, "reading the remote-control mailbox");
                    while let Some(request) = requests.next().await {
                        match request {
                            Ok(request) => self.answer(&request).await,
                            Err(error) => tracing::warn!(
                                %error,
                                "ignoring a remote-control message that cannot be read"
                            ),
                        }
                    }
                }
                Err(error) => {
                    if attempt == 0 {
                        tracing::warn!(
                            %error,
                            hostname = %self.hostname,
                            "cannot read the remote-control mailbox (on RabbitMQ, another worker \
                             with this name may hold it: give each worker its own \
                             `WorkerConfig::hostname`); retrying; tasks still run"
                        );
                    }
                }
            }
            attempt = attempt.saturating_add(1);
            let delay = Backoff::nth(
                Duration::from_millis(200),
                Duration::from_secs(10),
                attempt,
                Jitter::Below,
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Answers one request and carries out its actions.
    async fn answer(&self, request: &PidboxRequest) {
        if request
            .expires
            .is_some_and(|expires| expires > 0.0 && expires < now())
        {
            return;
        }
        let snapshot = self.snapshot();
        let mut outcome = {
            let mut state = lock(&self.state);
            let mut clock = lock(&self.clock);
            let instant = self.started.elapsed().as_secs_f64();
            state.handle(request, &snapshot, &mut clock, instant)
        };
        let mut refused = None;
        for action in &outcome.actions {
            match action {
                Action::Revoke(ids) => {
                    self.any_revoked.store(true, Ordering::Relaxed);
                    tracing::info!(?ids, "tasks revoked: dropped when they arrive");
                }
                Action::Shutdown => {
                    tracing::info!("shutdown requested by remote control");
                    let _ = self.stop.send(true);
                }
                Action::SetTaskEvents(on) => {
                    self.task_events.store(*on, Ordering::Relaxed);
                    lock(&self.builder).set_task_events(*on);
                    tracing::info!(task_events = on, "task events switched by remote control");
                }
                Action::SendHeartbeat => self.enqueue(Pending::Worker(WorkerEventKind::Heartbeat)),
                Action::AddConsumer(queue) => match self.queues.add(queue.clone()) {
                    Ok(Added::Added) => {
                        tracing::info!(queue = %queue.name, "queue added by remote control");
                    }
                    Ok(Added::AlreadyConsuming) => {
                        tracing::debug!(queue = %queue.name, "add_consumer: consumed already");
                    }
                    Err(reason) => {
                        tracing::warn!(queue = %queue.name, %reason, "add_consumer refused");
                        refused = Some(reason);
                    }
                },
                Action::CancelConsumer(queue) => {
                    if self.queues.cancel(queue) {
                        tracing::info!(%queue, "queue cancelled by remote control");
                    } else {
                        tracing::debug!(%queue, "cancel_consumer: not consumed");
                    }
                }
            }
        }
        if let (Some(reason), Some(reply_to)) = (refused, &request.reply_to) {
            // Not carried out: say so instead of Celery's "ok".
            let mut value = JsonMap::new();
            value.insert("error".into(), reason.into());
            let clock = lock(&self.clock).forward();
            outcome.reply = Some(pidbox_reply(
                &self.hostname,
                Json::Object(value),
                reply_to,
                &request.ticket,
                clock,
            ));
        }
        if let Some(reply) = outcome.reply
            && let Err(error) = self.link.publish(&reply).await
        {
            tracing::warn!(%error, method = %request.method, "cannot publish a remote-control reply");
        }
    }

    fn snapshot(&self) -> WorkerSnapshot {
        let mut snapshot = self.snapshot_base.clone();
        lock(&self.tracked).fill(&mut snapshot, Utc::now());
        snapshot.uptime_secs = self.started.elapsed().as_secs();
        snapshot.queues = self
            .queues
            .current()
            .iter()
            .map(|queue| queue_info(queue, self.max_priority))
            .collect();
        snapshot
    }

    fn task_events_on(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }

    fn task_event(&self, event: TaskEvent, at: SystemTime) {
        self.enqueue(Pending::Task(event, unix(at)));
    }
}

/// The plane as an observer of the worker's events.
pub(crate) struct PlaneObserver(pub(crate) Arc<Plane>);

impl WorkerObserver for PlaneObserver {
    fn on_event(&self, event: &WorkerEvent<'_>) {
        let plane = &*self.0;
        if Tracked::follows(event) {
            lock(&plane.tracked).hear(event);
        }
        if plane.worker_events {
            let kind = match event {
                WorkerEvent::Online { .. } => Some(WorkerEventKind::Online),
                WorkerEvent::Heartbeat { .. } => Some(WorkerEventKind::Heartbeat),
                WorkerEvent::Offline { .. } => Some(WorkerEventKind::Offline),
                _ => None,
            };
            if let Some(kind) = kind {
                plane.enqueue(Pending::Worker(kind));
                return;
            }
        }
        if !plane.task_events_on() {
            return;
        }
        match *event {
            WorkerEvent::Received { task, at, .. } => {
                plane.task_event(TaskEvent::received(task), at);
            }
            WorkerEvent::Started { task, at, .. } => {
                plane.task_event(
                    TaskEvent::Started {
                        uuid: task.id.clone(),
                    },
                    at,
                );
            }
            WorkerEvent::Succeeded { task, runtime, .. } => plane.task_event(
                TaskEvent::Succeeded {
                    uuid: task.id.clone(),
                    result: "None".to_owned(),
                    runtime: runtime.as_secs_f64(),
                },
                SystemTime::now(),
            ),
            WorkerEvent::Failed { task, failures, .. } => {
                let exhausted: Vec<_> = failures.iter().filter(|f| !f.will_retry).collect();
                if !exhausted.is_empty() {
                    let text = failure_text(exhausted.iter().map(|f| &f.failure));
                    plane.task_event(
                        TaskEvent::Failed {
                            uuid: task.id.clone(),
                            exception: format!("HandlerFailed({})", super::py_repr(&text)),
                            traceback: text,
                        },
                        SystemTime::now(),
                    );
                }
            }
            WorkerEvent::Retried { task, handlers, .. } => {
                let text = format!("handlers to retry: {}", handlers.join(", "));
                plane.task_event(
                    TaskEvent::Retried {
                        uuid: task.id.clone(),
                        exception: format!("Retry({})", super::py_repr(&text)),
                        traceback: text,
                    },
                    SystemTime::now(),
                );
            }
            WorkerEvent::Rejected {
                task: Some(task),
                handler: None,
                ..
            } => plane.task_event(
                TaskEvent::Rejected {
                    uuid: task.id.clone(),
                    requeue: false,
                },
                SystemTime::now(),
            ),
            WorkerEvent::Expired { task, .. } | WorkerEvent::Revoked { task, .. } => {
                plane.task_event(
                    TaskEvent::Revoked {
                        uuid: task.id.clone(),
                        terminated: false,
                        signum: None,
                        expired: matches!(event, WorkerEvent::Expired { .. }),
                    },
                    SystemTime::now(),
                );
            }
            _ => {}
        }
    }
}

/// The failed handlers and their errors, one per line: `handler: error`.
pub(crate) fn failure_text<'a>(
    failures: impl IntoIterator<Item = &'a events_core::HandlerFailure>,
) -> String {
    failures
        .into_iter()
        .map(|f| format!("{}: {}", f.handler(), f.chain()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `Request.info()` of `task`, taken from `queue`.
fn task_info(task: &TaskMessage, queue: &str, time_start: Option<f64>) -> TaskInfo {
    TaskInfo {
        id: task.id.clone(),
        name: task.task.clone(),
        args: Json::Array(task.args.clone()),
        kwargs: Json::Object(task.kwargs.clone()),
        argsrepr: task
            .headers
            .argsrepr
            .clone()
            .unwrap_or_else(|| "()".to_owned()),
        kwargsrepr: task
            .headers
            .kwargsrepr
            .clone()
            .unwrap_or_else(|| "{}".to_owned()),
        time_start,
        acknowledged: false,
        exchange: task.routing.exchange.clone(),
        routing_key: if task.routing.routing_key.is_empty() {
            queue.to_owned()
        } else {
            task.routing.routing_key.clone()
        },
        priority: task.properties.priority,
        redelivered: false,
        worker_pid: time_start.map(|_| std::process::id()),
    }
}

fn base_snapshot(config: &WorkerConfig, registered: Vec<String>) -> WorkerSnapshot {
    let mut conf = JsonMap::new();
    conf.insert("broker_url".into(), config.broker.expose().into());
    conf.insert("task_default_queue".into(), config.queues[0].clone().into());
    conf.insert("worker_concurrency".into(), config.concurrency.into());
    conf.insert("worker_prefetch_multiplier".into(), 1u8.into());
    conf.insert("task_acks_late".into(), true.into());
    conf.insert("worker_send_task_events".into(), config.task_events.into());
    conf.insert("task_track_started".into(), config.track_started.into());
    if let Some(backend) = &config.result_backend {
        conf.insert("result_backend".into(), backend.expose().into());
    }
    WorkerSnapshot {
        pid: std::process::id(),
        registered,
        active: Vec::new(),
        reserved: Vec::new(),
        scheduled: Vec::new(),
        // Filled from the queue set in each snapshot.
        queues: Vec::new(),
        total: Vec::new(),
        uptime_secs: 0,
        concurrency: config.concurrency,
        prefetch_count: u64::from(config.prefetch),
        broker: broker_info(&config.broker),
        conf,
        software: format!("events-celery:{} rustc", env!("CARGO_PKG_VERSION")),
        system: crate::codec::SoftwareInfo::rust().system,
    }
}

/// A consumed queue as `inspect active_queues` shows it: a configured queue as Celery's
/// automatic ones (a direct exchange of its name), an added one with its binding.
pub(crate) fn queue_info(queue: &ConsumedQueue, max_priority: Option<u8>) -> QueueInfo {
    let (exchange, exchange_type, routing_key) = match &queue.binding {
        Some(binding) => (
            binding.exchange.clone(),
            binding.kind.as_str(),
            binding.routing_key.clone(),
        ),
        None => (queue.name.clone(), "direct", queue.name.clone()),
    };
    QueueInfo {
        name: queue.name.clone(),
        exchange,
        exchange_type: exchange_type.to_owned(),
        routing_key,
        max_priority,
    }
}

/// What `inspect stats` shows of the broker URL (never the password).
fn broker_info(url: &BrokerUrl) -> BrokerInfo {
    let text = url.expose();
    let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, host) = match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user.split(':').next().unwrap_or_default()), host),
        None => (None, authority),
    };
    let (host, port) = match host.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()),
        None => (host, None),
    };
    let (transport, default_port, vhost) = match url.kind() {
        BrokerKind::Amqp => {
            let vhost = path.split(['?', '#']).next().unwrap_or_default();
            let vhost = if vhost.is_empty() { "/" } else { vhost };
            ("amqp", 5672, vhost.to_owned())
        }
        BrokerKind::Redis => (
            "redis",
            6379,
            crate::broker::control::redis_database(url).to_string(),
        ),
    };
    BrokerInfo {
        hostname: host.to_owned(),
        userid: user.filter(|u| !u.is_empty()).map(str::to_owned),
        virtual_host: vhost,
        port: port.unwrap_or(default_port),
        transport: transport.to_owned(),
        ssl: url.is_tls(),
        heartbeat: (url.kind() == BrokerKind::Amqp).then_some(120.0),
    }
}

fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut values = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        values.next().unwrap_or(0.0),
        values.next().unwrap_or(0.0),
        values.next().unwrap_or(0.0),
    ]
}

fn unix(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn now() -> f64 {
    unix(SystemTime::now())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Routing;

    fn message(id: &str, eta: Option<&str>) -> TaskMessage {
        let mut message = TaskMessage {
            id: id.to_owned(),
            task: "domain_events.tracked".to_owned(),
            routing: Routing::queue("q"),
            ..TaskMessage::default()
        };
        message.headers.eta = eta.map(|eta| DateTime::parse_from_rfc3339(eta).unwrap());
        message.properties.priority = Some(0);
        message
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn received(tracked: &mut Tracked, task: &TaskMessage) {
        tracked.hear(&WorkerEvent::Received {
            task,
            queue: "q",
            at: SystemTime::now(),
        });
    }

    fn started(tracked: &mut Tracked, task: &TaskMessage) {
        tracked.hear(&WorkerEvent::Started {
            task,
            queue: "q",
            at: SystemTime::now(),
            handlers: &[],
        });
    }

    fn succeeded(tracked: &mut Tracked, task: &TaskMessage) {
        tracked.hear(&WorkerEvent::Succeeded {
            task,
            queue: "q",
            runtime: Duration::ZERO,
        });
    }

    /// The ids active, reserved, and scheduled (with their eta) at `now`.
    fn lists(tracked: &Tracked, now: &str) -> (Vec<String>, Vec<String>, Vec<(String, String)>) {
        let config = WorkerConfig::new("redis://127.0.0.1:6379/0").unwrap();
        let mut snapshot = base_snapshot(&config, Vec::new());
        tracked.fill(&mut snapshot, at(now));
        for scheduled in &snapshot.scheduled {
            assert_eq!(scheduled.priority, 6, "Celery's timer priority");
            assert_eq!(scheduled.request.time_start, None);
        }
        (
            snapshot.active.iter().map(|t| t.id.clone()).collect(),
            snapshot.reserved.iter().map(|t| t.id.clone()).collect(),
            snapshot
                .scheduled
                .iter()
                .map(|s| (s.request.id.clone(), s.eta.clone().unwrap()))
                .collect(),
        )
    }

    const NOW: &str = "2026-01-01T12:00:00Z";

    #[test]
    fn a_task_goes_from_reserved_to_active_to_gone() {
        let mut tracked = Tracked::default();
        let (a, b) = (message("a", None), message("b", None));
        received(&mut tracked, &a);
        received(&mut tracked, &b);
        assert_eq!(
            lists(&tracked, NOW),
            (vec![], vec!["a".into(), "b".into()], vec![])
        );
        started(&mut tracked, &a);
        assert_eq!(
            lists(&tracked, NOW),
            (vec!["a".into()], vec!["b".into()], vec![])
        );
        let config = WorkerConfig::new("redis://127.0.0.1:6379/0").unwrap();
        let mut snapshot = base_snapshot(&config, Vec::new());
        tracked.fill(&mut snapshot, at(NOW));
        let active = &snapshot.active[0];
        assert!(active.time_start.is_some());
        assert_eq!(active.worker_pid, Some(std::process::id()));
        assert_eq!(
            (active.routing_key.as_str(), active.priority),
            ("q", Some(0))
        );
        assert_eq!(snapshot.reserved[0].time_start, None);
        succeeded(&mut tracked, &a);
        started(&mut tracked, &b);
        succeeded(&mut tracked, &b);
        assert_eq!(lists(&tracked, NOW), (vec![], vec![], vec![]));
        assert_eq!(tracked.total, [("domain_events.tracked".to_owned(), 2)]);
    }

    #[test]
    fn a_task_whose_eta_is_ahead_is_scheduled_then_reserved_when_it_comes() {
        let mut tracked = Tracked::default();
        let later = message("later", Some("2026-01-01T12:00:30.250000+00:00"));
        received(&mut tracked, &later);
        assert_eq!(
            lists(&tracked, NOW),
            (
                vec![],
                vec![],
                vec![("later".into(), "2026-01-01T12:00:30.250000+00:00".into())]
            )
        );
        assert_eq!(
            lists(&tracked, "2026-01-01T12:00:31Z"),
            (vec![], vec!["later".into()], vec![])
        );
        // Parked in the broker: no longer held.
        tracked.hear(&WorkerEvent::Postponed {
            task: &later,
            queue: "q",
            eta: at("2026-01-01T12:00:30.25Z"),
        });
        assert_eq!(lists(&tracked, NOW), (vec![], vec![], vec![]));
    }

    #[test]
    fn tasks_that_leave_without_running_are_no_longer_held() {
        let mut tracked = Tracked::default();
        let ids = ["revoked", "expired", "returned", "rejected", "undecoded"];
        let messages: Vec<TaskMessage> = ids.iter().map(|id| message(id, None)).collect();
        for task in &messages {
            received(&mut tracked, task);
        }
        tracked.hear(&WorkerEvent::Revoked {
            task: &messages[0],
            queue: "q",
        });
        tracked.hear(&WorkerEvent::Expired {
            task: &messages[1],
            queue: "q",
        });
        tracked.hear(&WorkerEvent::Returned {
            task: Some(&messages[2]),
            queue: "q",
        });
        tracked.hear(&WorkerEvent::Rejected {
            task: Some(&messages[3]),
            queue: "q",
            reason: "unknown task",
            handler: None,
        });
        // Nothing to match an undecodable message to: nothing removed.
        tracked.hear(&WorkerEvent::Returned {
            task: None,
            queue: "q",
        });
        assert_eq!(
            lists(&tracked, NOW),
            (vec![], vec!["undecoded".into()], vec![])
        );
    }

    #[test]
    fn one_id_held_twice_is_listed_twice_and_leaves_once_per_event() {
        let mut tracked = Tracked::default();
        let twice = message("twice", None);
        received(&mut tracked, &twice);
        received(&mut tracked, &twice);
        started(&mut tracked, &twice);
        assert_eq!(
            lists(&tracked, NOW),
            (vec!["twice".into()], vec!["twice".into()], vec![])
        );
        // A handler out of retries is rejected after it failed: not one of the waiting.
        tracked.hear(&WorkerEvent::Rejected {
            task: Some(&twice),
            queue: "q",
            reason: "handler failed",
            handler: Some("h"),
        });
        succeeded(&mut tracked, &twice);
        assert_eq!(lists(&tracked, NOW), (vec![], vec!["twice".into()], vec![]));
    }
}
