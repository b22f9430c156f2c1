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
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if !authority.contains('@') && rest.contains('@') {
            // `user:pa/ss@host`: URL parsers (kombu's too) end the host part at the `/` and
            // would connect somewhere else, with the password's tail as a port or path.
            return Err(CeleryError::Config(format!(
                "broker URL `{}` has an `@` after its host part: a user name or password \
                 holding `/`, `?` or `#` (or a path holding `@`) must be percent-encoded \
                 (`/` as %2F, `?` as %3F, `#` as %23, `@` as %40), as Celery requires too",
                events_core::redact_url(url)
            )));
        }
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

    /// `text` (a client library's error) with this URL's password removed: the whole URL as
    /// [`Display`](fmt::Display) shows it, and the password itself, as written and
    /// percent-decoded, wherever else it appears.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.replace(&self.url, &self.to_string());
        if let Some(password) = self.password() {
            for secret in [percent_decode(password), password.to_owned()] {
                if !secret.is_empty() {
                    text = text.replace(&secret, "***");
                }
            }
        }
        text
    }

    /// For a TLS URL: checks that the CA files named by `SSL_CERT_FILE` and `SSL_CERT_DIR`
    /// (which both clients read for their trusted roots) can be read, so that a wrong path is
    /// reported as such instead of as an untrusted certificate later.
    pub(crate) fn check_tls_files(&self) -> Result<(), String> {
        if !self.tls {
            return Ok(());
        }
        if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty())
            && let Err(e) = std::fs::File::open(&file)
        {
            return Err(format!(
                "SSL_CERT_FILE names `{}`, which cannot be read ({e}): fix the path or unset \
                 SSL_CERT_FILE to use the system's trusted roots",
                std::path::Path::new(&file).display()
            ));
        }
        if let Some(dirs) = std::env::var_os("SSL_CERT_DIR").filter(|d| !d.is_empty()) {
            for dir in std::env::split_paths(&dirs) {
                if let Err(e) = std::fs::read_dir(&dir) {
                    return Err(format!(
                        "SSL_CERT_DIR names `{}`, which cannot be read ({e}): fix the path or \
                         unset SSL_CERT_DIR to use the system's trusted roots",
                        dir.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The password as written in the URL (percent-encoded), if it has one.
    fn password(&self) -> Option<&str> {
        let (_, rest) = self.url.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, _) = authority.rsplit_once('@')?;
        userinfo.split_once(':').map(|(_, password)| password)
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

/// `%XX` escapes decoded (as the client libraries read a URL's password); invalid escapes and
/// non-UTF-8 results are kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(Some(hi)), Some(Some(lo))) = (
                bytes.get(i + 1).map(|&b| hex(b)),
                bytes.get(i + 2).map(|&b| hex(b)),
            )
        {
            out.push(u8::try_from(hi * 16 + lo).expect("two hex digits"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
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

    /// Passwords as generated passwords come: those URL parsers read unambiguously are
    /// accepted and never shown; those that move the end of the host part are refused, with an
    /// error that does not show them either.
    #[test]
    fn odd_passwords_are_accepted_or_refused_never_shown() {
        for (password, accepted) in [
            ("p@ss", true),
            ("p:ss", true),
            ("p%2Fss", true),
            ("p%ss", true),
            ("p ss", true),
            ("pässwörd", true),
            ("pa/ss", false),
            ("p#ss", false),
            ("p?ss", false),
            ("a/b@c", false),
        ] {
            for scheme in ["amqp", "amqps", "redis", "rediss"] {
                let text = format!("{scheme}://user:Zq{password}Zq@host:1234//");
                match BrokerUrl::parse(&text) {
                    Ok(url) => {
                        assert!(accepted, "{text} should be refused");
                        let shown = format!("{url} {url:?}");
                        assert!(!shown.contains("Zq"), "{shown}");
                        let scrubbed = url.scrub(&format!("failed: {text}; pw Zq{password}Zq"));
                        assert!(!scrubbed.contains("Zq"), "{scrubbed}");
                    }
                    Err(e) => {
                        assert!(!accepted, "{text}: {e}");
                        let e = e.to_string();
                        assert!(!e.contains("Zq") && e.contains("percent-encoded"), "{e}");
                    }
                }
            }
        }
        let url = BrokerUrl::parse("amqp://u:p%40ss%2Fw@h//").unwrap();
        assert_eq!(url.scrub("login p@ss/w refused"), "login *** refused");
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
