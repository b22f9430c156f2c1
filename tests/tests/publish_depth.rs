//! Events and payloads nested far deeper than a worker reads (100,000 levels), published on a
//! thread with the default 2 MiB stack: the in-memory backend's `publish_json` and the Celery
//! backend's publish refuse them with an error naming the limit, instead of overflowing the
//! stack and aborting the process (without the bounds, each test aborts the test binary).

use events_celery::{CeleryBackend, CeleryConfig, Route};
use events_core::{Error, EventBus, MAX_PAYLOAD_DEPTH, MemoryBackend, domain_event};
use serde_json::{Value, json};
use tests::{redis_url, unique_queue};

const DEEP: usize = 100_000;

/// A recursive field type: one object per level on the wire.
#[derive(events_core::serde::Serialize, events_core::serde::Deserialize)]
#[serde(crate = "events_core::serde")]
enum Tree {
    Leaf,
    Node(Box<Tree>),
}

#[domain_event(name = "depth.tree")]
struct Planted {
    tree: Tree,
}

#[domain_event(name = "depth.value")]
struct Valued {
    value: Value,
}

fn on_default_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// `depth` arrays around `1`, built without recursion.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |value, _| Value::Array(vec![value]))
}

/// `{"value": nested(depth)}` (`json!` would copy the value recursively).
fn valued(depth: usize) -> Value {
    let mut map = serde_json::Map::new();
    map.insert("value".to_owned(), nested(depth));
    Value::Object(map)
}

/// A `Planted` whose tree nests `depth` objects.
fn planted(depth: usize) -> Planted {
    Planted {
        tree: (0..depth).fold(Tree::Leaf, |tree, _| Tree::Node(Box::new(tree))),
    }
}

/// Drops the event without recursion (the derived drop recurses once per level).
fn dismantle(event: Planted) {
    let mut tree = event.tree;
    while let Tree::Node(next) = tree {
        tree = *next;
    }
}

fn assert_too_deep(result: Result<events_core::Receipt, Error>) {
    match result {
        Err(Error::PayloadTooDeep { event, limit }) => {
            assert_eq!((event, limit), ("depth.value", MAX_PAYLOAD_DEPTH));
        }
        other => panic!("expected PayloadTooDeep, got {other:?}"),
    }
}

#[test]
fn publish_json_refuses_payloads_nested_too_deep() {
    on_default_stack(|| {
        let bus = EventBus::builder(MemoryBackend::new())
            .warn_unhandled_events(false)
            .build()
            .unwrap();
        // `{"value": [...]}`: the payload nests one level more than its field.
        assert_too_deep(bus.publish_json_blocking("depth.value", valued(DEEP)));
        let error = bus
            .publish_json_blocking("depth.value", nested(DEEP))
            .unwrap_err();
        assert!(
            error.to_string().contains("deeper than 126 levels"),
            "{error}"
        );
        assert_too_deep(bus.publish_json_blocking("depth.value", valued(MAX_PAYLOAD_DEPTH)));
        bus.publish_json_blocking("depth.value", valued(MAX_PAYLOAD_DEPTH - 1))
            .unwrap();
        // An unknown name is reported as such, the deep payload dropped without recursion.
        let error = bus
            .publish_json_blocking("depth.nope", nested(DEEP))
            .unwrap_err();
        assert!(matches!(error, Error::UnknownEvent { .. }), "{error:?}");
    });
}

#[test]
fn celery_publish_refuses_events_nested_too_deep() {
    let queue = unique_queue("depth");
    on_default_stack(move || {
        let config = CeleryConfig::new(&redis_url())
            .unwrap()
            .route("depth.tree", Route::queue(&queue))
            .route("depth.value", Route::queue(&queue));
        let bus = EventBus::builder(CeleryBackend::new(config).unwrap())
            .warn_unhandled_events(false)
            .build()
            .unwrap();
        let deep = planted(DEEP);
        let error = bus.publish_blocking(&deep).unwrap_err().to_string();
        dismantle(deep);
        assert!(error.contains("depth.tree"), "{error}");
        assert!(error.contains("nests deeper than 126"), "{error}");
        assert_too_deep(bus.publish_json_blocking("depth.value", valued(DEEP)));
        // At the limit (126 objects: `{"tree": ...}` and 125 `{"Node": ...}`) it is sent.
        bus.publish_blocking(&planted(MAX_PAYLOAD_DEPTH - 1))
            .unwrap();
        let error = bus
            .publish_blocking(&planted(MAX_PAYLOAD_DEPTH))
            .unwrap_err();
        assert!(error.to_string().contains("nests deeper than"), "{error}");
    });
}
