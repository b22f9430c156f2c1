//! Celery's remote control (kombu's "pidbox" mailbox): reading a control request as `celery
//! inspect` / `celery control` / Flower send it, deciding whether it is for this worker as
//! kombu's `Node.handle_message` does, and building the reply.
//!
//! - A **request** is published to the fanout exchange [`PIDBOX_EXCHANGE`] (`celery.pidbox`),
//!   routing key `""`, delivery mode 2, headers `{"clock": <int>, "expires": <float unix time
//!   or 0>}`, body `{"method", "arguments", "destination", "pattern", "matcher"[, "ticket",
//!   "reply_to": {"exchange", "routing_key"}]}`. Each worker consumes it from its own queue
//!   [`pidbox_queue`] (`{hostname}.celery.pidbox`); on Redis it arrives by `PUBLISH` on
//!   `/{db}.celery.pidbox`.
//! - A **reply** goes to the direct exchange named by `reply_to.exchange`
//!   ([`PIDBOX_REPLY_EXCHANGE`], `reply.celery.pidbox`) with routing key `reply_to.routing_key`
//!   (the caller's oid), delivery mode 1, headers `{"ticket": …, "clock": <int>}`, body
//!   `{"<hostname>": <reply value>}` ([`pidbox_reply`]). On Redis: `LPUSH` onto the queue(s)
//!   the set `_kombu.binding.reply.celery.pidbox` routes the oid to
//!   (`{oid}.reply.celery.pidbox`).
//!
//! Parsing never panics: oversized, non-UTF-8, non-JSON, too deep or wrongly shaped input is a
//! [`PidboxError`].

use super::amqp::{AmqpMessage, AmqpValue};
use super::json::{Json, JsonMap};
use super::kombu_message::{KombuMessage, ReceivedKombuMessage};

/// The exchange control requests are published to (`{namespace}.pidbox`, namespace `celery`).
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";

/// The exchange replies go to (`reply.{namespace}.pidbox`).
pub const PIDBOX_REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// The `x-message-ttl` of a worker's mailbox queue, in milliseconds (Celery's
/// `control_queue_ttl`, 300 s). The queue is exclusive and auto-delete, not durable; the
/// exchanges `celery.pidbox` (fanout) and `reply.celery.pidbox` (direct) are not durable and
/// must be declared so, or RabbitMQ refuses the declaration.
pub const PIDBOX_QUEUE_TTL_MS: u32 = 300_000;

/// The `x-expires` of a worker's mailbox queue, in milliseconds (`control_queue_expires`, 10 s).
pub const PIDBOX_QUEUE_EXPIRES_MS: u32 = 10_000;

/// The most bytes of a control request read by default (1 MiB): a request is a method name
/// and a few arguments; anything bigger is refused unread.
pub const DEFAULT_MAX_PIDBOX_BYTES: usize = 1 << 20;

/// The longest `pattern` matched against the hostname (longer ones never match).
pub const MAX_PATTERN_LEN: usize = 1024;

/// A worker's own mailbox queue: `{hostname}.celery.pidbox` (exclusive, auto-delete, bound to
/// [`PIDBOX_EXCHANGE`]).
pub fn pidbox_queue(hostname: &str) -> String {
    format!("{hostname}.celery.pidbox")
}

/// Why a control request could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PidboxError {
    /// Over the size limit; nothing was parsed.
    #[error(
        "control request of {size} bytes is over the {limit}-byte limit; it was dropped unread"
    )]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The envelope or body is not what kombu sends (not UTF-8, not JSON, too deep, not an
    /// object).
    #[error("malformed control request: {0}; it was dropped (send a JSON object as kombu does)")]
    Malformed(String),
    /// The body has no string `method` (kombu's `Node.dispatch` could not run it either).
    #[error("control request without a string `method`; it was dropped")]
    MissingMethod,
}

