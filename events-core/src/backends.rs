//! The backend registry: how any crate makes a backend kind and its URL schemes available to
//! [`init_from`](crate::init_from) and [`backend_from_config`](crate::backend_from_config).
//!
//! A crate that provides a backend registers a [`BackendFactory`] with
//! [`register_backend!`](crate::register_backend): a kind name (`"celery"`), the URL schemes
//! that select it (`amqp`, `redis`, …), a one-line description and a constructor from the
//! configuration text. The linker collects every registration of every linked crate, as it
//! collects handlers; [`find`] picks one by kind name (case-insensitive) or by the scheme of a
//! URL, and [`registered`] lists them. The in-memory backend is registered by this crate as
//! `memory`; `events-celery` registers `celery` with `amqp`, `amqps`, `redis` and `rediss`.
//!
//! # Registering a backend
//!
//! ```rust,standalone_crate
//! use events_core::{Backend, BackendKind, BoxFuture, Error, EventRef, Handler, MemoryBackend,
//!                   Receipt};
//!
//! /// Hands events to in-process handlers, under its own kind (a stand-in for a transport).
//! struct Loopback(MemoryBackend);
//!
//! impl Backend for Loopback {
//!     fn kind(&self) -> BackendKind {
//!         BackendKind::new("loopback")
//!     }
//!     fn subscribe(&self, handler: Handler) -> Result<(), Error> {
//!         self.0.subscribe(handler)
//!     }
//!     fn publish<'a>(&'a self, event: EventRef<'a>) -> BoxFuture<'a, Result<Receipt, Error>> {
//!         self.0.publish(event)
//!     }
//!     fn publish_blocking(&self, event: EventRef<'_>) -> Result<Receipt, Error> {
//!         self.0.publish_blocking(event)
//!     }
//! }
//!
//! fn build(_config: &str) -> Result<Box<dyn Backend>, Error> {
//!     Ok(Box::new(Loopback(MemoryBackend::new())))
//! }
//!
//! events_core::register_backend! {
//!     name: "loopback",
//!     schemes: ["loopback"],
//!     description: "in-process dispatch under another name",
//!     build: build,
//! }
//!
//! let backend = events_core::backend_from_config("loopback://anything")?;
//! assert_eq!(backend.kind(), BackendKind::new("loopback"));
//! let loopback = events_core::backends::find("LOOPBACK")?;
//! assert_eq!(loopback.description(), "in-process dispatch under another name");
//! # Ok::<(), events_core::Error>(())
//! ```
//!
//! A crate that nothing references may be dropped by the linker, registration and all: a
//! program that selects its backend only by configuration text references the crate once with
//! [`link!`](crate::link) (`events_core::link!(events_celery);`).
//!
//! # Conflicts
//!
//! Kind names and schemes are lower-case ASCII (checked at compile time). Two registrations
//! with one kind name, or sharing a URL scheme, make every look-up fail with
//! [`Error::DuplicateBackend`], naming both crates and where they register — as two events
//! with one name make building the bus fail.

use std::fmt;

use crate::backend::{Backend, BackendKind, redact_url};
use crate::error::Error;
use crate::event::SourceLocation;

/// A backend kind that can be built from configuration text: its name, the URL schemes that
/// select it, a description and a constructor. Registered with
/// [`register_backend!`](crate::register_backend); read with [`find`] and [`registered`].
pub struct BackendFactory {
    kind: BackendKind,
    schemes: &'static [&'static str],
    description: &'static str,
    build: fn(&str) -> Result<Box<dyn Backend>, Error>,
    module: &'static str,
    location: SourceLocation,
}

