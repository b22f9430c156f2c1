//! Handlers: the descriptors `#[handler]` collects, closures subscribed at run time, and running
//! either with failures (errors and panics) caught and reported.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use crate::event::{DomainEvent, SourceLocation};

/// A boxed error, as handlers return it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a type-erased handler returns.
pub type HandlerResult = Result<(), BoxError>;

/// A boxed, `Send` future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A type-erased event value, as handlers receive it.
pub type EventValue = dyn Any + Send + Sync;

/// The generated entry point of a `#[handler]`.
#[derive(Clone, Copy)]
#[doc(hidden)]
pub enum HandlerFn {
    Sync(fn(&EventValue) -> HandlerResult),
    Async(for<'a> fn(&'a EventValue) -> BoxFuture<'a, HandlerResult>),
}

/// Per-handler options, set with `#[handler(max_retries = …, time_limit_ms = …)]`.
///
/// The in-memory backend runs each handler once; the Celery worker honours both options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerOptions {
    /// How many times a failed handler is retried (`None`: the worker's default).
    pub max_retries: Option<u32>,
    /// How long one run may take before it counts as failed (`None`: the worker's default).
    pub time_limit: Option<Duration>,
}

impl HandlerOptions {
    #[doc(hidden)]
    pub const fn new(max_retries: Option<u32>, time_limit_ms: Option<u64>) -> Self {
        Self {
            max_retries,
            time_limit: match time_limit_ms {
                Some(ms) => Some(Duration::from_millis(ms)),
                None => None,
            },
        }
    }
}

/// What the registry knows of one `#[handler]` function.
pub struct HandlerDescriptor {
    name: &'static str,
    event: &'static str,
    event_type: fn() -> TypeId,
    call: HandlerFn,
    location: SourceLocation,
    crate_name: &'static str,
    options: HandlerOptions,
}

impl HandlerDescriptor {
    #[doc(hidden)]
    pub const fn new<E: DomainEvent>(
        name: &'static str,
        call: HandlerFn,
        location: SourceLocation,
        crate_name: &'static str,
        options: HandlerOptions,
    ) -> Self {
        Self {
            name,
            event: E::NAME,
            event_type: TypeId::of::<E>,
            call,
            location,
            crate_name,
            options,
        }
    }

    /// The handler's full path (`crate::module::function`, or the `name` given to `#[handler]`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The name of the event it handles.
    pub fn event(&self) -> &'static str {
        self.event
    }

    /// The [`TypeId`] of the event it handles.
    pub fn event_type(&self) -> TypeId {
        (self.event_type)()
    }

    /// Where `#[handler]` was written.
    pub fn location(&self) -> SourceLocation {
        self.location
    }

    /// The crate that declares the handler (`CARGO_CRATE_NAME`).
    pub fn crate_name(&self) -> &'static str {
        self.crate_name
    }

    /// Whether the handler is an `async fn`.
    pub fn is_async(&self) -> bool {
        matches!(self.call, HandlerFn::Async(_))
    }

    /// Its options.
    pub fn options(&self) -> HandlerOptions {
        self.options
    }
}

impl fmt::Debug for HandlerDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerDescriptor")
            .field("name", &self.name)
            .field("event", &self.event)
            .field("async", &self.is_async())
            .field("location", &format_args!("{}", self.location))
            .finish()
    }
}

type SyncClosure = dyn Fn(&EventValue) -> HandlerResult + Send + Sync;
type AsyncClosure = dyn for<'a> Fn(&'a EventValue) -> BoxFuture<'a, HandlerResult> + Send + Sync;

#[derive(Clone)]
enum Call {
    Static(HandlerFn),
    Sync(Arc<SyncClosure>),
    Async(Arc<AsyncClosure>),
}

/// A handler as backends hold it: a collected `#[handler]` function or a closure subscribed at
/// run time. Cheap to clone.
#[derive(Clone)]
pub struct Handler {
    name: Cow<'static, str>,
    event: &'static str,
    event_type: TypeId,
    location: Option<SourceLocation>,
    options: HandlerOptions,
    call: Call,
}

impl Handler {
    /// The handler behind a collected `#[handler]`.
    pub fn from_descriptor(descriptor: &'static HandlerDescriptor) -> Self {
        Self {
            name: Cow::Borrowed(descriptor.name),
            event: descriptor.event,
            event_type: descriptor.event_type(),
            location: Some(descriptor.location),
            options: descriptor.options,
            call: Call::Static(descriptor.call),
        }
    }

