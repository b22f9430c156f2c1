//! Typed domain events whose handlers are collected at link time, published through a
//! pluggable backend: in process ([`MemoryBackend`]) or as Celery tasks (`events-celery`).
//!
//! # Example
//!
//! ```rust,standalone_crate
//! use events_core::{MemoryBackend, domain_event, handler};
//!
//! #[domain_event(name = "products.product_created")]
//! struct ProductCreated {
//!     product_id: String,
//!     stock: u32,
//! }
//!
//! #[handler]
//! fn log_product(event: &ProductCreated) {
//!     println!("created {} with {} in stock", event.product_id, event.stock);
//! }
//!
//! events_core::init(MemoryBackend::new())?;
//! events_core::publish_blocking(&ProductCreated { product_id: "abc-123".into(), stock: 4 })?;
//! # Ok::<(), events_core::Error>(())
//! ```
//!
//! # The pieces
//!
//! - [`#[domain_event]`](domain_event) makes a type a [`DomainEvent`] with a stable name.
//! - [`#[handler]`](handler) subscribes a function to the event type it takes; the linker
//!   collects every handler into the [`Registry`], so there is no registration code.
//! - [`init`] sets up the global bus on a [`Backend`]; [`publish`], [`publish_blocking`],
//!   [`publish_json`] and [`publish_json_blocking`] send events through it, [`subscribe`] and
//!   [`subscribe_async`] add closures. An explicit [`EventBus`] has the same methods, under
//!   the same names, without a global.
//! - [`init_from`] picks the backend by kind name or URL scheme among the registered ones;
//!   any crate registers its own with [`register_backend!`] (see [`backends`]).
//!
//! # Handler crates and the linker
//!
//! A crate whose handlers nothing references may be dropped by the linker, and its handlers
//! with it. Reference it once from your binary with [`link!`]:
//!
//! ```ignore
//! events_core::link!(billing_handlers);
//! ```
//!
//! and catch a missing one at start-up with
//! [`EventBusBuilder::require_handler_crates`].

#![doc(html_root_url = "https://docs.rs/events-core/0.1.0")]

mod backend;
pub mod backends;
mod bus;
mod error;
mod event;
mod handler;
pub mod inbox;
mod memory;
mod options;
pub mod origin;
mod registry;
pub mod task;
pub mod text;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use backend::{Backend, BackendKind, Receipt, backend_from_config, redact_url};
pub use bus::{
    EventBus, EventBusBuilder, bus, init, init_from, init_with, publish, publish_blocking,
    publish_json, publish_json_blocking, subscribe, subscribe_async,
};
pub use error::{Error, HandlerFailures};
#[doc(hidden)]
pub use event::DeclaredEvent;
pub use event::{
    AnyEvent, DomainEvent, EventDescriptor, EventField, EventRef, MAX_PAYLOAD_DEPTH,
    PayloadMismatch, SourceLocation,
};
pub use handler::{
    BoxError, BoxFuture, EventValue, FailureCause, Handler, HandlerDescriptor, HandlerFailure,
    HandlerOptions, HandlerResult, IntoHandlerResult,
};
pub use memory::{MAX_PUBLISH_DEPTH, MemoryBackend};
pub use options::PublishOptions;
pub use registry::Registry;

/// serde, re-exported for the types inside an event.
///
/// `#[domain_event]` derives serde's traits for the event itself. A type used inside it — a
/// struct under `#[serde(flatten)]`, an enum or struct field — needs them too; derive them
/// through this re-export, so that your crate needs no `serde` dependency of its own:
///
/// ```rust,standalone_crate
/// use events_core::domain_event;
///
/// #[derive(events_core::serde::Serialize, events_core::serde::Deserialize)]
/// #[serde(crate = "events_core::serde")]
/// enum Currency {
///     Eur,
///     Usd,
/// }
///
/// #[domain_event(name = "orders.order_placed")]
/// struct OrderPlaced {
///     order_id: u64,
///     currency: Currency,
/// }
/// ```
///
/// (With `serde = { version = "1", features = ["derive"] }` in your `Cargo.toml`,
/// `#[derive(serde::Serialize, serde::Deserialize)]` works as well.)
pub use serde;

