//! Broker URLs as Celery users write them, kept secret in every `Debug` and `Display`.

use std::fmt;

use crate::error::CeleryError;

/// Which broker a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// RabbitMQ (AMQP 0-9-1): `amqp://`, `amqps://`.
    Amqp,
    /// Redis: `redis://`, `rediss://`.
    Redis,
}

/// A broker URL: `amqp://user:password@host:5672/vhost`, `amqps://…`,
/// `redis://:password@host:6379/0`, `rediss://…`.
///
/// `Debug` and `Display` show it with the password replaced by `***`.
///
/// ```
/// use events_celery::BrokerUrl;
///
/// let url = BrokerUrl::parse("amqp://guest:secret@127.0.0.1:5672//")?;
/// assert_eq!(url.to_string(), "amqp://guest:***@127.0.0.1:5672//");
/// # Ok::<(), events_celery::CeleryError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    url: String,
    kind: BrokerKind,
    tls: bool,
}

impl BrokerUrl {
    /// Parses and checks a broker URL.
    pub fn parse(url: &str) -> Result<Self, CeleryError> {
        let url = url.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(CeleryError::Config(format!(
                "`{}` is not a broker URL: expected amqp://, amqps://, redis:// or rediss://",
                events_core::redact_url(url)
            )));
        };
        let (kind, tls) = match scheme.to_ascii_lowercase().as_str() {
            "amqp" => (BrokerKind::Amqp, false),
            "amqps" => (BrokerKind::Amqp, true),
            "redis" => (BrokerKind::Redis, false),
            "rediss" => (BrokerKind::Redis, true),
            _ => {
                return Err(CeleryError::Config(format!(
                    "unsupported broker scheme `{scheme}://` in `{}`: expected amqp://, amqps://, \
                     redis:// or rediss://",
                    events_core::redact_url(url)
                )));
            }
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || host.starts_with(':') {
            return Err(CeleryError::Config(format!(
                "broker URL `{}` has no host",
                events_core::redact_url(url)
            )));
        }
        Ok(Self {
            url: url.to_owned(),
            kind,
            tls,
        })
    }

    /// Which broker it names.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// Whether it uses TLS (`amqps://`, `rediss://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The URL with its password, for the client libraries only.
    pub(crate) fn expose(&self) -> &str {
        &self.url
    }

    /// The URL as the AMQP client needs it: kombu reads `amqp://host`, `amqp://host/` and
    /// `amqp://host//` all as the virtual host `/`, while the AMQP URI spec reads the middle one
    /// as the empty virtual host.
    pub(crate) fn amqp_uri(&self) -> String {
        let (scheme, rest) = self.url.split_once("://").unwrap_or(("amqp", &self.url));
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        let path = if path.is_empty() || path == "/" {
            "/%2f"
        } else {
            path
        };
        match query {
            Some(q) => format!("{scheme}://{authority}{path}?{q}"),
            None => format!("{scheme}://{authority}{path}"),
        }
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&events_core::redact_url(&self.url))
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_celery_urls_and_hides_passwords() {
        for (text, kind, tls) in [
            (
                "amqp://guest:guest@127.0.0.1:5672//",
                BrokerKind::Amqp,
                false,
            ),
            (
                "amqps://u:p@rabbit.example.com:5671/prod",
                BrokerKind::Amqp,
                true,
            ),
            ("redis://127.0.0.1:6379/0", BrokerKind::Redis, false),
            (
                "rediss://:pw@cache.example.com:6380/2",
                BrokerKind::Redis,
                true,
            ),
            ("REDIS://h", BrokerKind::Redis, false),
        ] {
            let url = BrokerUrl::parse(text).unwrap();
            assert_eq!((url.kind(), url.is_tls()), (kind, tls), "{text}");
            assert!(!format!("{url} {url:?}").contains(":p@"), "{url}");
            assert!(!format!("{url} {url:?}").contains(":pw@"), "{url}");
        }
    }

    #[test]
    fn refuses_other_urls_without_leaking_passwords() {
        for text in [
            "kafka://u:hunter2@h",
            "amqp://u:hunter2@/vhost",
            "localhost:5672",
            "redis://",
        ] {
            let err = BrokerUrl::parse(text).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("broker"), "{err}");
        }
    }

    #[test]
    fn amqp_virtual_hosts_follow_kombu() {
        let uri = |s: &str| BrokerUrl::parse(s).unwrap().amqp_uri();
        assert_eq!(uri("amqp://g:g@h:5672//"), "amqp://g:g@h:5672//");
        assert_eq!(uri("amqp://g:g@h:5672/"), "amqp://g:g@h:5672/%2f");
        assert_eq!(uri("amqp://g:g@h:5672"), "amqp://g:g@h:5672/%2f");
        assert_eq!(uri("amqp://h/prod"), "amqp://h/prod");
        assert_eq!(uri("amqp://h/?heartbeat=10"), "amqp://h/%2f?heartbeat=10");
    }
}
