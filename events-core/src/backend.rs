//! The backend trait, backend kinds, and the link-time table of backend factories.

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

/// The kinds of backend, as the seed's `EventBackendType`.
///
/// Parses case-insensitively from `"memory"` or `"celery"`, and from a broker URL (`amqp://`,
/// `amqps://`, `redis://`, `rediss://` mean Celery):
///
/// ```
/// use events_core::BackendKind;
///
/// assert_eq!("Memory".parse::<BackendKind>()?, BackendKind::Memory);
/// assert_eq!("amqp://guest:guest@localhost//".parse::<BackendKind>()?, BackendKind::Celery);
/// assert!("kafka".parse::<BackendKind>().is_err());
/// # Ok::<(), events_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// In-process dispatch ([`MemoryBackend`](crate::MemoryBackend)).
    Memory,
    /// Celery task messages on a broker (the `events-celery` crate).
    Celery,
}

impl BackendKind {
    /// The accepted kind names, for messages.
    pub const ACCEPTED: &'static str = "`memory`, `celery`";

    /// The kind's name: `memory` or `celery`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Celery => "celery",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const CELERY_SCHEMES: [&str; 4] = ["amqp", "amqps", "redis", "rediss"];

impl FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let trimmed = s.trim();
        if trimmed.eq_ignore_ascii_case("memory") {
            return Ok(BackendKind::Memory);
        }
        if trimmed.eq_ignore_ascii_case("celery") {
            return Ok(BackendKind::Celery);
        }
        if let Some((scheme, _)) = trimmed.split_once("://")
            && CELERY_SCHEMES
                .iter()
                .any(|known| scheme.eq_ignore_ascii_case(known))
        {
            return Ok(BackendKind::Celery);
        }
        Err(Error::UnsupportedBackend {
            given: redact_url(trimmed),
            accepted: BackendKind::ACCEPTED,
        })
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

/// A backend that can be built from configuration text, registered at link time by the crate
/// that provides it (`events-celery` registers the Celery backend).
#[doc(hidden)]
pub struct BackendFactory {
    /// The kind it builds.
    pub kind: BackendKind,
    /// Builds the backend from the configuration text (a kind name or a URL).
    pub build: fn(&str) -> Result<Box<dyn Backend>, Error>,
}

/// Builds a backend from a kind name or URL (see [`BackendKind`]).
///
/// `"memory"` builds a [`MemoryBackend`](crate::MemoryBackend); `"celery"` and broker URLs
/// build the Celery backend when the `events-celery` crate is linked.
pub fn backend_from_config(config: &str) -> Result<Box<dyn Backend>, Error> {
    let kind: BackendKind = config.parse()?;
    if kind == BackendKind::Memory {
        return Ok(Box::new(crate::MemoryBackend::new()));
    }
    crate::__private::BACKEND_FACTORIES
        .iter()
        .find(|f| f.kind == kind)
        .map(|f| (f.build)(config.trim()))
        .unwrap_or(Err(Error::BackendNotLinked {
            kind: kind.as_str(),
            krate: "events_celery",
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_case_insensitively_and_from_urls() {
        for (text, kind) in [
            ("memory", BackendKind::Memory),
            (" MEMORY ", BackendKind::Memory),
            ("Celery", BackendKind::Celery),
            ("amqp://guest:guest@127.0.0.1:5672//", BackendKind::Celery),
            ("AMQPS://h/v", BackendKind::Celery),
            ("redis://127.0.0.1:6379/0", BackendKind::Celery),
            ("rediss://:pw@h:6380/1", BackendKind::Celery),
        ] {
            assert_eq!(text.parse::<BackendKind>().unwrap(), kind, "{text}");
        }
    }

    #[test]
    fn unknown_kinds_list_the_accepted_ones_without_passwords() {
        for text in ["kafka", "", "sqs://user:hunter2@queue", "memoryy"] {
            let err = text.parse::<BackendKind>().unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, Error::UnsupportedBackend { .. }), "{text}");
            assert!(message.contains("`memory`, `celery`"), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
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
    fn celery_without_its_crate_is_not_linked() {
        let err = backend_from_config("celery").err().unwrap();
        assert!(
            matches!(err, Error::BackendNotLinked { kind: "celery", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("events_celery"));
    }
}
