//! The AMQP 0-9-1 form of a task message: basic properties, a headers field table whose field
//! types are the ones RabbitMQ delivers for what Python (py-amqp) sends, and the body bytes.
//!
//! | Python | AMQP field type |
//! |---|---|
//! | `str` | `S` long string (raw UTF-8) |
//! | `int` in ±2147483647 | `I` signed 32-bit |
//! | other `int` within 64 bits | `L` signed 64-bit (RabbitMQ spells it `l`) |
//! | `bool` | `t` |
//! | `None` | `V` void |
//! | `float` | `d` double |
//! | `list` / `tuple` | `A` array |
//! | `dict` | `F` table |
//!
//! So `timelimit` is `A[V, V]`, `retries` and `replaced_task_nesting` are `I`, `stamps` an
//! empty `F`.

use std::fmt::Write as _;

use super::json::{Json, JsonMap, JsonNumber};

use super::compression::{COMPRESSION_HEADER, compress};
use super::decode::{DecodeOptions, check_content_encoding, check_content_type, decode_body};
use super::error::{DecodeError, EncodeError};
use super::message::{
    Header, HeaderValue, MessageProperties, ParsedHeaders, REFUSED_HEADER, Routing, TaskMessage,
};
use super::timestamp::isoformat;
use chrono::{DateTime, FixedOffset};

/// An AMQP 0-9-1 field value (RabbitMQ's field types), as header tables hold them.
///
/// This mirrors the protocol, not a client library; the broker code converts it to and from
/// its client's types.
#[derive(Debug, Clone, PartialEq)]
pub enum AmqpValue {
    /// `t`: boolean.
    Bool(bool),
    /// `b`: signed 8-bit.
    ShortShortInt(i8),
    /// `B`: unsigned 8-bit.
    ShortShortUInt(u8),
    /// `s`: signed 16-bit.
    ShortInt(i16),
    /// `u`: unsigned 16-bit.
    ShortUInt(u16),
    /// `I`: signed 32-bit (what py-amqp writes for `int`s in ±2147483647).
    LongInt(i32),
    /// `i`: unsigned 32-bit.
    LongUInt(u32),
    /// `l` (RabbitMQ) / `L` (py-amqp): signed 64-bit.
    LongLongInt(i64),
    /// `f`: 32-bit float.
    Float(f32),
    /// `d`: 64-bit float.
    Double(f64),
    /// `D`: decimal, `value / 10^scale`.
    Decimal {
        /// Digits after the point.
        scale: u8,
        /// The unscaled value.
        value: u32,
    },
    /// `S`: long string (bytes; UTF-8 for everything Celery sends).
    LongString(Vec<u8>),
    /// `A`: array.
    Array(Vec<AmqpValue>),
    /// `T`: timestamp, seconds since the Unix epoch.
    Timestamp(u64),
    /// `F`: nested table.
    Table(AmqpTable),
    /// `x`: byte array.
    ByteArray(Vec<u8>),
    /// `V`: void (Python's `None`).
    Void,
}

impl AmqpValue {
    /// A long string.
    pub fn string(text: impl Into<String>) -> Self {
        Self::LongString(text.into().into_bytes())
    }

    /// The field type's tag as RabbitMQ writes it (`S`, `I`, `l`, `t`, `V`, `A`, `F`…).
    pub fn type_tag(&self) -> char {
        match self {
            Self::Bool(_) => 't',
            Self::ShortShortInt(_) => 'b',
            Self::ShortShortUInt(_) => 'B',
            Self::ShortInt(_) => 's',
            Self::ShortUInt(_) => 'u',
            Self::LongInt(_) => 'I',
            Self::LongUInt(_) => 'i',
            Self::LongLongInt(_) => 'l',
            Self::Float(_) => 'f',
            Self::Double(_) => 'd',
            Self::Decimal { .. } => 'D',
            Self::LongString(_) => 'S',
            Self::Array(_) => 'A',
            Self::Timestamp(_) => 'T',
            Self::Table(_) => 'F',
            Self::ByteArray(_) => 'x',
            Self::Void => 'V',
        }
    }

