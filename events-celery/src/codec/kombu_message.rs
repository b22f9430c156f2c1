//! A plain kombu message (exchange, routing key, flat headers, a JSON body) in its AMQP form
//! and its Redis forms: what Celery's monitoring events and remote-control (pidbox) messages
//! are, as opposed to task messages ([`TaskMessage`](super::TaskMessage)).
//!
//! On Redis, kombu delivers a message to a **fanout** exchange (`celeryev`, `celery.pidbox`) by
//! `PUBLISH` on the channel [`redis_fanout_channel`] (`/{db}.{exchange}/{routing_key}`, or
//! `/{db}.{exchange}` for an empty routing key), and to a **direct** exchange
//! (`reply.celery.pidbox`) by `LPUSH` onto each queue the exchange's binding set
//! `_kombu.binding.{exchange}` routes the routing key to ([`redis_binding_key`],
//! [`parse_redis_binding`]). The payload is the same envelope either way
//! ([`KombuMessage::redis_envelope`]).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::amqp::{AmqpMessage, AmqpProperties, AmqpTable, AmqpValue};
use super::error::{DecodeError, EncodeError};
use super::json::{Json, JsonMap};
use super::message::push_integer;
use super::python_json::{push_json_str, push_json_value, push_map};
use super::uuid4::new_uuid4;

/// What kombu puts between the routing key, pattern and queue of a Redis binding-set member.
pub const REDIS_BINDING_SEPARATOR: &str = "\x06\x16";

/// A message for a kombu exchange: the form of Celery's events, pidbox requests and replies.
#[derive(Debug, Clone, PartialEq)]
pub struct KombuMessage {
    /// The exchange (`celeryev`, `celery.pidbox`, `reply.celery.pidbox`).
    pub exchange: String,
    /// The routing key (`worker.heartbeat`, `task.multi`, the reply queue's oid, `""`).
    pub routing_key: String,
    /// The message headers (`{"hostname": …}` for events, `{"ticket": …, "clock": …}` for
    /// replies), in the order kombu writes them.
    pub headers: JsonMap,
    /// 1 (transient: events, replies) or 2 (persistent: pidbox requests).
    pub delivery_mode: u8,
    /// The body, written as Python's `json.dumps` writes it.
    pub body: Json,
}

/// A kombu message read back from its Redis envelope (for tests and for reading requests).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedKombuMessage {
    /// `properties.delivery_info.exchange`.
    pub exchange: String,
    /// `properties.delivery_info.routing_key`.
    pub routing_key: String,
    /// The headers.
    pub headers: JsonMap,
    /// The body bytes (base64-decoded).
    pub body: Vec<u8>,
}

impl KombuMessage {
    /// The body as Python's `json.dumps` writes it.
    pub fn body_json(&self) -> Result<String, EncodeError> {
        let mut out = String::with_capacity(256);
        push_json_value(&mut out, &self.body).map_err(EncodeError::Body)?;
        Ok(out)
    }

    /// The AMQP form: properties `content_type=application/json`, `content_encoding=utf-8`,
    /// `delivery_mode`, `priority=0` (as py-amqp sends them for kombu), the headers as a field
    /// table (`str` → `S`, small `int` → `I`, `float` → `d`).
    pub fn to_amqp(&self) -> Result<AmqpMessage, EncodeError> {
        amqp_form(self.frame(), self.body_json()?)
    }

    /// kombu's Redis envelope, byte for byte as Python writes it:
    ///
    /// ```text
    /// {"body": "<base64>", "content-encoding": "utf-8", "content-type": "application/json",
    ///  "headers": {…}, "properties": {"delivery_mode": 1, "delivery_info": {"exchange": …,
    ///  "routing_key": …}, "priority": 0, "body_encoding": "base64", "delivery_tag": "<uuid4>"}}
    /// ```
    pub fn redis_envelope(&self, delivery_tag: &str) -> Result<String, EncodeError> {
        redis_envelope_of(self.frame(), &self.body_json()?, delivery_tag)
    }

    /// The message with its body written as JSON text: the same wire forms, the body written
    /// once.
    pub fn prepare(self) -> Result<PreparedMessage, EncodeError> {
        let body_json = self.body_json()?;
        Ok(PreparedMessage {
            exchange: self.exchange,
            routing_key: self.routing_key,
            headers: self.headers,
            delivery_mode: self.delivery_mode,
            body_json,
        })
    }

