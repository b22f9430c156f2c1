//! The error type of the event framework.

use std::fmt;

use crate::backends::BackendFactory;
use crate::event::SourceLocation;
use crate::handler::{BoxError, HandlerFailure};

/// Everything that can go wrong when initialising the bus or publishing an event. Each message
/// says what happened and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The global bus was used before [`init`](crate::init).
    #[error(
        "the event bus is not initialized: call `events_core::init(backend)` or \
         `events_core::init_from(\"memory\")` at start-up, before publishing or subscribing"
    )]
    NotInitialized,

    /// [`init`](crate::init) was called a second time.
    #[error(
        "the event bus is already initialized with the {backend} backend: call `init` once at \
         start-up, or build an explicit `EventBus` for a second bus"
    )]
    AlreadyInitialized {
        /// A description of the backend in place.
        backend: String,
    },

    /// No linked crate registers the backend kind or URL scheme asked for
    /// ([`backends::find`](crate::backends::find)).
    #[error(
        "unsupported event backend `{given}`: no linked crate registers that kind name or URL \
         scheme (case-insensitive); registered: {}. A backend crate registers itself once it is \
         linked: add it to your dependencies and reference it once, e.g. \
         `events_core::link!(events_celery);` for `celery`, `amqp://`, `redis://`",
        crate::backends::describe(registered)
    )]
    UnsupportedBackend {
        /// What was given (with any password removed).
        given: String,
        /// The backends registered in this program.
        registered: Vec<&'static BackendFactory>,
    },

    /// Two registered backends share a kind name or a URL scheme
    /// ([`register_backend!`](crate::register_backend)), so configuration text cannot choose
    /// between them.
    #[error(
        "backend {what} is registered twice: by crate `{}` (kind `{}`) at {} and by crate `{}` \
         (kind `{}`) at {}; link only one of them, or register one under another kind name and \
         schemes",
        first.krate(), first.name(), first.location(),
        second.krate(), second.name(), second.location()
    )]
    DuplicateBackend {
        /// What both register: `` kind name `x` `` or `` URL scheme `x://` ``.
        what: String,
        /// The first registration.
        first: &'static BackendFactory,
        /// The second registration.
        second: &'static BackendFactory,
    },

    /// The backend could not be configured from the given text.
    #[error("cannot configure the {kind} backend from `{config}`: {reason}")]
    InvalidConfig {
        /// The backend kind.
        kind: &'static str,
        /// The configuration as given (with any password removed).
        config: String,
        /// What is wrong with it.
        reason: String,
    },

    /// No event of that name is declared.
    #[error("unknown event `{name}`: no `#[domain_event]` has that name{}", suggestion(.closest))]
    UnknownEvent {
        /// The name asked for.
        name: String,
        /// The known names closest to it.
        closest: Vec<&'static str>,
    },

    /// Publishes nested [`MAX_PUBLISH_DEPTH`](crate::MAX_PUBLISH_DEPTH) deep on one thread:
    /// handlers that publish, directly or through other events, the event they handle.
    #[error(
        "publishing `{event}` refused: publishes nested {depth} deep, handlers publish in a \
         cycle ({}); a handler must not publish, directly or through other events' handlers, \
         the event it handles (or stop the chain with a condition)",
        cycle.join(" -> ")
    )]
    PublishCycle {
        /// The event whose publish was refused.
        event: &'static str,
        /// The nesting limit reached.
        depth: usize,
        /// The events of the cycle, from the earlier publish of `event` to this one (the whole
        /// chain when no event repeats).
        cycle: Vec<&'static str>,
    },

    /// Two event types declare the same name.
    #[error(
        "event name `{name}` is declared twice: by `{first_type}` at {first_location} and by \
         `{second_type}` at {second_location}; give one of them another name with \
         `#[domain_event(name = \"...\")]`"
    )]
    DuplicateEvent {
        /// The name both declare.
        name: &'static str,
        /// The first type.
        first_type: &'static str,
        /// Where the first is declared.
        first_location: SourceLocation,
        /// The second type.
        second_type: &'static str,
        /// Where the second is declared.
        second_location: SourceLocation,
    },

    /// Two handlers declare the same name (`#[handler(name = "...")]`): failure reports and
    /// retries name handlers, so each name must be one handler's.
    #[error(
        "handler name `{name}` is declared twice: by the handler of `{first_event}` at \
         {first_location} and by the handler of `{second_event}` at {second_location}; give one \
         of them another name with `#[handler(name = \"...\")]`, or leave `name` out to use its \
         full path"
    )]
    DuplicateHandler {
        /// The name both declare.
        name: &'static str,
        /// The event the first handles.
        first_event: &'static str,
        /// Where the first is declared.
        first_location: SourceLocation,
        /// The event the second handles.
        second_event: &'static str,
        /// Where the second is declared.
        second_location: SourceLocation,
    },

    /// A handler's event type has no descriptor (the type implements `DomainEvent` by hand).
    #[error(
        "handler `{handler}` at {location} handles `{event}`, which is not registered: implement \
         events with `#[domain_event]`, not by hand"
    )]
    UnregisteredEvent {
        /// The handler.
        handler: &'static str,
        /// Where it is declared.
        location: SourceLocation,
        /// The event name it expects.
        event: &'static str,
    },

    /// A crate expected to contribute handlers contributed none (it was not linked).
    #[error(
        "no handlers from crate `{krate}` were collected: nothing in the program references it, \
         so the linker dropped it; add `events_core::link!({krate});` to your binary"
    )]
    HandlerCrateNotLinked {
        /// The crate's name (as in `CARGO_CRATE_NAME`).
        krate: String,
    },

    /// The payload does not deserialise into the event type.
    #[error("payload for event `{event}` does not fit `{type_name}` at `{path}`: {source}")]
    InvalidPayload {
        /// The event's name.
        event: &'static str,
        /// The Rust type it should fit.
        type_name: &'static str,
        /// Where in the payload (`customer.vip`, `lines[2]`, a missing field's own path
        /// `customer.email`; `.` for the whole payload).
        path: String,
        /// The deserialisation error (it names the field and the reason).
        #[source]
        source: serde_json::Error,
    },

    /// The payload given to [`publish_json`](crate::EventBus::publish_json) nests arrays and
    /// objects deeper than [`MAX_PAYLOAD_DEPTH`](crate::MAX_PAYLOAD_DEPTH): decoding it would
    /// overflow the stack, and no worker could parse it.
    #[error(
        "payload for event `{event}` nests arrays and objects deeper than {limit} levels, the \
         most a worker parses (serde_json's limit): send a shallower payload (a tree as a list \
         of nodes with parent indices)"
    )]
    PayloadTooDeep {
        /// The event's name.
        event: &'static str,
        /// The limit ([`MAX_PAYLOAD_DEPTH`](crate::MAX_PAYLOAD_DEPTH)).
        limit: usize,
    },

    /// The event could not be serialised.
    #[error("event `{event}` could not be serialized: {source}")]
    Serialize {
        /// The event's name.
        event: &'static str,
        /// The serialisation error.
        #[source]
        source: serde_json::Error,
    },

    /// `publish_blocking` was used on an event with async handlers.
    #[error(
        "event `{event}` has {count} async handler(s) (first: `{first}`), which \
         `publish_blocking` cannot run: publish with `publish(&event).await` inside an async \
         runtime"
    )]
    AsyncHandlersNeedRuntime {
        /// The event's name.
        event: &'static str,
        /// How many of its handlers are async.
        count: usize,
        /// The first of them.
        first: String,
    },

    /// A [`PublishOptions`](crate::PublishOptions) option the backend cannot honour.
    #[error(
        "the {backend} backend cannot honour the publish option `{option}`: {reason}; publish \
         without it, or through a backend that supports it (the Celery backend supports all)"
    )]
    UnsupportedOption {
        /// A description of the backend.
        backend: String,
        /// The option's name (`eta`, `expires`, `priority`, `queue`).
        option: &'static str,
        /// Why.
        reason: String,
    },

    /// Some handlers failed; every other handler still ran.
    #[error(transparent)]
    Handlers(#[from] HandlerFailures),

    /// The backend failed (a broker error, a time-out, …).
    #[error("the {backend} backend failed: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
}

