//! [`CeleryBackend`]: publishes each event as a Celery task message on RabbitMQ or Redis.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use events_core::text::OneLine;
use events_core::{
    Backend, BackendKind, BoxFuture, DomainEvent, Error, EventRef, Handler, PublishOptions, Receipt,
};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{mpsc, oneshot};

use crate::broker::topology::QueueArguments;
use crate::broker::{AnyOutgoing, AnyTransport, Publication, PublishSettings, Transport};
use crate::codec::{EncodeOptions, TaskMessage};
use crate::config::CeleryConfig;
use crate::error::CeleryError;

/// Publishes domain events as Celery task messages (protocol 2, JSON), wire-identical to what
/// Python's `app.send_task("domain_events.<event>", kwargs={"payload": …})` sends, so a Python
/// Celery worker runs them; the Rust [`Worker`](crate::Worker) runs the `#[handler]`s.
///
/// `publish` resolves once the broker has accepted the message: on RabbitMQ after the publisher
/// confirm (unroutable or nacked messages are errors), on Redis after `LPUSH` returned. It
/// fails — never hangs — after [`CeleryConfig::publish_timeout`], and the next publish
/// reconnects. Connections live on the backend's own I/O thread, so any executor (or none, with
/// `publish_blocking`) can publish. Concurrent publishes are handed to that thread in batches
/// (one Redis pipeline per batch; on RabbitMQ, their confirms awaited together), each with its
/// own result and time limit. Cloning is cheap and shares the connections.
///
/// ```no_run
/// use events_celery::{CeleryBackend, CeleryConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let backend = CeleryBackend::new(CeleryConfig::new("amqp://guest:guest@127.0.0.1:5672//")?)?;
/// events_core::init(backend)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CeleryBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: CeleryConfig,
    transport: AnyTransport,
    /// Publishes waiting for the I/O thread's dispatcher.
    jobs: mpsc::UnboundedSender<Job>,
    io: IoRuntime,
    subscribed: Mutex<Vec<Handler>>,
}

/// At most this many publishes go to the broker together (one pipeline on Redis).
const MAX_BATCH: usize = 512;

/// One publish handed to the I/O thread.
type Job = Publication<AnyOutgoing, Reply>;

/// Where a publish's result goes: an async caller, or a thread blocked in `publish_blocking`.
enum Reply {
    Async(oneshot::Sender<Result<(), CeleryError>>),
    Blocking(std::sync::mpsc::SyncSender<Result<(), CeleryError>>),
}

impl crate::broker::Reply for Reply {
    fn send(self, result: Result<(), CeleryError>) {
        // The caller may have given up (its future dropped): nothing to tell then.
        match self {
            Reply::Async(reply) => drop(reply.send(result)),
            Reply::Blocking(reply) => drop(reply.send(result)),
        }
    }
}

fn dropped() -> CeleryError {
    CeleryError::ShuttingDown
}

/// The backend's own tokio runtime, where every broker connection lives.
struct IoRuntime {
    handle: Handle,
    runtime: Mutex<Option<Runtime>>,
}

impl IoRuntime {
    fn new() -> Result<Self, CeleryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("events-celery-io")
            .enable_all()
            .build()
            .map_err(CeleryError::Runtime)?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
        })
    }

    /// Runs `future` on the I/O runtime and waits for it from any executor.
    async fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, CeleryError>> + Send + 'static,
    ) -> Result<T, CeleryError> {
        match self.handle.spawn(future).await {
            Ok(result) => result,
            Err(join) if join.is_cancelled() => Err(CeleryError::ShuttingDown),
            Err(join) => Err(CeleryError::Panicked {
                what: "the publish task",
                message: join.to_string(),
            }),
        }
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.lock().ok().and_then(|mut r| r.take()) {
            // Dropping a runtime inside another runtime panics; this never blocks.
            runtime.shutdown_background();
        }
    }
}

