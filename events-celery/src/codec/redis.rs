//! kombu's Redis envelope: the JSON document LPUSHed onto the queue's list.
//!
//! ```text
//! {"body": "<base64 of the JSON body>", "content-encoding": "utf-8",
//!  "content-type": "application/json", "headers": {…},
//!  "properties": {"correlation_id": …, "reply_to": …, "delivery_mode": 2,
//!                 "delivery_info": {"exchange": "", "routing_key": "celery"},
//!                 "priority": 0, "body_encoding": "base64", "delivery_tag": "<uuid4>"}}
//! ```

use std::borrow::Cow;

use super::json::Json;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::compression::compress;
use super::decode::{DecodeOptions, check_content_encoding, check_content_type, decode_body, utf8};
use super::error::{DecodeError, EncodeError};
use super::message::{
    Header, HeaderValue, HeadersIn, MessageProperties, Routing, TaskMessage, push_body_json,
    push_headers_json, push_integer,
};
use super::python_json::push_json_str;
use super::scan::Scanner;
use super::uuid4::new_uuid4;

/// What kombu puts between a queue name and its priority step in a list key.
pub const REDIS_PRIORITY_SEPARATOR: &str = "\x06\x16";

/// kombu's priority steps on Redis.
pub const REDIS_PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// The list a message of `priority` goes to, as kombu picks it: `queue` for priorities 0–2,
/// otherwise `queue` + `"\x06\x16"` + the largest step of 3, 6, 9 not above the priority
/// (priorities above 9 count as 9).
///
/// ```
/// use events_celery::codec::redis_queue_key;
///
/// assert_eq!(redis_queue_key("celery", 0), "celery");
/// assert_eq!(redis_queue_key("celery", 5), "celery\x06\x163");
/// assert_eq!(redis_queue_key("celery", 9), "celery\x06\x169");
/// ```
pub fn redis_queue_key(queue: &str, priority: u8) -> String {
    let step = REDIS_PRIORITY_STEPS
        .iter()
        .rev()
        .copied()
        .find(|&step| step <= priority)
        .unwrap_or(0);
    if step == 0 {
        queue.to_owned()
    } else {
        format!("{queue}{REDIS_PRIORITY_SEPARATOR}{step}")
    }
}

/// A message ready for Redis: the list to LPUSH to, and the envelope to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisMessage {
    /// The list key ([`redis_queue_key`] of the routing key and priority).
    pub key: String,
    /// kombu's JSON envelope, byte for byte as Python writes it.
    pub envelope: String,
    /// The delivery tag written into the envelope (the key of kombu's `unacked` hash).
    pub delivery_tag: String,
}

/// The envelope as serde writes it: the reference the hand-written writer is tested against.
#[cfg(test)]
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    body: &'a str,
    #[serde(rename = "content-encoding")]
    content_encoding: &'a str,
    #[serde(rename = "content-type")]
    content_type: &'a str,
    headers: super::message::HeadersJson<'a>,
    properties: PropertiesOut<'a>,
}

#[cfg(test)]
#[derive(Serialize)]
struct PropertiesOut<'a> {
    correlation_id: &'a Option<String>,
    reply_to: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'a str>,
    delivery_mode: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<&'a str>,
    delivery_info: DeliveryInfo<'a>,
    priority: u8,
    body_encoding: &'a str,
    delivery_tag: &'a str,
}

#[derive(Serialize, Deserialize)]
struct DeliveryInfo<'a> {
    #[serde(borrow, default)]
    exchange: Cow<'a, str>,
    #[serde(borrow, default)]
    routing_key: Cow<'a, str>,
}

#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    #[serde(borrow)]
    body: Cow<'a, str>,
    #[serde(borrow, rename = "content-encoding", default)]
    content_encoding: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "content-type", default)]
    content_type: Option<Cow<'a, str>>,
    #[serde(default)]
    headers: Option<HeadersIn>,
    #[serde(borrow, default)]
    properties: Option<PropertiesIn<'a>>,
}

#[derive(Deserialize, Default)]
struct PropertiesIn<'a> {
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    origin: Option<String>,
    #[serde(default)]
    delivery_mode: Option<u8>,
    #[serde(default)]
    expiration: Option<String>,
    #[serde(borrow, default)]
    delivery_info: Option<DeliveryInfo<'a>>,
    #[serde(default, deserialize_with = "deserialize_priority")]
    priority: Option<u8>,
    #[serde(borrow, default)]
    body_encoding: Option<Cow<'a, str>>,
    #[serde(default)]
    delivery_tag: Option<String>,
}