    /// The text of a long string, if it is one and is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::LongString(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }
}

/// An AMQP field table: named values, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AmqpTable(pub Vec<(String, AmqpValue)>);

impl AmqpTable {
    /// The value named `name`.
    pub fn get(&self, name: &str) -> Option<&AmqpValue> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// Appends a value.
    pub fn push(&mut self, name: impl Into<String>, value: AmqpValue) {
        self.0.push((name.into(), value));
    }

    /// The entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &AmqpValue)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The basic properties Celery sets (the headers table is [`AmqpMessage::headers`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AmqpProperties {
    /// `application/json`.
    pub content_type: Option<String>,
    /// `utf-8`.
    pub content_encoding: Option<String>,
    /// 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// 0–9; Celery always sends it (0 when none was asked for).
    pub priority: Option<u8>,
    /// The task id.
    pub correlation_id: Option<String>,
    /// The sender's reply queue.
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds (set by `expires`).
    pub expiration: Option<String>,
}

/// A task message in AMQP form: where to publish, the properties, the headers and the body.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AmqpMessage {
    /// The exchange (`""`: the default exchange).
    pub exchange: String,
    /// The routing key (the queue name on the default exchange).
    pub routing_key: String,
    /// Basic properties.
    pub properties: AmqpProperties,
    /// The `headers` property.
    pub headers: AmqpTable,
    /// The body: UTF-8 JSON.
    pub body: Vec<u8>,
}

impl TaskMessage {
    /// The message in AMQP form, with the header types py-amqp sends.
    pub fn to_amqp(&self) -> Result<AmqpMessage, EncodeError> {
        self.amqp_message(AmqpStrings::cloned(self))
    }

    /// [`to_amqp`](Self::to_amqp), moving the message's strings into the AMQP message instead
    /// of copying them (what a publisher wants: the message is not needed afterwards).
    pub fn into_amqp(mut self) -> Result<AmqpMessage, EncodeError> {
        let strings = AmqpStrings::taken(&mut self);
        self.amqp_message(strings)
    }

    /// The AMQP message from `strings` (the message's own, copied or moved out) and the rest
    /// of the message.
    fn amqp_message(&self, mut strings: AmqpStrings) -> Result<AmqpMessage, EncodeError> {
        use std::mem::take;
        let h = &self.headers;
        let string = |text: String| AmqpValue::LongString(text.into_bytes());
        let optional = |text: Option<String>| text.map_or(AmqpValue::Void, string);
        let timestamp = |at: Option<&DateTime<FixedOffset>>| {
            at.map_or(AmqpValue::Void, |at| string(isoformat(at)))
        };
        let mut headers = Vec::with_capacity(Header::ALL.len() + h.custom.len());
        for header in Header::ALL {
            let name = header.name();
            let value = match header {
                Header::Lang => optional(strings.lang.take()),
                Header::Task => string(take(&mut strings.task)),
                Header::Id => string(take(&mut strings.id)),
                Header::Shadow => optional(strings.shadow.take()),
                Header::Eta => timestamp(h.eta.as_ref()),
                Header::Expires => timestamp(h.expires.as_ref()),
                Header::Group => optional(strings.group.take()),
                Header::GroupIndex => match h.group_index {
                    None => AmqpValue::Void,
                    Some(index) => integer(i128::from(index), name)?,
                },
                Header::Retries => integer(i128::from(h.retries), name)?,
                Header::TimeLimit => {
                    let limit = |number: &Option<JsonNumber>| match number {
                        None => Ok(AmqpValue::Void),
                        Some(number) => from_number(number, name),
                    };
                    AmqpValue::Array(vec![limit(&h.timelimit.hard)?, limit(&h.timelimit.soft)?])
                }
                Header::RootId => optional(strings.root_id.take()),
                Header::ParentId => optional(strings.parent_id.take()),
                Header::ArgsRepr => optional(strings.argsrepr.take()),
                Header::KwargsRepr => optional(strings.kwargsrepr.take()),
                Header::Origin => optional(strings.origin.take()),
                Header::IgnoreResult => h.ignore_result.map_or(AmqpValue::Void, AmqpValue::Bool),
                Header::ReplacedTaskNesting => integer(i128::from(h.replaced_task_nesting), name)?,
                Header::StampedHeaders => {
                    h.stamped_headers.as_ref().map_or(AmqpValue::Void, |names| {
                        AmqpValue::Array(names.iter().map(|name| string(name.clone())).collect())
                    })
                }
                // The headers table is level 1.
                Header::Stamps => from_map(&h.stamps, name, 1)?,
            };
            headers.push((name.to_owned(), value));
        }
        let mut push = |name: &str, value: AmqpValue| headers.push((name.to_owned(), value));
        for (name, value) in &h.custom {
            if name.len() > 255 {
                return Err(EncodeError::AmqpKeyTooLong(name.clone()));
            }
            push(name, from_json(value, name, 1)?);
        }
        if let Some(compression) = self.properties.compression {
            // kombu adds it to the headers last, after compressing the body.
            push(
                COMPRESSION_HEADER,
                string(compression.content_type().to_owned()),
            );
        }

        let p = &self.properties;
        Ok(AmqpMessage {
            exchange: strings.exchange,
            routing_key: strings.routing_key,
            properties: AmqpProperties {
                content_type: Some(strings.content_type),
                content_encoding: Some(strings.content_encoding),
                delivery_mode: Some(p.delivery_mode.unwrap_or(2)),
                priority: Some(p.priority.unwrap_or(0)),
                correlation_id: strings.correlation_id,
                reply_to: strings.reply_to,
                expiration: strings.expiration,
            },
            headers: AmqpTable(headers),
            body: match self.properties.compression {
                Some(method) => compress(method, &self.body_json()?)?,
                None => self.body_json()?,
            },
        })
    }

