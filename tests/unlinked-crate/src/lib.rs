//! A crate that holds only handlers: nothing references it, so without
//! `events_core::link!(unlinked_crate)` the linker drops it and its handlers with it.

use std::sync::atomic::{AtomicUsize, Ordering};

use events_core::handler;
use handler_crate::OrderPlaced;

/// How many orders the audit handler saw.
pub static AUDITED: AtomicUsize = AtomicUsize::new(0);

#[handler]
fn audit(_: &OrderPlaced) {
    AUDITED.fetch_add(1, Ordering::SeqCst);
}
