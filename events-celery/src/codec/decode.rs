//! What both envelopes share when decoding: limits, content-type checks, and the body
//! (protocol 2 `[args, kwargs, embed]`, or a protocol 1 dict upgraded to the same model).

use super::json::{Json, JsonMap};

use super::compression::{COMPRESSION_HEADER, Compression, decompress, method_of};
use super::error::{DecodeError, json_type};
use super::kombu_json::untag;
use super::message::{
    Embed, Header, MessageProperties, ParsedHeaders, ProtocolVersion, Routing, TaskMessage,
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
    // Read exactly (numbers of any size, Python's key order, `NaN`), as Python's `json.loads`.
    let body = Json::parse(text).map_err(|source| DecodeError::InvalidJson {
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
        Json::Null => Ok(None),
        Json::String(name) => method_of(&name).map(Some),
        other => Err(DecodeError::InvalidHeader {
            name: COMPRESSION_HEADER.to_owned(),
            expected: "a string naming a compression method",
            found: json_type(&other),
        }),
    }
}

#[inline]
fn finish(
    parsed: ParsedHeaders,
    protocol: ProtocolVersion,
    args: Vec<Json>,
    kwargs: JsonMap,
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

type BodyParts = (Vec<Json>, JsonMap, Embed);

fn split_v2_body(body: Json) -> Result<BodyParts, DecodeError> {
    let Json::Array(parts) = body else {
        return Err(DecodeError::InvalidBody(format!(
            "expected [args, kwargs, embed], found {}",
            json_type(&body)
        )));
    };
    let Ok::<[Json; 3], _>([args, kwargs, embed]) = parts.try_into() else {
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

fn parse_args(args: Json) -> Result<Vec<Json>, DecodeError> {
    let mut args = match args {
        Json::Null => Vec::new(),
        Json::Array(args) => args,
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

fn parse_kwargs(kwargs: Json) -> Result<JsonMap, DecodeError> {
    let mut kwargs = match kwargs {
        Json::Null => JsonMap::new(),
        Json::Object(kwargs) => kwargs,
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

fn parse_embed(embed: Json) -> Result<Embed, DecodeError> {
    let mut fields = match embed {
        Json::Null => return Ok(Embed::default()),
        Json::Object(fields) => fields,
        other => {
            return Err(DecodeError::InvalidBody(format!(
                "embed must be a mapping, found {}",
                json_type(&other)
            )));
        }
    };
    let mut take = |name: &str| -> Result<Json, DecodeError> {
        let mut value = fields.remove(name).unwrap_or(Json::Null);
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
fn upgrade_v1_body(body: Json) -> Result<(ParsedHeaders, BodyParts), DecodeError> {
    let Json::Object(mut fields) = body else {
        // A protocol 2 body without a `task` header, or no task message at all.
        return Err(DecodeError::MissingTask);
    };
    if !fields.contains_key(Header::Task.name()) {
        return Err(DecodeError::MissingTask);
    }
    let args = parse_args(fields.remove("args").unwrap_or(Json::Null))?;
    let kwargs = parse_kwargs(fields.remove("kwargs").unwrap_or(Json::Null))?;
    let mut embed = JsonMap::new();
    for name in ["callbacks", "errbacks", "chord"] {
        if let Some(value) = fields.remove(name) {
            embed.insert(name.to_owned(), value);
        }
    }
    let embed = parse_embed(Json::Object(embed))?;
    let parsed = ParsedHeaders::read(fields, false)?;
    Ok((parsed, (args, kwargs, embed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(headers: serde_json::Value, body: &str) -> Result<TaskMessage, DecodeError> {
        let pairs = match Json::from(headers) {
            Json::Object(map) => map,
            _ => JsonMap::new(),
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
