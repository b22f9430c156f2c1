//! Handlers declared in other crates are collected, including a crate nothing references
//! but `events_core::link!`.

use std::sync::atomic::Ordering;

use events_core::{EventBus, MemoryBackend};
use handler_crate::OrderPlaced;

events_core::link!(unlinked_crate);

#[test]
fn handlers_from_other_crates_are_collected_and_run() {
    let bus = EventBus::builder(MemoryBackend::new())
        .require_handler_crates(["handler-crate", "unlinked_crate"])
        .build()
        .expect("both handler crates are linked");
    let names: Vec<&str> = bus
        .registry()
        .handlers_of("cross.order_placed")
        .iter()
        .map(|h| h.name())
        .collect();
    assert_eq!(
        names,
        [
            "handler_crate::bill",
            "handler_crate::ship",
            "unlinked_crate::audit"
        ]
    );
    pollster::block_on(bus.publish(&OrderPlaced { order_id: 42 })).unwrap();
    assert_eq!(*handler_crate::SEEN.lock().unwrap(), ["bill 42", "ship 42"]);
    assert_eq!(unlinked_crate::AUDITED.load(Ordering::SeqCst), 1);
}