/// Where a reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// The exchange ([`PIDBOX_REPLY_EXCHANGE`]).
    pub exchange: String,
    /// The routing key: the caller's oid.
    pub routing_key: String,
}

/// A control request, as kombu's `Mailbox._publish` writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PidboxRequest {
    /// The command (`ping`, `stats`, `revoke`…).
    pub method: String,
    /// Its keyword arguments: an object, or whatever the sender put there (`null` is `{}`).
    pub arguments: Json,
    /// The node names it is for; `None` (or empty) is everyone.
    pub destination: Option<Vec<String>>,
    /// A pattern the node name must match (with [`matcher`](Self::matcher)) when there is no
    /// destination.
    pub pattern: Option<String>,
    /// `glob` or `pcre`.
    pub matcher: Option<String>,
    /// Where to reply; `None`: a cast, no reply.
    pub reply_to: Option<ReplyTo>,
    /// The ticket echoed in the reply's `ticket` header.
    pub ticket: Json,
    /// The sender's Lamport clock (`clock` header; 0 when missing).
    pub clock: u64,
    /// The `expires` header: Unix time after which the sender stops listening (0/None: never).
    pub expires: Option<f64>,
}

impl PidboxRequest {
    /// Reads a request from its JSON body and headers (`clock`, `expires`), refusing a body
    /// over `max_bytes` before parsing it.
    pub fn parse(body: &[u8], headers: &JsonMap, max_bytes: usize) -> Result<Self, PidboxError> {
        if body.len() > max_bytes {
            return Err(PidboxError::TooLarge {
                size: body.len(),
                limit: max_bytes,
            });
        }
        let text = std::str::from_utf8(body)
            .map_err(|error| PidboxError::Malformed(format!("the body is not UTF-8: {error}")))?;
        let json = Json::parse(text)
            .map_err(|error| PidboxError::Malformed(format!("the body is not JSON: {error}")))?;
        let clock = headers.get("clock").map_or(0, clock_value);
        let expires = headers
            .get("expires")
            .and_then(Json::as_f64)
            .filter(|&at| at > 0.0);
        let request = Self::from_body(&json, clock, expires);
        json.drop_iteratively();
        request
    }

    /// Reads a request from kombu's Redis envelope (as `PUBLISH`ed on `/{db}.celery.pidbox`).
    pub fn from_redis_envelope(envelope: &[u8], max_bytes: usize) -> Result<Self, PidboxError> {
        let message =
            ReceivedKombuMessage::from_redis_envelope(envelope, max_bytes).map_err(|error| {
                match error {
                    super::DecodeError::TooLarge { size, limit } => {
                        PidboxError::TooLarge { size, limit }
                    }
                    other => PidboxError::Malformed(other.to_string()),
                }
            })?;
        Self::parse(&message.body, &message.headers, max_bytes)
    }

    /// Reads a request from an AMQP delivery (headers `clock` and `expires` of any numeric
    /// field type).
    pub fn from_amqp(message: &AmqpMessage, max_bytes: usize) -> Result<Self, PidboxError> {
        let mut headers = JsonMap::new();
        for (name, value) in message.headers.iter() {
            let number = match value {
                AmqpValue::LongInt(v) => Json::from(*v),
                AmqpValue::LongLongInt(v) => Json::from(*v),
                AmqpValue::LongUInt(v) => Json::from(*v),
                AmqpValue::ShortInt(v) => Json::from(*v),
                AmqpValue::ShortUInt(v) => Json::from(*v),
                AmqpValue::ShortShortInt(v) => Json::from(*v),
                AmqpValue::ShortShortUInt(v) => Json::from(*v),
                AmqpValue::Double(v) if v.is_finite() => Json::from(*v),
                AmqpValue::Float(v) if v.is_finite() => Json::from(f64::from(*v)),
                _ => continue,
            };
            headers.insert(name.to_owned(), number);
        }
        Self::parse(&message.body, &headers, max_bytes)
    }

