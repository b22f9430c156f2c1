//! The in-memory backend: immediate, in-process dispatch.

use std::any::TypeId;
use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use crate::backend::{Backend, BackendKind, Receipt};
use crate::error::{Error, HandlerFailures};
use crate::event::EventRef;
use crate::handler::{BoxFuture, FailureCause, Handler, HandlerFailure};
use crate::options::PublishOptions;

/// Immediate, in-process dispatch of each event to every handler subscribed to it.
///
/// - Handlers run one after another in the [registry's order](crate::Registry), then closures
///   in subscription order.
/// - A handler that returns `Err` or panics is logged at ERROR and reported; the others still
///   run. The publish then fails with [`Error::Handlers`], which lists every failure.
/// - [`publish`](Backend::publish) awaits async handlers (never fire-and-forget);
///   [`publish_blocking`](Backend::publish_blocking) needs no runtime and runs sync handlers
///   only (an event with async handlers is refused before any handler runs). The blocking path
///   makes no heap allocation unless a handler fails.
/// - A handler that publishes, directly or through other events' handlers, the event it
///   handles would recurse without end: publishes nested more than [`MAX_PUBLISH_DEPTH`] deep
///   on one thread are refused with [`Error::PublishCycle`], which names the chain of events.
///
/// ```rust,standalone_crate
/// use events_core::{EventBus, MemoryBackend, domain_event};
///
/// #[domain_event(name = "doc.memory_example")]
/// struct Pinged;
///
/// let bus = EventBus::new(MemoryBackend::new())?;
/// bus.subscribe(|_: &Pinged| println!("pong"));
/// bus.publish_blocking(&Pinged)?;
/// # Ok::<(), events_core::Error>(())
/// ```
///
/// Cloning is cheap and shares the subscriptions: keep a clone of the backend you hand to
/// [`init`](crate::init) to ask it [`handler_count`](Self::handler_count) later.
#[derive(Clone)]
pub struct MemoryBackend {
    table: Arc<Published>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self {
            table: Arc::new(Published::new(Table::default())),
        }
    }
}

/// The subscriber table, read without locks or reference counting on every publish.
///
/// Subscribing builds a new table and publishes it with one atomic store; every table ever
/// published stays allocated until the backend (its last clone) is dropped, so a reader never
/// sees a freed one.
/// Subscriptions are few (start-up, plus closures), so the retired tables cost little memory;
/// [`Backend::subscribe_many`] publishes a whole batch as one table.
struct Published {
    current: AtomicPtr<Table>,
    #[allow(
        clippy::vec_box,
        reason = "readers hold pointers into the tables, which must not move when the list grows"
    )]
    all: Mutex<Vec<Box<Table>>>,
}

#[allow(
    unsafe_code,
    reason = "a lock-free read of the current table: the ArcSwap/RwLock alternatives cost \
              3 atomic read-modify-writes per publish (~8 ns, half the budget)"
)]
impl Published {
    fn new(table: Table) -> Self {
        let first = Box::new(table);
        Self {
            current: AtomicPtr::new(std::ptr::from_ref::<Table>(&first).cast_mut()),
            all: Mutex::new(vec![first]),
        }
    }

    #[inline]
    fn load(&self) -> &Table {
        // SAFETY: `current` always points into a `Box<Table>` held by `all`. Boxes are only
        // added to `all` (never removed or mutated) until `self` is dropped (when the last
        // `MemoryBackend` clone releases its `Arc`), which needs `&mut self` and so outlives
        // every `&Table` handed out here; the box's heap allocation does not move when `all`
        // grows. The Release store in `update` pairs with this Acquire load, so the table's
        // contents are visible.
        unsafe { &*self.current.load(Ordering::Acquire) }
    }

    fn update(&self, change: impl FnOnce(&mut Table)) {
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Box::new(Table::clone(all.last().expect("never empty")));
        change(&mut next);
        self.current.store(
            std::ptr::from_ref::<Table>(&next).cast_mut(),
            Ordering::Release,
        );
        all.push(next);
    }
}

#[derive(Default, Clone)]
struct Table {
    by_type: FxHashMap<TypeId, Subscribers>,
    /// The same subscribers by [`EventDescriptor::slot`]: a publish finds them with one load
    /// and one bounds check instead of hashing a `TypeId`.
    by_slot: Vec<Option<Subscribers>>,
}

impl Table {
    #[inline]
    fn subscribers(&self, event: &EventRef<'_>) -> Option<&Subscribers> {
        match event.descriptor().slot() {
            Some(slot) => self.by_slot.get(slot).and_then(Option::as_ref),
            // A descriptor outside the slice (not made by `#[domain_event]`).
            None => self.by_type.get(&event.type_id()),
        }
    }
}