impl CeleryBackend {
    /// A backend for `config`. Connects on first use; see [`connect`](Self::connect) to
    /// fail fast at start-up instead.
    pub fn new(config: CeleryConfig) -> Result<Self, CeleryError> {
        let transport = AnyTransport::new(
            config.broker().clone(),
            PublishSettings {
                queue_arguments: QueueArguments::with_max_priority(config.max_priority()),
                timeout: config.timeout(),
            },
        );
        let (jobs, queued) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            config,
            transport,
            jobs,
            io: IoRuntime::new()?,
            subscribed: Mutex::new(Vec::new()),
        });
        inner
            .io
            .handle
            .spawn(dispatch(Arc::downgrade(&inner), queued));
        Ok(Self { inner })
    }

    /// A backend for `config`, connected now: a broker that cannot be reached is an error
    /// here rather than at the first publish.
    pub async fn connect(config: CeleryConfig) -> Result<Self, CeleryError> {
        let backend = Self::new(config)?;
        let inner = Arc::clone(&backend.inner);
        let timeout = inner.config.timeout();
        backend
            .inner
            .io
            .run(async move {
                let broker = inner.config.broker().clone();
                tokio::time::timeout(timeout, inner.transport.ensure_connected())
                    .await
                    .unwrap_or(Err(CeleryError::Timeout {
                        broker,
                        operation: "connecting",
                        after: timeout,
                    }))
            })
            .await?;
        Ok(backend)
    }

    /// A backend configured from the environment (see [`CeleryConfig::from_env`]).
    pub fn from_env() -> Result<Self, CeleryError> {
        Self::new(CeleryConfig::from_env()?)
    }

    /// The configuration.
    pub fn config(&self) -> &CeleryConfig {
        &self.inner.config
    }

    /// Every handler subscribed through the bus: the collected `#[handler]`s (in registry
    /// order) and closures subscribed at run time. A [`Worker`](crate::Worker) built from this
    /// backend runs them all.
    pub fn subscribed_handlers(&self) -> Vec<Handler> {
        self.inner.subscribed.lock().expect("not poisoned").clone()
    }

    /// Publishes a typed event with the configured options; resolves once the broker accepted
    /// the message (what [`events_core::publish`] does through the bus, here with the
    /// backend's own error type).
    ///
    /// This inherent method takes the event itself; the [`Backend`] trait's `publish`, which
    /// takes an [`EventRef`], stays reachable as `Backend::publish(&backend, event)` (and is
    /// what the bus calls).
    ///
    /// ```no_run
    /// # use events_celery::{CeleryBackend, CeleryConfig};
    /// # use events_core::domain_event;
    /// # #[domain_event(name = "doc.order_placed")] struct OrderPlaced { order_id: u64 }
    /// # async fn run(backend: CeleryBackend) -> Result<(), events_celery::CeleryError> {
    /// let receipt = backend.publish(&OrderPlaced { order_id: 7 }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish<E: DomainEvent>(&self, event: &E) -> Result<Receipt, CeleryError> {
        let event = EventRef::new(event);
        let message = self.encode(event)?;
        self.send_event(event.name(), message).await
    }

    /// [`publish`](Self::publish) without an async runtime: blocks the calling thread until the
    /// broker accepted the message (do not call it on an async runtime's thread).
    pub fn publish_blocking<E: DomainEvent>(&self, event: &E) -> Result<Receipt, CeleryError> {
        let event = EventRef::new(event);
        let message = self.encode(event)?;
        self.send_event_blocking(event.name(), message)
    }

    /// Publishes a typed event with per-message options — countdown/eta, expires, priority,
    /// custom headers — on top of the configured ones.
    ///
    /// ```no_run
    /// # use events_celery::{CeleryBackend, CeleryConfig};
    /// # use events_core::domain_event;
    /// # #[domain_event(name = "doc.reminder")] struct Reminder;
    /// # async fn run(backend: CeleryBackend) -> Result<(), events_celery::CeleryError> {
    /// use std::time::Duration;
    /// backend
    ///     .publish_with(&Reminder, |o| o.countdown(Duration::from_secs(60)).priority(7))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_with<E: DomainEvent>(
        &self,
        event: &E,
        options: impl FnOnce(EncodeOptions) -> EncodeOptions,
    ) -> Result<Receipt, CeleryError> {
        let event = EventRef::new(event);
        let options = options(self.options_for(event.name()));
        let message = TaskMessage::from_event_ref(event, &options)?;
        self.send_event(event.name(), message).await
    }

    /// [`publish_with`](Self::publish_with) without an async runtime (see
    /// [`publish_blocking`](Self::publish_blocking)).
    pub fn publish_with_blocking<E: DomainEvent>(
        &self,
        event: &E,
        options: impl FnOnce(EncodeOptions) -> EncodeOptions,
    ) -> Result<Receipt, CeleryError> {
        let event = EventRef::new(event);
        let options = options(self.options_for(event.name()));
        let message = TaskMessage::from_event_ref(event, &options)?;
        self.send_event_blocking(event.name(), message)
    }

    /// Sends a task message as it is — id, headers, options and body untouched — routed as
    /// its event is (the message's task is `<task prefix><event>`, and the event's
    /// [`route`](CeleryConfig::route_for) gives the queue).
    ///
    /// The task must be the configured prefix followed by an event name, else the error is
    /// [`CeleryError::UnsendableTask`]. The event need not be declared in this program (a
    /// task that only Python runs, say); the receipt names it either way.
    ///
    /// ```no_run
    /// # use events_celery::{CeleryBackend, TaskMessage};
    /// # async fn run(backend: CeleryBackend) -> Result<(), Box<dyn std::error::Error>> {
    /// let options = backend.config().encode_options("orders.order_placed").task_id("order-7");
    /// let payload = serde_json::json!({"order_id": 7});
    /// let message = TaskMessage::from_payload("orders.order_placed", payload, &options)?;
    /// backend.send(message).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, message: TaskMessage) -> Result<Receipt, CeleryError> {
        let event = self.event_of(&message)?;
        self.send_event(event, message).await
    }

    /// [`send`](Self::send) without an async runtime (see
    /// [`publish_blocking`](Self::publish_blocking)).
    pub fn send_blocking(&self, message: TaskMessage) -> Result<Receipt, CeleryError> {
        let event = self.event_of(&message)?;
        self.send_event_blocking(event, message)
    }

    /// The event a message's task names, as the receipt keeps it.
    fn event_of(&self, message: &TaskMessage) -> Result<&'static str, CeleryError> {
        let prefix = self.inner.config.prefix();
        let unsendable = |reason: String| CeleryError::UnsendableTask {
            task: message.task.clone(),
            reason,
        };
        let Some(name) = message.event_name(prefix) else {
            return Err(unsendable(format!(
                "its name is not the configured task prefix `{}` followed by an event name; \
                 build the message with `CeleryConfig::encode_options(event)`, or configure the \
                 prefix it uses (`CeleryConfig::task_prefix`)",
                OneLine(prefix)
            )));
        };
        let declared = events_core::Registry::collected()
            .ok()
            .and_then(|registry| registry.event(name));
        match declared {
            Some(event) => Ok(event.name()),
            None => undeclared_name(name).ok_or_else(|| {
                unsendable(format!(
                    "`{}` is not an event declared in this program, and receipts already keep \
                     {MAX_UNDECLARED} undeclared event names (or this one is longer than \
                     {MAX_UNDECLARED_LEN} bytes); declare the event with `#[domain_event]`",
                    OneLine(name)
                ))
            }),
        }
    }

    async fn send_event(
        &self,
        event: &'static str,
        message: TaskMessage,
    ) -> Result<Receipt, CeleryError> {
        self.send_event_to(event, message, None).await
    }

    /// [`send_event`](Self::send_event) to `queue` instead of the event's route, if given.
    async fn send_event_to(
        &self,
        event: &'static str,
        message: TaskMessage,
        queue: Option<&str>,
    ) -> Result<Receipt, CeleryError> {
        let (outgoing, receipt) = self.prepare(event, message, queue)?;
        let (reply, result) = oneshot::channel();
        self.enqueue(outgoing, Reply::Async(reply))?;
        result.await.unwrap_or_else(|_| Err(dropped()))?;
        Ok(receipt)
    }

    fn send_event_blocking(
        &self,
        event: &'static str,
        message: TaskMessage,
    ) -> Result<Receipt, CeleryError> {
        let (outgoing, receipt) = self.prepare(event, message, None)?;
        let (reply, result) = std::sync::mpsc::sync_channel(1);
        self.enqueue(outgoing, Reply::Blocking(reply))?;
        result.recv().unwrap_or_else(|_| Err(dropped()))?;
        Ok(receipt)
    }

    /// Hands a message to the I/O thread; its result comes back through `reply`.
    fn enqueue(&self, outgoing: AnyOutgoing, reply: Reply) -> Result<(), CeleryError> {
        let job = Job {
            outgoing,
            deadline: Instant::now() + self.inner.config.timeout(),
            reply,
        };
        self.inner.jobs.send(job).map_err(|_| dropped())
    }

    /// The configured options for `event`, plus — when a handler is publishing — where the
    /// message comes from (`events_core::origin`): the worker bounds publish cycles with it.
    fn options_for(&self, event: &str) -> EncodeOptions {
        let options = self.inner.config.encode_options(event);
        match events_core::origin::current() {
            Some(origin) => options
                .header(crate::codec::PUBLISH_DEPTH_HEADER, origin.depth())
                .header(crate::codec::PUBLISH_CHAIN_HEADER, origin.chain().to_vec()),
            None => options,
        }
    }

    /// Encodes with backend-neutral [`PublishOptions`] on top of the configured options.
    fn encode_with(
        &self,
        event: EventRef<'_>,
        options: &PublishOptions,
    ) -> Result<TaskMessage, CeleryError> {
        use chrono::{DateTime, Utc};
        let mut encode = self.options_for(event.name());
        if let Some(id) = &options.task_id {
            encode = encode.task_id(id.clone());
        }
        if let Some(eta) = options.eta {
            encode = encode.eta(DateTime::<Utc>::from(eta));
        }
        if let Some(expires) = options.expires {
            encode = encode.expires_at(DateTime::<Utc>::from(expires));
        }
        if let Some(priority) = options.priority {
            encode = encode.priority(priority);
        }
        if let Some(queue) = &options.queue {
            encode = encode.queue(queue.clone());
        }
        Ok(TaskMessage::from_event_ref(event, &encode)?)
    }

    fn encode(&self, event: EventRef<'_>) -> Result<TaskMessage, CeleryError> {
        let options = self.options_for(event.name());
        Ok(TaskMessage::from_event_ref(event, &options)?)
    }

    /// Encodes for the broker; returns what to deliver and the receipt to give back. `queue`
    /// replaces the event's route (the message's routing must say the same).
    fn prepare(
        &self,
        event: &'static str,
        message: TaskMessage,
        queue: Option<&str>,
    ) -> Result<(AnyOutgoing, Receipt), CeleryError> {
        let route = self.inner.config.route_for(event);
        let queue = queue.unwrap_or(route.queue_name());
        let receipt = Receipt::Enqueued {
            event,
            task_id: message.id.clone(),
            queue: queue.to_owned(),
        };
        let outgoing = self.inner.transport.prepare(message, queue)?;
        Ok((outgoing, receipt))
    }
}