    /// Reads the body object, as kombu's `Node.handle_message` / `dispatch` read it.
    pub fn from_body(body: &Json, clock: u64, expires: Option<f64>) -> Result<Self, PidboxError> {
        let Json::Object(map) = body else {
            return Err(PidboxError::Malformed(format!(
                "the body is {}, not an object",
                super::error::json_type(body)
            )));
        };
        let method = map
            .get("method")
            .and_then(Json::as_str)
            .ok_or(PidboxError::MissingMethod)?
            .to_owned();
        let text = |name: &str| map.get(name).and_then(Json::as_str).map(str::to_owned);
        let destination = match map.get("destination") {
            Some(Json::Array(items)) => Some(
                items
                    .iter()
                    .filter_map(|item| item.as_str().map(str::to_owned))
                    .collect(),
            ),
            Some(Json::String(one)) => Some(vec![one.clone()]),
            _ => None,
        };
        let reply_to = map.get("reply_to").and_then(|reply_to| {
            Some(ReplyTo {
                exchange: reply_to.get("exchange")?.as_str()?.to_owned(),
                routing_key: reply_to.get("routing_key")?.as_str()?.to_owned(),
            })
        });
        Ok(Self {
            method,
            arguments: map.get("arguments").cloned().unwrap_or_default(),
            destination,
            pattern: text("pattern"),
            matcher: text("matcher"),
            reply_to,
            ticket: map.get("ticket").cloned().unwrap_or_default(),
            clock,
            expires,
        })
    }

    /// Whether the node `hostname` runs it, as kombu decides: a non-empty destination must
    /// name it; otherwise a `pattern` **and** `matcher` must match it ([`pattern_matches`]);
    /// otherwise it is a broadcast.
    pub fn is_for(&self, hostname: &str) -> bool {
        if let Some(destination) = self.destination.as_ref().filter(|d| !d.is_empty()) {
            return destination.iter().any(|name| name == hostname);
        }
        match (self.pattern.as_deref(), self.matcher.as_deref()) {
            (Some(pattern), Some(matcher)) if !pattern.is_empty() && !matcher.is_empty() => {
                pattern_matches(hostname, pattern, matcher)
            }
            _ => true,
        }
    }

    /// The request as kombu's `Mailbox._publish` sends it: exchange `celery.pidbox`, routing
    /// key `""`, delivery mode 2, headers `clock` and `expires` (`0` when none).
    pub fn to_message(&self) -> KombuMessage {
        let mut body = JsonMap::with_capacity(7);
        body.insert("method".into(), self.method.clone().into());
        body.insert("arguments".into(), self.arguments.clone());
        let strings = |items: &Vec<String>| {
            Json::Array(items.iter().map(|s| Json::from(s.as_str())).collect())
        };
        body.insert(
            "destination".into(),
            self.destination.as_ref().map_or(Json::Null, strings),
        );
        let optional = |value: &Option<String>| value.clone().map_or(Json::Null, Json::from);
        body.insert("pattern".into(), optional(&self.pattern));
        body.insert("matcher".into(), optional(&self.matcher));
        if let Some(reply_to) = &self.reply_to {
            body.insert("ticket".into(), self.ticket.clone());
            let mut to = JsonMap::with_capacity(2);
            to.insert("exchange".into(), reply_to.exchange.clone().into());
            to.insert("routing_key".into(), reply_to.routing_key.clone().into());
            body.insert("reply_to".into(), Json::Object(to));
        }
        let mut headers = JsonMap::with_capacity(2);
        headers.insert("clock".into(), self.clock.into());
        headers.insert(
            "expires".into(),
            self.expires.map_or(Json::from(0u8), Json::from),
        );
        KombuMessage {
            exchange: PIDBOX_EXCHANGE.to_owned(),
            routing_key: String::new(),
            headers,
            delivery_mode: 2,
            body: Json::Object(body),
        }
    }
}

