//! Handlers that publish the event they handle, directly or through a cycle, on the in-memory
//! backend: the nested publishes are refused at `MAX_PUBLISH_DEPTH` with an error naming the
//! cycle, on a 2 MB thread, blocking and async, instead of overflowing the stack and aborting
//! the process (each test would abort the whole test binary without the bound).

use std::sync::OnceLock;

use events_core::{Error, EventBus, MAX_PUBLISH_DEPTH, MemoryBackend, domain_event, handler};

static BUS: OnceLock<EventBus> = OnceLock::new();

fn bus() -> &'static EventBus {
    BUS.get_or_init(|| {
        EventBus::builder(MemoryBackend::new())
            .warn_unhandled_events(false)
            .build()
            .unwrap()
    })
}

#[domain_event(name = "cycle.ping")]
#[derive(Clone)]
struct Ping;

#[handler]
fn ping_again(_: &Ping) -> Result<(), Error> {
    bus().publish_blocking(&Ping).map(drop)
}

#[domain_event(name = "cycle.first")]
#[derive(Clone)]
struct First;

#[domain_event(name = "cycle.second")]
#[derive(Clone)]
struct Second;

#[handler]
fn first_publishes_second(_: &First) -> Result<(), Error> {
    bus().publish_blocking(&Second).map(drop)
}

#[handler]
fn second_publishes_first(_: &Second) -> Result<(), Error> {
    bus().publish_blocking(&First).map(drop)
}

#[domain_event(name = "cycle.async_ping")]
#[derive(Clone)]
struct AsyncPing;

#[handler]
async fn async_ping_again(_: AsyncPing) -> Result<(), Error> {
    bus().publish(&AsyncPing).await.map(drop)
}

/// Counts down by publishing itself: a chain, not a cycle, when it is short enough.
#[domain_event(name = "cycle.countdown")]
#[derive(Clone)]
struct Countdown {
    left: usize,
}

#[handler]
fn count_down(event: &Countdown) -> Result<(), Error> {
    if event.left == 0 {
        return Ok(());
    }
    let next = Countdown {
        left: event.left - 1,
    };
    bus().publish_blocking(&next).map(drop)
}

/// Runs `f` on a thread with a 2 MB stack (Rust's default for spawned threads).
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn refused(error: &Error, cycle: &str) {
    let text = error.to_string();
    assert!(text.contains("publish in a cycle"), "{text}");
    assert!(text.contains(cycle), "`{cycle}` not in: {text}");
    assert!(
        text.contains(&format!("nested {MAX_PUBLISH_DEPTH} deep")),
        "{text}"
    );
}

#[test]
fn a_handler_publishing_its_own_event_is_refused_at_the_depth_limit() {
    let error = on_small_stack(|| bus().publish_blocking(&Ping).unwrap_err());
    refused(&error, "(cycle.ping -> cycle.ping)");
}

#[test]
fn a_cycle_through_two_events_is_refused_naming_both() {
    let error = on_small_stack(|| bus().publish_blocking(&First).unwrap_err());
    refused(&error, "(cycle.first -> cycle.second -> cycle.first)");
    // The same bus publishes normally afterwards: the depth was unwound.
    assert!(bus().publish_blocking(&Countdown { left: 3 }).is_ok());
}

#[test]
fn an_async_handler_awaiting_its_own_event_is_refused() {
    let error = on_small_stack(|| pollster::block_on(bus().publish(&AsyncPing)).unwrap_err());
    refused(&error, "(cycle.async_ping -> cycle.async_ping)");
    // Blocking publishes of the same thread's sync cycle see the same limit.
    let error = on_small_stack(|| pollster::block_on(bus().publish(&Ping)).unwrap_err());
    refused(&error, "(cycle.ping -> cycle.ping)");
}

#[test]
fn chains_under_the_limit_run() {
    on_small_stack(|| {
        bus()
            .publish_blocking(&Countdown {
                left: MAX_PUBLISH_DEPTH - 1,
            })
            .unwrap();
        pollster::block_on(bus().publish(&Countdown {
            left: MAX_PUBLISH_DEPTH - 1,
        }))
        .unwrap();
        let error = bus()
            .publish_blocking(&Countdown {
                left: MAX_PUBLISH_DEPTH,
            })
            .unwrap_err();
        refused(&error, "cycle.countdown -> cycle.countdown");
    });
}

#[domain_event(name = "cycle.wrapped")]
#[derive(Clone)]
struct Wrapped;

/// Passes the nested publish's error on wrapped in another error type, as an application might.
#[handler]
fn wrapped_again(_: &Wrapped) -> Result<(), std::io::Error> {
    bus()
        .publish_blocking(&Wrapped)
        .map(drop)
        .map_err(std::io::Error::other)
}

#[test]
fn a_cycle_whose_errors_are_wrapped_at_each_level_is_reported_once_per_level() {
    let error = on_small_stack(|| bus().publish_blocking(&Wrapped).unwrap_err());
    let text = error.to_string();
    assert!(text.contains("(cycle.wrapped -> cycle.wrapped)"), "{text}");
    // One nested report per level, not one per path through the levels' sources.
    assert_eq!(
        text.matches("handler(s) of event `cycle.wrapped` failed")
            .count(),
        MAX_PUBLISH_DEPTH,
        "{}…",
        &text[..text.len().min(2000)]
    );
}