    /// A synchronous closure for events of type `E`.
    ///
    /// `name` identifies it in logs and failure reports. The closure returns `()` or
    /// `Result<(), Err>`, like a `#[handler]` function.
    pub fn sync<E, F, R>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        E: DomainEvent,
        F: Fn(&E) -> R + Send + Sync + 'static,
        R: IntoHandlerResult,
    {
        let call: Arc<SyncClosure> = Arc::new(move |value: &EventValue| {
            f(crate::__private::downcast::<E>(value)).into_handler_result()
        });
        Self::closure::<E>(name.into(), Call::Sync(call))
    }

    /// An asynchronous closure for events of type `E`: it gets its own clone of the event and
    /// returns a future, which the backend awaits.
    pub fn asynchronous<E, F, Fut, R>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        E: DomainEvent + Clone,
        F: Fn(E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoHandlerResult,
    {
        let call: Arc<AsyncClosure> = Arc::new(move |value: &EventValue| {
            let fut = f(crate::__private::downcast::<E>(value).clone());
            Box::pin(async move { fut.await.into_handler_result() })
        });
        Self::closure::<E>(name.into(), Call::Async(call))
    }

    fn closure<E: DomainEvent>(name: Cow<'static, str>, call: Call) -> Self {
        Self {
            name,
            event: E::NAME,
            event_type: TypeId::of::<E>(),
            location: None,
            options: HandlerOptions::default(),
            call,
        }
    }

    /// Sets where the handler was declared (for closures, shown by introspection and logs).
    pub fn with_location(mut self, location: SourceLocation) -> Self {
        self.location = Some(location);
        self
    }

    /// Sets the handler's options.
    pub fn with_options(mut self, options: HandlerOptions) -> Self {
        self.options = options;
        self
    }

    /// The handler's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the event it handles.
    pub fn event(&self) -> &'static str {
        self.event
    }

    /// The [`TypeId`] of the event it handles.
    pub fn event_type(&self) -> TypeId {
        self.event_type
    }

    /// Where it was declared, when known.
    pub fn location(&self) -> Option<SourceLocation> {
        self.location
    }

    /// Its options.
    pub fn options(&self) -> HandlerOptions {
        self.options
    }

    /// Whether running it needs an async runtime (an `async fn` or an async closure).
    pub fn is_async(&self) -> bool {
        matches!(
            self.call,
            Call::Async(_) | Call::Static(HandlerFn::Async(_))
        )
    }

    /// Runs a synchronous handler on `event`, catching errors and panics. Returns `None` for
    /// an async handler (use [`Handler::run`]).
    ///
    /// `event` must be of the handler's event type; a mismatch panics inside the handler and
    /// is reported as a failure.
    #[inline]
    pub fn run_sync(&self, event: &EventValue) -> Option<Result<(), HandlerFailure>> {
        let outcome = match &self.call {
            Call::Static(HandlerFn::Sync(f)) => catch_unwind(AssertUnwindSafe(|| f(event))),
            Call::Sync(f) => catch_unwind(AssertUnwindSafe(|| f(event))),
            Call::Static(HandlerFn::Async(_)) | Call::Async(_) => return None,
        };
        match outcome {
            Ok(Ok(())) => Some(Ok(())),
            failed => Some(self.settle(failed)),
        }
    }

    /// Runs the handler on `event`, sync or async, catching errors and panics.
    pub async fn run(&self, event: &EventValue) -> Result<(), HandlerFailure> {
        let fut = match &self.call {
            Call::Static(HandlerFn::Async(f)) => catch_unwind(AssertUnwindSafe(|| f(event))),
            Call::Async(f) => catch_unwind(AssertUnwindSafe(|| f(event))),
            Call::Static(HandlerFn::Sync(_)) | Call::Sync(_) => {
                return match self.run_sync(event) {
                    Some(outcome) => outcome,
                    None => unreachable!("a sync handler runs synchronously"),
                };
            }
        };
        let outcome = match fut {
            Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
            Err(panic) => Err(panic),
        };
        self.settle(outcome)
    }