    /// Reads an AMQP delivery. Checks the size limit (on the body), the content type (JSON
    /// only) and encoding before parsing anything.
    pub fn decode_amqp(
        message: &AmqpMessage,
        options: &DecodeOptions,
    ) -> Result<Self, DecodeError> {
        options.check_size(message.body.len())?;
        let p = &message.properties;
        check_content_type(p.content_type.as_deref())?;
        check_content_encoding(p.content_encoding.as_deref())?;
        if let Some((_, AmqpValue::LongString(reason))) = message
            .headers
            .0
            .iter()
            .find(|(name, _)| name.as_str() == REFUSED_HEADER)
        {
            return Err(DecodeError::RefusedHeaders(
                String::from_utf8_lossy(reason).into_owned(),
            ));
        }
        // Every conversion error comes before any header error, as in two passes.
        let mut headers = ParsedHeaders::default();
        let mut header_error = None;
        for (name, value) in &message.headers.0 {
            let value = header_value(value, name)?;
            if header_error.is_none()
                && let Err(error) = headers.apply(name.as_str(), value, true)
            {
                header_error = Some(error);
            }
        }
        if let Some(error) = header_error {
            return Err(error);
        }
        let properties = MessageProperties {
            correlation_id: p.correlation_id.clone(),
            reply_to: p.reply_to.clone(),
            content_type: p.content_type.clone().unwrap_or_default(),
            content_encoding: p
                .content_encoding
                .clone()
                .unwrap_or_else(|| "utf-8".to_owned()),
            delivery_mode: p.delivery_mode,
            priority: p.priority,
            expiration: p.expiration.clone(),
            origin: None,
            delivery_tag: None,
            compression: None,
        };
        let routing = Routing {
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
        };
        decode_body(headers, &message.body, properties, routing, options.limit())
    }
}

/// The strings of a message that go into its AMQP form as they are.
struct AmqpStrings {
    task: String,
    id: String,
    lang: Option<String>,
    shadow: Option<String>,
    group: Option<String>,
    root_id: Option<String>,
    parent_id: Option<String>,
    argsrepr: Option<String>,
    kwargsrepr: Option<String>,
    origin: Option<String>,
    exchange: String,
    routing_key: String,
    content_type: String,
    content_encoding: String,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    expiration: Option<String>,
}