impl TaskMessage {
    /// The list key and kombu envelope for Redis, with a fresh delivery tag unless the message
    /// already has one.
    ///
    /// On Redis kombu routes the default exchange by routing key, so the list is named after
    /// the routing key (see [`redis_queue_key`] to pick another list).
    pub fn to_redis(&self) -> Result<RedisMessage, EncodeError> {
        let delivery_tag = match &self.properties.delivery_tag {
            Some(tag) => tag.clone(),
            None => new_uuid4(),
        };
        let envelope = self.redis_envelope(&delivery_tag)?;
        Ok(RedisMessage {
            key: redis_queue_key(
                &self.routing.routing_key,
                self.properties.priority.unwrap_or(0),
            ),
            envelope,
            delivery_tag,
        })
    }

    /// kombu's envelope with the given delivery tag.
    pub fn redis_envelope(&self, delivery_tag: &str) -> Result<String, EncodeError> {
        let mut body = String::with_capacity(256);
        push_body_json(&mut body, self).map_err(EncodeError::Body)?;
        let properties = &self.properties;
        let compressed = match properties.compression {
            Some(method) => Some(compress(method, body.as_bytes())?),
            None => None,
        };
        let body = compressed.as_deref().unwrap_or(body.as_bytes());
        let mut out = String::with_capacity(body.len().div_ceil(3) * 4 + 1024);
        // Written by hand in `EnvelopeOut`'s order (a test holds the two to the same bytes).
        out.push_str("{\"body\": \"");
        // Base64 needs no escaping.
        STANDARD.encode_string(body, &mut out);
        out.push_str("\", \"content-encoding\": ");
        push_json_str(&mut out, &properties.content_encoding).map_err(EncodeError::Body)?;
        out.push_str(", \"content-type\": ");
        push_json_str(&mut out, &properties.content_type).map_err(EncodeError::Body)?;
        out.push_str(", \"headers\": ");
        push_headers_json(&mut out, self).map_err(EncodeError::Body)?;
        self.push_redis_properties(&mut out, delivery_tag)
            .map_err(EncodeError::Body)?;
        out.push('}');
        Ok(out)
    }

    /// `, "properties": {…}` as `PropertiesOut` serialises it.
    fn push_redis_properties(
        &self,
        out: &mut String,
        delivery_tag: &str,
    ) -> Result<(), serde_json::Error> {
        let properties = &self.properties;
        let optional = |out: &mut String, text: Option<&str>| match text {
            None => {
                out.push_str("null");
                Ok(())
            }
            Some(text) => push_json_str(out, text),
        };
        out.push_str(", \"properties\": {\"correlation_id\": ");
        optional(out, properties.correlation_id.as_deref())?;
        out.push_str(", \"reply_to\": ");
        optional(out, properties.reply_to.as_deref())?;
        if let Some(origin) = &properties.origin {
            out.push_str(", \"origin\": ");
            push_json_str(out, origin)?;
        }
        out.push_str(", \"delivery_mode\": ");
        push_integer(out, u64::from(properties.delivery_mode.unwrap_or(2)));
        if let Some(expiration) = &properties.expiration {
            out.push_str(", \"expiration\": ");
            push_json_str(out, expiration)?;
        }
        out.push_str(", \"delivery_info\": {\"exchange\": ");
        push_json_str(out, &self.routing.exchange)?;
        out.push_str(", \"routing_key\": ");
        push_json_str(out, &self.routing.routing_key)?;
        out.push_str("}, \"priority\": ");
        push_integer(out, u64::from(properties.priority.unwrap_or(0)));
        out.push_str(", \"body_encoding\": \"base64\", \"delivery_tag\": ");
        push_json_str(out, delivery_tag)?;
        out.push('}');
        Ok(())
    }

    /// The protocol 2 body, `[args, kwargs, embed]`, as Python's `json.dumps` writes it
    /// (uncompressed: [`to_redis`](Self::to_redis) and [`to_amqp`](Self::to_amqp) compress it
    /// when [`MessageProperties::compression`](super::MessageProperties::compression) is set).
    pub fn body_json(&self) -> Result<Vec<u8>, EncodeError> {
        let mut body = String::with_capacity(256);
        push_body_json(&mut body, self).map_err(EncodeError::Body)?;
        Ok(body.into_bytes())
    }

