//! The event bus: a backend plus the registry, as an explicit value or as the process-wide
//! global that [`init`] sets up.

use std::panic::Location;
use std::sync::{Mutex, OnceLock};

use crate::backend::{Backend, Receipt, backend_from_config};
use crate::error::Error;
use crate::event::{DomainEvent, EventRef, SourceLocation};
use crate::handler::{Handler, IntoHandlerResult};
use crate::registry::Registry;

/// A backend with the collected handlers registered on it.
///
/// Use the global bus ([`init`], [`publish`], …) in applications, and explicit `EventBus`
/// values where several buses must live side by side (tests, libraries).
///
/// ```rust,standalone_crate
/// use events_core::{EventBus, MemoryBackend, domain_event, handler};
///
/// #[domain_event(name = "doc.order_placed")]
/// struct OrderPlaced {
///     order_id: u64,
/// }
///
/// #[handler]
/// fn send_confirmation(event: &OrderPlaced) {
///     println!("confirming order {}", event.order_id);
/// }
///
/// let bus = EventBus::new(MemoryBackend::new())?;
/// bus.publish_blocking(&OrderPlaced { order_id: 7 })?;
/// # Ok::<(), events_core::Error>(())
/// ```
pub struct EventBus {
    backend: Box<dyn Backend>,
    registry: &'static Registry,
    collected_registered: Mutex<bool>,
}

/// Options for building an [`EventBus`].
#[must_use = "call `build()` to get the bus"]
pub struct EventBusBuilder {
    backend: Box<dyn Backend>,
    collected: bool,
    warn_unhandled: bool,
    required_crates: Vec<String>,
}

impl EventBusBuilder {
    /// Whether to register the collected `#[handler]`s (default: yes). Without them, only
    /// closures subscribed with [`EventBus::subscribe`] run.
    pub fn collected_handlers(mut self, yes: bool) -> Self {
        self.collected = yes;
        self
    }

    /// Whether to log a warning for each event that no handler subscribes to (default: yes).
    pub fn warn_unhandled_events(mut self, yes: bool) -> Self {
        self.warn_unhandled = yes;
        self
    }

    /// Fails the build with [`Error::HandlerCrateNotLinked`] unless each named crate
    /// contributed at least one handler, to catch a handler crate the linker dropped.
    pub fn require_handler_crates<I, S>(mut self, crates: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.required_crates
            .extend(crates.into_iter().map(Into::into));
        self
    }

    /// Builds the bus, registering the collected handlers with the backend.
    pub fn build(self) -> Result<EventBus, Error> {
        let registry = Registry::collected()?;
        registry.require_handler_crates(self.required_crates.iter().map(String::as_str))?;
        let bus = EventBus {
            backend: self.backend,
            registry,
            collected_registered: Mutex::new(false),
        };
        if self.collected {
            bus.register_collected()?;
            if self.warn_unhandled {
                for event in registry.events_without_handlers() {
                    tracing::warn!(
                        event = event.name(),
                        r#type = event.type_name(),
                        "no handler subscribes to this event (fine in a publisher-only process; \
                         otherwise check that the crate with its handlers is linked)"
                    );
                }
            }
        }
        Ok(bus)
    }
}

impl EventBus {
    /// A bus on `backend` with every collected handler registered.
    pub fn new(backend: impl Backend) -> Result<Self, Error> {
        Self::builder(backend).build()
    }

    /// A builder for a bus on `backend`.
    pub fn builder(backend: impl Backend) -> EventBusBuilder {
        Self::builder_boxed(Box::new(backend))
    }

    /// A builder for a bus on an already boxed backend.
    pub fn builder_boxed(backend: Box<dyn Backend>) -> EventBusBuilder {
        EventBusBuilder {
            backend,
            collected: true,
            warn_unhandled: true,
            required_crates: Vec::new(),
        }
    }

