//! The in-memory backend: immediate, in-process dispatch.

use std::any::TypeId;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use crate::backend::{Backend, BackendKind, Receipt};
use crate::error::{Error, HandlerFailures};
use crate::event::EventRef;
use crate::handler::{BoxFuture, Handler, HandlerFailure};

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
pub struct MemoryBackend {
    table: Published,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self {
            table: Published::new(Table::default()),
        }
    }
}

/// The subscriber table, read without locks or reference counting on every publish.
///
/// Subscribing builds a new table and publishes it with one atomic store; every table ever
/// published stays allocated until the backend is dropped, so a reader never sees a freed one.
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
        // added to `all` (never removed or mutated) until `self` is dropped, which needs
        // `&mut self` and so outlives every `&Table` handed out here; the box's heap
        // allocation does not move when `all` grows. The Release store in `update` pairs with
        // this Acquire load, so the table's contents are visible.
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
        Err(HandlerFailures::new(event, ran, failures).into())
    }
}

impl Backend for MemoryBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Memory
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
        Box::pin(async move {
            let name = event.name();
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
        })
    }

    fn publish_blocking(&self, event: EventRef<'_>) -> Result<Receipt, Error> {
        let name = event.name();
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