    /// Reads a kombu Redis envelope (as BRPOP returned it).
    ///
    /// Checks, in order: the size limit, UTF-8, the envelope's JSON and shape, the content
    /// type (JSON only), content encoding and body encoding, then base64, then the body.
    pub fn decode_redis(envelope: &[u8], options: &DecodeOptions) -> Result<Self, DecodeError> {
        options.check_size(envelope.len())?;
        let text = utf8(envelope, "redis envelope")?;
        let first = text.trim_start().chars().next();
        if first.is_some_and(|c| c != '{') {
            // serde would read a struct from an array too; kombu's envelope is a dict.
            let found = match first {
                Some('[') => "an array",
                Some('"') => "a string",
                _ => "not an object",
            };
            return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Err(source) => DecodeError::InvalidJson {
                    part: "redis envelope",
                    source,
                },
                Ok(_) => DecodeError::InvalidEnvelope {
                    path: ".".to_owned(),
                    reason: format!("expected an object, found {found}"),
                },
            });
        }
        let parsed: EnvelopeIn<'_> = match scan_envelope(text) {
            Some(parsed) => parsed,
            None => Self::parse_envelope(text)?,
        };
        let raw = options.keeps_raw_envelope().then_some(text);
        Self::from_envelope(parsed, raw, options.limit())
    }

    /// The envelope read with serde_json: every form JSON allows, and the errors.
    fn parse_envelope(text: &str) -> Result<EnvelopeIn<'_>, DecodeError> {
        Ok(match serde_json::from_str(text) {
            Ok(parsed) => parsed,
            // Again, tracking the path, to say where the envelope is wrong.
            Err(error) if error.is_data() => {
                let mut deserializer = serde_json::Deserializer::from_str(text);
                return Err(
                    match serde_path_to_error::deserialize::<_, EnvelopeIn<'_>>(&mut deserializer) {
                        Err(error) => envelope_error(error),
                        Ok(_) => DecodeError::InvalidJson {
                            part: "redis envelope",
                            source: error,
                        },
                    },
                );
            }
            Err(source) => {
                return Err(DecodeError::InvalidJson {
                    part: "redis envelope",
                    source,
                });
            }
        })
    }

    #[inline]
    fn from_envelope(
        parsed: EnvelopeIn<'_>,
        raw: Option<&str>,
        limit: usize,
    ) -> Result<Self, DecodeError> {
        check_content_type(parsed.content_type.as_deref())?;
        check_content_encoding(parsed.content_encoding.as_deref())?;
        let properties = parsed.properties.unwrap_or_default();
        let body = match properties.body_encoding.as_deref() {
            Some("base64") => decode_base64(&parsed.body).map_err(DecodeError::InvalidBase64)?,
            None => parsed.body.as_bytes().to_vec(),
            Some(other) => return Err(DecodeError::UnsupportedBodyEncoding(other.to_owned())),
        };

        // Tags were converted and headers applied while reading; their errors come now.
        let headers = parsed.headers.unwrap_or_default().finish()?;
        let routing = match properties.delivery_info {
            Some(info) => Routing {
                exchange: info.exchange.into_owned(),
                routing_key: info.routing_key.into_owned(),
            },
            None => Routing::queue(""),
        };
        let properties = MessageProperties {
            correlation_id: properties.correlation_id,
            reply_to: properties.reply_to,
            content_type: parsed.content_type.map(Cow::into_owned).unwrap_or_default(),
            content_encoding: parsed
                .content_encoding
                .map_or_else(|| "utf-8".to_owned(), Cow::into_owned),
            delivery_mode: properties.delivery_mode,
            priority: properties.priority,
            expiration: properties.expiration,
            origin: properties.origin,
            delivery_tag: properties.delivery_tag,
            compression: None,
        };
        let mut message = decode_body(headers, &body, properties, routing, limit)?;
        message.raw_envelope = raw.map(str::to_owned);
        Ok(message)
    }
}