    fn frame(&self) -> Frame<'_> {
        Frame {
            exchange: &self.exchange,
            routing_key: &self.routing_key,
            headers: &self.headers,
            delivery_mode: self.delivery_mode,
        }
    }

    /// [`redis_envelope`](Self::redis_envelope) with a fresh uuid4 delivery tag.
    pub fn to_redis_envelope(&self) -> Result<String, EncodeError> {
        self.redis_envelope(&new_uuid4())
    }

    /// The channel to `PUBLISH` this message on when its exchange is a fanout exchange, for
    /// broker database `db` ([`redis_fanout_channel`]).
    pub fn redis_channel(&self, db: u32) -> String {
        redis_fanout_channel(db, &self.exchange, &self.routing_key)
    }
}

/// A [`KombuMessage`] whose body is already JSON text, as Python's `json.dumps` writes it:
/// what [`KombuMessage::prepare`] makes, and what [`TaskEventBatch`](super::TaskEventBatch)
/// writes task events into without building their bodies. Its wire forms are a
/// `KombuMessage`'s, byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedMessage {
    /// The exchange.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// The message headers, in the order kombu writes them.
    pub headers: JsonMap,
    /// 1 (transient) or 2 (persistent).
    pub delivery_mode: u8,
    /// The body's JSON text (it must be JSON as Python's `json.dumps` writes it).
    pub body_json: String,
}

impl PreparedMessage {
    /// The AMQP form ([`KombuMessage::to_amqp`]).
    pub fn into_amqp(self) -> Result<AmqpMessage, EncodeError> {
        let frame = Frame {
            exchange: &self.exchange,
            routing_key: &self.routing_key,
            headers: &self.headers,
            delivery_mode: self.delivery_mode,
        };
        let mut amqp = amqp_form(frame, String::new())?;
        amqp.body = self.body_json.into_bytes();
        Ok(amqp)
    }

    /// kombu's Redis envelope ([`KombuMessage::redis_envelope`]).
    pub fn redis_envelope(&self, delivery_tag: &str) -> Result<String, EncodeError> {
        let frame = Frame {
            exchange: &self.exchange,
            routing_key: &self.routing_key,
            headers: &self.headers,
            delivery_mode: self.delivery_mode,
        };
        redis_envelope_of(frame, &self.body_json, delivery_tag)
    }

    /// [`redis_envelope`](Self::redis_envelope) with a fresh uuid4 delivery tag.
    pub fn to_redis_envelope(&self) -> Result<String, EncodeError> {
        self.redis_envelope(&new_uuid4())
    }

    /// The channel to `PUBLISH` it on for a fanout exchange ([`redis_fanout_channel`]).
    pub fn redis_channel(&self, db: u32) -> String {
        redis_fanout_channel(db, &self.exchange, &self.routing_key)
    }
}

/// What a kombu message is besides its body.
#[derive(Clone, Copy)]
struct Frame<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    headers: &'a JsonMap,
    delivery_mode: u8,
}

fn amqp_form(frame: Frame<'_>, body_json: String) -> Result<AmqpMessage, EncodeError> {
    let mut headers = AmqpTable::default();
    for (name, value) in frame.headers.iter() {
        headers.push(name.clone(), amqp_value(value, name, 0)?);
    }
    Ok(AmqpMessage {
        exchange: frame.exchange.to_owned(),
        routing_key: frame.routing_key.to_owned(),
        properties: AmqpProperties {
            content_type: Some("application/json".to_owned()),
            content_encoding: Some("utf-8".to_owned()),
            delivery_mode: Some(frame.delivery_mode),
            priority: Some(0),
            correlation_id: None,
            reply_to: None,
            expiration: None,
        },
        headers,
        body: body_json.into_bytes(),
    })
}

fn redis_envelope_of(
    frame: Frame<'_>,
    body_json: &str,
    delivery_tag: &str,
) -> Result<String, EncodeError> {
    let body_err = EncodeError::Body;
    let mut out = String::with_capacity(body_json.len().div_ceil(3) * 4 + 320);
    out.push_str("{\"body\": \"");
    // Base64 needs no escaping.
    STANDARD.encode_string(body_json, &mut out);
    out.push_str(
        "\", \"content-encoding\": \"utf-8\", \"content-type\": \"application/json\", \
         \"headers\": ",
    );
    push_map(&mut out, frame.headers, 0).map_err(body_err)?;
    out.push_str(", \"properties\": {\"delivery_mode\": ");
    push_integer(&mut out, u64::from(frame.delivery_mode));
    out.push_str(", \"delivery_info\": {\"exchange\": ");
    push_json_str(&mut out, frame.exchange).map_err(body_err)?;
    out.push_str(", \"routing_key\": ");
    push_json_str(&mut out, frame.routing_key).map_err(body_err)?;
    out.push_str("}, \"priority\": 0, \"body_encoding\": \"base64\", \"delivery_tag\": ");
    push_json_str(&mut out, delivery_tag).map_err(body_err)?;
    out.push_str("}}");
    Ok(out)
}

