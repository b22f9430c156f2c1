//! The Celery worker: consumes task messages from RabbitMQ or Redis (through the broker's
//! transport) — sent by Rust or by Python Celery — runs every `#[handler]` of the event, at
//! least once, and tells observers what happened ([`WorkerEvent`]).

pub(crate) mod control;
mod core;
mod dead_letter;
mod events;
mod inbox;
mod inbox_redis;
mod pending;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use events_core::{Handler, Registry};

use self::control::plane::{Plane, PlaneObserver};
use self::control::results::Results;
pub use self::core::RetryPolicy;
pub use self::dead_letter::{DEAD_LETTER_SUFFIX, replay_dead_letters};
pub use self::events::{HEARTBEAT, HandlerFailed, WorkerEvent, WorkerObserver, WorkerStats};
pub use self::inbox_redis::{DEFAULT_INBOX_PREFIX, DEFAULT_INBOX_RETENTION, RedisInbox};
pub use self::pending::PENDING_HANDLERS_HEADER;
use crate::broker::consume::ConsumeSettings;
use crate::broker::queues::{QueueSet, check_name};
use crate::broker::topology::QueueArguments;
use crate::broker::{AnyTransport, BrokerKind, BrokerUrl, Transport};
use crate::codec::{DEFAULT_TASK_PREFIX, DecodeOptions};
use crate::config::CeleryConfig;
use crate::error::CeleryError;
use crate::quiet;
use crate::stopping::pause;

/// How a [`Worker`] consumes and runs messages.
///
/// ```
/// use std::time::Duration;
/// use events_celery::{RetryPolicy, WorkerConfig};
///
/// let config = WorkerConfig::new("redis://127.0.0.1:6379/0")?
///     .queues(["celery", "default"])
///     .concurrency(8)
///     .retry(RetryPolicy { max_retries: 5, ..RetryPolicy::default() })
///     .time_limit(Duration::from_secs(30))
///     .grace_period(Duration::from_secs(10));
/// # let _ = config;
/// # Ok::<(), events_celery::CeleryError>(())
/// ```
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub(crate) broker: BrokerUrl,
    pub(crate) queues: Vec<String>,
    pub(crate) task_prefix: String,
    pub(crate) concurrency: usize,
    pub(crate) prefetch: u16,
    pub(crate) retry: RetryPolicy,
    pub(crate) time_limit: Option<Duration>,
    pub(crate) blocking_poll: Duration,
    pub(crate) grace_period: Duration,
    pub(crate) visibility_timeout: Duration,
    pub(crate) restore_interval: Duration,
    pub(crate) decode: DecodeOptions,
    pub(crate) queue_max_priority: Option<u8>,
    pub(crate) redis_fetchers: usize,
    pub(crate) publish_timeout: Duration,
    pub(crate) reconnect_max_delay: Duration,
    pub(crate) dead_letter_max_len: usize,
    pub(crate) redis_idle_poll: Duration,
    pub(crate) inbox: Option<inbox::InboxHandle>,
    pub(crate) hostname: Option<String>,
    pub(crate) worker_events: bool,
    pub(crate) task_events: bool,
    pub(crate) remote_control: bool,
    pub(crate) control_read_only: bool,
    pub(crate) event_queue_capacity: usize,
    pub(crate) result_backend: Option<BrokerUrl>,
    pub(crate) track_started: bool,
}

impl WorkerConfig {
    /// Defaults: queue `celery`, task names `domain_events.<event>`, as many concurrent
    /// messages as cores, 3 retries per handler, a 30 s shutdown grace period, kombu's one-hour
    /// visibility timeout on Redis.
    pub fn new(broker_url: &str) -> Result<Self, CeleryError> {
        Ok(Self::with_broker(BrokerUrl::parse(broker_url)?))
    }