/// The envelope as kombu writes it, read by [`Scanner`]: `None` at anything it does not
/// read (escapes, nesting, unknown or repeated fields, a header that is not accepted), and the
/// envelope is then read by serde_json, which also reports the errors.
#[inline]
fn scan_envelope(text: &str) -> Option<EnvelopeIn<'_>> {
    let mut s = Scanner::new(text);
    s.eat(b'{')?;
    let mut body = None;
    let mut content_encoding = None;
    let mut content_type = None;
    let mut headers = None;
    let mut properties = None;
    s.entries(|s, key| {
        match key {
            "body" if body.is_none() => body = Some(Cow::Borrowed(s.string()?)),
            "content-encoding" if content_encoding.is_none() => {
                content_encoding = Some(s.optional_string()?.map(Cow::Borrowed));
            }
            "content-type" if content_type.is_none() => {
                content_type = Some(s.optional_string()?.map(Cow::Borrowed));
            }
            "headers" if headers.is_none() => headers = Some(scan_headers(s)?),
            "properties" if properties.is_none() => properties = Some(scan_properties(s)?),
            _ => return None,
        }
        Some(())
    })?;
    if !s.at_end() {
        return None;
    }
    Some(EnvelopeIn {
        body: body?,
        content_encoding: content_encoding.flatten(),
        content_type: content_type.flatten(),
        headers: headers.flatten(),
        properties: properties.flatten(),
    })
}

#[inline]
fn scan_headers(s: &mut Scanner<'_>) -> Option<Option<HeadersIn>> {
    if s.null() {
        return Some(None);
    }
    s.eat(b'{')?;
    let mut headers = HeadersIn::default();
    s.entries(|s, name| {
        let value = match s.peek()? {
            b'"' => HeaderValue::Str(s.string()?.to_owned()),
            b'n' if s.null() => HeaderValue::Null,
            b't' | b'f' => HeaderValue::Other(Json::Bool(s.boolean()?)),
            b'0'..=b'9' => HeaderValue::Count(s.integer()?),
            // `[null, null]` and `{}` mean what `null` means for these two.
            b'[' if name == Header::TimeLimit.name() => {
                s.eat(b'[')?;
                (s.null() && s.eat_if(b',') && s.null() && s.eat_if(b']'))
                    .then_some(HeaderValue::Null)?
            }
            b'{' if name == Header::Stamps.name() => {
                s.eat(b'{')?;
                s.eat(b'}')?;
                HeaderValue::Null
            }
            _ => return None,
        };
        // An error is left to serde_json's reading, which puts it in its place.
        headers.parsed.apply(name, value, true).ok()
    })?;
    Some(Some(headers))
}

#[inline]
fn scan_properties<'a>(s: &mut Scanner<'a>) -> Option<Option<PropertiesIn<'a>>> {
    if s.null() {
        return Some(None);
    }
    s.eat(b'{')?;
    let mut p = PropertiesIn::default();
    let mut seen = 0u16;
    s.entries(|s, key| {
        let field = PROPERTY_NAMES.iter().position(|&name| name == key)?;
        if seen & (1 << field) != 0 {
            return None;
        }
        seen |= 1 << field;
        let owned = |text: Option<&str>| text.map(str::to_owned);
        let small = |s: &mut Scanner<'_>| -> Option<Option<u8>> {
            if s.null() {
                Some(None)
            } else {
                u8::try_from(s.integer()?).ok().map(Some)
            }
        };
        match key {
            "correlation_id" => p.correlation_id = owned(s.optional_string()?),
            "reply_to" => p.reply_to = owned(s.optional_string()?),
            "origin" => p.origin = owned(s.optional_string()?),
            "delivery_mode" => p.delivery_mode = small(s)?,
            "expiration" => p.expiration = owned(s.optional_string()?),
            // A number above 9 counts as 9 (`kombu_priority`); anything else is left to serde.
            "priority" => {
                p.priority = if s.null() {
                    None
                } else {
                    Some(u8::try_from(s.integer()?.min(9)).ok()?)
                };
            }
            "body_encoding" => p.body_encoding = s.optional_string()?.map(Cow::Borrowed),
            "delivery_tag" => p.delivery_tag = owned(s.optional_string()?),
            _ => {
                // delivery_info
                if s.null() {
                    return Some(());
                }
                s.eat(b'{')?;
                let mut info = DeliveryInfo {
                    exchange: Cow::Borrowed(""),
                    routing_key: Cow::Borrowed(""),
                };
                let (mut exchange, mut routing_key) = (false, false);
                s.entries(|s, key| {
                    match key {
                        "exchange" if !exchange => {
                            exchange = true;
                            info.exchange = Cow::Borrowed(s.string()?);
                        }
                        "routing_key" if !routing_key => {
                            routing_key = true;
                            info.routing_key = Cow::Borrowed(s.string()?);
                        }
                        _ => return None,
                    }
                    Some(())
                })?;
                p.delivery_info = Some(info);
            }
        }
        Some(())
    })?;
    Some(Some(p))
}

