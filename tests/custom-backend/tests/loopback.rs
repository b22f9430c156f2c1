//! A backend kind registered by another crate (`custom_backend`) is selected by its name or
//! URL scheme, listed with the built-in ones, and unknown kinds are refused listing both.

use std::sync::atomic::{AtomicUsize, Ordering};

use custom_backend::{Loopback, PUBLISHED};
use events_core::{BackendKind, Error, Receipt, backends, domain_event, handler};

events_core::link!(custom_backend);

#[domain_event(name = "loopback.pinged")]
struct Pinged {
    n: usize,
}

static PINGED: AtomicUsize = AtomicUsize::new(0);

#[handler]
fn count_pings(event: &Pinged) {
    PINGED.fetch_add(event.n, Ordering::SeqCst);
}

#[test]
fn init_from_a_registered_url_scheme_builds_that_backend() {
    let bus = events_core::init_from("  LOOPBACK://user:hunter2@somewhere/x ").unwrap();
    assert_eq!(bus.backend().kind(), Loopback::KIND);
    assert_eq!(bus.backend().kind().as_str(), "loopback");
    let described = bus.backend().describe();
    // As given (case and all), without the password.
    assert_eq!(described, "loopback (LOOPBACK://user:***@somewhere/x)");

    let before = PUBLISHED.load(Ordering::SeqCst);
    let receipt = events_core::publish_blocking(&Pinged { n: 3 }).unwrap();
    assert_eq!(
        receipt,
        Receipt::Handled {
            event: "loopback.pinged",
            handlers: 1
        }
    );
    assert_eq!(PINGED.load(Ordering::SeqCst), 3);
    assert!(PUBLISHED.load(Ordering::SeqCst) > before);
}

#[test]
fn the_kind_name_selects_it_too() {
    for text in ["loopback", "Loopback", " loopback\n"] {
        let backend = events_core::backend_from_config(text).unwrap();
        assert_eq!(backend.kind(), BackendKind::new("loopback"), "{text:?}");
        assert_eq!(text.parse::<BackendKind>().unwrap(), Loopback::KIND);
    }
    // The constructor's own errors come through.
    let err = events_core::backend_from_config("loopback://")
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                kind: "loopback",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn the_registry_lists_it_with_where_it_is_registered() {
    let registered = backends::registered().unwrap();
    let names: Vec<&str> = registered.iter().map(|f| f.name()).collect();
    assert_eq!(names, ["loopback", "memory"]);
    let loopback = backends::find("loopback://x").unwrap();
    assert_eq!(loopback.krate(), "custom_backend");
    assert_eq!(loopback.schemes(), ["loopback"]);
    assert!(
        loopback.location().file.ends_with("lib.rs"),
        "{:?}",
        loopback.location()
    );
    assert!(loopback.description().contains("in-process"));
}

#[test]
fn unknown_kinds_and_schemes_are_refused_listing_the_registered_ones() {
    for text in [
        "kafka://user:hunter2@broker",
        "celery",
        "amqp://guest:hunter2@h//",
        "loop",
    ] {
        let err = events_core::backend_from_config(text).err().unwrap();
        let Error::UnsupportedBackend { given, registered } = &err else {
            panic!("{text}: {err:?}");
        };
        assert!(!given.contains("hunter2"), "{given}");
        assert_eq!(registered.len(), 2);
        let message = err.to_string();
        assert!(
            message.contains("registered: `loopback` (loopback://), `memory`"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }
}
