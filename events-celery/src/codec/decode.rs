//! What both envelopes share when decoding: limits, content-type checks, and the body
//! (protocol 2 `[args, kwargs, embed]`, or a protocol 1 dict upgraded to the same model).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::compression::{COMPRESSION_HEADER, Compression, decompress, method_of};
use super::error::{DecodeError, json_type};
use super::kombu_json::untag;
use super::message::{
    Embed, MaybeBorrowed, MessageProperties, ParsedHeaders, ProtocolVersion, Routing, TaskMessage,
};

/// The default size limit: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Limits for decoding untrusted messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeOptions {
    max_message_bytes: usize,
    keep_raw_envelope: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl DecodeOptions {
    /// A 16 MiB size limit ([`DEFAULT_MAX_MESSAGE_BYTES`]).
    pub fn new() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            keep_raw_envelope: true,
        }
    }

    /// Whether [`TaskMessage::raw_envelope`] keeps a copy of the Redis envelope (default yes).
    /// A consumer that already holds the bytes (the [`Worker`](crate::Worker) does) saves the
    /// copy with `false`.
    pub fn keep_raw_envelope(mut self, keep: bool) -> Self {
        self.keep_raw_envelope = keep;
        self
    }

    pub(crate) fn keeps_raw_envelope(&self) -> bool {
        self.keep_raw_envelope
    }

    /// Refuse messages larger than `limit` bytes, before parsing anything: the whole
    /// envelope for Redis, the body for AMQP. A compressed body (kombu's `compression`
    /// header) is also refused, while decompressing, once it decompresses past `limit`.
    pub fn max_message_bytes(mut self, limit: usize) -> Self {
        self.max_message_bytes = limit;
        self
    }

    /// The size limit in bytes.
    pub fn limit(&self) -> usize {
        self.max_message_bytes
    }

    pub(crate) fn check_size(&self, size: usize) -> Result<(), DecodeError> {
        if size > self.max_message_bytes {
            Err(DecodeError::TooLarge {
                size,
                limit: self.max_message_bytes,
            })
        } else {
            Ok(())
        }
    }
}

/// Accepts `application/json` (any case, parameters allowed) and nothing else: no pickle,
/// yaml or msgpack is ever deserialised.
pub(crate) fn check_content_type(content_type: Option<&str>) -> Result<(), DecodeError> {
    let Some(content_type) = content_type else {
        return Err(DecodeError::MissingContentType);
    };
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(DecodeError::UnsupportedContentType(content_type.to_owned()))
    }
}

/// Accepts `utf-8` (or `utf8`, any case). A missing encoding is taken as UTF-8, which is
/// what JSON is.
pub(crate) fn check_content_encoding(encoding: Option<&str>) -> Result<(), DecodeError> {
    match encoding {
        None => Ok(()),
        Some(e) if e.eq_ignore_ascii_case("utf-8") || e.eq_ignore_ascii_case("utf8") => Ok(()),
        Some(e) => Err(DecodeError::UnsupportedContentEncoding(e.to_owned())),
    }
}

pub(crate) fn utf8<'a>(bytes: &'a [u8], part: &str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8 {
        part: part.to_owned(),
        offset: e.valid_up_to(),
    })
}

