//! Two handlers with one name cannot be told apart in failure reports and retries
//! (`x-events-handlers` names handlers): the registry refuses to build, naming both.

use events_core::{Error, EventBus, MemoryBackend, domain_event, handler};

#[domain_event(name = "duplicate_handler.invoice_sent")]
struct InvoiceSent;

#[domain_event(name = "duplicate_handler.invoice_paid")]
#[derive(Clone)]
struct InvoicePaid;

mod billing {
    use super::{InvoiceSent, handler};

    #[handler(name = "billing.notify")]
    fn on_sent(_: &InvoiceSent) {}
}

mod shipping {
    use super::{InvoicePaid, handler};

    #[handler(name = "billing.notify")]
    async fn on_paid(_: InvoicePaid) {}
}

#[test]
fn duplicate_handler_names_fail_init_naming_both_locations() {
    let err = EventBus::new(MemoryBackend::new()).unwrap_err();
    let Error::DuplicateHandler {
        name,
        first_event,
        first_location,
        second_event,
        second_location,
    } = &err
    else {
        panic!("expected DuplicateHandler, got {err:?}");
    };
    assert_eq!(*name, "billing.notify");
    let mut events = [*first_event, *second_event];
    events.sort();
    assert_eq!(
        events,
        [
            "duplicate_handler.invoice_paid",
            "duplicate_handler.invoice_sent"
        ]
    );
    assert!(first_location.file.ends_with("duplicate_handler.rs"));
    assert!(second_location.file.ends_with("duplicate_handler.rs"));
    assert_ne!(first_location.line, second_location.line);
    let message = err.to_string();
    assert!(message.contains(&format!("{first_location}")), "{message}");
    assert!(message.contains(&format!("{second_location}")), "{message}");
    assert!(message.contains("#[handler(name = \"...\")]"), "{message}");

    // The global init reports the same, and the bus stays uninitialized.
    assert!(matches!(
        events_core::init(MemoryBackend::new()),
        Err(Error::DuplicateHandler { .. })
    ));
    assert!(matches!(events_core::bus(), Err(Error::NotInitialized)));
}
