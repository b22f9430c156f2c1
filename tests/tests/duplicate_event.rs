//! Two event types with one name cannot be told apart on the wire: the registry refuses to
//! build, naming both definitions.

use events_core::{Error, EventBus, MemoryBackend, domain_event};

mod billing {
    use super::domain_event;

    #[domain_event(name = "shared.name")]
    pub(crate) struct Charged;
}

mod shipping {
    use super::domain_event;

    #[domain_event(name = "shared.name")]
    pub(crate) struct Shipped;
}

#[test]
fn duplicate_event_names_fail_init_naming_both_locations() {
    let _ = (billing::Charged, shipping::Shipped);
    let err = EventBus::new(MemoryBackend::new()).unwrap_err();
    let Error::DuplicateEvent {
        name,
        first_type,
        first_location,
        second_type,
        second_location,
    } = &err
    else {
        panic!("expected DuplicateEvent, got {err:?}");
    };
    assert_eq!(*name, "shared.name");
    let mut types = [*first_type, *second_type];
    types.sort();
    assert_eq!(
        types,
        [
            "duplicate_event::billing::Charged",
            "duplicate_event::shipping::Shipped"
        ]
    );
    assert!(first_location.file.ends_with("duplicate_event.rs"));
    assert_ne!(first_location.line, second_location.line);
    let message = err.to_string();
    assert!(message.contains(&format!("{first_location}")), "{message}");
    assert!(message.contains(&format!("{second_location}")), "{message}");
    assert!(
        message.contains("#[domain_event(name = \\\"...\\\")]")
            || message.contains("#[domain_event(name = \"...\")]"),
        "{message}"
    );

    // The global init reports the same, and the bus stays uninitialized.
    assert!(matches!(
        events_core::init(MemoryBackend::new()),
        Err(Error::DuplicateEvent { .. })
    ));
    assert!(matches!(events_core::bus(), Err(Error::NotInitialized)));
}