/// Builds the message from headers (already read) and the body bytes, decompressing the body
/// first if a `compression` header names a method (never past `limit` bytes).
#[inline]
pub(crate) fn decode_body(
    mut headers: ParsedHeaders,
    body: &[u8],
    mut properties: MessageProperties,
    routing: Routing,
    limit: usize,
) -> Result<TaskMessage, DecodeError> {
    let decompressed;
    let body = match take_compression(&mut headers)? {
        None => body,
        Some(method) => {
            decompressed = decompress(method, body, limit)?;
            properties.compression = Some(method);
            &decompressed[..]
        }
    };
    let text = utf8(body, "body")?;
    // The usual case, read straight into its parts.
    if headers.task.is_some()
        && let Ok(BodyV2(args, kwargs, embed)) = serde_json::from_str::<BodyV2>(text)
    {
        let args = parse_args(Value::Array(args))?;
        let kwargs = parse_kwargs(Value::Object(kwargs))?;
        let embed = embed.unwrap_or_default().untag()?;
        return finish(
            headers,
            ProtocolVersion::V2,
            args,
            kwargs,
            embed,
            properties,
            routing,
        );
    }
    // Anything else: as a JSON value, to say precisely what is wrong with it.
    let body: Value = serde_json::from_str(text).map_err(|source| DecodeError::InvalidJson {
        part: "body",
        source,
    })?;
    let (parsed, protocol, args, kwargs, embed) = if headers.task.is_some() {
        let (args, kwargs, embed) = split_v2_body(body)?;
        (headers, ProtocolVersion::V2, args, kwargs, embed)
    } else {
        let (mut parsed, (args, kwargs, embed)) = upgrade_v1_body(body)?;
        // As Celery's `hybrid_to_proto2`: the header table, if any, is applied over the body.
        parsed.headers.custom.extend(headers.headers.custom);
        (parsed, ProtocolVersion::V1, args, kwargs, embed)
    };
    finish(parsed, protocol, args, kwargs, embed, properties, routing)
}

/// Removes kombu's `compression` header from the custom headers and names its method.
fn take_compression(headers: &mut ParsedHeaders) -> Result<Option<Compression>, DecodeError> {
    let custom = &mut headers.headers.custom;
    if custom.is_empty() {
        return Ok(None);
    }
    let Some(index) = custom
        .iter()
        .position(|(name, _)| name == COMPRESSION_HEADER)
    else {
        return Ok(None);
    };
    match custom.remove(index).1 {
        Value::Null => Ok(None),
        Value::String(name) => method_of(&name).map(Some),
        other => Err(DecodeError::InvalidHeader {
            name: COMPRESSION_HEADER.to_owned(),
            expected: "a string naming a compression method",
            found: json_type(&other),
        }),
    }
}

/// `[args, kwargs, embed]` as Celery writes it.
#[derive(Deserialize)]
struct BodyV2(Vec<Value>, Map<String, Value>, Option<EmbedV2>);

/// The embed mapping; unlike a derived struct it refuses an array, and it ignores unknown keys.
#[derive(Default)]
struct EmbedV2 {
    callbacks: Value,
    errbacks: Value,
    chain: Value,
    chord: Value,
}

impl<'de> Deserialize<'de> for EmbedV2 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EmbedVisitor;
        impl<'de> serde::de::Visitor<'de> for EmbedVisitor {
            type Value = EmbedV2;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("the embed mapping")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<EmbedV2, A::Error> {
                let mut embed = EmbedV2::default();
                while let Some(MaybeBorrowed(key)) = map.next_key::<MaybeBorrowed<'de>>()? {
                    let slot = match key.as_ref() {
                        "callbacks" => &mut embed.callbacks,
                        "errbacks" => &mut embed.errbacks,
                        "chain" => &mut embed.chain,
                        "chord" => &mut embed.chord,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = map.next_value()?;
                }
                Ok(embed)
            }
        }
        deserializer.deserialize_map(EmbedVisitor)
    }
}

impl EmbedV2 {
    fn untag(self) -> Result<Embed, DecodeError> {
        let untagged = |mut value: Value, name: &'static str| {
            untag(&mut value, || name.to_owned()).map(|()| value)
        };
        Ok(Embed {
            callbacks: untagged(self.callbacks, "callbacks")?,
            errbacks: untagged(self.errbacks, "errbacks")?,
            chain: untagged(self.chain, "chain")?,
            chord: untagged(self.chord, "chord")?,
        })
    }
}