/// A `clock` header as Python reads it: an integer (a float is truncated), anything else 0.
fn clock_value(value: &Json) -> u64 {
    match value.as_number() {
        Some(number) if number.is_integer() => number.as_u64().unwrap_or(0),
        Some(number) => {
            let value = number.as_f64();
            if value.is_finite() && value > 0.0 && value < u64::MAX as f64 {
                value as u64
            } else {
                0
            }
        }
        None => 0,
    }
}

/// The reply message for `request`'s `reply_to`: body `{hostname: value}`, headers
/// `{"ticket": <the request's ticket>, "clock": clock}`, delivery mode 1, as kombu's
/// `Mailbox._publish_reply` sends it. `clock` is the worker's clock forwarded for the reply.
pub fn pidbox_reply(
    hostname: &str,
    value: Json,
    reply_to: &ReplyTo,
    ticket: &Json,
    clock: u64,
) -> KombuMessage {
    let mut body = JsonMap::with_capacity(1);
    body.insert(hostname.to_owned(), value);
    let mut headers = JsonMap::with_capacity(2);
    headers.insert("ticket".into(), ticket.clone());
    headers.insert("clock".into(), clock.into());
    KombuMessage {
        exchange: reply_to.exchange.clone(),
        routing_key: reply_to.routing_key.clone(),
        headers,
        delivery_mode: 1,
        body: Json::Object(body),
    }
}

/// kombu's `match(hostname, pattern, matcher)`: `glob` is `fnmatch` (the whole name, `*`, `?`,
/// `[seq]`, `[!seq]`), `pcre` is Python's `re.match` (anchored at the start only) for the
/// regular-expression subset node names need: literals, `.`, `\d \w \s \D \W \S` and escaped
/// characters, `[...]` classes with ranges and `^`, the quantifiers `* + ?`, `^` and `$`.
/// Groups, alternation and counted repetition are not supported: such a pattern (or an
/// unknown matcher, or a pattern longer than [`MAX_PATTERN_LEN`]) matches nothing.
pub fn pattern_matches(hostname: &str, pattern: &str, matcher: &str) -> bool {
    if pattern.len() > MAX_PATTERN_LEN {
        return false;
    }
    let compiled = match matcher {
        "glob" => compile_glob(pattern),
        "pcre" => compile_pcre(pattern),
        _ => None,
    };
    compiled.is_some_and(|pattern| pattern.matches(hostname))
}

#[derive(Debug, Clone)]
enum Atom {
    Char(char),
    Any,
    Class {
        ranges: Vec<(char, char)>,
        negated: bool,
    },
}