/// The [`EventDescriptor::slot`](crate::EventDescriptor::slot) of an event type, looked up
/// once per subscription.
fn slot_of_type(event_type: TypeId) -> Option<usize> {
    let events: &'static [crate::EventDescriptor] = &crate::__private::EVENTS;
    events
        .iter()
        .find(|descriptor| descriptor.type_id() == event_type)?
        .slot()
}

#[derive(Clone)]
struct Subscribers {
    handlers: Arc<[Handler]>,
    async_count: usize,
}

/// How deep publishes may nest on one thread: a handler publishing an event whose handler
/// publishes another, and so on. A chain this long is a cycle (a handler publishing, directly
/// or through other events, the event it handles), which would otherwise recurse until the
/// stack overflows and the process aborts; 64 levels stay far from that even on a 2 MB thread
/// in a debug build.
pub const MAX_PUBLISH_DEPTH: usize = 64;

/// The publishes in progress on this thread, outermost first (their events' names): the
/// nesting depth and, for the error, the chain that led there. Constant-initialised and
/// without destructor, so a publish reads and writes it with plain thread-local accesses.
struct Nesting {
    depth: Cell<usize>,
    chain: [Cell<&'static str>; MAX_PUBLISH_DEPTH],
}

thread_local! {
    static NESTING: Nesting = const {
        Nesting {
            depth: Cell::new(0),
            chain: [const { Cell::new("") }; MAX_PUBLISH_DEPTH],
        }
    };
}

/// One level of publish nesting on this thread, left when dropped (also on unwinding).
struct Nested(());

impl Nested {
    /// Enters a publish of `event`, or `None` when the thread is already
    /// [`MAX_PUBLISH_DEPTH`] publishes deep (see [`refuse`]).
    #[inline]
    fn enter(event: &'static str) -> Option<Nested> {
        NESTING.with(|nesting| {
            let depth = nesting.depth.get();
            let slot = nesting.chain.get(depth)?;
            slot.set(event);
            nesting.depth.set(depth + 1);
            Some(Nested(()))
        })
    }
}

impl Drop for Nested {
    #[inline]
    fn drop(&mut self) {
        NESTING.with(|nesting| nesting.depth.set(nesting.depth.get() - 1));
    }
}

pin_project_lite::pin_project! {
    /// An async publish, counted as one level of nesting while it is polled (not while it
    /// waits): a publish awaited inside a handler is polled inside its parent's poll, on the
    /// same thread, and that is what would exhaust the stack.
    struct NestedPolls<F> {
        event: &'static str,
        #[pin]
        inner: F,
    }
}

impl<F: Future<Output = Result<Receipt, Error>>> Future for NestedPolls<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        match Nested::enter(this.event) {
            Some(_nested) => this.inner.poll(cx),
            None => std::task::Poll::Ready(Err(refuse(this.event))),
        }
    }
}

/// The cycle error a handler failed with, if it returned one from a nested publish.
fn refused_cycle(failure: &HandlerFailure) -> Option<Error> {
    let FailureCause::Error(error) = failure.cause() else {
        return None;
    };
    match error.downcast_ref::<Error>()? {
        Error::PublishCycle {
            event,
            depth,
            cycle,
        } => Some(Error::PublishCycle {
            event,
            depth: *depth,
            cycle: cycle.clone(),
        }),
        _ => None,
    }
}

/// The error for a publish of `event` refused at the depth limit: the cycle (from the last
/// earlier publish of the same event), or the whole chain when no event repeats.
#[cold]
#[inline(never)]
fn refuse(event: &'static str) -> Error {
    let chain: Vec<&'static str> =
        NESTING.with(|nesting| nesting.chain.iter().map(Cell::get).collect());
    let start = chain.iter().rposition(|&e| e == event).unwrap_or(0);
    let cycle: Vec<&'static str> = chain[start..].iter().copied().chain([event]).collect();
    tracing::error!(
        event,
        depth = MAX_PUBLISH_DEPTH,
        cycle = %cycle.join(" -> "),
        "publish refused: handlers publish in a cycle"
    );
    Error::PublishCycle {
        event,
        depth: MAX_PUBLISH_DEPTH,
        cycle,
    }
}

impl MemoryBackend {
    /// An empty in-memory backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many handlers are subscribed to events of this type.
    pub fn handler_count(&self, event_type: TypeId) -> usize {
        self.table
            .load()
            .by_type
            .get(&event_type)
            .map_or(0, |s| s.handlers.len())
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("events", &self.table.load().by_type.len())
            .finish()
    }
}

