//! [`PublishOptions`]: per-message options (task id, eta, expiry, priority, queue) that any
//! backend receives through [`Backend::publish_with`](crate::Backend::publish_with).

use std::time::{Duration, SystemTime};

/// Per-message options for [`Backend::publish_with`](crate::Backend::publish_with), in terms
/// that do not depend on the backend. Each backend honours what it can and refuses the rest
/// with [`Error::UnsupportedOption`](crate::Error::UnsupportedOption):
///
/// | option | Celery | memory |
/// | --- | --- | --- |
/// | [`task_id`](Self::task_id) | the task id | ignored (no ids in process) |
/// | [`eta`](Self::eta) / [`delay`](Self::delay) | `eta` (the worker waits) | refused unless due |
/// | [`expires_at`](Self::expires_at) / [`expires_in`](Self::expires_in) | `expires` | an expired event runs no handler |
/// | [`priority`](Self::priority) | the message priority | ignored (no queue) |
/// | [`queue`](Self::queue) | the queue, instead of the route's | ignored (no queue) |
///
/// ```
/// use std::time::Duration;
/// use events_core::PublishOptions;
///
/// let options = PublishOptions::new()
///     .task_id("2f1c9a4e-5a0b-4f5c-9a57-0d1f6b0e2a11")
///     .delay(Duration::from_secs(30))
///     .expires_in(Duration::from_secs(3600))
///     .priority(5)
///     .queue("orders");
/// assert!(!options.is_empty());
/// assert!(PublishOptions::new().is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishOptions {
    /// The message's id (Celery's task id); `None`: the backend makes one.
    pub task_id: Option<String>,
    /// Run no sooner than this (Celery's `eta`/`countdown`).
    pub eta: Option<SystemTime>,
    /// Do not run after this (Celery's `expires`).
    pub expires: Option<SystemTime>,
    /// The message priority, 0–9 (Celery's `priority`; checked by the backend).
    pub priority: Option<u8>,
    /// The queue to send to instead of the configured route's (Celery's `queue`).
    pub queue: Option<String>,
}

impl PublishOptions {
    /// No options: what [`Backend::publish`](crate::Backend::publish) does.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Uses this id for the message (Celery's task id) instead of a fresh one.
    pub fn task_id(mut self, id: impl Into<String>) -> Self {
        self.task_id = Some(id.into());
        self
    }

    /// Runs no sooner than `at`.
    pub fn eta(mut self, at: SystemTime) -> Self {
        self.eta = Some(at);
        self
    }

    /// Runs no sooner than `delay` from now (Celery's `countdown`; kept as an eta).
    pub fn delay(self, delay: Duration) -> Self {
        self.eta(SystemTime::now() + delay)
    }

    /// Does not run after `at`.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires = Some(at);
        self
    }

    /// Does not run later than `after` from now.
    pub fn expires_in(self, after: Duration) -> Self {
        self.expires_at(SystemTime::now() + after)
    }

    /// The message priority, 0–9.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sends to `queue` instead of the configured route's queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// The first option set other than the task id, by its name in this type (for
    /// [`Error::UnsupportedOption`](crate::Error::UnsupportedOption) in backends that support
    /// none).
    pub fn first_set_beyond_task_id(&self) -> Option<&'static str> {
        [
            ("eta", self.eta.is_some()),
            ("expires", self.expires.is_some()),
            ("priority", self.priority.is_some()),
            ("queue", self.queue.is_some()),
        ]
        .into_iter()
        .find_map(|(name, set)| set.then_some(name))
    }
}