    fn with_broker(broker: BrokerUrl) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            broker,
            queues: vec!["celery".to_owned()],
            task_prefix: DEFAULT_TASK_PREFIX.to_owned(),
            concurrency: cores,
            prefetch: 256,
            retry: RetryPolicy::default(),
            time_limit: None,
            blocking_poll: Duration::from_millis(100),
            grace_period: Duration::from_secs(30),
            visibility_timeout: Duration::from_secs(3600),
            restore_interval: Duration::from_secs(10),
            // The worker keeps the envelope's bytes itself.
            decode: DecodeOptions::new().keep_raw_envelope(false),
            queue_max_priority: None,
            redis_fetchers: 16,
            publish_timeout: Duration::from_secs(10),
            reconnect_max_delay: Duration::from_secs(30),
            dead_letter_max_len: DEFAULT_DEAD_LETTER_MAX_LEN,
            redis_idle_poll: Duration::from_millis(50),
            inbox: None,
            hostname: None,
            worker_events: true,
            task_events: false,
            remote_control: true,
            control_read_only: false,
            event_queue_capacity: DEFAULT_EVENT_QUEUE_CAPACITY,
            result_backend: None,
            track_started: false,
        }
    }

    /// A worker for what a publisher with `config` sends: the same broker, task prefix,
    /// `x-max-priority` and publish time limit (for retries and dead letters), consuming the
    /// default queue and every routed queue (each once, the default first); the worker's own
    /// settings keep the defaults of [`new`](Self::new). Set up one [`CeleryConfig`] and
    /// derive both sides from it:
    ///
    /// ```
    /// use events_celery::{CeleryConfig, Route, WorkerConfig};
    ///
    /// let celery = CeleryConfig::new("redis://127.0.0.1:6379/0")?
    ///     .default_queue("events")
    ///     .route("billing.invoice_due", Route::queue("billing"))
    ///     .task_prefix("shop.");
    /// let worker = WorkerConfig::from_celery(&celery).concurrency(4);
    /// assert_eq!(worker.queue_names(), ["events", "billing"]);
    /// // let backend = CeleryBackend::new(celery)?;  Worker::new(worker)?.run().await?;
    /// # Ok::<(), events_celery::CeleryError>(())
    /// ```
    ///
    /// (Compression is a publishing choice: the worker reads every kombu method whatever the
    /// configuration says, and re-sends retries with the body they came with.)
    pub fn from_celery(config: &CeleryConfig) -> Self {
        let mut queues = vec![config.default_queue_name().to_owned()];
        let mut routed: Vec<&str> = config.routed_queues().collect();
        routed.sort_unstable();
        for queue in routed {
            if !queues.iter().any(|q| q == queue) {
                queues.push(queue.to_owned());
            }
        }
        let mut worker = Self::with_broker(config.broker().clone())
            .queues(queues)
            .task_prefix(config.prefix())
            .publish_timeout(config.timeout());
        worker.queue_max_priority = config.max_priority();
        worker
    }

    /// [`from_celery`](Self::from_celery) of [`CeleryConfig::from_env`]: the broker from
    /// `CELERY_BROKER_URL`, queues, prefix, priority and time limit from the
    /// [`EVENTS_CELERY_*` variables](mod@crate::env) the publisher reads.
    ///
    /// Also read: `CELERY_WORKER_SEND_TASK_EVENTS` (`true`/`1`: [`task_events`](Self::task_events)),
    /// `CELERY_RESULT_BACKEND` ([`result_backend`](Self::result_backend)),
    /// `CELERY_TASK_TRACK_STARTED` ([`track_started`](Self::track_started)) and
    /// `CELERY_WORKER_HOSTNAME` ([`hostname`](Self::hostname)).
    pub fn from_env() -> Result<Self, CeleryError> {
        let mut config = Self::from_celery(&CeleryConfig::from_env()?);
        let flag = |name: &str| {
            std::env::var(name).is_ok_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
        };
        config.task_events = flag("CELERY_WORKER_SEND_TASK_EVENTS");
        config.track_started = flag("CELERY_TASK_TRACK_STARTED");
        if let Ok(backend) = std::env::var("CELERY_RESULT_BACKEND")
            && !backend.trim().is_empty()
        {
            config = config.result_backend(&backend)?;
        }
        if let Ok(name) = std::env::var("CELERY_WORKER_HOSTNAME")
            && !name.trim().is_empty()
        {
            config = config.hostname(name.trim());
        }
        Ok(config)
    }

    /// The worker's node name in the cluster, `name@host`, as `celery inspect -d`, Flower and
    /// the monitoring events show it (Celery's `-n`). Default `rust@<host>`: distinct from a
    /// Python worker's default `celery@<host>`, so that a Rust and a Python worker on one host
    /// appear as two workers (the same name would merge them in Flower and make their
    /// mailboxes collide). A name without `@` gets `@<host>` appended; `%h` is replaced by the
    /// host name. Two workers on one host need two names.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// Sends `worker-online`, a `worker-heartbeat` every 2 s and `worker-offline` to the
    /// `celeryev` exchange (default on, as Celery; `false` is `--without-heartbeat`: Flower
    /// and `celery events` then do not see the worker).
    pub fn worker_events(mut self, on: bool) -> Self {
        self.worker_events = on;
        self
    }

    /// Sends task events (`task-received`, `-started`, `-succeeded`, `-failed`, `-retried`,
    /// `-rejected`, `-revoked`) as Celery's `-E` / `worker_send_task_events` (default off; the
    /// `enable_events` / `disable_events` control commands switch them at run time). They are
    /// handed to a background publisher through a bounded queue: the worker never waits for
    /// them, and drops them (with a count in the log) when the broker cannot keep up.
    pub fn task_events(mut self, on: bool) -> Self {
        self.task_events = on;
        self
    }

    /// Answers remote control (`celery inspect`, `celery control`, Flower) from the mailbox
    /// `<hostname>.celery.pidbox` (default on).
    pub fn remote_control(mut self, on: bool) -> Self {
        self.remote_control = on;
        self
    }

    /// Refuses the remote-control commands that change the worker's state (`revoke`,
    /// `shutdown`, `enable_events`, `add_consumer`, `cancel_consumer`…) with an error reply;
    /// `inspect` commands still answer (default off).
    pub fn control_read_only(mut self, on: bool) -> Self {
        self.control_read_only = on;
        self
    }

    /// How many monitoring events may wait for the background publisher before new ones are
    /// dropped (default [`DEFAULT_EVENT_QUEUE_CAPACITY`]).
    pub fn event_queue_capacity(mut self, n: usize) -> Self {
        self.event_queue_capacity = n.max(16);
        self
    }

    /// Stores each task's outcome where Python's `AsyncResult(id).get()` reads it, as Celery's
    /// Redis result backend does (`celery-task-meta-<id>`, one day, with the pub/sub
    /// notification): `SUCCESS` (result `None`) when every handler completed, `FAILURE`
    /// (`RuntimeError` naming the failed handlers) when it is dead-lettered, `REVOKED` when it
    /// was revoked or expired. Only `redis://` and `rediss://` are supported.
    pub fn result_backend(mut self, url: &str) -> Result<Self, CeleryError> {
        let parsed = BrokerUrl::parse(url)?;
        if parsed.kind() != BrokerKind::Redis {
            return Err(CeleryError::Config(format!(
                "result backend `{parsed}` is not supported: only Celery's Redis result backend                  (redis:// or rediss://) is"
            )));
        }
        self.result_backend = Some(parsed);
        Ok(self)
    }

    /// With a [`result_backend`](Self::result_backend), stores `STARTED` when a task's
    /// handlers start (Celery's `task_track_started`; default off).
    pub fn track_started(mut self, on: bool) -> Self {
        self.track_started = on;
        self
    }

    /// The node name (`name@host`).
    pub(crate) fn node_name(&self) -> String {
        let host = host_name();
        match &self.hostname {
            Some(name) => {
                let name = name.replace("%h", &host);
                if name.contains('@') {
                    name
                } else {
                    format!("{name}@{host}")
                }
            }
            None => format!("rust@{host}"),
        }
    }

    /// The queues to consume (default `celery`): names of at most 255 bytes without control
    /// characters (else [`Worker::new`] refuses them). Celery's `add_consumer` and
    /// `cancel_consumer` change them while the worker runs.
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// The task-name prefix (default `domain_events.`).
    pub fn task_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.task_prefix = prefix.into();
        self
    }

    /// How many messages run at once (default: the number of cores).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How many messages the worker may take ahead of a free slot (default 256): on RabbitMQ,
    /// the unacknowledged messages each queue's consumer may hold; on Redis, in all. They are
    /// received (`task-received`, `celery inspect reserved`) as they are taken.
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// How failed handlers are retried.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How long one handler run may take when its `#[handler(time_limit_ms = …)]` does not
    /// say; an overrun counts as a failure (default: no limit).
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// How long one poll of an async handler may run before the worker reports that the
    /// handler blocked its runtime thread (default 100 ms).
    ///
    /// An `async fn` handler that blocks (a synchronous client, `std::thread::sleep`, heavy
    /// computation) holds a runtime thread: the messages queued on that thread wait, and its
    /// time limit cannot interrupt it until it yields. Each such poll is logged at `WARN` with
    /// the handler's name and counted in [`WorkerStats::blocking_polls`]; the fix is a sync
    /// handler (the worker runs those on the blocking pool) or `tokio::task::spawn_blocking`.
    pub fn blocking_poll_warning(mut self, threshold: Duration) -> Self {
        self.blocking_poll = threshold;
        self
    }

    /// How long a shutdown waits for running messages before returning the rest to the queue
    /// (default 30 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// Redis: how long a message may stay unacknowledged before any worker (Rust or Python)
    /// restores it to its queue (kombu's `visibility_timeout`, default one hour). Must be
    /// longer than your slowest message.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// Redis: how often to look for unacknowledged messages past the visibility timeout
    /// (default 10 s).
    pub fn restore_interval(mut self, interval: Duration) -> Self {
        self.restore_interval = interval;
        self
    }

    /// The largest message accepted; larger ones are dead-lettered without being decoded.
    pub fn max_message_bytes(mut self, limit: usize) -> Self {
        self.decode = self.decode.max_message_bytes(limit);
        self
    }

    /// RabbitMQ: declare queues with `x-max-priority` (as Celery's `task_queue_max_priority`).
    pub fn queue_max_priority(mut self, max: u8) -> Self {
        self.queue_max_priority = Some(max);
        self
    }

    /// Redis: how many connections take messages at once (default 16). Each takes from every
    /// queue, in kombu's order: all queues at priority 0, then 3, 6, 9, the queues rotated so
    /// that the one that delivered last is asked last (a flooded queue never starves a quiet
    /// one). While every queue is empty, one of them polls and the others wait for it to find
    /// work.
    pub fn redis_fetchers(mut self, n: usize) -> Self {
        self.redis_fetchers = n.max(1);
        self
    }

    /// Redis: the longest pause between two looks at the lists while they are empty (default
    /// 50 ms). No blocking pop waits for messages (it would hand the worker whatever envelope
    /// it woke up for, before the size limit could refuse it), so an idle worker polls: one
    /// fetcher, 1 ms after the lists emptied, doubling up to this, with up to 25 % jitter. A
    /// message pushed to an idle worker waits at most this (plus jitter); an idle worker sends
    /// Redis one script call per interval. Shorter: lower latency, more idle load.
    pub fn redis_idle_poll(mut self, interval: Duration) -> Self {
        self.redis_idle_poll = interval;
        self
    }

    /// How long publishing a retry or dead letter may take (default 10 s).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// The longest wait between reconnection attempts (default 30 s). Attempts start 200 ms
    /// apart and double, with jitter; one attempt at a time per connection, each failure
    /// logged once.
    pub fn reconnect_max_delay(mut self, delay: Duration) -> Self {
        self.reconnect_max_delay = delay;
        self
    }

    /// Redis: the most records a dead-letter list `<queue>.dead_letter` holds (default
    /// [`DEFAULT_DEAD_LETTER_MAX_LEN`]). A dead letter for a full list is dropped — the message
    /// is acknowledged without a record — counted in [`WorkerStats::dead_letters_dropped`] and
    /// logged with a count; replay or trim the list to make room. A list already longer (kept
    /// by an older worker) is left as it is; 0 keeps none. Storage stays under about
    /// `n × (350 bytes + the envelope)` per queue. RabbitMQ's dead-letter queues are bounded by
    /// the broker's own policies (`max-length`), not by the worker.
    pub fn dead_letter_max_len(mut self, n: usize) -> Self {
        self.dead_letter_max_len = n;
        self
    }

    /// The broker.
    pub fn broker(&self) -> &BrokerUrl {
        &self.broker
    }

    /// The queues consumed.
    pub fn queue_names(&self) -> &[String] {
        &self.queues
    }

    /// What the broker's consumer needs of this configuration, consuming `queues` (the
    /// configured ones, changed at run time by `add_consumer` / `cancel_consumer`).
    pub(crate) fn consume_settings(&self, queues: QueueSet) -> ConsumeSettings {
        ConsumeSettings {
            broker: self.broker.clone(),
            queues,
            queue_arguments: QueueArguments::with_max_priority(self.queue_max_priority),
            concurrency: self.concurrency,
            prefetch: self.prefetch,
            grace_period: self.grace_period,
            visibility_timeout: self.visibility_timeout,
            restore_interval: self.restore_interval,
            decode: self.decode.clone(),
            redis_fetchers: self.redis_fetchers,
            redis_idle_poll: self.redis_idle_poll,
            publish_timeout: self.publish_timeout,
            reconnect_max_delay: self.reconnect_max_delay,
            dead_letter_max_len: self.dead_letter_max_len,
            hostname: self.node_name(),
        }
    }
}