impl Atom {
    fn matches(&self, c: char) -> bool {
        match self {
            Self::Char(expected) => *expected == c,
            Self::Any => true,
            Self::Class { ranges, negated } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Repeat {
    One,
    Optional,
    Many,
}

struct Compiled {
    tokens: Vec<(Atom, Repeat)>,
    /// Must the whole name be consumed (`fnmatch`, or a regex ending in `$`)?
    to_end: bool,
    /// Glob's `.` never matches `\n`; neither does a regex `.`.
    any_excludes_newline: bool,
}

impl Compiled {
    /// Dynamic programming over (token, position): linear in pattern × name, no backtracking.
    fn matches(&self, text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        let n = chars.len();
        let mut next = vec![false; n + 1];
        for (j, slot) in next.iter_mut().enumerate() {
            *slot = !self.to_end || j == n;
        }
        for (atom, repeat) in self.tokens.iter().rev() {
            let mut here = vec![false; n + 1];
            for j in (0..=n).rev() {
                let eats = j < n
                    && atom.matches(chars[j])
                    && !(self.any_excludes_newline
                        && matches!(atom, Atom::Any)
                        && chars[j] == '\n');
                here[j] = match repeat {
                    Repeat::One => eats && next[j + 1],
                    Repeat::Optional => next[j] || (eats && next[j + 1]),
                    Repeat::Many => next[j] || (eats && here[j + 1]),
                };
            }
            next = here;
        }
        next[0]
    }
}

/// A `[...]` class starting after `[`; returns it and the index after `]`.
fn parse_class(chars: &[char], mut i: usize, negate: char) -> Option<(Atom, usize)> {
    let mut negated = false;
    if chars.get(i) == Some(&negate) {
        negated = true;
        i += 1;
    }
    let mut ranges = Vec::new();
    let start = i;
    loop {
        let c = *chars.get(i)?;
        if c == ']' && i > start {
            return Some((Atom::Class { ranges, negated }, i + 1));
        }
        let (lo, after) = if c == '\\' && negate == '^' {
            (*chars.get(i + 1)?, i + 2)
        } else {
            (c, i + 1)
        };
        if chars.get(after) == Some(&'-') && chars.get(after + 1).is_some_and(|&c| c != ']') {
            let hi = chars[after + 1];
            ranges.push((lo, hi));
            i = after + 2;
        } else {
            ranges.push((lo, lo));
            i = after;
        }
    }
}

fn compile_glob(pattern: &str) -> Option<Compiled> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => {
                tokens.push((Atom::Any, Repeat::Many));
                i += 1;
            }
            '?' => {
                tokens.push((Atom::Any, Repeat::One));
                i += 1;
            }
            '[' => match parse_class(&chars, i + 1, '!') {
                Some((class, after)) => {
                    tokens.push((class, Repeat::One));
                    i = after;
                }
                // fnmatch: an unclosed `[` is a literal.
                None => {
                    tokens.push((Atom::Char('['), Repeat::One));
                    i += 1;
                }
            },
            c => {
                tokens.push((Atom::Char(c), Repeat::One));
                i += 1;
            }
        }
    }
    Some(Compiled {
        tokens,
        to_end: true,
        any_excludes_newline: false,
    })
}