#[inline]
fn finish(
    parsed: ParsedHeaders,
    protocol: ProtocolVersion,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    embed: Embed,
    properties: MessageProperties,
    routing: Routing,
) -> Result<TaskMessage, DecodeError> {
    let task = parsed.task.ok_or(DecodeError::MissingTask)?;
    let id = parsed.id.ok_or(DecodeError::MissingId)?;
    Ok(TaskMessage {
        task,
        id,
        protocol,
        args,
        kwargs,
        embed,
        headers: parsed.headers,
        properties,
        routing,
        raw_envelope: None,
    })
}

type BodyParts = (Vec<Value>, Map<String, Value>, Embed);

fn split_v2_body(body: Value) -> Result<BodyParts, DecodeError> {
    let Value::Array(parts) = body else {
        return Err(DecodeError::InvalidBody(format!(
            "expected [args, kwargs, embed], found {}",
            json_type(&body)
        )));
    };
    let Ok::<[Value; 3], _>([args, kwargs, embed]) = parts.try_into() else {
        return Err(DecodeError::InvalidBody(
            "expected [args, kwargs, embed], found an array of another length".to_owned(),
        ));
    };
    Ok((
        parse_args(args)?,
        parse_kwargs(kwargs)?,
        parse_embed(embed)?,
    ))
}

fn parse_args(args: Value) -> Result<Vec<Value>, DecodeError> {
    let mut args = match args {
        Value::Null => Vec::new(),
        Value::Array(args) => args,
        other => {
            return Err(DecodeError::InvalidBody(format!(
                "args must be a list, found {}",
                json_type(&other)
            )));
        }
    };
    for (index, arg) in args.iter_mut().enumerate() {
        untag(arg, || format!("args[{index}]"))?;
    }
    Ok(args)
}

fn parse_kwargs(kwargs: Value) -> Result<Map<String, Value>, DecodeError> {
    let mut kwargs = match kwargs {
        Value::Null => Map::new(),
        Value::Object(kwargs) => kwargs,
        other => {
            return Err(DecodeError::InvalidBody(format!(
                "kwargs must be a mapping, found {}",
                json_type(&other)
            )));
        }
    };
    for (name, value) in kwargs.iter_mut() {
        untag(value, || format!("kwargs.{name}"))?;
    }
    Ok(kwargs)
}

fn parse_embed(embed: Value) -> Result<Embed, DecodeError> {
    let mut fields = match embed {
        Value::Null => return Ok(Embed::default()),
        Value::Object(fields) => fields,
        other => {
            return Err(DecodeError::InvalidBody(format!(
                "embed must be a mapping, found {}",
                json_type(&other)
            )));
        }
    };
    let mut take = |name: &str| -> Result<Value, DecodeError> {
        let mut value = fields.swap_remove(name).unwrap_or(Value::Null);
        untag(&mut value, || name.to_owned())?;
        Ok(value)
    };
    Ok(Embed {
        callbacks: take("callbacks")?,
        errbacks: take("errbacks")?,
        chain: take("chain")?,
        chord: take("chord")?,
    })
}