impl AmqpStrings {
    fn cloned(message: &TaskMessage) -> Self {
        let h = &message.headers;
        let p = &message.properties;
        Self {
            task: message.task.clone(),
            id: message.id.clone(),
            lang: h.lang.clone(),
            shadow: h.shadow.clone(),
            group: h.group.clone(),
            root_id: h.root_id.clone(),
            parent_id: h.parent_id.clone(),
            argsrepr: h.argsrepr.clone(),
            kwargsrepr: h.kwargsrepr.clone(),
            origin: h.origin.clone(),
            exchange: message.routing.exchange.clone(),
            routing_key: message.routing.routing_key.clone(),
            content_type: p.content_type.clone(),
            content_encoding: p.content_encoding.clone(),
            correlation_id: p.correlation_id.clone(),
            reply_to: p.reply_to.clone(),
            expiration: p.expiration.clone(),
        }
    }

    fn taken(message: &mut TaskMessage) -> Self {
        use std::mem::take;
        let h = &mut message.headers;
        let p = &mut message.properties;
        Self {
            task: take(&mut message.task),
            id: take(&mut message.id),
            lang: h.lang.take(),
            shadow: h.shadow.take(),
            group: h.group.take(),
            root_id: h.root_id.take(),
            parent_id: h.parent_id.take(),
            argsrepr: h.argsrepr.take(),
            kwargsrepr: h.kwargsrepr.take(),
            origin: h.origin.take(),
            exchange: take(&mut message.routing.exchange),
            routing_key: take(&mut message.routing.routing_key),
            content_type: take(&mut p.content_type),
            content_encoding: take(&mut p.content_encoding),
            correlation_id: p.correlation_id.take(),
            reply_to: p.reply_to.take(),
            expiration: p.expiration.take(),
        }
    }
}

/// py-amqp's rule: `I` within ±2147483647, else `L` (64-bit); beyond 64 bits it refuses.
fn integer(value: i128, header: &str) -> Result<AmqpValue, EncodeError> {
    if let Some(value) = i32::try_from(value).ok().filter(|&v| v != i32::MIN) {
        Ok(AmqpValue::LongInt(value))
    } else if let Ok(value) = i64::try_from(value) {
        Ok(AmqpValue::LongLongInt(value))
    } else {
        Err(EncodeError::AmqpValueOutOfRange {
            header: header.to_owned(),
            value: value.to_string(),
        })
    }
}

fn from_number(number: &JsonNumber, header: &str) -> Result<AmqpValue, EncodeError> {
    if !number.is_integer() {
        // Floats (NaN and the infinities too, as py-amqp writes Python's) as doubles.
        Ok(AmqpValue::Double(number.as_f64()))
    } else if let Some(value) = number.as_i128() {
        integer(value, header)
    } else {
        Err(EncodeError::AmqpValueOutOfRange {
            header: header.to_owned(),
            value: number.to_string(),
        })
    }
}

/// `map` as a table inside `depth` tables and arrays; deeper than
/// [`MAX_HEADER_DEPTH`] is refused, as the worker's guard refuses it.
fn from_map(map: &JsonMap, header: &str, depth: usize) -> Result<AmqpValue, EncodeError> {
    let depth = deeper(depth, header)?;
    let mut table = Vec::with_capacity(map.len());
    for (key, value) in map {
        if key.len() > 255 {
            return Err(EncodeError::AmqpKeyTooLong(key.clone()));
        }
        table.push((
            key.clone(),
            from_json(value, &format!("{header}.{key}"), depth)?,
        ));
    }
    Ok(AmqpValue::Table(AmqpTable(table)))
}

