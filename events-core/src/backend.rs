//! The backend trait, what a publish returns, backend kinds, and URL redaction for messages
//! (the registry of backend factories is [`backends`](crate::backends)).

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::event::EventRef;
use crate::handler::{BoxFuture, Handler};
use crate::options::PublishOptions;

/// Where events go: the in-memory backend, the Celery backend, or your own.
///
/// Object-safe, so the bus holds any backend as `dyn Backend`. A backend receives every
/// collected handler through [`subscribe`](Backend::subscribe) once, when the bus is built, and
/// closures subscribed at run time later.
pub trait Backend: Send + Sync + 'static {
    /// The backend's kind.
    fn kind(&self) -> BackendKind;

    /// A one-line description for logs and errors (never containing a password).
    fn describe(&self) -> String {
        self.kind().to_string()
    }

    /// Subscribes a handler to its event.
    fn subscribe(&self, handler: Handler) -> Result<(), Error>;

    /// Subscribes several handlers at once, in order (the bus registers the collected handlers
    /// this way). The default subscribes them one by one.
    fn subscribe_many(&self, handlers: Vec<Handler>) -> Result<(), Error> {
        handlers.into_iter().try_for_each(|h| self.subscribe(h))
    }

    /// Publishes an event. Resolves once the event is delivered: for the in-memory backend,
    /// once every handler ran; for a broker, once the broker accepted the message.
    fn publish<'a>(&'a self, event: EventRef<'a>) -> BoxFuture<'a, Result<Receipt, Error>>;

    /// Publishes an event with per-message [`PublishOptions`] (task id, eta, expiry, priority,
    /// queue). Resolves as [`publish`](Self::publish) does.
    ///
    /// The default ignores [`task_id`](PublishOptions::task_id) (a backend without message
    /// ids has nothing to set) and refuses any other option with
    /// [`Error::UnsupportedOption`] naming it, so that nothing is silently dropped; a backend
    /// that supports options overrides it (the Celery backend honours them all, the
    /// [`MemoryBackend`](crate::MemoryBackend) what applies in process).
    fn publish_with<'a>(
        &'a self,
        event: EventRef<'a>,
        options: &'a PublishOptions,
    ) -> BoxFuture<'a, Result<Receipt, Error>> {
        match options.first_set_beyond_task_id() {
            None => self.publish(event),
            Some(option) => {
                let error = Error::UnsupportedOption {
                    backend: self.describe(),
                    option,
                    reason: "this backend does not implement `publish_with`".to_owned(),
                };
                Box::pin(std::future::ready(Err(error)))
            }
        }
    }

    /// Publishes an event without an async runtime, blocking the calling thread until it is
    /// delivered.
    fn publish_blocking(&self, event: EventRef<'_>) -> Result<Receipt, Error>;
}

/// What a successful publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Receipt {
    /// The event was handled in process by this many handlers (zero when none subscribes).
    Handled {
        /// The event's name.
        event: &'static str,
        /// How many handlers ran, all successfully.
        handlers: usize,
    },
    /// The event was accepted by a broker as a task message.
    Enqueued {
        /// The event's name.
        event: &'static str,
        /// The task id of the message.
        task_id: String,
        /// The queue (or routing key) it was sent to.
        queue: String,
    },
}

impl Receipt {
    /// The name of the published event.
    pub fn event(&self) -> &'static str {
        match self {
            Receipt::Handled { event, .. } | Receipt::Enqueued { event, .. } => event,
        }
    }
}

/// A backend's kind: the name it is registered under (`memory`, `celery`, or your own), as the
/// seed's `EventBackendType`.
///
/// Any crate can add a kind ([`register_backend!`](crate::register_backend), see
/// [`backends`](crate::backends)), so a kind is a name rather than a closed list. Parsing looks
/// it up among the registered backends, case-insensitively, by name or by the scheme of a URL
/// (`amqp://…` is `celery` when `events-celery` is linked):
///
/// ```
/// use events_core::BackendKind;
///
/// assert_eq!("Memory".parse::<BackendKind>()?, BackendKind::MEMORY);
/// assert_eq!(BackendKind::MEMORY.as_str(), "memory");
/// // Not registered here: the error lists what is.
/// let err = "kafka".parse::<BackendKind>().unwrap_err();
/// assert!(err.to_string().contains("registered: `memory`"));
/// # Ok::<(), events_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKind(&'static str);

impl BackendKind {
    /// In-process dispatch ([`MemoryBackend`](crate::MemoryBackend)).
    pub const MEMORY: BackendKind = BackendKind::new("memory");

    /// The kind named `name`: lower-case ASCII letters, digits, `+`, `-`, `.` or `_`, starting
    /// with a letter (`"celery"`, `"loopback"`). Panics otherwise — at compile time in a
    /// `const`.
    pub const fn new(name: &'static str) -> Self {
        assert!(
            crate::backends::is_identifier(name),
            "a backend kind name must be lower-case ASCII letters, digits, `+`, `-`, `.` or `_`, \
             starting with a letter (`celery`, `loopback`)"
        );
        Self(name)
    }

