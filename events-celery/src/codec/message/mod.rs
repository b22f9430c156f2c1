//! [`TaskMessage`]: one model for every Celery task message, whichever broker carried it and
//! whichever protocol version wrote it.
//!
//! - `model.rs`: the message and its parts;
//! - `payload.rs`: the event inside (arguments bound to `payload`, the typed event);
//! - `headers.rs`: every header name, once ([`Header`] in Celery's order, the `x-events-*`
//!   headers);
//! - `write.rs`: the headers and the body written as JSON (the AMQP header table is written in
//!   `codec/amqp.rs`, from the same [`Header`] table);
//! - `read.rs`: the header reader, for every envelope and both protocols.

mod headers;
mod model;
mod payload;
mod read;
#[cfg(test)]
mod tests;
mod write;

pub(crate) use headers::{Header, REFUSED_HEADER};
pub use headers::{PUBLISH_CHAIN_HEADER, PUBLISH_DEPTH_HEADER};
pub use model::{
    Embed, MessageProperties, PAYLOAD_KWARG, ProtocolVersion, Routing, TaskHeaders, TaskMessage,
    TimeLimit,
};
pub(crate) use read::{HeaderValue, HeadersIn, ParsedHeaders};
#[cfg(test)]
pub(crate) use write::{BodyJson, HeadersJson};
pub(crate) use write::{push_body_json, push_headers_json, push_integer};
