//! The public API's shape: every publish and subscribe form exists on the global bus's free
//! functions and on `EventBus` alike, and a `MemoryBackend` handed to `init` can still be asked
//! about its subscriptions through a clone.

use std::any::TypeId;
use std::sync::atomic::{AtomicU64, Ordering};

use events_core::{Error, EventBus, MemoryBackend, Receipt, domain_event, handler};
use serde_json::json;

static SEEN: AtomicU64 = AtomicU64::new(0);

#[domain_event(name = "api.parcel_shipped")]
#[derive(Debug, Clone)]
struct ParcelShipped {
    weight: u64,
}

#[domain_event(name = "api.parcel_lost")]
#[derive(Debug, Clone)]
struct ParcelLost {
    weight: u64,
}

#[handler]
fn record_shipment(event: &ParcelShipped) {
    SEEN.fetch_add(event.weight, Ordering::SeqCst);
}

fn handled(event: &'static str, handlers: usize) -> Receipt {
    Receipt::Handled { event, handlers }
}

// One test: the steps share the process-wide bus and must run in this order.
#[test]
fn free_functions_have_every_form_of_the_bus_and_a_kept_clone_sees_the_handlers() {
    // Before init, the new free functions fail as the others do.
    assert!(matches!(
        events_core::publish_json_blocking("api.parcel_shipped", json!({"weight": 1})),
        Err(Error::NotInitialized)
    ));
    assert!(matches!(
        events_core::subscribe_async(|_: ParcelShipped| async {}),
        Err(Error::NotInitialized)
    ));

    let backend = MemoryBackend::new();
    let kept = backend.clone();
    events_core::init(backend).unwrap();
    // The collected handler, registered by `init` on the backend moved into the bus, is
    // visible through the clone kept outside it.
    assert_eq!(kept.handler_count(TypeId::of::<ParcelShipped>()), 1);
    assert_eq!(kept.handler_count(TypeId::of::<ParcelLost>()), 0);

    // Typed, async and blocking.
    assert_eq!(
        events_core::publish_blocking(&ParcelShipped { weight: 1 }).unwrap(),
        handled("api.parcel_shipped", 1)
    );
    pollster::block_on(events_core::publish(&ParcelShipped { weight: 10 })).unwrap();
    // By name with a JSON payload, async and blocking, both checked against the registry.
    pollster::block_on(events_core::publish_json(
        "api.parcel_shipped",
        json!({"weight": 100}),
    ))
    .unwrap();
    assert_eq!(
        events_core::publish_json_blocking("api.parcel_shipped", json!({"weight": 1000})).unwrap(),
        handled("api.parcel_shipped", 1)
    );
    let err =
        events_core::publish_json_blocking("api.parcel_shiped", json!({"weight": 1})).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownEvent { closest, .. } if closest.contains(&"api.parcel_shipped")),
        "{err:?}"
    );
    let err = events_core::publish_json_blocking("api.parcel_shipped", json!({"weight": "x"}))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidPayload { .. }), "{err:?}");
    assert_eq!(SEEN.load(Ordering::SeqCst), 1111);

    // Closures, sync and async, subscribed through the free functions; the clone sees them.
    events_core::subscribe(|e: &ParcelLost| {
        SEEN.fetch_add(e.weight * 10_000, Ordering::SeqCst);
    })
    .unwrap();
    events_core::subscribe_async(|e: ParcelLost| async move {
        SEEN.fetch_add(e.weight * 100_000, Ordering::SeqCst);
        Ok::<(), std::io::Error>(())
    })
    .unwrap();
    assert_eq!(kept.handler_count(TypeId::of::<ParcelLost>()), 2);
    let receipt = pollster::block_on(events_core::publish(&ParcelLost { weight: 1 })).unwrap();
    assert_eq!(receipt, handled("api.parcel_lost", 2));
    assert_eq!(SEEN.load(Ordering::SeqCst), 1111 + 10_000 + 100_000);
    // The async closure is on this event now: the blocking forms refuse it, as on the bus.
    assert!(matches!(
        events_core::publish_json_blocking("api.parcel_lost", json!({"weight": 1})),
        Err(Error::AsyncHandlersNeedRuntime { count: 1, .. })
    ));
}

/// The same forms on an explicit bus (a compile-time check as much as a run-time one: the
/// free functions and the methods share names and argument shapes).
#[test]
fn explicit_bus_has_the_same_forms() {
    let backend = MemoryBackend::new();
    let bus = EventBus::builder(backend.clone())
        .collected_handlers(false)
        .build()
        .unwrap();
    bus.subscribe(|_: &ParcelLost| ()).unwrap();
    bus.subscribe_async(|_: ParcelShipped| async {}).unwrap();
    assert_eq!(backend.handler_count(TypeId::of::<ParcelLost>()), 1);
    assert_eq!(backend.handler_count(TypeId::of::<ParcelShipped>()), 1);
    let lost = ParcelLost { weight: 0 };
    assert_eq!(
        bus.publish_blocking(&lost).unwrap(),
        handled("api.parcel_lost", 1)
    );
    pollster::block_on(bus.publish(&lost)).unwrap();
    pollster::block_on(bus.publish_json("api.parcel_shipped", json!({"weight": 0}))).unwrap();
    assert_eq!(
        bus.publish_json_blocking("api.parcel_lost", json!({"weight": 0}))
            .unwrap(),
        handled("api.parcel_lost", 1)
    );
}
