//! The in-memory backend: every handler runs, failures and panics are reported without hiding
//! the others, async handlers are awaited, and the JSON path is checked against the registry.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use events_core::{Error, EventBus, FailureCause, MemoryBackend, Receipt, domain_event, handler};
use serde_json::json;

static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn log(line: impl Into<String>) {
    LOG.lock().unwrap().push(line.into());
}

fn take_log() -> Vec<String> {
    std::mem::take(&mut *LOG.lock().unwrap())
}

/// Serialises tests that share `LOG`.
static SERIAL: Mutex<()> = Mutex::new(());

#[domain_event(name = "memory.invoice_sent")]
#[derive(Debug, Clone, PartialEq)]
struct InvoiceSent {
    invoice: u32,
    customer: Customer,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Customer {
    email: String,
    vip: bool,
}

#[domain_event(name = "memory.invoice_paid")]
#[derive(Debug, Clone)]
struct InvoicePaid {
    invoice: u32,
}

#[domain_event(name = "memory.nobody_listens")]
struct NobodyListens;

#[derive(Debug)]
struct Outer(Inner);
#[derive(Debug)]
struct Inner;
impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not reach the mail server")
    }
}
impl fmt::Display for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection refused")
    }
}
impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}
impl std::error::Error for Inner {}

// Handlers of `memory.invoice_sent`, named so their order is visible: a_, b_, c_, d_.
#[handler]
fn a_record(event: &InvoiceSent) {
    log(format!("a {}", event.invoice));
}

#[handler]
fn b_fails(event: &InvoiceSent) -> Result<(), Outer> {
    log(format!("b {}", event.invoice));
    Err(Outer(Inner))
}

#[handler]
fn c_panics(event: &InvoiceSent) {
    log(format!("c {}", event.invoice));
    panic!("handler c exploded on invoice {}", event.invoice);
}

#[handler]
fn d_by_value(event: InvoiceSent) {
    log(format!("d {} {}", event.invoice, event.customer.email));
}

// Handlers of `memory.invoice_paid`: one sync, one async that yields before finishing.
#[handler]
fn paid_sync(event: &InvoicePaid) {
    log(format!("paid sync {}", event.invoice));
}

#[handler]
async fn paid_async(event: &InvoicePaid) -> Result<(), std::io::Error> {
    futures_util::future::ready(()).await;
    YieldOnce(false).await;
    log(format!("paid async {}", event.invoice));
    Ok(())
}

/// A future that is pending once, so an un-awaited handler would visibly not finish.
struct YieldOnce(bool);
impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            std::task::Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

fn invoice(n: u32) -> InvoiceSent {
    InvoiceSent {
        invoice: n,
        customer: Customer {
            email: "ana@example.com".into(),
            vip: true,
        },
    }
}

#[test]
fn every_handler_runs_and_each_failure_is_reported() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bus = EventBus::new(MemoryBackend::new()).unwrap();
    take_log();
    let err = bus.publish_blocking(&invoice(7)).unwrap_err();
    assert_eq!(take_log(), ["a 7", "b 7", "c 7", "d 7 ana@example.com"]);
    let Error::Handlers(failures) = &err else {
        panic!("expected handler failures, got {err:?}");
    };
    assert_eq!(failures.event(), "memory.invoice_sent");
    assert_eq!(failures.ran(), 4);
    let reported: Vec<(&str, String)> = failures
        .failures()
        .iter()
        .map(|f| (f.handler(), f.chain()))
        .collect();
    assert_eq!(
        reported,
        [
            (
                "memory_backend::b_fails",
                "could not reach the mail server: connection refused".to_owned()
            ),
            (
                "memory_backend::c_panics",
                "panicked: handler c exploded on invoice 7".to_owned()
            ),
        ]
    );
    assert!(matches!(
        failures.failures()[1].cause(),
        FailureCause::Panic(_)
    ));
    let message = err.to_string();
    assert!(
        message.contains("2 of 4 handler(s) of event `memory.invoice_sent` failed"),
        "{message}"
    );
    assert!(message.contains("connection refused"), "{message}");

    // The async path reports the same.
    let err = pollster::block_on(bus.publish(&invoice(8))).unwrap_err();
    assert_eq!(take_log(), ["a 8", "b 8", "c 8", "d 8 ana@example.com"]);
    assert!(matches!(err, Error::Handlers(ref f) if f.failures().len() == 2));
}