/// How many distinct undeclared event names [`CeleryBackend::send`] keeps for its receipts.
const MAX_UNDECLARED: usize = 1024;
/// The longest undeclared event name kept.
const MAX_UNDECLARED_LEN: usize = 256;

/// The receipts' `&'static str` for an event that no `#[domain_event]` declares (a message
/// built by hand for a task only Python runs): each distinct name is allocated once and kept
/// for the life of the process, at most [`MAX_UNDECLARED`] names of at most
/// [`MAX_UNDECLARED_LEN`] bytes (256 KiB).
fn undeclared_name(name: &str) -> Option<&'static str> {
    static NAMES: std::sync::OnceLock<Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(&kept) = names.get(name) {
        return Some(kept);
    }
    if names.len() >= MAX_UNDECLARED || name.len() > MAX_UNDECLARED_LEN {
        return None;
    }
    let kept: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(kept);
    Some(kept)
}

/// The I/O thread's dispatcher: takes whatever publishes are waiting (up to [`MAX_BATCH`]) and
/// delivers them as one batch, in a task of its own, so several batches can be in flight.
async fn dispatch(inner: Weak<Inner>, mut queued: mpsc::UnboundedReceiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queued.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let Some(inner) = inner.upgrade() else {
            break;
        };
        let jobs = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        tokio::spawn(async move { inner.deliver(jobs).await });
    }
}

