//! Procedural macros for `events-core`: `#[domain_event]` and `#[handler]`.
//!
//! Do not depend on this crate directly: use the re-exports in `events-core`, which document
//! every argument.

use proc_macro::TokenStream;

mod attr;
mod event;
mod handler;

/// Makes a type a domain event. See `events_core::domain_event`.
#[proc_macro_attribute]
pub fn domain_event(args: TokenStream, input: TokenStream) -> TokenStream {
    event::expand(args.into(), input.into()).into()
}

/// Subscribes a function to the event it takes. See `events_core::handler`.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, input: TokenStream) -> TokenStream {
    handler::expand(args.into(), input.into()).into()
}