/// The fields of `PropertiesIn`.
const PROPERTY_NAMES: [&str; 9] = [
    "correlation_id",
    "reply_to",
    "origin",
    "delivery_mode",
    "expiration",
    "delivery_info",
    "priority",
    "body_encoding",
    "delivery_tag",
];

/// The priority of a kombu envelope as kombu's Redis transport reads it
/// (`_get_message_priority`: `max(min(int(priority), 9), 0)`, and the default when `int()`
/// fails): an integer is clamped into 0–9 (-1 is 0, 300 is 9, 2⁷⁰ is 9), a float truncated
/// toward zero first (5.7 is 5), a string holding an integer in Python's `int()` syntax read as
/// that integer (`" +7 "` is 7, `"1_0"` is 9), `true`/`false` are 1/0; anything else (`null`,
/// a string that is no integer, a list, an object) is no priority (kombu's default, 0).
///
/// Python Celery runs such a message; so does this worker. A priority only picks the list a
/// message is pushed to (kombu's steps 0, 3, 6, 9), so reading it leniently changes no value a
/// handler sees. Strings with non-ASCII digits (which Python's `int()` also reads) count as no
/// integer.
pub(crate) fn kombu_priority(value: &Json) -> Option<u8> {
    fn clamp(negative: bool, magnitude: Option<u64>) -> u8 {
        match (negative, magnitude) {
            (true, _) => 0,
            (false, Some(n)) => u8::try_from(n.min(9)).unwrap_or(9),
            (false, None) => 9,
        }
    }
    fn integer_text(text: &str) -> Option<u8> {
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
        let (negative, digits) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        // Digits, with single underscores between them.
        let bytes = digits.as_bytes();
        let well_formed = bytes.first().is_some_and(u8::is_ascii_digit)
            && bytes.last().is_some_and(u8::is_ascii_digit)
            && bytes.iter().all(|b| b.is_ascii_digit() || *b == b'_')
            && !digits.contains("__");
        if !well_formed {
            return None;
        }
        let zero = bytes.iter().all(|b| *b == b'0' || *b == b'_');
        let magnitude = digits
            .bytes()
            .filter(u8::is_ascii_digit)
            .try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
        Some(clamp(negative && !zero, magnitude))
    }
    match value {
        // Python's `int()` refuses NaN and infinities (`1e400` reads as one): NaN counts as no
        // priority, an infinity is clamped as a number that large would be.
        Json::Number(number) if number.is_non_finite() => {
            let f = number.as_f64();
            (!f.is_nan()).then_some(if f > 0.0 { 9 } else { 0 })
        }
        Json::Number(number) => Some(if let Some(n) = number.as_u64() {
            clamp(false, Some(n))
        } else if number.as_i64().is_some() {
            0
        } else if number.is_integer() {
            // An integer beyond 64 bits (the codec keeps its digits).
            clamp(number.as_str().starts_with('-'), None)
        } else {
            // `int()` truncates toward zero: -0.5 is 0.
            let f = number.as_f64();
            clamp(f <= -1.0, Some(f.trunc().clamp(0.0, 9.0) as u64))
        }),
        Json::String(text) => integer_text(text),
        Json::Bool(b) => Some(u8::from(*b)),
        Json::Null | Json::Array(_) | Json::Object(_) => None,
    }
}

fn deserialize_priority<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u8>, D::Error> {
    // Read as text first: serde_json refuses numbers beyond f64 (`1e400`), which Python reads.
    let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
    Ok(Json::parse(raw.get())
        .ok()
        .as_ref()
        .and_then(kombu_priority))
}

