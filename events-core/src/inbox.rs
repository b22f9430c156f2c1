//! The inbox interface: where a worker records each (task id, handler) that completed, so
//! that a message delivered again — a broker redelivery, kombu restoring it after its
//! visibility timeout, a duplicate published with the same task id — does not run a handler
//! that already succeeded.
//!
//! The interface lives here, beside [`TaskContext`], so that stores live with their clients
//! (a Redis store beside the Celery worker, a PostgreSQL one in `events-outbox`) without
//! depending on each other or on the worker.
//!
//! # The worker's flow
//!
//! For each message it is about to run, the worker asks [`Inbox::completed`] once which of the
//! message's handlers already completed the task; those are skipped (and count as succeeded).
//! After each handler that succeeds it calls [`Inbox::record`] — unless the handler recorded
//! its completion itself, inside its own database transaction (the store's "record in this
//! transaction" function calls [`TaskContext::mark_completion_recorded`]): then the record was
//! committed with the handler's writes, and a crash between that commit and the broker's
//! acknowledgement still finds it on redelivery — effectively once.
//!
//! A failing store never loses a message: when [`completed`](Inbox::completed) fails the
//! handlers run (at least once, as without an inbox); when [`record`](Inbox::record) fails the
//! message is still acknowledged, and a redelivery may run the handler again. Both are logged.

use std::fmt;

use crate::handler::{BoxError, BoxFuture};
use crate::task::TaskContext;

/// A store of completed (task id, handler) pairs. Implementations decide retention (how long
/// a completion is remembered); a completion forgotten before a redelivery arrives lets the
/// handler run again.
///
/// See the [module docs](self) for how the worker calls it.
pub trait Inbox: Send + Sync + fmt::Debug + 'static {
    /// Which of `handlers` already completed `task` ([`TaskContext::id`]): one `bool` per
    /// handler, in order. Called once per message, before its handlers run; one round trip
    /// is expected.
    fn completed<'a>(
        &'a self,
        task: &'a TaskContext,
        handlers: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<bool>, BoxError>>;

    /// Records that `handler` completed `task`. Called after the handler succeeded (not when
    /// it recorded its completion itself); recording twice must be harmless.
    fn record<'a>(
        &'a self,
        task: &'a TaskContext,
        handler: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
}