    /// The kind's name: `memory`, `celery`, ….
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl FromStr for BackendKind {
    type Err = Error;

    /// The kind of the registered backend that `s` selects, by name or URL scheme: see
    /// [`backends::find`](crate::backends::find).
    fn from_str(s: &str) -> Result<Self, Error> {
        crate::backends::find(s).map(|factory| factory.kind())
    }
}

/// Replaces the password of a URL (`scheme://user:password@host`) and the values of
/// secret-looking query parameters (`password`, `token`, `secret`, …) with `***`, for
/// messages.
///
/// Whatever the password holds: a password with an unencoded `/`, `?`, `#` or `@` (which URL
/// parsers would read as the end of the host part) is still hidden, up to the last `@` of the
/// URL.
///
/// ```
/// assert_eq!(
///     events_core::redact_url("amqp://guest:secret@host:5672//"),
///     "amqp://guest:***@host:5672//"
/// );
/// assert_eq!(
///     events_core::redact_url("amqp://guest:se/cr@t@host:5672//"),
///     "amqp://guest:***@host:5672//"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // Where URL parsers end the host part; a password holding one of these characters moves
    // that end into the password, so then everything up to the last `@` is credentials.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@').or_else(|| rest.rfind('@'));
    let mut redacted = format!("{scheme}://");
    let after = match at {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    redacted.push_str(user);
                    redacted.push_str(":***");
                }
                None => redacted.push_str(userinfo),
            }
            &rest[at..]
        }
        None => rest,
    };
    match after.split_once('?') {
        Some((before, query)) => {
            redacted.push_str(before);
            redacted.push('?');
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    redacted.push('&');
                }
                match pair.split_once('=') {
                    Some((key, _)) if is_secret_key(key) => {
                        redacted.push_str(key);
                        redacted.push_str("=***");
                    }
                    _ => redacted.push_str(pair),
                }
            }
        }
        None => redacted.push_str(after),
    }
    redacted
}

/// Whether a URL query parameter's value is a secret.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "credential", "auth"]
        .iter()
        .any(|secret| key.contains(secret))
}

/// Builds a backend from a kind name or URL: the registered backend that selects
/// ([`backends::find`](crate::backends::find)) builds it from the text.
///
/// `"memory"` builds a [`MemoryBackend`](crate::MemoryBackend); `"celery"` and broker URLs
/// (`amqp://`, `amqps://`, `redis://`, `rediss://`) build the Celery backend when the
/// `events-celery` crate is linked; other crates register their own kinds
/// ([`register_backend!`](crate::register_backend)).
pub fn backend_from_config(config: &str) -> Result<Box<dyn Backend>, Error> {
    crate::backends::find(config)?.build(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_case_insensitively() {
        for text in ["memory", " MEMORY ", "Memory"] {
            assert_eq!(
                text.parse::<BackendKind>().unwrap(),
                BackendKind::MEMORY,
                "{text}"
            );
        }
        assert_eq!(BackendKind::new("loopback").to_string(), "loopback");
    }

    #[test]
    #[should_panic(expected = "a backend kind name must be lower-case")]
    fn kind_names_are_checked() {
        let _ = BackendKind::new(&*String::from("Celery").leak());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("amqp://user@h//"), "amqp://user@h//");
        assert_eq!(redact_url("amqp://h/v"), "amqp://h/v");
        assert_eq!(redact_url("amqp://u:p@ss@h/v"), "amqp://u:***@h/v");
        assert_eq!(redact_url("memory"), "memory");
        assert_eq!(redact_url("amqp://u:p@h/v@x"), "amqp://u:***@h/v@x");
        assert_eq!(
            redact_url("redis://h:6379/0?password=hunter2&db=1&auth_token=t0k"),
            "redis://h:6379/0?password=***&db=1&auth_token=***"
        );
    }

    /// Passwords holding every character a generated password may hold, unencoded, in every
    /// place of the URL: never shown.
    #[test]
    fn odd_passwords_are_never_shown() {
        let passwords = [
            "pa/ss",
            "p@ss",
            "p:ss",
            "p#ss",
            "p?ss",
            "p%ss",
            "p%2Fss",
            "p ss",
            "pässwörd",
            "/",
            "@",
            "//@@::",
            "?#",
            "a/b@c",
            "x?y=z&w",
            "密码/🔑",
        ];
        for odd in passwords {
            // Marked at both ends: neither end may show.
            let password = format!("Zq{odd}Zq");
            for user in ["u", "", "user.name"] {
                for tail in ["h:5672//", "h", "h/v@x", "h:6379/0?db=1", "[::1]:5672/%2f"] {
                    for scheme in ["amqp", "amqps", "redis", "rediss"] {
                        let url = format!("{scheme}://{user}:{password}@{tail}");
                        let shown = redact_url(&url);
                        assert!(!shown.contains("Zq"), "{url:?} was shown as {shown:?}");
                        assert!(shown.contains(":***"), "{url:?} -> {shown:?}");
                        assert!(shown.starts_with(&format!("{scheme}://{user}:")), "{shown}");
                    }
                }
            }
        }
    }

    #[test]
    fn celery_without_its_crate_is_not_registered() {
        let err = backend_from_config("celery").err().unwrap();
        assert!(
            matches!(&err, Error::UnsupportedBackend { given, registered }
                if given == "celery" && registered.len() == 1),
            "{err}"
        );
        assert!(err.to_string().contains("events_celery"), "{err}");
    }
}
