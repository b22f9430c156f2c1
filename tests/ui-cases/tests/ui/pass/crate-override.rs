//! `crate = path` reaches events-core through a re-export, as a framework built on it would.

mod reexport {
    pub use events_core;
}

use reexport::events_core::{DomainEvent, Registry};

#[reexport::events_core::domain_event(crate = reexport::events_core, name = "reexported")]
#[derive(Clone)]
struct Reexported {
    id: u32,
}

#[reexport::events_core::handler(crate = reexport::events_core)]
fn on_reexported(event: Reexported) {
    assert_eq!(event.id, 7);
}

fn main() {
    assert_eq!(Reexported::NAME, "reexported");
    let registry = Registry::collected().unwrap();
    let handlers = registry.handlers_of("reexported");
    assert_eq!(handlers.len(), 1);
    assert!(
        handlers[0].name().ends_with("::on_reexported"),
        "{}",
        handlers[0].name()
    );
    let bus =
        reexport::events_core::EventBus::new(reexport::events_core::MemoryBackend::new()).unwrap();
    bus.publish_blocking(&Reexported { id: 7 }).unwrap();
}