/// Standard base64 that, as Python's `binascii`, ignores the bits after the last whole byte.
const KOMBU_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// The body as kombu decodes it (`base64.b64decode`), where that is safe.
///
/// Python's `b64decode` (with its default `validate=False`) skips every character outside the
/// alphabet and ignores whatever follows the padding. Skipping whitespace is safe — line
/// breaks are how MIME base64 (`base64.encodebytes`, many tools) is written — and is done
/// here, as is ignoring non-zero bits after the last byte (`YR==` is `a`, as in Python). Other
/// characters are refused: skipping a `-` or `_` (of the URL-safe alphabet) or a stray
/// character would decode other bytes than were meant, and data after the padding would be
/// dropped unseen; such a body is reported as invalid base64, not run.
fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let is_space = |b: &u8| b.is_ascii_whitespace() || *b == 0x0b;
    match KOMBU_BASE64.decode(text) {
        Err(_) if text.bytes().any(|b| is_space(&b)) => {
            let compact: Vec<u8> = text.bytes().filter(|b| !is_space(b)).collect();
            KOMBU_BASE64.decode(compact)
        }
        decoded => decoded,
    }
}

fn envelope_error(error: serde_path_to_error::Error<serde_json::Error>) -> DecodeError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    if inner.is_data() {
        let reason = inner.to_string();
        // serde_json appends " at line L column C"; keep it, it helps find the spot.
        DecodeError::InvalidEnvelope { path, reason }
    } else {
        DecodeError::InvalidJson {
            part: "redis envelope",
            source: inner,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The envelope as serde and the formatter write it (what `redis_envelope` did before it
    /// was written by hand).
    fn reference_envelope(message: &TaskMessage, delivery_tag: &str) -> String {
        use crate::codec::message::{BodyJson, HeadersJson};

        let body = crate::codec::to_python_json(&BodyJson(message)).unwrap();
        let body_base64 = STANDARD.encode(body.as_bytes());
        let properties = &message.properties;
        let envelope = EnvelopeOut {
            body: &body_base64,
            content_encoding: &properties.content_encoding,
            content_type: &properties.content_type,
            headers: HeadersJson(message),
            properties: PropertiesOut {
                correlation_id: &properties.correlation_id,
                reply_to: &properties.reply_to,
                origin: properties.origin.as_deref(),
                delivery_mode: properties.delivery_mode.unwrap_or(2),
                expiration: properties.expiration.as_deref(),
                delivery_info: DeliveryInfo {
                    exchange: Cow::Borrowed(&message.routing.exchange),
                    routing_key: Cow::Borrowed(&message.routing.routing_key),
                },
                priority: properties.priority.unwrap_or(0),
                body_encoding: "base64",
                delivery_tag,
            },
        };
        crate::codec::to_python_json(&envelope).unwrap()
    }

    #[test]
    fn the_hand_written_envelope_matches_serde() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/redis");
        let mut messages = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes = std::fs::read(&path).unwrap();
                messages.push(TaskMessage::decode_redis(&bytes, &DecodeOptions::new()).unwrap());
            }
        }
        assert!(messages.len() > 5);
        let mut everything = messages[0].clone();
        let h = &mut everything.headers;
        h.shadow = Some("sh\u{e9}dow \"q\"".into());
        h.group = Some("g".into());
        h.group_index = Some(u64::MAX);
        h.retries = u32::MAX;
        h.timelimit.hard = crate::codec::JsonNumber::from_json_text("1e-7");
        h.timelimit.soft = crate::codec::JsonNumber::from_json_text("30");
        h.ignore_result = Some(true);
        h.replaced_task_nesting = 3;
        h.stamped_headers = Some(vec!["a".into(), "\u{1f697}".into()]);
        h.stamps.insert("a".into(), json!([1, {"b": null}]).into());
        h.custom
            .push(("x-\u{141}".into(), json!({"k": [1.5, "\t"]}).into()));
        everything.properties.origin = Some("gen1@host".into());
        everything.properties.expiration = Some("3600000".into());
        everything.properties.delivery_mode = None;
        everything.properties.priority = Some(9);
        everything.routing = Routing {
            exchange: "ex\\change".into(),
            routing_key: "\u{7f}".into(),
        };
        everything.args = vec![1.into(), "two".into()];
        messages.push(everything);
        messages.push(TaskMessage::default());
        for message in &messages {
            assert_eq!(
                message.redis_envelope("tag").unwrap(),
                reference_envelope(message, "tag"),
                "{}",
                message.task
            );
        }
    }

    #[test]
    fn priority_keys_follow_kombu_steps() {
        let keys: Vec<String> = (0..=10).map(|p| redis_queue_key("q", p)).collect();
        assert_eq!(
            keys,
            [
                "q",
                "q",
                "q",
                "q\x06\x163",
                "q\x06\x163",
                "q\x06\x163",
                "q\x06\x166",
                "q\x06\x166",
                "q\x06\x166",
                "q\x06\x169",
                "q\x06\x169"
            ]
        );
    }

    #[test]
    fn envelope_shape_errors_name_the_field() {
        let options = DecodeOptions::new();
        let cases: [(&str, &str); 5] = [
            (
                "[]",
                "malformed redis envelope: .: expected an object, found an array",
            ),
            ("{}", "malformed redis envelope: .: missing field `body`"),
            (
                r#"{"body": 1}"#,
                "malformed redis envelope: body: invalid type: integer `1`",
            ),
            (
                r#"{"body": "", "properties": {"delivery_mode": 300}}"#,
                "malformed redis envelope: properties.delivery_mode: invalid value: integer `300`",
            ),
            (
                r#"{"body": "", "headers": []}"#,
                "malformed redis envelope: headers: invalid type: sequence",
            ),
        ];
        for (envelope, expected) in cases {
            let error = TaskMessage::decode_redis(envelope.as_bytes(), &options).unwrap_err();
            assert!(
                error.to_string().starts_with(expected),
                "{envelope}: {error}"
            );
        }
    }

    #[test]
    fn refusals_happen_before_the_body_is_touched() {
        let options = DecodeOptions::new();
        let pickle = json!({
            "body": "gASVAAAAAAAAAAB9lC4=", "content-type": "application/x-python-serialize",
            "content-encoding": "binary", "headers": {"task": "t", "id": "i"},
            "properties": {"body_encoding": "base64"}
        });
        let error = TaskMessage::decode_redis(pickle.to_string().as_bytes(), &options).unwrap_err();
        assert!(
            matches!(error, DecodeError::UnsupportedContentType(t) if t == "application/x-python-serialize")
        );

        let other_encoding = json!({
            "body": "W10=", "content-type": "application/json",
            "properties": {"body_encoding": "hex"}
        });
        let error =
            TaskMessage::decode_redis(other_encoding.to_string().as_bytes(), &options).unwrap_err();
        assert!(matches!(error, DecodeError::UnsupportedBodyEncoding(e) if e == "hex"));

        let error = TaskMessage::decode_redis(
            br#"{"body": "not base64!", "content-type": "application/json", "properties": {"body_encoding": "base64"}}"#,
            &options,
        )
        .unwrap_err();
        assert!(matches!(error, DecodeError::InvalidBase64(_)));

        let small = DecodeOptions::new().max_message_bytes(10);
        let error = TaskMessage::decode_redis(b"{not even json but long", &small).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::TooLarge {
                size: 23,
                limit: 10
            }
        ));

        let error = TaskMessage::decode_redis(b"{\"body\": \"\xff\"}", &options).unwrap_err();
        assert!(matches!(error, DecodeError::NotUtf8 { offset: 10, .. }));

        let error = TaskMessage::decode_redis(b"{\"body\": \"\"} trailing", &options).unwrap_err();
        assert!(matches!(error, DecodeError::InvalidJson { .. }));
    }

    /// A real envelope with `properties.priority` replaced by `priority` (raw JSON text).
    fn with_priority(priority: &str) -> String {
        let message = TaskMessage::from_payload(
            "products.product_created",
            json!({"stock": 4}),
            &crate::codec::EncodeOptions::new(),
        )
        .unwrap();
        let envelope = message.to_redis().unwrap().envelope;
        let replaced = envelope.replace("\"priority\": 0", &format!("\"priority\": {priority}"));
        assert!(priority == "0" || replaced != envelope);
        replaced
    }

    #[test]
    fn priorities_are_read_as_kombu_reads_them() {
        // kombu: `max(min(int(priority), 9), 0)`, the default (0) when `int()` fails.
        let cases: [(&str, Option<u8>); 27] = [
            ("0", Some(0)),
            ("5", Some(5)),
            ("9", Some(9)),
            ("10", Some(9)),
            ("255", Some(9)),
            ("256", Some(9)),
            ("18446744073709551616", Some(9)),
            ("1180591620717411303424000000", Some(9)),
            ("-1", Some(0)),
            ("-300", Some(0)),
            ("-1180591620717411303424000000", Some(0)),
            ("5.7", Some(5)),
            ("-0.5", Some(0)),
            ("1e3", Some(9)),
            ("1e400", Some(9)),
            ("-2.5", Some(0)),
            ("\"7\"", Some(7)),
            ("\" +8 \"", Some(8)),
            ("\"-3\"", Some(0)),
            ("\"1_0\"", Some(9)),
            ("\"high\"", None),
            ("\"5.0\"", None),
            ("\"1__0\"", None),
            ("true", Some(1)),
            ("null", None),
            ("[1]", None),
            ("{\"p\": 1}", None),
        ];
        for (priority, expected) in cases {
            let envelope = with_priority(priority);
            let message = TaskMessage::decode_redis(envelope.as_bytes(), &DecodeOptions::new())
                .unwrap_or_else(|e| panic!("priority {priority}: {e}"));
            assert_eq!(message.properties.priority, expected, "priority {priority}");
            let expected_list = redis_queue_key("q", expected.unwrap_or(0));
            assert_eq!(
                redis_queue_key("q", message.properties.priority.unwrap_or(0)),
                expected_list,
                "priority {priority}"
            );
        }
    }

    #[test]
    fn base64_bodies_follow_python_where_safe() {
        let message = TaskMessage::from_payload(
            "products.product_created",
            json!({"name": "x".repeat(300), "stock": 4}),
            &crate::codec::EncodeOptions::new(),
        )
        .unwrap();
        let envelope = message.to_redis().unwrap().envelope;
        let parsed: serde_json::Value = serde_json::from_str(&envelope).unwrap();
        let body = parsed["body"].as_str().unwrap().to_owned();
        assert!(body.len() > 200);
        let with_body = |body: &str| {
            let mut changed = parsed.clone();
            changed["body"] = json!(body);
            TaskMessage::decode_redis(changed.to_string().as_bytes(), &DecodeOptions::new())
        };
        // MIME line breaks (`base64.encodebytes`: 76 characters a line), CRLF, spaces, tabs.
        let lines = |width: usize, separator: &str| {
            body.as_bytes()
                .chunks(width)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join(separator)
        };
        for spaced in [
            lines(76, "\n") + "\n",
            lines(64, "\r\n"),
            lines(4, " "),
            lines(1, "\t"),
            format!(" \x0b\x0c{body}\n\n"),
        ] {
            let decoded = with_body(&spaced).unwrap_or_else(|e| panic!("{spaced:?}: {e}"));
            assert_eq!(decoded.kwargs, message.kwargs);
        }
        // Bits after the last byte are ignored, as Python does: `W10=` and `W11=` are `[]`.
        assert_eq!(decode_base64("W11=").unwrap(), b"[]");
        assert_eq!(decode_base64("W1\n0=").unwrap(), b"[]");
        // What Python would skip or drop silently is refused.
        for refused in [
            format!("{}-{}", &body[..8], &body[8..]),
            format!("{}_{}", &body[..8], &body[8..]),
            format!("{body}W10="),
            format!("!{body}"),
            body[..body.len() - 1].to_owned(),
        ] {
            assert!(
                matches!(with_body(&refused), Err(DecodeError::InvalidBase64(_))),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn raw_body_without_body_encoding_is_accepted() {
        let envelope = json!({
            "body": "[[], {\"payload\": {}}, {}]", "content-type": "application/json",
            "headers": {"task": "t", "id": "i"}, "properties": {}
        });
        let message =
            TaskMessage::decode_redis(envelope.to_string().as_bytes(), &DecodeOptions::new())
                .unwrap();
        assert_eq!(message.kwargs["payload"], json!({}));
        assert_eq!(message.raw_envelope, Some(envelope.to_string()));
    }

    #[test]
    fn the_raw_envelope_copy_is_optional() {
        let message = TaskMessage::from_payload(
            "products.product_created",
            serde_json::json!({"stock": 4}),
            &crate::codec::EncodeOptions::new(),
        )
        .unwrap();
        let envelope = message.to_redis().unwrap().envelope;
        let kept = TaskMessage::decode_redis(envelope.as_bytes(), &DecodeOptions::new()).unwrap();
        assert_eq!(kept.raw_envelope.as_deref(), Some(envelope.as_str()));
        let options = DecodeOptions::new().keep_raw_envelope(false);
        let lean = TaskMessage::decode_redis(envelope.as_bytes(), &options).unwrap();
        assert_eq!(lean.raw_envelope, None);
        assert_eq!(
            TaskMessage {
                raw_envelope: None,
                ..kept
            },
            lean
        );
    }
}
