//! Procedural macros for `events-core`: `#[domain_event]` and `#[handler]`.
//!
//! Do not depend on this crate directly: use the re-exports in `events-core`, which document
//! every argument.

use proc_macro::TokenStream;

mod attr;
mod context;
mod event;
mod handler;

/// (Implemented in `events-macros`; use it through `events-core`.)
#[proc_macro_attribute]
pub fn domain_event(args: TokenStream, input: TokenStream) -> TokenStream {
    event::expand(args.into(), input.into()).into()
}

/// (Implemented in `events-macros`; use it through `events-core`.)
#[proc_macro_attribute]
pub fn handler(args: TokenStream, input: TokenStream) -> TokenStream {
    handler::expand(args.into(), input.into()).into()
}