#[test]
fn async_handlers_are_awaited_and_blocking_publish_refuses_them() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bus = EventBus::new(MemoryBackend::new()).unwrap();
    take_log();
    let receipt = pollster::block_on(bus.publish(&InvoicePaid { invoice: 3 })).unwrap();
    assert_eq!(
        receipt,
        Receipt::Handled {
            event: "memory.invoice_paid",
            handlers: 2
        }
    );
    assert_eq!(take_log(), ["paid async 3", "paid sync 3"]);

    let err = bus
        .publish_blocking(&InvoicePaid { invoice: 4 })
        .unwrap_err();
    assert!(
        matches!(err, Error::AsyncHandlersNeedRuntime { event: "memory.invoice_paid", count: 1, ref first } if first == "memory_backend::paid_async"),
        "{err:?}"
    );
    assert!(err.to_string().contains("publish(&event).await"));
    assert!(
        take_log().is_empty(),
        "no handler may run when the publish is refused"
    );
}

#[test]
fn closures_run_after_collected_handlers_in_subscription_order() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bus = EventBus::new(MemoryBackend::new()).unwrap();
    bus.subscribe(|e: &InvoicePaid| log(format!("closure 1 {}", e.invoice)))
        .unwrap();
    bus.subscribe_async(|e: InvoicePaid| async move {
        log(format!("closure 2 {}", e.invoice));
        Ok::<(), std::io::Error>(())
    })
    .unwrap();
    take_log();
    pollster::block_on(bus.publish(&InvoicePaid { invoice: 5 })).unwrap();
    assert_eq!(
        take_log(),
        ["paid async 5", "paid sync 5", "closure 1 5", "closure 2 5"]
    );
}

#[test]
fn collected_handlers_are_registered_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bus = EventBus::new(MemoryBackend::new()).unwrap();
    assert_eq!(
        bus.register_collected().unwrap(),
        0,
        "already registered by new()"
    );
    assert_eq!(bus.register_collected().unwrap(), 0);
    take_log();
    pollster::block_on(bus.publish(&InvoicePaid { invoice: 6 })).unwrap();
    assert_eq!(take_log(), ["paid async 6", "paid sync 6"]);

    let bare = EventBus::builder(MemoryBackend::new())
        .collected_handlers(false)
        .build()
        .unwrap();
    assert_eq!(
        bare.publish_blocking(&invoice(1)).unwrap(),
        Receipt::Handled {
            event: "memory.invoice_sent",
            handlers: 0
        }
    );
    assert!(take_log().is_empty());
    assert_eq!(bare.register_collected().unwrap(), 6);
    assert_eq!(bare.register_collected().unwrap(), 0);
}

#[test]
fn explicit_buses_are_independent() {
    let first = EventBus::builder(MemoryBackend::new())
        .collected_handlers(false)
        .build()
        .unwrap();
    let second = EventBus::builder(MemoryBackend::new())
        .collected_handlers(false)
        .build()
        .unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    first
        .subscribe(move |_: &NobodyListens| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    first.publish_blocking(&NobodyListens).unwrap();
    second.publish_blocking(&NobodyListens).unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[test]
fn publish_json_checks_the_name_and_the_payload() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bus = EventBus::new(MemoryBackend::new()).unwrap();
    take_log();
    let receipt = bus
        .publish_json_blocking("memory.nobody_listens", json!(null))
        .unwrap();
    assert_eq!(
        receipt,
        Receipt::Handled {
            event: "memory.nobody_listens",
            handlers: 0
        }
    );

    pollster::block_on(bus.publish_json("memory.invoice_paid", json!({"invoice": 9}))).unwrap();
    assert_eq!(take_log(), ["paid async 9", "paid sync 9"]);

    let err = bus
        .publish_json_blocking("memory.invoice_payd", json!({"invoice": 1}))
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownEvent { name, closest } if name == "memory.invoice_payd" && closest[0] == "memory.invoice_paid"),
        "{err:?}"
    );
    assert!(err.to_string().contains("did you mean"), "{err}");

    let err = bus
        .publish_json_blocking(
            "memory.invoice_sent",
            json!({"invoice": 1, "customer": {"email": "x", "vip": "yes"}}),
        )
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            Error::InvalidPayload {
                event: "memory.invoice_sent",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(message.contains("memory_backend::InvoiceSent"), "{message}");
    assert!(
        message.contains("invalid type: string \"yes\", expected a boolean"),
        "{message}"
    );
    assert!(message.contains("at `customer.vip`"), "{message}");

    let err = bus
        .publish_json_blocking("memory.invoice_sent", json!({"invoice": 1}))
        .unwrap_err();
    assert!(
        err.to_string().contains("missing field `customer`"),
        "{err}"
    );
    // The missing field's path is named, at the top level and nested.
    assert!(
        matches!(&err, Error::InvalidPayload { path, .. } if path == "customer"),
        "{err:?}"
    );
    let err = bus
        .publish_json_blocking(
            "memory.invoice_sent",
            json!({"invoice": 1, "customer": {"vip": true}}),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidPayload { path, .. } if path == "customer.email"),
        "{err:?}"
    );
    assert!(err.to_string().contains("at `customer.email`"), "{err}");
    assert!(take_log().is_empty(), "nothing runs for a rejected payload");
}

