//! Two crates registering one URL scheme: every look-up is refused, naming both crates and
//! where they register (as two events with one name are).

use events_core::{Backend, Error, MemoryBackend, backends};

events_core::link!(custom_backend);

fn build(_config: &str) -> Result<Box<dyn Backend>, Error> {
    Ok(Box::new(MemoryBackend::new()))
}

// Another kind name, the same scheme as `custom_backend`'s `loopback`.
events_core::register_backend! {
    name: "echo",
    schemes: ["echo", "loopback"],
    description: "a second claim on loopback://",
    build: build,
}

#[test]
fn a_scheme_registered_twice_is_refused_naming_both_crates() {
    for text in ["loopback://x", "memory", "echo://y"] {
        let err = events_core::backend_from_config(text).err().unwrap();
        let Error::DuplicateBackend {
            what,
            first,
            second,
        } = &err
        else {
            panic!("{text}: {err:?}");
        };
        assert_eq!(what, "URL scheme `loopback://`");
        assert_eq!((first.name(), second.name()), ("echo", "loopback"));
        assert_eq!(
            (first.krate(), second.krate()),
            ("duplicate_scheme", "custom_backend")
        );
        let message = err.to_string();
        for part in [
            "crate `duplicate_scheme`",
            "crate `custom_backend`",
            "duplicate_scheme.rs:",
        ] {
            assert!(message.contains(part), "{message}");
        }
    }
    assert!(matches!(
        backends::registered(),
        Err(Error::DuplicateBackend { .. })
    ));
    assert!(events_core::init_from("memory").is_err());
}