    /// Registers the collected `#[handler]`s with the backend, the counterpart of the seed's
    /// `init_domain_events()`. Idempotent: the first call registers them and returns how many;
    /// later calls register nothing and return 0. [`EventBus::new`] already calls it.
    pub fn register_collected(&self) -> Result<usize, Error> {
        let mut done = self
            .collected_registered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *done {
            return Ok(0);
        }
        let handlers: Vec<Handler> = self
            .registry
            .handlers()
            .map(Handler::from_descriptor)
            .collect();
        let count = handlers.len();
        self.backend.subscribe_many(handlers)?;
        *done = true;
        tracing::debug!(
            handlers = count,
            backend = %self.backend.describe(),
            "registered collected handlers"
        );
        Ok(count)
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The registry of collected events and handlers.
    pub fn registry(&self) -> &'static Registry {
        self.registry
    }

    /// Publishes a typed event; resolves once it is delivered (see [`Backend::publish`]).
    pub async fn publish<E: DomainEvent>(&self, event: &E) -> Result<Receipt, Error> {
        self.backend.publish(EventRef::new(event)).await
    }

    /// Publishes a typed event without an async runtime (see [`Backend::publish_blocking`]).
    pub fn publish_blocking<E: DomainEvent>(&self, event: &E) -> Result<Receipt, Error> {
        self.backend.publish_blocking(EventRef::new(event))
    }

    /// Publishes an event given by name with a JSON payload, as the seed's
    /// `publish_event(name, payload)`. The name must be a declared event
    /// ([`Error::UnknownEvent`] names the closest ones) and the payload must fit its type
    /// ([`Error::InvalidPayload`] names the field and the reason), nesting at most
    /// [`MAX_PAYLOAD_DEPTH`](crate::MAX_PAYLOAD_DEPTH) arrays and objects deep
    /// ([`Error::PayloadTooDeep`]).
    pub async fn publish_json(
        &self,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<Receipt, Error> {
        let (descriptor, value) = self.decode(name, payload)?;
        self.backend.publish(event_ref(descriptor, &value)).await
    }

    /// [`publish_json`](Self::publish_json) without an async runtime.
    pub fn publish_json_blocking(
        &self,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<Receipt, Error> {
        let (descriptor, value) = self.decode(name, payload)?;
        self.backend.publish_blocking(event_ref(descriptor, &value))
    }

    fn decode(
        &self,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<(&'static crate::EventDescriptor, crate::AnyEvent), Error> {
        self.registry.decode_payload(name, payload)
    }

    /// Subscribes a synchronous closure to events of type `E`, after the collected handlers.
    ///
    /// The closure returns `()` or `Result<(), Err>`. Its name in logs and reports is its
    /// source location.
    #[track_caller]
    pub fn subscribe<E, R>(&self, f: impl Fn(&E) -> R + Send + Sync + 'static) -> Result<(), Error>
    where
        E: DomainEvent,
        R: IntoHandlerResult,
    {
        let (name, location) = closure_identity();
        self.backend
            .subscribe(Handler::sync(name, f).with_location(location))
    }

    /// Subscribes an async closure to events of type `E`; it receives its own clone of the
    /// event and is awaited by [`publish`](Self::publish).
    #[track_caller]
    pub fn subscribe_async<E, F, Fut, R>(&self, f: F) -> Result<(), Error>
    where
        E: DomainEvent + Clone,
        F: Fn(E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoHandlerResult,
    {
        let (name, location) = closure_identity();
        self.backend
            .subscribe(Handler::asynchronous(name, f).with_location(location))
    }
}

/// The event a descriptor decoded, as backends take it.
fn event_ref<'a>(
    descriptor: &'static crate::EventDescriptor,
    value: &'a crate::AnyEvent,
) -> EventRef<'a> {
    match EventRef::from_any(descriptor, &**value) {
        Some(event) => event,
        None => unreachable!("a descriptor decodes to its own type"),
    }
}

#[track_caller]
fn closure_identity() -> (String, SourceLocation) {
    let caller = Location::caller();
    let location = SourceLocation {
        file: caller.file(),
        line: caller.line(),
    };
    (format!("closure at {location}"), location)
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("backend", &self.backend.describe())
            .field("events", &self.registry.events().len())
            .finish_non_exhaustive()
    }
}

static GLOBAL: OnceLock<EventBus> = OnceLock::new();

/// Initializes the global bus on `backend` and registers the collected handlers, the
/// counterpart of the seed's `init_event_backend` followed by `init_domain_events`.
///
/// Call it once at start-up. A second call fails with [`Error::AlreadyInitialized`], naming the
/// backend in place.
///
/// ```rust,standalone_crate
/// use events_core::MemoryBackend;
///
/// let bus = events_core::init(MemoryBackend::new())?;
/// assert!(events_core::init(MemoryBackend::new()).is_err());
/// # let _ = bus;
/// # Ok::<(), events_core::Error>(())
/// ```
pub fn init(backend: impl Backend) -> Result<&'static EventBus, Error> {
    init_with(EventBus::builder(backend))
}

/// Initializes the global bus from a builder (to set its options).
pub fn init_with(builder: EventBusBuilder) -> Result<&'static EventBus, Error> {
    if let Some(existing) = GLOBAL.get() {
        return Err(already(existing));
    }
    let bus = builder.build()?;
    let description = bus.backend.describe();
    match GLOBAL.set(bus) {
        Ok(()) => {
            tracing::info!(backend = %description, "event bus initialized");
            Ok(GLOBAL.get().expect("just set"))
        }
        Err(_) => Err(already(GLOBAL.get().expect("set by the other caller"))),
    }
}