#[test]
fn registry_lists_events_handlers_and_unhandled_events() {
    let registry = events_core::Registry::collected().unwrap();
    let names: Vec<&str> = registry.events().map(|e| e.name()).collect();
    assert_eq!(
        names,
        [
            "memory.invoice_paid",
            "memory.invoice_sent",
            "memory.nobody_listens"
        ]
    );
    let sent = registry.event("memory.invoice_sent").unwrap();
    assert_eq!(sent.type_name(), "memory_backend::InvoiceSent");
    assert!(sent.location().file.ends_with("memory_backend.rs"));
    let handlers: Vec<(&str, bool)> = registry
        .handlers_of("memory.invoice_paid")
        .iter()
        .map(|h| (h.name(), h.is_async()))
        .collect();
    assert_eq!(
        handlers,
        [
            ("memory_backend::paid_async", true),
            ("memory_backend::paid_sync", false)
        ]
    );
    let unhandled: Vec<&str> = registry
        .events_without_handlers()
        .map(|e| e.name())
        .collect();
    assert_eq!(unhandled, ["memory.nobody_listens"]);
    assert_eq!(registry.handlers().count(), 6);
}

/// Every `#[domain_event]` has its own dense slot (its place in the link-time slice), and the
/// backend dispatches by it.
#[test]
fn each_event_type_has_a_distinct_stable_slot() {
    use events_core::DomainEvent;
    let sent = InvoiceSent::descriptor().slot().expect("in the slice");
    let paid = InvoicePaid::descriptor().slot().expect("in the slice");
    assert_ne!(sent, paid);
    assert_eq!(InvoiceSent::descriptor().slot(), Some(sent));
    assert!(std::ptr::eq(
        &events_core::__private::EVENTS[sent],
        InvoiceSent::descriptor()
    ));
}

/// A `DomainEvent` implemented by hand, its descriptor outside the slice: no slot, and the
/// backend still finds its subscribers (by type).
#[derive(serde::Serialize, serde::Deserialize)]
struct HandMade {
    n: u32,
}

// `DomainEvent` is sealed to `#[domain_event]`; the hidden marker lets this test build a
// descriptor outside the slice on purpose.
impl events_core::__private::DeclaredEvent for HandMade {}

impl events_core::DomainEvent for HandMade {
    const NAME: &'static str = "memory.hand_made";

    fn descriptor() -> &'static events_core::EventDescriptor {
        static DESCRIPTOR: events_core::EventDescriptor =
            events_core::EventDescriptor::new::<HandMade>(
                events_core::SourceLocation {
                    file: file!(),
                    line: line!(),
                },
                "memory_backend",
            );
        &DESCRIPTOR
    }
}

#[test]
fn a_descriptor_outside_the_slice_is_dispatched_by_type() {
    use events_core::DomainEvent;
    assert_eq!(HandMade::descriptor().slot(), None);
    let bus = EventBus::new(MemoryBackend::new()).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    bus.subscribe(move |event: &HandMade| {
        counter.fetch_add(event.n as usize, Ordering::SeqCst);
    })
    .unwrap();
    let receipt = bus.publish_blocking(&HandMade { n: 7 }).unwrap();
    assert!(matches!(receipt, Receipt::Handled { handlers: 1, .. }));
    assert_eq!(seen.load(Ordering::SeqCst), 7);
}
