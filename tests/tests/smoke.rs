use events_core::{EventBus, MemoryBackend, domain_event, handler};
use std::sync::atomic::{AtomicUsize, Ordering};

static SEEN: AtomicUsize = AtomicUsize::new(0);

#[domain_event(name = "smoke.pinged")]
#[derive(Clone)]
struct Pinged {
    n: usize,
}

#[domain_event]
enum SmokeState {
    On,
    Off,
}

#[handler]
fn on_ping(e: &Pinged) {
    SEEN.fetch_add(e.n, Ordering::SeqCst);
}

#[handler(name = "by_value", max_retries = 3)]
fn on_ping_value(e: Pinged) -> Result<(), std::io::Error> {
    SEEN.fetch_add(e.n * 10, Ordering::SeqCst);
    Ok(())
}

#[handler]
async fn on_ping_async(e: &Pinged) {
    SEEN.fetch_add(e.n * 100, Ordering::SeqCst);
}

#[handler]
fn on_state(_: &SmokeState) {}

#[test]
fn smoke() {
    let bus = EventBus::new(MemoryBackend::new()).unwrap();
    let r = pollster::block_on(bus.publish(&Pinged { n: 1 })).unwrap();
    println!("{r:?}");
    assert_eq!(SEEN.load(Ordering::SeqCst), 111);
    println!("{:#?}", bus.registry());
    let _ = SmokeState::On;
    let _ = SmokeState::Off;
}