/// Makes a struct or enum a [`DomainEvent`]: derives serde's `Serialize` and `Deserialize`
/// (through this crate, so yours needs no `serde` dependency; if you derive them yourself,
/// they are not derived twice), implements `DomainEvent` with a stable name, and records the
/// event — name, Rust type, source location — in the link-time [`Registry`].
///
/// # Arguments
///
/// - `name = "orders.order_placed"`: the stable name, used on the wire (the Celery task is
///   `domain_events.<name>`). Not empty, no white space or control characters. **Default:**
///   the type's name in snake case (`OrderPlaced` → `order_placed`, `HTTPRequestSent` →
///   `http_request_sent`).
/// - `crate = path`: where `events_core` is, if you re-export it under another path.
///
/// Named, tuple and unit structs and enums are supported; generic types and unions are
/// compile errors. Two types with one name make building the bus fail, naming both.
///
/// ```rust,standalone_crate
/// use events_core::{DomainEvent, domain_event};
///
/// #[domain_event(name = "orders.order_placed")]
/// struct OrderPlaced {
///     order_id: u64,
/// }
///
/// #[domain_event]
/// enum StockChanged {
///     Restocked { sku: String, quantity: u32 },
///     SoldOut(String),
/// }
///
/// assert_eq!(OrderPlaced::NAME, "orders.order_placed");
/// assert_eq!(StockChanged::NAME, "stock_changed");
/// ```
#[cfg(feature = "macros")]
#[doc(inline)]
pub use events_macros::domain_event;

/// Subscribes a function to the event type it takes. The linker collects every handler of
/// every linked crate into the [`Registry`]; the bus registers them at [`init`].
///
/// The function is a `fn` or `async fn` with exactly one parameter, the event, taken as `&E`
/// or `E` (by value needs `E: Clone`), returning `()` or `Result<(), Err>` with
/// `Err: std::error::Error + Send + Sync + 'static` (anything that converts into
/// [`BoxError`]). If `E` is not a [`DomainEvent`], compilation fails at the parameter's type
/// with "`E` is not a domain event".
///
/// # Arguments
///
/// - `name = "billing.charge"`: the handler's name in logs, failure reports and the registry.
///   **Default:** its full path, `crate::module::function`. Handlers of one event run in the
///   order of their names.
/// - `max_retries = 5`: how often the Celery worker retries it after a failure (default: the
///   worker's [`RetryPolicy`](https://docs.rs/events-celery)).
/// - `time_limit_ms = 30000`: how long one run may take on the Celery worker before it counts
///   as failed (default: the worker's).
/// - `crate = path`: where `events_core` is, if you re-export it under another path.
///
/// ```rust,standalone_crate
/// use events_core::{domain_event, handler};
///
/// #[domain_event(name = "orders.order_placed")]
/// #[derive(Clone)]
/// struct OrderPlaced {
///     order_id: u64,
/// }
///
/// #[handler]
/// fn send_confirmation(event: &OrderPlaced) {
///     println!("confirming {}", event.order_id);
/// }
///
/// #[handler(name = "billing.charge", max_retries = 5, time_limit_ms = 30_000)]
/// async fn charge(event: OrderPlaced) -> Result<(), std::io::Error> {
///     let _ = event.order_id;
///     Ok(())
/// }
///
/// let registry = events_core::Registry::collected()?;
/// assert_eq!(registry.handlers_of("orders.order_placed").len(), 2);
/// # Ok::<(), events_core::Error>(())
/// ```
#[cfg(feature = "macros")]
#[doc(inline)]
pub use events_macros::handler;

/// Makes sure the linker keeps a crate whose `#[handler]`s nothing else references.
///
/// Put it once in your binary (or test), naming the crate as in `use`:
///
/// ```ignore
/// events_core::link!(billing_handlers);
/// ```
#[macro_export]
macro_rules! link {
    ($($krate:ident),+ $(,)?) => {
        $(
            #[allow(unused_extern_crates, reason = "forces the crate to be linked")]
            extern crate $krate;
        )+
    };
}
