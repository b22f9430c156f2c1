//! Where a publish comes from: the event whose handler is publishing, and how many publishes
//! deep that handler runs. Backends that carry events between processes (the Celery backend)
//! write it into each message and workers read it back, so a cycle of handlers publishing
//! through a broker is bounded as nested publishes are in one process
//! ([`MAX_PUBLISH_DEPTH`](crate::MAX_PUBLISH_DEPTH)).
//!
//! A worker runs each handler inside [`scope`] with the origin of what that handler publishes;
//! a backend reads [`current`] when it encodes an event. Outside a handler there is none.

use std::cell::RefCell;
use std::sync::Arc;

/// The longest chain of event names kept (the last ones), and the longest name.
const MAX_CHAIN: usize = crate::MAX_PUBLISH_DEPTH;
const MAX_NAME_BYTES: usize = 256;

/// What a handler publishes descends from: its depth (1 for a handler of an event published
/// from outside any handler) and the names of the events on the way, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOrigin {
    depth: u32,
    chain: Arc<[String]>,
}

impl PublishOrigin {
    /// The origin of what the handlers of `event` publish, when `event` itself arrived
    /// `depth` publishes deep with `chain` before it (both as read from a message; a chain
    /// longer than 64 names keeps its last ones, and names over 256 bytes are left out).
    pub fn handling(event: &str, depth: u32, chain: impl IntoIterator<Item = String>) -> Self {
        let mut names: Vec<String> = chain
            .into_iter()
            .filter(|name| name.len() <= MAX_NAME_BYTES)
            .collect();
        names.push(event.chars().take(MAX_NAME_BYTES).collect());
        let keep = names.len().saturating_sub(MAX_CHAIN);
        names.drain(..keep);
        Self {
            depth: depth.saturating_add(1),
            chain: names.into(),
        }
    }

    /// How many publishes deep a message published now is.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The events on the way, oldest first.
    pub fn chain(&self) -> &[String] {
        &self.chain
    }
}

thread_local! {
    static CURRENT: RefCell<Option<PublishOrigin>> = const { RefCell::new(None) };
}

/// The origin of a publish made now on this thread: `Some` inside a handler a worker runs
/// within [`scope`].
pub fn current() -> Option<PublishOrigin> {
    CURRENT.with(|current| current.borrow().clone())
}

/// Runs `f` with `origin` as [`current`], then restores what was there (also when `f`
/// panics). A worker wraps each synchronous run of a handler, and each poll of an async one.
pub fn scope<R>(origin: Option<PublishOrigin>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<PublishOrigin>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|current| *current.borrow_mut() = previous);
        }
    }
    let previous = CURRENT.with(|current| current.replace(origin));
    let _restore = Restore(previous);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        assert_eq!(current(), None);
        let outer = PublishOrigin::handling("a", 0, []);
        assert_eq!((outer.depth(), outer.chain()), (1, &["a".to_owned()][..]));
        scope(Some(outer.clone()), || {
            assert_eq!(current(), Some(outer.clone()));
            let inner = PublishOrigin::handling("b", outer.depth(), outer.chain().to_vec());
            assert_eq!(inner.chain(), ["a", "b"]);
            scope(Some(inner.clone()), || assert_eq!(current(), Some(inner)));
            assert_eq!(current(), Some(outer.clone()));
            let caught = std::panic::catch_unwind(|| scope(None, || panic!("handler panicked")));
            assert!(caught.is_err());
            assert_eq!(current(), Some(outer.clone()), "restored after a panic");
        });
        assert_eq!(current(), None);
    }

    #[test]
    fn hostile_chains_are_bounded() {
        let long = (0..10_000).map(|i| format!("e{i}"));
        let origin = PublishOrigin::handling("last", u32::MAX, long);
        assert_eq!(origin.depth(), u32::MAX);
        assert_eq!(origin.chain().len(), MAX_CHAIN);
        assert_eq!(origin.chain().last().unwrap(), "last");
        let origin = PublishOrigin::handling(&"x".repeat(10_000), 0, ["y".repeat(10_000)]);
        assert_eq!(origin.chain().len(), 1);
        assert_eq!(origin.chain()[0].len(), MAX_NAME_BYTES);
    }
}