fn escape_class(c: char) -> Atom {
    let digits = vec![('0', '9')];
    let word = vec![('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];
    let space = vec![(' ', ' '), ('\t', '\r')];
    match c {
        'd' => Atom::Class {
            ranges: digits,
            negated: false,
        },
        'D' => Atom::Class {
            ranges: digits,
            negated: true,
        },
        'w' => Atom::Class {
            ranges: word,
            negated: false,
        },
        'W' => Atom::Class {
            ranges: word,
            negated: true,
        },
        's' => Atom::Class {
            ranges: space,
            negated: false,
        },
        'S' => Atom::Class {
            ranges: space,
            negated: true,
        },
        'n' => Atom::Char('\n'),
        't' => Atom::Char('\t'),
        other => Atom::Char(other),
    }
}

fn compile_pcre(pattern: &str) -> Option<Compiled> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens: Vec<(Atom, Repeat)> = Vec::new();
    let mut to_end = false;
    let mut i = 0;
    if chars.first() == Some(&'^') {
        i = 1;
    }
    while i < chars.len() {
        let c = chars[i];
        let (atom, after) = match c {
            '$' if i + 1 == chars.len() => {
                to_end = true;
                break;
            }
            '(' | ')' | '|' | '{' | '}' | '$' | '^' => return None,
            '*' | '+' | '?' => return None,
            '.' => (Atom::Any, i + 1),
            '\\' => {
                let escaped = *chars.get(i + 1)?;
                if escaped.is_ascii_alphanumeric() && !"dDwWsSnt".contains(escaped) {
                    return None;
                }
                (escape_class(escaped), i + 2)
            }
            '[' => parse_class(&chars, i + 1, '^')?,
            other => (Atom::Char(other), i + 1),
        };
        i = after;
        match chars.get(i) {
            Some('*') => {
                tokens.push((atom, Repeat::Many));
                i += 1;
            }
            Some('+') => {
                tokens.push((atom.clone(), Repeat::One));
                tokens.push((atom, Repeat::Many));
                i += 1;
            }
            Some('?') => {
                tokens.push((atom, Repeat::Optional));
                i += 1;
            }
            _ => tokens.push((atom, Repeat::One)),
        }
        if matches!(chars.get(i - 1), Some('*' | '+' | '?')) && i > after {
            match chars.get(i) {
                // Lazy: the same yes/no answer.
                Some('?') => i += 1,
                // Possessive or a repeated quantifier: unsupported.
                Some('*' | '+') => return None,
                _ => {}
            }
        }
    }
    Some(Compiled {
        tokens,
        to_end,
        any_excludes_newline: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_is_fnmatch() {
        for (name, pattern, expected) in [
            ("celery@web-1", "celery@*", true),
            ("celery@web-1", "celery@web-?", true),
            ("celery@web-1", "celery@web-[0-9]", true),
            ("celery@web-1", "celery@web-[!0-9]", false),
            ("celery@web-1", "celery@", false),
            ("celery@web-1", "*web*", true),
            ("celery@web-1", "[", false),
            ("a[b", "a[b", true),
        ] {
            assert_eq!(
                pattern_matches(name, pattern, "glob"),
                expected,
                "{pattern}"
            );
        }
    }

    #[test]
    fn pcre_is_re_match() {
        for (name, pattern, expected) in [
            ("capture@fixture-host", "capture@.*", true),
            ("capture@fixture-host", "capture", true), // re.match: a prefix is enough
            ("capture@fixture-host", "capture$", false),
            ("capture@fixture-host", "^capture@fixture-host$", true),
            ("capture@fixture-host", "fixture", false),
            ("worker-12@h", r"worker-\d+@h", true),
            ("worker-x@h", r"worker-\d+@h", false),
            ("w@h", "(w|x)@h", false), // unsupported: matches nothing
            ("w@h", "w{1}@h", false),
            ("w@h", "w@[a-z]?$", true),
        ] {
            assert_eq!(
                pattern_matches(name, pattern, "pcre"),
                expected,
                "{pattern}"
            );
        }
        assert!(!pattern_matches("w@h", "w@h", "regex"));
        assert!(!pattern_matches(
            "w@h",
            &"*".repeat(MAX_PATTERN_LEN + 1),
            "glob"
        ));
    }

    #[test]
    fn destination_and_pattern_select_the_node() {
        let body = Json::parse(
            r#"{"method": "ping", "arguments": {}, "destination": ["a@h"], "pattern": null,
                "matcher": null, "ticket": "t", "reply_to": {"exchange": "reply.celery.pidbox",
                "routing_key": "oid"}}"#,
        )
        .unwrap();
        let request = PidboxRequest::from_body(&body, 3, None).unwrap();
        assert!(request.is_for("a@h"));
        assert!(!request.is_for("b@h"));
        let mut broadcast = request.clone();
        broadcast.destination = Some(vec![]);
        assert!(broadcast.is_for("b@h"));
        broadcast.pattern = Some("a@*".into());
        assert!(
            broadcast.is_for("b@h"),
            "a pattern without a matcher is ignored"
        );
        broadcast.matcher = Some("glob".into());
        assert!(!broadcast.is_for("b@h"));
        assert!(broadcast.is_for("a@h"));
    }

    #[test]
    fn malformed_requests_are_typed_errors() {
        let headers = JsonMap::new();
        for (body, what) in [
            (&b"\xff"[..], "utf-8"),
            (b"{", "json"),
            (b"[1]", "object"),
            (b"{\"method\": 5}", "method"),
            (b"{}", "method"),
        ] {
            assert!(
                PidboxRequest::parse(body, &headers, 1024).is_err(),
                "{what}"
            );
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            PidboxRequest::parse(deep.as_bytes(), &headers, usize::MAX),
            Err(PidboxError::Malformed(_))
        ));
        assert!(matches!(
            PidboxRequest::parse(&[b' '; 2048], &headers, 1024),
            Err(PidboxError::TooLarge {
                size: 2048,
                limit: 1024
            })
        ));
    }
}
