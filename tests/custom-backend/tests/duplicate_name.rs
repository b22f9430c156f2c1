//! Two crates registering one kind name: refused, naming both crates.

use events_core::{Backend, Error, MemoryBackend};

events_core::link!(custom_backend);

fn build(_config: &str) -> Result<Box<dyn Backend>, Error> {
    Ok(Box::new(MemoryBackend::new()))
}

events_core::register_backend! {
    name: "loopback",
    schemes: [],
    description: "a second `loopback`",
    build: build,
}

#[test]
fn a_kind_name_registered_twice_is_refused_naming_both_crates() {
    let err = events_core::backend_from_config("loopback").err().unwrap();
    let Error::DuplicateBackend {
        what,
        first,
        second,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(what, "kind name `loopback`");
    let mut crates = [first.krate(), second.krate()];
    crates.sort_unstable();
    assert_eq!(crates, ["custom_backend", "duplicate_name"]);
    let message = err.to_string();
    assert!(message.contains("registered twice"), "{message}");
    assert!(message.contains("link only one of them"), "{message}");
}