impl BackendFactory {
    /// A factory; use [`register_backend!`](crate::register_backend), which fills in where it
    /// is registered. Panics (at compile time, in a `static`) if the name or a scheme is not
    /// lower-case ASCII letters, digits, `+`, `-`, `.` or `_`, starting with a letter.
    #[doc(hidden)]
    pub const fn new(
        name: &'static str,
        schemes: &'static [&'static str],
        description: &'static str,
        build: fn(&str) -> Result<Box<dyn Backend>, Error>,
        module: &'static str,
        location: SourceLocation,
    ) -> Self {
        let mut i = 0;
        while i < schemes.len() {
            assert!(
                is_identifier(schemes[i]),
                "a backend's URL scheme must be lower-case ASCII letters, digits, `+`, `-`, `.` \
                 or `_`, starting with a letter (`amqp`, `redis+sentinel`)"
            );
            i += 1;
        }
        Self {
            kind: BackendKind::new(name),
            schemes,
            description,
            build,
            module,
            location,
        }
    }

    /// The kind it builds (its name selects it: `init_from("celery")`).
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The kind's name.
    pub fn name(&self) -> &'static str {
        self.kind.as_str()
    }

    /// The URL schemes that select it (`init_from("amqp://…")`), without `://`.
    pub fn schemes(&self) -> &'static [&'static str] {
        self.schemes
    }

    /// A one-line description, for listings and errors.
    pub fn description(&self) -> &'static str {
        self.description
    }

    /// The crate that registers it (as in `CARGO_CRATE_NAME`: `events_celery`).
    pub fn krate(&self) -> &'static str {
        self.module.split("::").next().unwrap_or(self.module)
    }

    /// The module that registers it.
    pub fn module(&self) -> &'static str {
        self.module
    }

    /// Where it is registered.
    pub fn location(&self) -> SourceLocation {
        self.location
    }

    /// Builds the backend from the configuration text (the kind name or a URL, trimmed).
    pub fn build(&self, config: &str) -> Result<Box<dyn Backend>, Error> {
        (self.build)(config.trim())
    }

    /// Whether `scheme` (without `://`) selects it, case-insensitively.
    pub fn has_scheme(&self, scheme: &str) -> bool {
        self.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
    }
}

impl fmt::Debug for BackendFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendFactory")
            .field("name", &self.name())
            .field("schemes", &self.schemes)
            .field("description", &self.description)
            .field("module", &self.module)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Whether `text` is a valid kind name or URL scheme: lower-case ASCII letters, digits, `+`,
/// `-`, `.` or `_`, starting with a letter.
pub(crate) const fn is_identifier(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes[0].is_ascii_lowercase() {
        return false;
    }
    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'_'))
        {
            return false;
        }
        i += 1;
    }
    true
}

/// Registers a backend kind for [`init_from`](crate::init_from) and
/// [`backend_from_config`](crate::backend_from_config): its kind name, the URL schemes that
/// select it, a one-line description and `fn(&str) -> Result<Box<dyn Backend>, Error>`, which
/// builds it from the configuration text (the kind name or the URL, trimmed).
///
/// ```ignore
/// events_core::register_backend! {
///     name: "loopback",
///     schemes: ["loopback"],
///     description: "in-process dispatch under another name",
///     build: build_loopback,
/// }
/// ```
///
/// See [`backends`](crate::backends) for a whole example, and for what happens when two
/// crates register one name or scheme.
#[macro_export]
macro_rules! register_backend {
    (
        name: $name:expr,
        schemes: [$($scheme:expr),* $(,)?],
        description: $description:expr,
        build: $build:expr $(,)?
    ) => {
        const _: () = {
            #[$crate::__private::distributed_slice($crate::__private::BACKEND_FACTORIES)]
            #[linkme(crate = $crate::__private::linkme)]
            static FACTORY: $crate::backends::BackendFactory = $crate::backends::BackendFactory::new(
                $name,
                &[$($scheme),*],
                $description,
                $build,
                ::core::module_path!(),
                $crate::SourceLocation { file: ::core::file!(), line: ::core::line!() },
            );
        };
    };
}

/// The in-memory backend's registration, `memory`. (linkme's element is a `link_section`
/// static, which the workspace's `unsafe_code` lint flags inside the crate that declares the
/// slice; in other crates the macro's expansion is not linted.)
#[allow(
    unsafe_code,
    reason = "linkme's registration, as in every crate that registers"
)]
mod memory_factory {
    crate::register_backend! {
        name: "memory",
        schemes: [],
        description: "in-process dispatch (`MemoryBackend`)",
        build: super::build_memory,
    }
}