impl Inner {
    fn timeout_error(&self) -> CeleryError {
        CeleryError::Timeout {
            broker: self.config.broker().clone(),
            operation: "publishing",
            after: self.config.timeout(),
        }
    }

    /// Delivers a batch; every job gets its own result, by its own deadline.
    async fn deliver(&self, jobs: Vec<Job>) {
        let now = Instant::now();
        let (jobs, late): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.deadline > now);
        for job in late {
            crate::broker::Reply::send(job.reply, Err(self.timeout_error()));
        }
        self.transport.publish_batch(jobs).await;
    }
}

impl Backend for CeleryBackend {
    fn kind(&self) -> BackendKind {
        Self::KIND
    }

    fn describe(&self) -> String {
        format!("celery ({})", self.inner.config.broker())
    }

    fn subscribe(&self, handler: Handler) -> Result<(), Error> {
        self.inner
            .subscribed
            .lock()
            .expect("not poisoned")
            .push(handler);
        Ok(())
    }

    fn subscribe_many(&self, handlers: Vec<Handler>) -> Result<(), Error> {
        self.inner
            .subscribed
            .lock()
            .expect("not poisoned")
            .extend(handlers);
        Ok(())
    }

    fn publish<'a>(&'a self, event: EventRef<'a>) -> BoxFuture<'a, Result<Receipt, Error>> {
        let encoded = self.encode(event);
        Box::pin(async move {
            let message = encoded?;
            Ok(self.send_event(event.name(), message).await?)
        })
    }

    /// Honours every option: the task id, `eta`, `expires` and `priority` go into the message
    /// as Python's `send_task(task_id=…, eta=…, expires=…, priority=…)` writes them, and
    /// `queue` sends it to that queue (through the default exchange, declared as Celery
    /// declares it) instead of the event's route.
    fn publish_with<'a>(
        &'a self,
        event: EventRef<'a>,
        options: &'a PublishOptions,
    ) -> BoxFuture<'a, Result<Receipt, Error>> {
        let encoded = self.encode_with(event, options);
        Box::pin(async move {
            let message = encoded?;
            let queue = options.queue.as_deref();
            Ok(self.send_event_to(event.name(), message, queue).await?)
        })
    }

    fn publish_blocking(&self, event: EventRef<'_>) -> Result<Receipt, Error> {
        let message = self.encode(event)?;
        Ok(self.send_event_blocking(event.name(), message)?)
    }
}

impl std::fmt::Debug for CeleryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CeleryBackend")
            .field("broker", self.inner.config.broker())
            .finish_non_exhaustive()
    }
}