/// Initializes the global bus from configuration text: a registered backend kind (`"memory"`,
/// `"celery"`, case-insensitive) or a URL whose scheme a registered backend claims
/// (`"amqp://…"`). See [`backend_from_config`] and [`backends`](crate::backends).
pub fn init_from(config: &str) -> Result<&'static EventBus, Error> {
    if let Some(existing) = GLOBAL.get() {
        return Err(already(existing));
    }
    init_with(EventBus::builder_boxed(backend_from_config(config)?))
}

fn already(existing: &EventBus) -> Error {
    Error::AlreadyInitialized {
        backend: existing.backend.describe(),
    }
}

/// The global bus, or [`Error::NotInitialized`] before [`init`].
pub fn bus() -> Result<&'static EventBus, Error> {
    GLOBAL.get().ok_or(Error::NotInitialized)
}

/// Publishes a typed event on the global bus (see [`EventBus::publish`]).
pub async fn publish<E: DomainEvent>(event: &E) -> Result<Receipt, Error> {
    bus()?.publish(event).await
}

/// Publishes a typed event on the global bus without an async runtime (see
/// [`EventBus::publish_blocking`]).
pub fn publish_blocking<E: DomainEvent>(event: &E) -> Result<Receipt, Error> {
    bus()?.publish_blocking(event)
}

/// Publishes an event by name with a JSON payload on the global bus (see
/// [`EventBus::publish_json`]).
pub async fn publish_json(name: &str, payload: serde_json::Value) -> Result<Receipt, Error> {
    bus()?.publish_json(name, payload).await
}

/// Publishes an event by name with a JSON payload on the global bus without an async runtime
/// (see [`EventBus::publish_json_blocking`]).
pub fn publish_json_blocking(name: &str, payload: serde_json::Value) -> Result<Receipt, Error> {
    bus()?.publish_json_blocking(name, payload)
}

/// Subscribes a closure on the global bus (see [`EventBus::subscribe`]).
#[track_caller]
pub fn subscribe<E, R>(f: impl Fn(&E) -> R + Send + Sync + 'static) -> Result<(), Error>
where
    E: DomainEvent,
    R: IntoHandlerResult,
{
    let bus = bus()?;
    bus.subscribe(f)
}

/// Subscribes an async closure on the global bus (see [`EventBus::subscribe_async`]).
#[track_caller]
pub fn subscribe_async<E, F, Fut, R>(f: F) -> Result<(), Error>
where
    E: DomainEvent + Clone,
    F: Fn(E) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoHandlerResult,
{
    let bus = bus()?;
    bus.subscribe_async(f)
}
