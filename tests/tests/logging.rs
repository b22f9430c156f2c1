//! `tracing` output matches the seed's logger: INFO on publish, DEBUG when no handler
//! subscribes, ERROR with the error chain when a handler fails, WARN at init for events with
//! no handler.

use std::io::Write;
use std::sync::{Arc, Mutex};

use events_core::{EventBus, MemoryBackend, domain_event, handler};

#[domain_event(name = "logging.checked")]
struct Checked;

#[domain_event(name = "logging.ignored")]
struct Ignored;

#[handler]
fn fails(_: &Checked) -> Result<(), std::io::Error> {
    Err(std::io::Error::other("disk full"))
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logs_follow_the_seed() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let bus = EventBus::new(MemoryBackend::new()).unwrap();
        let _ = bus.publish_blocking(&Checked);
        let _ = bus.publish_blocking(&Ignored);
    });
    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?} in:\n{text}"))
            .to_owned()
    };
    let warn = line("no handler subscribes to this event");
    assert!(
        warn.contains("WARN") && warn.contains("logging.ignored"),
        "{warn}"
    );
    let info = line("publishing event");
    assert!(
        info.contains("INFO") && info.contains("logging.checked"),
        "{info}"
    );
    let error = line("event handler failed");
    assert!(error.contains("ERROR"), "{error}");
    assert!(
        error.contains("logging::fails") && error.contains("disk full"),
        "{error}"
    );
    let debug = line("no handlers subscribed to event");
    assert!(
        debug.contains("DEBUG") && debug.contains("logging.ignored"),
        "{debug}"
    );
}