/// The default of [`WorkerConfig::event_queue_capacity`]: 8,192 events.
pub const DEFAULT_EVENT_QUEUE_CAPACITY: usize = 8192;

/// The default of [`WorkerConfig::dead_letter_max_len`]: 100,000 records per queue.
pub const DEFAULT_DEAD_LETTER_MAX_LEN: usize = 100_000;

/// A Rust Celery worker for domain events.
///
/// For each message: decode once, find the event by task name, run **every** handler of it
/// (sync ones on the blocking pool, async ones on the runtime; at most
/// [`concurrency`](WorkerConfig::concurrency) messages at once), then acknowledge — only after
/// the handlers finished (Celery's `acks_late`). A failed handler is retried alone, by a new
/// message with `retries + 1` and an `eta` (exponential backoff with jitter); one that
/// exhausted its retries, and any message that cannot run (unknown task, undecodable, refused
/// content type, payload that does not fit), goes to the dead-letter destination
/// `<queue>.dead_letter` with the reason. Messages are taken ahead of a free slot (up to
/// [`prefetch`](WorkerConfig::prefetch)) and announced as received as they are taken
/// (`task-received`; `celery inspect reserved` lists them until they start). A message with a
/// future `eta` waits in the broker, not in a slot: when its turn comes before its eta, it goes
/// back to the broker until then. Expired messages are discarded and logged.
///
/// **Runtime.** [`run`](Self::run) and [`run_until`](Self::run_until) must be awaited inside a
/// tokio runtime (tokio's I/O, timers and blocking pool; `#[tokio::main]` with the
/// `rt-multi-thread` and `macros` features, or `Runtime::block_on`); awaited elsewhere they
/// return [`CeleryError::NoRuntime`] instead of panicking. The publishing side,
/// [`CeleryBackend`](crate::CeleryBackend), works under any executor.
///
/// ```no_run
/// use events_celery::{Worker, WorkerConfig};
///
/// #[tokio::main]
/// async fn main() -> Result<(), events_celery::CeleryError> {
///     let worker = Worker::new(WorkerConfig::new("amqp://guest:guest@127.0.0.1:5672//")?)?;
///     worker.run().await?; // until SIGINT or SIGTERM
///     Ok(())
/// }
/// ```
pub struct Worker {
    config: WorkerConfig,
    registry: &'static Registry,
    handlers: Vec<Handler>,
    stats: Arc<WorkerStats>,
    observers: Vec<Arc<dyn WorkerObserver>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .field("handlers", &self.handlers.len())
            .field("stats", &self.stats.snapshot())
            .field("observers", &self.observers.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker running the collected `#[handler]`s.
    pub fn new(config: WorkerConfig) -> Result<Self, CeleryError> {
        let registry = Registry::collected().map_err(CeleryError::Registry)?;
        let handlers = registry.handlers().map(Handler::from_descriptor).collect();
        Self::with_handlers(config, handlers)
    }

    /// A worker running exactly these handlers (for example
    /// [`CeleryBackend::subscribed_handlers`](crate::CeleryBackend::subscribed_handlers), which
    /// adds closures subscribed at run time).
    pub fn with_handlers(
        config: WorkerConfig,
        handlers: Vec<Handler>,
    ) -> Result<Self, CeleryError> {
        if config.queues.is_empty() {
            return Err(CeleryError::Config(
                "the worker has no queue to consume".to_owned(),
            ));
        }
        for queue in &config.queues {
            check_name("queue", queue).map_err(|problem| {
                CeleryError::Config(format!(
                    "cannot consume a configured queue: {problem}; rename it in \
                     `WorkerConfig::queues`"
                ))
            })?;
        }
        let registry = Registry::collected().map_err(CeleryError::Registry)?;
        Ok(Self {
            config,
            registry,
            handlers,
            stats: Arc::new(WorkerStats::default()),
            observers: Vec::new(),
        })
    }

    /// Adds an observer of the worker's events ([`WorkerEvent`]): it hears what happens to
    /// every message (received, started, succeeded, failed, retried, rejected, expired,
    /// postponed…) and to the worker (online, heartbeat, connection lost, offline), as it
    /// happens, after the worker's own counters ([`WorkerStats`]) and log lines. With no
    /// observer added, the events cost the worker nothing beyond its counters.
    ///
    /// ```no_run
    /// use events_celery::{Worker, WorkerConfig, WorkerEvent};
    ///
    /// # async fn run() -> Result<(), events_celery::CeleryError> {
    /// let worker = Worker::new(WorkerConfig::new("redis://127.0.0.1:6379/0")?)?.observe(
    ///     |event: &WorkerEvent<'_>| {
    ///         if let WorkerEvent::Failed { task, failures, .. } = event {
    ///             eprintln!("{} failed in {} handlers", task.id, failures.len());
    ///         }
    ///     },
    /// );
    /// worker.run().await?;
    /// # Ok(()) }
    /// ```
    pub fn observe(mut self, observer: impl WorkerObserver) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// The live counters (clone the `Arc` before `run` to watch them).
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully. Inside a tokio runtime only
    /// (see the type's docs).
    pub async fn run(self) -> Result<Arc<WorkerStats>, CeleryError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(CeleryError::NoRuntime("run"));
        }
        self.run_until(shutdown_signal()).await
    }

    /// Runs until `shutdown` resolves: then stops taking messages, lets running ones finish
    /// within the grace period, and returns the rest to the queue.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Arc<WorkerStats>, CeleryError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(CeleryError::NoRuntime("run_until"));
        }
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let stop = Arc::new(stop);
        let mut observers = self.observers;
        let registered: Vec<String> = self
            .handlers
            .iter()
            .map(|h| format!("{}{}", self.config.task_prefix, h.event()))
            .collect();
        let queues = QueueSet::new(&self.config.broker, &self.config.queues);
        let (plane, plane_tasks) = Plane::start(
            &self.config,
            registered,
            queues.clone(),
            Arc::clone(&self.stats),
            Arc::clone(&stop),
        );
        observers.push(Arc::new(PlaneObserver(Arc::clone(&plane))));
        let results = self.config.result_backend.clone().map(|url| {
            let (results, writer) = Results::start(
                url,
                self.config.track_started,
                self.config.node_name(),
                self.config.event_queue_capacity,
                Arc::clone(&self.stats),
            );
            let results = Arc::new(results);
            observers.push(Arc::clone(&results) as Arc<dyn WorkerObserver>);
            (results, writer)
        });
        let core = Arc::new_cyclic(|me| {
            core::Core::new(
                self.config,
                queues,
                self.registry,
                self.handlers,
                Arc::clone(&self.stats),
                observers,
                Some(Arc::clone(&plane)),
                me.clone(),
            )
        });
        tracing::info!(
            broker = %core.config.broker,
            hostname = core.hostname(),
            queues = ?core.config.queues,
            handlers = core.handler_count(),
            concurrency = core.config.concurrency,
            "worker starting"
        );
        {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!("shutdown requested: no new messages; finishing the running ones");
                let _ = stop.send(true);
            });
        }
        core.emit(WorkerEvent::Online {
            hostname: core.hostname(),
            queues: &core.config.queues,
        });
        // The counts of rate-limited log lines, logged as their windows end.
        let flushing = {
            let (core, mut stopping) = (Arc::clone(&core), stopping.clone());
            tokio::spawn(async move {
                while !pause(&mut stopping, quiet::WINDOW / 4).await {
                    core.log.quiet.flush(false);
                }
            })
        };
        let beating = {
            let (core, mut stopping) = (Arc::clone(&core), stopping.clone());
            tokio::spawn(async move {
                while !pause(&mut stopping, HEARTBEAT).await {
                    core.emit(WorkerEvent::Heartbeat {
                        hostname: core.hostname(),
                        processed: core.processed(),
                    });
                }
            })
        };
        let outcome = AnyTransport::consume(Arc::clone(&core), stopping).await;
        flushing.abort();
        beating.abort();
        core.log.quiet.flush(true);
        core.emit(WorkerEvent::Offline {
            hostname: core.hostname(),
        });
        // Both bounded, side by side: a few seconds at most, whatever the brokers do.
        let finishing_results = async {
            if let Some((results, writer)) = results {
                results.finish(writer).await;
            }
        };
        tokio::join!(plane.finish(plane_tasks), finishing_results);
        outcome?;
        tracing::info!(stats = ?self.stats.snapshot(), "worker stopped");
        Ok(self.stats)
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// This machine's host name (Linux: the kernel's; else `HOSTNAME`; else `localhost`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}