    #[cold]
    #[inline(never)]
    fn settle(
        &self,
        outcome: Result<HandlerResult, Box<dyn Any + Send>>,
    ) -> Result<(), HandlerFailure> {
        let cause = match outcome {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => FailureCause::Error(error),
            Err(panic) => FailureCause::Panic(panic_message(&*panic)),
        };
        let failure = HandlerFailure {
            handler: self.name.clone(),
            event: self.event,
            cause,
        };
        tracing::error!(
            handler = %failure.handler,
            event = failure.event,
            error = %crate::text::OneLine(failure.chain()),
            "event handler failed"
        );
        Err(failure)
    }
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("name", &self.name)
            .field("event", &self.event)
            .field("async", &self.is_async())
            .finish_non_exhaustive()
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// Why a handler failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FailureCause {
    /// It returned `Err`.
    Error(BoxError),
    /// It panicked, with this message.
    Panic(String),
    /// It ran longer than its time limit.
    TimedOut(Duration),
}

/// One handler's failure on one event: which handler, which event, and why.
#[derive(Debug)]
pub struct HandlerFailure {
    handler: Cow<'static, str>,
    event: &'static str,
    cause: FailureCause,
}

impl HandlerFailure {
    /// A failure of `handler` on `event` (for backends that detect failures themselves, such as
    /// a time limit).
    pub fn new(handler: &Handler, cause: FailureCause) -> Self {
        Self {
            handler: handler.name.clone(),
            event: handler.event,
            cause,
        }
    }

    /// The handler's name.
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// The event's name.
    pub fn event(&self) -> &'static str {
        self.event
    }

    /// Why it failed.
    pub fn cause(&self) -> &FailureCause {
        &self.cause
    }

    /// The cause and its whole `source()` chain on one line, joined by `: `.
    pub fn chain(&self) -> String {
        let mut out = String::new();
        match &self.cause {
            FailureCause::Error(error) => {
                let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
                while let Some(e) = next {
                    if !out.is_empty() {
                        // A nested publish's failures, reached as the source of an error that
                        // showed them already (as `io::Error::other(publish_error)` does).
                        if e.is::<HandlerFailure>() || e.is::<crate::error::HandlerFailures>() {
                            break;
                        }
                        out.push_str(": ");
                    }
                    out.push_str(&e.to_string());
                    // The failures of a nested publish are already in its message: walking
                    // their sources too would repeat them, level after level (exponentially
                    // in the nesting).
                    if embeds_its_sources(e) {
                        break;
                    }
                    next = e.source();
                }
            }
            FailureCause::Panic(message) => {
                out.push_str("panicked: ");
                out.push_str(message);
            }
            FailureCause::TimedOut(limit) => {
                out.push_str(&format!(
                    "did not finish within its time limit of {limit:?}"
                ));
            }
        }
        out
    }
}

/// Whether `error`'s message already includes its sources' (a publish's handler failures).
fn embeds_its_sources(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        error.downcast_ref::<crate::Error>(),
        Some(crate::Error::Handlers(_))
    ) || error.is::<crate::error::HandlerFailures>()
        || error.is::<HandlerFailure>()
}

impl fmt::Display for HandlerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "handler `{}` failed on event `{}`: {}",
            self.handler,
            self.event,
            self.chain()
        )
    }
}

impl std::error::Error for HandlerFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            FailureCause::Error(e) => Some(&**e),
            FailureCause::Panic(_) | FailureCause::TimedOut(_) => None,
        }
    }
}

/// What a handler may return: `()` or `Result<(), E>` where `E` converts into a boxed error
/// (any `std::error::Error + Send + Sync + 'static`, `anyhow::Error`, …).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid handler return type",
    label = "a handler returns `()` or `Result<(), E>`",
    note = "return `()` or `Result<(), E>` where `E: std::error::Error + Send + Sync + 'static`"
)]
pub trait IntoHandlerResult {
    /// Converts into the type-erased result.
    fn into_handler_result(self) -> HandlerResult;
}

impl IntoHandlerResult for () {
    #[inline]
    fn into_handler_result(self) -> HandlerResult {
        Ok(())
    }
}

// `do_not_recommend`: when `E` is not an error, report "`Result<(), E>` is not a valid handler
// return type" with the note above, rather than rustc's "`E: std::error::Error` is not
// satisfied" found three `From`/`Into` impls deep.
#[diagnostic::do_not_recommend]
impl<E: Into<BoxError>> IntoHandlerResult for Result<(), E> {
    #[inline]
    fn into_handler_result(self) -> HandlerResult {
        self.map_err(Into::into)
    }
}
