//! A backend kind registered from outside the framework's crates, through the public registry
//! only (`events_core::register_backend!`, no `__private`): `loopback`, selected by
//! `init_from("loopback")` or a `loopback://…` URL. It dispatches in process, as the memory
//! backend does, and counts what it published.

use std::sync::atomic::{AtomicUsize, Ordering};

use events_core::{
    Backend, BackendKind, BoxFuture, Error, EventRef, Handler, MemoryBackend, Receipt,
};

/// How many events every `Loopback` of the program published.
pub static PUBLISHED: AtomicUsize = AtomicUsize::new(0);

/// The loopback backend: events go to in-process handlers, under the kind `loopback`.
#[derive(Debug)]
pub struct Loopback {
    address: String,
    inner: MemoryBackend,
}

impl Loopback {
    /// Its kind, `loopback`.
    pub const KIND: BackendKind = BackendKind::new("loopback");

    /// A loopback backend built from `config` (`loopback` or a `loopback://…` URL).
    pub fn new(config: &str) -> Self {
        Self {
            address: events_core::redact_url(config),
            inner: MemoryBackend::new(),
        }
    }
}

impl Backend for Loopback {
    fn kind(&self) -> BackendKind {
        Self::KIND
    }

    fn describe(&self) -> String {
        format!("loopback ({})", self.address)
    }

    fn subscribe(&self, handler: Handler) -> Result<(), Error> {
        self.inner.subscribe(handler)
    }

    fn publish<'a>(&'a self, event: EventRef<'a>) -> BoxFuture<'a, Result<Receipt, Error>> {
        PUBLISHED.fetch_add(1, Ordering::SeqCst);
        self.inner.publish(event)
    }

    fn publish_blocking(&self, event: EventRef<'_>) -> Result<Receipt, Error> {
        PUBLISHED.fetch_add(1, Ordering::SeqCst);
        self.inner.publish_blocking(event)
    }
}

fn build(config: &str) -> Result<Box<dyn Backend>, Error> {
    if let Some((_, rest)) = config.split_once("://")
        && rest.is_empty()
    {
        return Err(Error::InvalidConfig {
            kind: "loopback",
            config: events_core::redact_url(config),
            reason: "the URL has no address after `loopback://`".to_owned(),
        });
    }
    Ok(Box::new(Loopback::new(config)))
}

events_core::register_backend! {
    name: "loopback",
    schemes: ["loopback"],
    description: "in-process dispatch, counted (a test of the public registry)",
    build: build,
}