impl ReceivedKombuMessage {
    /// Reads kombu's Redis envelope (as [`KombuMessage::redis_envelope`] writes it, or as
    /// Python does). Refuses anything over `max_bytes` first, then non-JSON, a body that is
    /// not base64 (only `body_encoding` base64 is read), and a content type other than JSON.
    pub fn from_redis_envelope(envelope: &[u8], max_bytes: usize) -> Result<Self, DecodeError> {
        if envelope.len() > max_bytes {
            return Err(DecodeError::TooLarge {
                size: envelope.len(),
                limit: max_bytes,
            });
        }
        let text = std::str::from_utf8(envelope).map_err(|error| DecodeError::NotUtf8 {
            part: "redis envelope".to_owned(),
            offset: error.valid_up_to(),
        })?;
        let json = Json::parse(text).map_err(|source| DecodeError::InvalidJson {
            part: "redis envelope",
            source,
        })?;
        let invalid = |path: &str, reason: &str| DecodeError::InvalidEnvelope {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let Json::Object(map) = json else {
            return Err(invalid("(root)", "not a JSON object"));
        };
        if let Some(content_type) = map.get("content-type").and_then(Json::as_str)
            && content_type != "application/json"
        {
            return Err(DecodeError::UnsupportedContentType(content_type.to_owned()));
        }
        let body = map
            .get("body")
            .and_then(Json::as_str)
            .ok_or_else(|| invalid("body", "missing or not a string"))?;
        let properties = map.get("properties");
        let encoding = properties
            .and_then(|p| p.get("body_encoding"))
            .and_then(Json::as_str);
        let body = match encoding {
            Some("base64") | None => STANDARD.decode(body).map_err(DecodeError::InvalidBase64)?,
            Some(other) => return Err(DecodeError::UnsupportedBodyEncoding(other.to_owned())),
        };
        let info = properties.and_then(|p| p.get("delivery_info"));
        let field = |name: &str| {
            info.and_then(|i| i.get(name))
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Ok(Self {
            exchange: field("exchange"),
            routing_key: field("routing_key"),
            headers: map
                .get("headers")
                .and_then(Json::as_object)
                .cloned()
                .unwrap_or_default(),
            body,
        })
    }
}

/// The channel kombu's Redis transport `PUBLISH`es a fanout exchange's message on, with its
/// defaults `fanout_prefix=True` and `fanout_patterns=True`: `/{db}.{exchange}/{routing_key}`,
/// or `/{db}.{exchange}` when the routing key is empty. Consumers `PSUBSCRIBE` to the same name
/// with `#` in the routing key turned into `*` (Flower: `/0.celeryev/*`).
///
/// ```
/// use events_celery::codec::redis_fanout_channel;
///
/// assert_eq!(redis_fanout_channel(0, "celeryev", "worker.heartbeat"), "/0.celeryev/worker.heartbeat");
/// assert_eq!(redis_fanout_channel(13, "celery.pidbox", ""), "/13.celery.pidbox");
/// ```
pub fn redis_fanout_channel(db: u32, exchange: &str, routing_key: &str) -> String {
    if routing_key.is_empty() {
        format!("/{db}.{exchange}")
    } else {
        format!("/{db}.{exchange}/{routing_key}")
    }
}

/// The Redis set of an exchange's bindings, `_kombu.binding.{exchange}`
/// (`_kombu.binding.reply.celery.pidbox`): members `routing_key\x06\x16pattern\x06\x16queue`.
pub fn redis_binding_key(exchange: &str) -> String {
    format!("_kombu.binding.{exchange}")
}

/// A binding-set member split into `(routing_key, pattern, queue)`; `None` if it has not
/// exactly three parts.
pub fn parse_redis_binding(member: &str) -> Option<(&str, &str, &str)> {
    let mut parts = member.split(REDIS_BINDING_SEPARATOR);
    let binding = (parts.next()?, parts.next()?, parts.next()?);
    parts.next().is_none().then_some(binding)
}

/// The queues a direct exchange routes `routing_key` to, given its binding-set members (as
/// kombu's Redis transport routes a reply: every member whose routing key is equal).
pub fn redis_direct_queues<'a>(
    members: impl IntoIterator<Item = &'a str>,
    routing_key: &str,
) -> Vec<&'a str> {
    members
        .into_iter()
        .filter_map(parse_redis_binding)
        .filter(|(key, _, _)| *key == routing_key)
        .map(|(_, _, queue)| queue)
        .collect()
}

