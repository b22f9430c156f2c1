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
//! - [`init`] sets up the global bus on a [`Backend`]; [`publish`], [`publish_blocking`] and
//!   [`publish_json`] send events through it. An explicit [`EventBus`] does the same without a
//!   global.
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
mod bus;
mod error;
mod event;
mod handler;
mod memory;
mod registry;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use backend::{Backend, BackendKind, Receipt, backend_from_config, redact_url};
pub use bus::{
    EventBus, EventBusBuilder, bus, init, init_from, init_with, publish, publish_blocking,
    publish_json, subscribe,
};
pub use error::{Error, HandlerFailures};
pub use event::{AnyEvent, DomainEvent, EventDescriptor, EventRef, SourceLocation};
pub use handler::{
    BoxError, BoxFuture, EventValue, FailureCause, Handler, HandlerDescriptor, HandlerFailure,
    HandlerOptions, HandlerResult, IntoHandlerResult,
};
pub use memory::MemoryBackend;
pub use registry::Registry;

#[cfg(feature = "macros")]
pub use events_macros::{domain_event, handler};

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