/// `value` as a field value inside `depth` tables and arrays.
fn from_json(value: &Json, header: &str, depth: usize) -> Result<AmqpValue, EncodeError> {
    Ok(match value {
        Json::Null => AmqpValue::Void,
        Json::Bool(b) => AmqpValue::Bool(*b),
        Json::Number(number) => from_number(number, header)?,
        Json::String(text) => AmqpValue::LongString(text.as_bytes().to_vec()),
        Json::Array(items) => {
            let depth = deeper(depth, header)?;
            AmqpValue::Array(
                items
                    .iter()
                    .map(|item| from_json(item, header, depth))
                    .collect::<Result<_, _>>()?,
            )
        }
        Json::Object(map) => from_map(map, header, depth)?,
    })
}

/// How deep tables and arrays may nest in a message's headers, the headers table being level
/// 1: the worker's guard dead-letters a deeper message before lapin parses it (lapin's parser
/// needs about 1 KB of stack per level), so the publisher refuses to write one.
pub(crate) const MAX_HEADER_DEPTH: usize = 64;

/// One table or array further in, if within [`MAX_HEADER_DEPTH`].
fn deeper(depth: usize, header: &str) -> Result<usize, EncodeError> {
    if depth < MAX_HEADER_DEPTH {
        Ok(depth + 1)
    } else {
        Err(EncodeError::TooDeep {
            part: format!("header `{header}`"),
            limit: MAX_HEADER_DEPTH,
        })
    }
}

/// A header's value: strings, voids and non-negative integers as they are, the rest through
/// [`to_json`].
fn header_value(value: &AmqpValue, header: &str) -> Result<HeaderValue, DecodeError> {
    Ok(match value {
        AmqpValue::Void => HeaderValue::Null,
        AmqpValue::LongString(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => HeaderValue::Str(text.to_owned()),
            Err(_) => HeaderValue::Other(to_json(value, header)?),
        },
        AmqpValue::LongInt(n) if *n >= 0 => HeaderValue::Count(n.unsigned_abs().into()),
        AmqpValue::LongLongInt(n) if *n >= 0 => HeaderValue::Count(n.unsigned_abs()),
        other => HeaderValue::Other(to_json(other, header)?),
    })
}

/// AMQP field values as JSON: integers and floats as numbers, strings as strings (they must be
/// UTF-8), decimals as their exact decimal text (a string, like kombu's `decimal`), byte
/// arrays as arrays of byte values (like kombu's `bytes`), timestamps as ISO-8601 UTC strings.
fn to_json(value: &AmqpValue, header: &str) -> Result<Json, DecodeError> {
    Ok(match value {
        AmqpValue::Bool(b) => Json::Bool(*b),
        AmqpValue::ShortShortInt(n) => Json::from(*n),
        AmqpValue::ShortShortUInt(n) => Json::from(*n),
        AmqpValue::ShortInt(n) => Json::from(*n),
        AmqpValue::ShortUInt(n) => Json::from(*n),
        AmqpValue::LongInt(n) => Json::from(*n),
        AmqpValue::LongUInt(n) => Json::from(*n),
        AmqpValue::LongLongInt(n) => Json::from(*n),
        AmqpValue::Float(n) => float(f64::from(*n)),
        AmqpValue::Double(n) => float(*n),
        AmqpValue::Decimal { scale, value } => Json::String(decimal_text(*scale, *value)),
        AmqpValue::LongString(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => Json::String(text.to_owned()),
            Err(e) => {
                return Err(DecodeError::NotUtf8 {
                    part: format!("header `{header}`"),
                    offset: e.valid_up_to(),
                });
            }
        },
        AmqpValue::Array(items) => Json::Array(
            items
                .iter()
                .map(|item| to_json(item, header))
                .collect::<Result<_, _>>()?,
        ),
        AmqpValue::Timestamp(seconds) => {
            let at = i64::try_from(*seconds)
                .ok()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0));
            match at {
                Some(at) => Json::String(isoformat(&at.fixed_offset())),
                None => Json::from(*seconds),
            }
        }
        AmqpValue::Table(table) => {
            let mut map = JsonMap::with_capacity(table.len());
            for (key, item) in table.iter() {
                map.insert(key.to_owned(), to_json(item, header)?);
            }
            Json::Object(map)
        }
        AmqpValue::ByteArray(bytes) => Json::Array(bytes.iter().map(|&b| Json::from(b)).collect()),
        AmqpValue::Void => Json::Null,
    })
}

