//! Everything the macros' generated code needs, under one hidden path. Not a public API.

use std::any::Any;
use std::future::Future;

pub use linkme;
pub use linkme::distributed_slice;
pub use serde;

pub use crate::backends::BackendFactory;
pub use crate::event::{
    DeclaredEvent, DomainEvent, EventDescriptor, SourceLocation, deserialize_field, serialize_field,
};
pub use crate::handler::{
    BoxFuture, HandlerDescriptor, HandlerFn, HandlerOptions, HandlerResult, IntoHandlerResult,
};

/// Every `#[domain_event]` in the program.
#[distributed_slice]
pub static EVENTS: [EventDescriptor];

/// Every `#[handler]` in the program.
#[distributed_slice]
pub static HANDLERS: [HandlerDescriptor];

/// Every backend that can be built from configuration text (`register_backend!` adds to it;
/// read it through `events_core::backends`).
#[distributed_slice]
pub static BACKEND_FACTORIES: [BackendFactory];

/// The event behind a handler's type-erased argument.
///
/// No `DomainEvent` bound: `#[handler]` checks that once, so that a handler taking a type that
/// is not an event gets one error rather than one per generated call.
#[inline]
pub fn downcast<E: Any>(value: &(dyn Any + Send + Sync)) -> &E {
    match value.downcast_ref::<E>() {
        Some(event) => event,
        None => panic!(
            "a handler for `{}` was given an event of another type",
            std::any::type_name::<E>()
        ),
    }
}

/// Boxes an async handler's future (`#[handler]` converts its output where the return type is
/// written, so that a wrong return type is reported there).
#[inline]
pub fn boxed<'a, F>(future: F) -> BoxFuture<'a, HandlerResult>
where
    F: Future<Output = HandlerResult> + Send + 'a,
{
    Box::pin(future)
}

/// Events taken by value by a handler are cloned from the one published.
///
/// Only `Clone` is required here: whether the type is a domain event is checked (once)
/// elsewhere.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is taken by value, so it must implement `Clone`",
    label = "taken by value here",
    note = "take `&{Self}` instead, or add `#[derive(Clone)]` to `{Self}`"
)]
pub trait ByValueEvent: Any + Clone {}

impl<E: Any + Clone> ByValueEvent for E {}

/// Clones an event for a handler that takes it by value.
#[inline]
pub fn by_value<E: ByValueEvent>(value: &(dyn Any + Send + Sync)) -> E {
    downcast::<E>(value).clone()
}
