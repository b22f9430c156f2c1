//! The global bus lifecycle, as the seed's `get_event_backend` / `init_event_backend` /
//! `publish_event`: clear errors before init, on a second init and for unknown backends.

use std::sync::atomic::{AtomicUsize, Ordering};

use events_core::{Error, MemoryBackend, Receipt, domain_event, handler};
use serde_json::json;

static HANDLED: AtomicUsize = AtomicUsize::new(0);

#[domain_event(name = "lifecycle.user_registered")]
struct UserRegistered {
    user_id: u64,
}

#[domain_event(name = "lifecycle.welcome_sent")]
struct WelcomeSent {
    user_id: u64,
}

#[handler]
fn welcome(event: &UserRegistered) {
    HANDLED.fetch_add(event.user_id as usize, Ordering::SeqCst);
}

// One test, because the steps share the process-wide bus and must run in this order.
#[test]
fn init_then_publish_with_clear_errors_on_misuse() {
    // Before init: every entry point says to call init.
    let err = events_core::bus().unwrap_err();
    assert!(matches!(err, Error::NotInitialized));
    assert!(
        err.to_string()
            .contains("call `events_core::init(backend)`"),
        "{err}"
    );
    assert!(matches!(
        events_core::publish_blocking(&UserRegistered { user_id: 1 }),
        Err(Error::NotInitialized)
    ));
    assert!(matches!(
        pollster::block_on(events_core::publish_json(
            "lifecycle.user_registered",
            json!({"user_id": 1})
        )),
        Err(Error::NotInitialized)
    ));
    assert!(matches!(
        events_core::subscribe(|_: &UserRegistered| ()),
        Err(Error::NotInitialized)
    ));
    assert_eq!(HANDLED.load(Ordering::SeqCst), 0);

    // An unknown backend kind is refused, naming the registered ones, and leaves the bus unset.
    let err = events_core::init_from("kafka://user:hunter2@broker").unwrap_err();
    assert!(matches!(err, Error::UnsupportedBackend { .. }));
    let message = err.to_string();
    assert!(message.contains("registered: "), "{message}");
    assert!(message.contains("`memory`"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(events_core::bus().is_err());

    // Init from configuration text, case-insensitively; collected handlers are registered.
    let bus = events_core::init_from("Memory").unwrap();
    assert_eq!(bus.backend().describe(), "memory");
    let receipt = events_core::publish_blocking(&UserRegistered { user_id: 2 }).unwrap();
    assert_eq!(
        receipt,
        Receipt::Handled {
            event: "lifecycle.user_registered",
            handlers: 1
        }
    );
    pollster::block_on(events_core::publish(&UserRegistered { user_id: 3 })).unwrap();
    pollster::block_on(events_core::publish_json(
        "lifecycle.user_registered",
        json!({"user_id": 4}),
    ))
    .unwrap();
    assert_eq!(HANDLED.load(Ordering::SeqCst), 2 + 3 + 4);

    // A second init is an error naming the backend in place; the first stays.
    for second in [
        events_core::init(MemoryBackend::new()).unwrap_err(),
        events_core::init_from("memory").unwrap_err(),
    ] {
        assert!(
            matches!(&second, Error::AlreadyInitialized { backend } if backend == "memory"),
            "{second:?}"
        );
        assert!(
            second
                .to_string()
                .contains("already initialized with the memory backend")
        );
    }
    assert!(std::ptr::eq(events_core::bus().unwrap(), bus));

    // Closures subscribed at run time on the global bus run too.
    events_core::subscribe(|e: &UserRegistered| {
        HANDLED.fetch_add(e.user_id as usize * 100, Ordering::SeqCst);
    })
    .unwrap();
    events_core::publish_blocking(&UserRegistered { user_id: 1 }).unwrap();
    assert_eq!(HANDLED.load(Ordering::SeqCst), 9 + 1 + 100);

    // A handler may publish (and subscribe) from inside a publish.
    events_core::subscribe(|e: &WelcomeSent| {
        HANDLED.fetch_add(e.user_id as usize * 1000, Ordering::SeqCst);
    })
    .unwrap();
    events_core::subscribe(|e: &UserRegistered| {
        events_core::subscribe(|_: &WelcomeSent| ()).unwrap();
        events_core::publish_blocking(&WelcomeSent { user_id: e.user_id }).map(drop)
    })
    .unwrap();
    events_core::publish_blocking(&UserRegistered { user_id: 1 }).unwrap();
    assert_eq!(HANDLED.load(Ordering::SeqCst), 110 + 1 + 100 + 1000);
}