/// A header value as py-amqp types it.
fn amqp_value(value: &Json, name: &str, depth: usize) -> Result<AmqpValue, EncodeError> {
    if depth > 8 {
        return Err(EncodeError::TooDeep {
            part: format!("header `{name}`"),
            limit: 8,
        });
    }
    Ok(match value {
        Json::Null => AmqpValue::Void,
        Json::Bool(b) => AmqpValue::Bool(*b),
        Json::Number(number) if !number.is_integer() => AmqpValue::Double(number.as_f64()),
        Json::Number(number) => match number.as_i64() {
            Some(v) if v.unsigned_abs() <= i32::MAX as u64 => AmqpValue::LongInt(v as i32),
            Some(v) => AmqpValue::LongLongInt(v),
            None => {
                return Err(EncodeError::AmqpValueOutOfRange {
                    header: name.to_owned(),
                    value: number.to_string(),
                });
            }
        },
        Json::String(text) => AmqpValue::LongString(text.as_bytes().to_vec()),
        Json::Array(items) => AmqpValue::Array(
            items
                .iter()
                .map(|item| amqp_value(item, name, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) => {
            let mut table = AmqpTable::default();
            for (key, item) in map.iter() {
                table.push(key.clone(), amqp_value(item, name, depth + 1)?);
            }
            AmqpValue::Table(table)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> KombuMessage {
        let mut headers = JsonMap::new();
        headers.insert("ticket".into(), "t-1".into());
        headers.insert("clock".into(), 5u64.into());
        KombuMessage {
            exchange: "reply.celery.pidbox".into(),
            routing_key: "oid".into(),
            headers,
            delivery_mode: 1,
            body: Json::parse(r#"{"w@h": {"ok": "pong"}}"#).unwrap(),
        }
    }

    #[test]
    fn envelope_is_kombus_and_reads_back() {
        let envelope = message().redis_envelope("tag").unwrap();
        assert_eq!(
            envelope,
            "{\"body\": \"eyJ3QGgiOiB7Im9rIjogInBvbmcifX0=\", \"content-encoding\": \"utf-8\", \
             \"content-type\": \"application/json\", \"headers\": {\"ticket\": \"t-1\", \
             \"clock\": 5}, \"properties\": {\"delivery_mode\": 1, \"delivery_info\": \
             {\"exchange\": \"reply.celery.pidbox\", \"routing_key\": \"oid\"}, \"priority\": 0, \
             \"body_encoding\": \"base64\", \"delivery_tag\": \"tag\"}}"
        );
        let back = ReceivedKombuMessage::from_redis_envelope(envelope.as_bytes(), 1 << 20).unwrap();
        assert_eq!(back.exchange, "reply.celery.pidbox");
        assert_eq!(back.routing_key, "oid");
        assert_eq!(back.body, br#"{"w@h": {"ok": "pong"}}"#);
        assert!(ReceivedKombuMessage::from_redis_envelope(envelope.as_bytes(), 10).is_err());
    }

    #[test]
    fn amqp_header_types_are_py_amqps() {
        let amqp = message().to_amqp().unwrap();
        assert_eq!(amqp.headers.get("ticket").unwrap().type_tag(), 'S');
        assert_eq!(amqp.headers.get("clock").unwrap().type_tag(), 'I');
        assert_eq!(amqp.properties.delivery_mode, Some(1));
    }

    #[test]
    fn bindings_route_by_routing_key() {
        let members = [
            "abc\x06\x16\x06\x16abc.reply.celery.pidbox",
            "def\x06\x16\x06\x16def.reply.celery.pidbox",
            "broken",
        ];
        assert_eq!(
            redis_direct_queues(members, "abc"),
            ["abc.reply.celery.pidbox"]
        );
        assert!(redis_direct_queues(members, "zzz").is_empty());
        assert_eq!(parse_redis_binding("a\x06\x16b\x06\x16c\x06\x16d"), None);
    }
}