/// A float as Python spells it (so a decoded header equals the one encoded); NaN and the
/// infinities as Python's `json.dumps` writes them.
fn float(value: f64) -> Json {
    Json::from(value)
}

fn decimal_text(scale: u8, value: u32) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let mut text = String::with_capacity(digits.len() + scale + 2);
    if digits.len() <= scale {
        text.push_str("0.");
        for _ in digits.len()..scale {
            text.push('0');
        }
        text.push_str(&digits);
    } else {
        let (int_part, frac_part) = digits.split_at(digits.len() - scale);
        let _ = write!(text, "{int_part}.{frac_part}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn into_amqp_is_to_amqp() {
        let options = crate::codec::EncodeOptions::new()
            .queue("q")
            .countdown(std::time::Duration::from_secs(5))
            .expires_in(std::time::Duration::from_secs(60))
            .parent_id("p")
            .header("x-a", json!([1, {"b": 2.5}]));
        let payload = json!({"name": "\u{141}\u{f3}d\u{17a}", "n": 4});
        let mut message = TaskMessage::from_payload("e.v", payload, &options).unwrap();
        message.headers.shadow = Some("s".into());
        message.headers.group = Some("g".into());
        message.headers.stamped_headers = Some(vec!["a".into()]);
        message.headers.stamps.insert("a".into(), "x".into());
        message.routing.exchange = "ex".into();
        for message in [message, TaskMessage::default()] {
            assert_eq!(
                message.clone().into_amqp().unwrap(),
                message.to_amqp().unwrap()
            );
        }
    }

    #[test]
    fn json_to_field_types_as_py_amqp() {
        let value = Json::parse(
            r#"{"s": "x", "i": 2147483647, "n": -2147483647, "edge": -2147483648,
                "l": 9223372036854775807, "t": true, "v": null, "d": 1.5, "a": [null, null],
                "f": {}}"#,
        )
        .unwrap();
        let AmqpValue::Table(table) = from_json(&value, "h", 1).unwrap() else {
            unreachable!("objects become tables")
        };
        let tags: String = table.iter().map(|(_, value)| value.type_tag()).collect();
        assert_eq!(tags, "SIIlltVdAF");
        assert_eq!(
            table.get("edge"),
            Some(&AmqpValue::LongLongInt(-2_147_483_648))
        );
        let big = Json::parse("1180591620717411303424").unwrap();
        assert!(matches!(
            from_json(&big, "x-big", 1),
            Err(EncodeError::AmqpValueOutOfRange { header, .. }) if header == "x-big"
        ));
    }

    #[test]
    fn field_types_to_json() {
        let table = AmqpValue::Table(AmqpTable(vec![
            ("b".into(), AmqpValue::ShortShortInt(-1)),
            (
                "D".into(),
                AmqpValue::Decimal {
                    scale: 2,
                    value: 999,
                },
            ),
            ("D0".into(), AmqpValue::Decimal { scale: 3, value: 5 }),
            ("T".into(), AmqpValue::Timestamp(1_700_000_000)),
            ("x".into(), AmqpValue::ByteArray(vec![0, 255])),
            ("f".into(), AmqpValue::Float(0.5)),
            (
                "A".into(),
                AmqpValue::Array(vec![AmqpValue::Void, AmqpValue::Bool(false)]),
            ),
        ]));
        assert_eq!(
            to_json(&table, "h").unwrap(),
            json!({"b": -1, "D": "9.99", "D0": "0.005", "T": "2023-11-14T22:13:20+00:00",
                   "x": [0, 255], "f": 0.5, "A": [null, false]})
        );
        assert!(matches!(
            to_json(&AmqpValue::LongString(vec![b'a', 0xff]), "x-bad"),
            Err(DecodeError::NotUtf8 { part, offset: 1 }) if part == "header `x-bad`"
        ));
    }
}