fn build_memory(_config: &str) -> Result<Box<dyn Backend>, Error> {
    Ok(Box::new(crate::MemoryBackend::new()))
}

/// Every registered backend factory of the program, by kind name; an error if two share a
/// kind name or a URL scheme ([`Error::DuplicateBackend`], naming both).
pub fn registered() -> Result<Vec<&'static BackendFactory>, Error> {
    let mut factories: Vec<&'static BackendFactory> =
        crate::__private::BACKEND_FACTORIES.iter().collect();
    // The order the linker gives is not stable: sort, so that "first" means the same each run.
    factories.sort_by_key(|f| (f.name(), f.location.file, f.location.line, f.module));
    for (i, first) in factories.iter().enumerate() {
        for second in &factories[i + 1..] {
            let clash = if first.name() == second.name() {
                Some(format!("kind name `{}`", first.name()))
            } else {
                first
                    .schemes
                    .iter()
                    .find(|s| second.has_scheme(s))
                    .map(|s| format!("URL scheme `{s}://`"))
            };
            if let Some(what) = clash {
                return Err(Error::DuplicateBackend {
                    what,
                    first,
                    second,
                });
            }
        }
    }
    Ok(factories)
}

/// The factory that `config` selects: a kind name (case-insensitive, surrounding white space
/// ignored) or a URL whose scheme a factory registers.
///
/// Errors: [`Error::UnsupportedBackend`] when no linked crate registers it, listing what is
/// registered (the URL's password is never shown); [`Error::DuplicateBackend`] as
/// [`registered`].
pub fn find(config: &str) -> Result<&'static BackendFactory, Error> {
    let registered = registered()?;
    let text = config.trim();
    let found = match text.split_once("://") {
        Some((scheme, _)) => registered.iter().find(|f| f.has_scheme(scheme)),
        None => registered
            .iter()
            .find(|f| f.name().eq_ignore_ascii_case(text)),
    };
    match found {
        Some(factory) => Ok(factory),
        None => Err(Error::UnsupportedBackend {
            given: redact_url(text),
            registered,
        }),
    }
}

/// The registered backends for a message: `` `memory`, `celery` (amqp://, redis://) ``.
pub(crate) fn describe(factories: &[&'static BackendFactory]) -> String {
    if factories.is_empty() {
        return "none".to_owned();
    }
    let described: Vec<String> = factories
        .iter()
        .map(|f| {
            let schemes: Vec<String> = f.schemes.iter().map(|s| format!("{s}://")).collect();
            if schemes.is_empty() {
                format!("`{}`", f.name())
            } else {
                format!("`{}` ({})", f.name(), schemes.join(", "))
            }
        })
        .collect();
    described.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_registered_by_this_crate() {
        let all = registered().unwrap();
        assert_eq!(all.iter().map(|f| f.name()).collect::<Vec<_>>(), ["memory"]);
        let memory = find(" Memory ").unwrap();
        assert_eq!(memory.krate(), "events_core");
        assert!(memory.location().file.ends_with("backends.rs"));
        assert_eq!(memory.build("memory").unwrap().kind(), BackendKind::MEMORY);
    }

    #[test]
    fn identifiers() {
        for good in [
            "memory",
            "amqp",
            "redis+sentinel",
            "sqs.fifo",
            "a1",
            "my_kind-2",
        ] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in ["", "Memory", "1amqp", "am qp", "amqp://", "é", "+x"] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn unknown_configs_list_what_is_registered_without_passwords() {
        for text in [
            "kafka",
            "",
            "sqs://user:hunter2@queue",
            "memoryy",
            "celery",
            "amqp://h",
        ] {
            let err = find(text).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, Error::UnsupportedBackend { .. }), "{text}");
            assert!(message.contains("registered: `memory`"), "{message}");
            assert!(message.contains("events_core::link!"), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }
}