/// A protocol 1 body (`{task, id, args, kwargs, …}`) as Celery's `hybrid_to_proto2` reads it.
fn upgrade_v1_body(body: Value) -> Result<(ParsedHeaders, BodyParts), DecodeError> {
    let Value::Object(mut fields) = body else {
        // A protocol 2 body without a `task` header, or no task message at all.
        return Err(DecodeError::MissingTask);
    };
    if !fields.contains_key("task") {
        return Err(DecodeError::MissingTask);
    }
    let args = parse_args(fields.swap_remove("args").unwrap_or(Value::Null))?;
    let kwargs = parse_kwargs(fields.swap_remove("kwargs").unwrap_or(Value::Null))?;
    let mut embed = Map::new();
    for name in ["callbacks", "errbacks", "chord"] {
        if let Some(value) = fields.swap_remove(name) {
            embed.insert(name.to_owned(), value);
        }
    }
    let embed = parse_embed(Value::Object(embed))?;
    let parsed = ParsedHeaders::read(fields, false)?;
    Ok((parsed, (args, kwargs, embed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(headers: Value, body: &str) -> Result<TaskMessage, DecodeError> {
        let pairs = match headers {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let parsed = ParsedHeaders::read(pairs, true)?;
        decode_body(
            parsed,
            body.as_bytes(),
            MessageProperties::default(),
            Routing::default(),
            DEFAULT_MAX_MESSAGE_BYTES,
        )
    }

    #[test]
    fn content_types() {
        assert!(check_content_type(Some("application/json")).is_ok());
        assert!(check_content_type(Some("Application/JSON; charset=utf-8")).is_ok());
        for refused in [
            "application/x-python-serialize",
            "application/x-yaml",
            "application/x-msgpack",
            "text/plain",
            "",
        ] {
            assert!(matches!(
                check_content_type(Some(refused)),
                Err(DecodeError::UnsupportedContentType(t)) if t == refused
            ));
        }
        assert!(matches!(
            check_content_type(None),
            Err(DecodeError::MissingContentType)
        ));
        assert!(check_content_encoding(Some("UTF-8")).is_ok());
        assert!(matches!(
            check_content_encoding(Some("binary")),
            Err(DecodeError::UnsupportedContentEncoding(_))
        ));
    }

    #[test]
    fn v2_body_shapes() {
        let headers = json!({"task": "t", "id": "i"});
        let message = decode(headers.clone(), r#"[[1], {"payload": {}}, null]"#).unwrap();
        assert_eq!(message.args, vec![json!(1)]);
        assert_eq!(message.embed, Embed::default());
        for (body, expected) in [
            (
                "{}",
                "malformed task body: expected [args, kwargs, embed], found an object",
            ),
            (
                "[[], {}]",
                "malformed task body: expected [args, kwargs, embed], found an array of another length",
            ),
            (
                "[[], {}, {}, 1]",
                "malformed task body: expected [args, kwargs, embed], found an array of another length",
            ),
            (
                "[1, {}, {}]",
                "malformed task body: args must be a list, found the number 1",
            ),
            (
                "[[], [], {}]",
                "malformed task body: kwargs must be a mapping, found an array",
            ),
            (
                "[[], {}, 2]",
                "malformed task body: embed must be a mapping, found the number 2",
            ),
        ] {
            assert_eq!(
                decode(headers.clone(), body).unwrap_err().to_string(),
                expected,
                "{body}"
            );
        }
        assert!(matches!(
            decode(headers.clone(), "[[], {"),
            Err(DecodeError::InvalidJson { part: "body", .. })
        ));
        assert!(matches!(
            decode(json!({"task": "t"}), "[[], {}, {}]"),
            Err(DecodeError::MissingId)
        ));
        assert!(matches!(
            decode(json!({}), "[[], {}, {}]"),
            Err(DecodeError::MissingTask)
        ));
    }

    #[test]
    fn v1_body_is_upgraded() {
        let message = decode(
            json!({}),
            r#"{"task": "t", "id": "i", "args": [], "kwargs": {"payload": 1}, "retries": 2,
                "eta": null, "utc": true, "callbacks": [{"task": "cb"}], "timelimit": [null, null],
                "taskset": null, "chord": null}"#,
        )
        .unwrap();
        assert_eq!(message.protocol, ProtocolVersion::V1);
        assert_eq!(message.task, "t");
        assert_eq!(message.headers.retries, 2);
        assert_eq!(message.kwargs["payload"], json!(1));
        assert_eq!(message.embed.callbacks, json!([{"task": "cb"}]));
        assert!(message.headers.custom.is_empty());
        assert!(matches!(
            decode(json!({}), r#"{"id": "i"}"#),
            Err(DecodeError::MissingTask)
        ));
        assert!(matches!(
            decode(json!({}), r#"{"task": 5, "id": "i"}"#),
            Err(DecodeError::InvalidHeader { .. })
        ));
    }
}
