//! Event fields go through `EventField` (`#[domain_event]`'s `serialize_with` and
//! `deserialize_with`, for one clear compile error per field serde cannot handle): serde's own
//! behaviour is kept, a missing `Option` field included.

use std::sync::{Arc, Mutex};

use events_core::{Error, EventBus, MemoryBackend, domain_event};
use serde_json::json;

/// Fields go through `EventField` (`serialize_with`/`deserialize_with`): serde's own behaviour
/// is kept, a missing `Option` field included.
#[domain_event(name = "memory.optional_fields")]
#[derive(Debug, Clone, PartialEq)]
struct OptionalFields {
    id: u32,
    note: Option<String>,
    tags: std::option::Option<Vec<String>>,
    amount: f64,
}

#[test]
fn missing_option_fields_read_as_none_and_others_are_named() {
    let bus = EventBus::new(MemoryBackend::new()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    bus.subscribe(move |e: &OptionalFields| sink.lock().unwrap().push(e.clone()))
        .unwrap();
    bus.publish_json_blocking("memory.optional_fields", json!({"id": 1, "amount": 2.5}))
        .unwrap();
    bus.publish_json_blocking(
        "memory.optional_fields",
        json!({"id": 2, "note": "n", "tags": ["a"], "amount": 1}),
    )
    .unwrap();
    bus.publish_json_blocking(
        "memory.optional_fields",
        json!({"id": 3, "note": null, "tags": null, "amount": 0.5}),
    )
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    let event = |id, note: Option<&str>, tags: Option<Vec<&str>>, amount| OptionalFields {
        id,
        note: note.map(str::to_owned),
        tags: tags.map(|t| t.into_iter().map(str::to_owned).collect()),
        amount,
    };
    assert_eq!(
        seen,
        [
            event(1, None, None, 2.5),
            event(2, Some("n"), Some(vec!["a"]), 1.0),
            event(3, None, None, 0.5),
        ]
    );
    // Serialised as serde's derive would: every field, `null` for `None`.
    let value = serde_json::to_value(&seen[0]).unwrap();
    assert_eq!(
        value,
        json!({"id": 1, "note": null, "tags": null, "amount": 2.5})
    );
    let err = bus
        .publish_json_blocking("memory.optional_fields", json!({"note": "x", "amount": 1}))
        .unwrap_err();
    assert!(err.to_string().contains("missing field `id`"), "{err}");
    let err = bus
        .publish_json_blocking(
            "memory.optional_fields",
            json!({"id": 1, "note": 5, "amount": 1}),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidPayload { path, .. } if path == "note"),
        "{err:?}"
    );
}