fn suggestion(closest: &[&'static str]) -> String {
    match closest {
        [] => "; declare it with `#[domain_event(name = \"...\")]`".to_owned(),
        [one] => format!("; did you mean `{one}`?"),
        many => {
            let names: Vec<String> = many.iter().map(|n| format!("`{n}`")).collect();
            format!("; did you mean one of {}?", names.join(", "))
        }
    }
}

/// The handlers that failed on one publish, with how many ran in all.
#[derive(Debug)]
pub struct HandlerFailures {
    event: &'static str,
    ran: usize,
    failures: Vec<HandlerFailure>,
}

impl HandlerFailures {
    /// Collects `failures` out of `ran` handlers of `event`.
    pub fn new(event: &'static str, ran: usize, failures: Vec<HandlerFailure>) -> Self {
        Self {
            event,
            ran,
            failures,
        }
    }

    /// The event's name.
    pub fn event(&self) -> &'static str {
        self.event
    }

    /// How many handlers ran (failed or not).
    pub fn ran(&self) -> usize {
        self.ran
    }

    /// Each failure, in the order the handlers ran.
    pub fn failures(&self) -> &[HandlerFailure] {
        &self.failures
    }
}

impl fmt::Display for HandlerFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} handler(s) of event `{}` failed (the others ran to completion)",
            self.failures.len(),
            self.ran,
            self.event
        )?;
        for failure in &self.failures {
            write!(f, "; `{}`: {}", failure.handler(), failure.chain())?;
        }
        Ok(())
    }
}

impl std::error::Error for HandlerFailures {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failures
            .first()
            .map(|f| f as &(dyn std::error::Error + 'static))
    }
}