fn outcome(
    event: &'static str,
    ran: usize,
    failures: Vec<HandlerFailure>,
) -> Result<Receipt, Error> {
    if failures.is_empty() {
        Ok(Receipt::Handled {
            event,
            handlers: ran,
        })
    } else {
        Err(failed(event, ran, failures))
    }
}

#[cold]
#[inline(never)]
fn failed(event: &'static str, ran: usize, failures: Vec<HandlerFailure>) -> Error {
    match failures.iter().find_map(refused_cycle) {
        // A handler passed on a refused nested publish: pass it on as it is, rather than
        // wrapped once per level of the cycle.
        Some(cycle) => cycle,
        None => HandlerFailures::new(event, ran, failures).into(),
    }
}

impl Backend for MemoryBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::MEMORY
    }

    fn subscribe(&self, handler: Handler) -> Result<(), Error> {
        self.subscribe_many(vec![handler])
    }

    fn subscribe_many(&self, handlers: Vec<Handler>) -> Result<(), Error> {
        self.table.update(|table| {
            for handler in handlers {
                let current = table
                    .by_type
                    .entry(handler.event_type())
                    .or_insert_with(|| Subscribers {
                        handlers: Arc::from(Vec::new()),
                        async_count: 0,
                    });
                current.async_count += usize::from(handler.is_async());
                let mut list = current.handlers.to_vec();
                let event_type = handler.event_type();
                list.push(handler);
                current.handlers = list.into();
                if let Some(slot) = slot_of_type(event_type) {
                    if table.by_slot.len() <= slot {
                        table.by_slot.resize(slot + 1, None);
                    }
                    table.by_slot[slot] = Some(current.clone());
                }
            }
        });
        Ok(())
    }

    fn publish<'a>(&'a self, event: EventRef<'a>) -> BoxFuture<'a, Result<Receipt, Error>> {
        let name = event.name();
        Box::pin(NestedPolls {
            event: name,
            inner: async move {
                let subscribers = self.table.load().subscribers(&event).cloned();
                let Some(subscribers) = subscribers else {
                    tracing::debug!(event = name, "no handlers subscribed to event");
                    return outcome(name, 0, Vec::new());
                };
                tracing::info!(event = name, "publishing event");
                let mut failures = Vec::new();
                for handler in subscribers.handlers.iter() {
                    if let Err(failure) = handler.run(event.value()).await {
                        failures.push(failure);
                    }
                }
                outcome(name, subscribers.handlers.len(), failures)
            },
        })
    }

    /// In process, the task id, priority and queue mean nothing and are ignored; an event
    /// whose [`expires`](PublishOptions::expires) has passed runs no handler (the receipt
    /// says 0 handlers, as Celery drops an expired task); an [`eta`](PublishOptions::eta)
    /// still in the future is refused with [`Error::UnsupportedOption`] (nothing here can wait
    /// for it: the outbox relay holds such events until they are due).
    fn publish_with<'a>(
        &'a self,
        event: EventRef<'a>,
        options: &'a PublishOptions,
    ) -> BoxFuture<'a, Result<Receipt, Error>> {
        let now = std::time::SystemTime::now();
        if options.eta.is_some_and(|eta| eta > now) {
            let error = Error::UnsupportedOption {
                backend: self.describe(),
                option: "eta",
                reason: "in-process dispatch cannot wait for an eta in the future".to_owned(),
            };
            return Box::pin(std::future::ready(Err(error)));
        }
        if options.expires.is_some_and(|expires| expires <= now) {
            tracing::info!(
                event = event.name(),
                "event expired before delivery: not handled"
            );
            return Box::pin(std::future::ready(outcome(event.name(), 0, Vec::new())));
        }
        self.publish(event)
    }

    fn publish_blocking(&self, event: EventRef<'_>) -> Result<Receipt, Error> {
        let name = event.name();
        let Some(_nested) = Nested::enter(name) else {
            return Err(refuse(name));
        };
        let table = self.table.load();
        let Some(subscribers) = table.subscribers(&event) else {
            tracing::debug!(event = name, "no handlers subscribed to event");
            return outcome(name, 0, Vec::new());
        };
        if subscribers.async_count > 0 {
            let first = subscribers.handlers.iter().find(|h| h.is_async());
            return Err(Error::AsyncHandlersNeedRuntime {
                event: name,
                count: subscribers.async_count,
                first: first.map(|h| h.name().to_owned()).unwrap_or_default(),
            });
        }
        tracing::info!(event = name, "publishing event");
        let mut failures = Vec::new();
        for handler in subscribers.handlers.iter() {
            if let Some(Err(failure)) = handler.run_sync(event.value()) {
                failures.push(failure);
            }
        }
        outcome(name, subscribers.handlers.len(), failures)
    }
}
