//! A crate of events and handlers, separate from the binaries that use them: proves that
//! handlers are collected across crates.

use std::sync::Mutex;

use events_core::{domain_event, handler};

/// What the handlers of this crate saw, in order.
pub static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// An order was placed.
#[domain_event(name = "cross.order_placed")]
#[derive(Debug, Clone, PartialEq)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: u64,
}

/// Bills the order.
#[handler]
fn bill(event: &OrderPlaced) {
    SEEN.lock()
        .unwrap()
        .push(format!("bill {}", event.order_id));
}

/// Ships the order.
#[handler]
async fn ship(event: &OrderPlaced) {
    SEEN.lock()
        .unwrap()
        .push(format!("ship {}", event.order_id));
}
