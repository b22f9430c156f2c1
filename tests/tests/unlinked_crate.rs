//! Without `events_core::link!`, a handler crate that nothing references is dropped by the
//! linker, and `require_handler_crates` reports it at start-up.

use events_core::{Error, EventBus, MemoryBackend};
use handler_crate::OrderPlaced;

#[test]
fn a_crate_nothing_references_is_reported_missing() {
    let _ = OrderPlaced { order_id: 1 };
    let registry = events_core::Registry::collected().unwrap();
    assert!(registry.handler_crates().contains("handler_crate"));
    assert!(!registry.handler_crates().contains("unlinked_crate"));
    let err = EventBus::builder(MemoryBackend::new())
        .require_handler_crates(["unlinked-crate"])
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::HandlerCrateNotLinked { ref krate } if krate == "unlinked_crate"));
    assert!(
        err.to_string()
            .contains("events_core::link!(unlinked_crate);"),
        "{err}"
    );
}
