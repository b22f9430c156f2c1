//! The task a handler runs for — Celery's `self.request` — readable from inside any handler
//! without a second parameter: [`current`] returns its [`TaskContext`] (task id and name,
//! retries, eta, expires, root and parent ids, custom headers, delivery) while a worker runs
//! the handler, and `None` elsewhere.
//!
//! ```rust,standalone_crate
//! use events_core::{domain_event, handler, task};
//!
//! #[domain_event(name = "orders.order_placed")]
//! struct OrderPlaced {
//!     order_id: u64,
//! }
//!
//! #[handler]
//! async fn charge(event: &OrderPlaced) {
//!     if let Some(task) = task::current() {
//!         println!("order {} in task {} (retry {})", event.order_id, task.id(), task.retries());
//!     }
//! }
//! ```
//!
//! **Who sets it.** The Celery worker (`events-celery`) runs each handler inside [`scope`]
//! (sync handlers) or [`Scoped`] (async handlers: the context is current during each poll, so
//! it is there after every `.await`). The [`MemoryBackend`](crate::MemoryBackend) sets none:
//! an in-process publish is no task, and [`current`] returns `None` in its handlers. The
//! context is per thread: a thread or task the handler spawns does not inherit it (read it
//! first and move it in).
//!
//! The same pattern as [`origin`](crate::origin): a thread-local, set around each synchronous
//! run and each poll, restored afterwards (also on panics). No runtime is involved.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::SystemTime;

use serde_json::{Map, Value};

/// The task a handler is running for: what the message said about itself and how it was
/// delivered. Cheap to clone (shared).
///
/// Backends build it with [`new`](Self::new) and the `with_*` methods; handlers read it with
/// [`current`].
#[derive(Clone)]
pub struct TaskContext {
    task: Arc<TaskInfo>,
    handler: Option<Arc<str>>,
    /// Set when the handler recorded its completion itself (see
    /// [`mark_completion_recorded`](Self::mark_completion_recorded)); shared by the clones of
    /// one handler's context.
    recorded: Arc<AtomicBool>,
}

#[derive(Clone, Default)]
struct TaskInfo {
    id: String,
    name: String,
    retries: u32,
    eta: Option<SystemTime>,
    expires: Option<SystemTime>,
    root_id: Option<String>,
    parent_id: Option<String>,
    headers: Map<String, Value>,
    redelivered: bool,
    queue: Option<String>,
}

impl TaskContext {
    /// The context of task `id` named `name` (Celery's task name, e.g.
    /// `domain_events.orders.order_placed`): no retries, eta, expiry, parents or headers, not
    /// redelivered, queue unknown, no handler.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            task: Arc::new(TaskInfo {
                id: id.into(),
                name: name.into(),
                ..TaskInfo::default()
            }),
            handler: None,
            recorded: Arc::new(AtomicBool::new(false)),
        }
    }

    fn info(&mut self) -> &mut TaskInfo {
        Arc::make_mut(&mut self.task)
    }

    /// Sets how many times the task was retried before this run.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.info().retries = retries;
        self
    }

    /// Sets the time before which it was not to run.
    pub fn with_eta(mut self, eta: Option<SystemTime>) -> Self {
        self.info().eta = eta;
        self
    }

    /// Sets the time after which it was not to run.
    pub fn with_expires(mut self, expires: Option<SystemTime>) -> Self {
        self.info().expires = expires;
        self
    }

    /// Sets the id of the first task of the workflow.
    pub fn with_root_id(mut self, root_id: Option<String>) -> Self {
        self.info().root_id = root_id;
        self
    }

    /// Sets the id of the task that sent this one.
    pub fn with_parent_id(mut self, parent_id: Option<String>) -> Self {
        self.info().parent_id = parent_id;
        self
    }

    /// Sets the custom headers (those beyond Celery's own, e.g. what `apply_async(headers=…)`
    /// added).
    pub fn with_headers(mut self, headers: Map<String, Value>) -> Self {
        self.info().headers = headers;
        self
    }

    /// Sets whether the broker delivered the message before (RabbitMQ's `redelivered` flag;
    /// on Redis, a message kombu restored after its visibility timeout).
    pub fn with_redelivered(mut self, redelivered: bool) -> Self {
        self.info().redelivered = redelivered;
        self
    }

    /// Sets the queue the message was consumed from.
    pub fn with_queue(mut self, queue: Option<String>) -> Self {
        self.info().queue = queue;
        self
    }

    /// The context for one run of handler `name`: the same task, this handler, and its own
    /// "completion recorded" flag, unset.
    pub fn for_handler(&self, name: &str) -> Self {
        Self {
            task: Arc::clone(&self.task),
            handler: Some(Arc::from(name)),
            recorded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The task id (Celery's `request.id`); the same for every delivery of one message, and
    /// for its copies published with the same id.
    pub fn id(&self) -> &str {
        &self.task.id
    }

    /// The task name (`domain_events.orders.order_placed`).
    pub fn name(&self) -> &str {
        &self.task.name
    }

    /// The handler running, when the context is one handler's (a worker sets it).
    pub fn handler(&self) -> Option<&str> {
        self.handler.as_deref()
    }

    /// How many times the task was retried before this run (0 on the first).
    pub fn retries(&self) -> u32 {
        self.task.retries
    }

    /// The time before which it was not to run, if it had one.
    pub fn eta(&self) -> Option<SystemTime> {
        self.task.eta
    }

    /// The time after which it was not to run, if it had one.
    pub fn expires(&self) -> Option<SystemTime> {
        self.task.expires
    }

    /// The id of the first task of the workflow (for a retry: the original task).
    pub fn root_id(&self) -> Option<&str> {
        self.task.root_id.as_deref()
    }

    /// The id of the task that sent this one (for a retry: the run that failed).
    pub fn parent_id(&self) -> Option<&str> {
        self.task.parent_id.as_deref()
    }

    /// The custom headers, read-only.
    pub fn headers(&self) -> &Map<String, Value> {
        &self.task.headers
    }

    /// One custom header.
    pub fn header(&self, name: &str) -> Option<&Value> {
        self.task.headers.get(name)
    }

    /// Whether the broker delivered this message before (see
    /// [`with_redelivered`](Self::with_redelivered)). A duplicate published with the same id
    /// is not "redelivered": an inbox catches both.
    pub fn redelivered(&self) -> bool {
        self.task.redelivered
    }

    /// The queue the message was consumed from, when known.
    pub fn queue(&self) -> Option<&str> {
        self.task.queue.as_deref()
    }

    /// Tells the worker that the handler recorded its own completion in an inbox (inside its
    /// own transaction, with its writes), so the worker does not record it again. Called by
    /// inbox stores' "record in this transaction" functions, not by handlers themselves.
    pub fn mark_completion_recorded(&self) {
        self.recorded.store(true, Ordering::Release);
    }

    /// Whether [`mark_completion_recorded`](Self::mark_completion_recorded) was called for
    /// this handler's run.
    pub fn completion_recorded(&self) -> bool {
        self.recorded.load(Ordering::Acquire)
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.task.id)
            .field("name", &self.task.name)
            .field("handler", &self.handler)
            .field("retries", &self.task.retries)
            .field("eta", &self.task.eta)
            .field("expires", &self.task.expires)
            .field("root_id", &self.task.root_id)
            .field("parent_id", &self.task.parent_id)
            .field("headers", &self.task.headers)
            .field("redelivered", &self.task.redelivered)
            .field("queue", &self.task.queue)
            .finish()
    }
}

thread_local! {
    static CURRENT: RefCell<Option<TaskContext>> = const { RefCell::new(None) };
}

/// The task the handler running now on this thread runs for: `Some` inside a handler a worker
/// runs, `None` elsewhere (outside handlers, and in the [`MemoryBackend`](crate::MemoryBackend)'s).
pub fn current() -> Option<TaskContext> {
    CURRENT.with(|current| current.borrow().clone())
}

/// Runs `f` with `task` as [`current`], then restores what was there (also when `f` panics).
/// A worker wraps each synchronous run of a handler in it; async handlers are wrapped in
/// [`Scoped`].
pub fn scope<R>(task: Option<TaskContext>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<TaskContext>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|current| *current.borrow_mut() = previous);
        }
    }
    let previous = CURRENT.with(|current| current.replace(task));
    let _restore = Restore(previous);
    f()
}

pin_project_lite::pin_project! {
    /// A future with a [`TaskContext`] current during each of its polls: an async handler
    /// reads it with [`current`] before and after every `.await`.
    pub struct Scoped<F> {
        task: Option<TaskContext>,
        #[pin]
        inner: F,
    }
}

impl<F> Scoped<F> {
    /// `inner`, polled with `task` as [`current`].
    pub fn new(task: Option<TaskContext>, inner: F) -> Self {
        Self { task, inner }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let inner = this.inner;
        scope(this.task.clone(), || inner.poll(cx))
    }
}

impl<F> fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped")
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        assert!(current().is_none());
        let outer = TaskContext::new("t-1", "domain_events.a").with_retries(2);
        scope(Some(outer.clone()), || {
            assert_eq!(current().unwrap().id(), "t-1");
            assert_eq!(current().unwrap().retries(), 2);
            let inner = outer.for_handler("h");
            scope(Some(inner), || {
                assert_eq!(current().unwrap().handler(), Some("h"));
            });
            assert_eq!(current().unwrap().handler(), None);
            let caught = std::panic::catch_unwind(|| scope(None, || panic!("handler panicked")));
            assert!(caught.is_err());
            assert_eq!(current().unwrap().id(), "t-1", "restored after a panic");
        });
        assert!(current().is_none());
    }

    #[test]
    fn async_handlers_see_it_after_every_await() {
        struct YieldOnce(bool);
        impl Future for YieldOnce {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                if self.0 {
                    Poll::Ready(())
                } else {
                    self.0 = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }
        }
        let task = TaskContext::new("t-2", "domain_events.b").for_handler("h");
        let seen = pollster::block_on(Scoped::new(Some(task), async {
            let before = current().map(|t| t.id().to_owned());
            YieldOnce(false).await;
            let after = current().map(|t| t.id().to_owned());
            (before, after)
        }));
        assert_eq!(seen, (Some("t-2".to_owned()), Some("t-2".to_owned())));
        assert!(current().is_none(), "not current between polls");
    }

    #[test]
    fn completion_flags_are_per_handler_run() {
        let task = TaskContext::new("t-3", "x");
        let a = task.for_handler("a");
        let a_seen_by_handler = a.clone();
        a_seen_by_handler.mark_completion_recorded();
        assert!(a.completion_recorded());
        assert!(!task.for_handler("b").completion_recorded());
    }
}
