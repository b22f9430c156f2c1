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

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::decode::{DecodeOptions, check_content_encoding, check_content_type, decode_body, utf8};
use super::error::{DecodeError, EncodeError};
use super::kombu_json::untag;
use super::message::{
    BodyJson, HeaderPairs, HeadersJson, MessageProperties, ParsedHeaders, Routing, TaskMessage,
};
use super::python_json::write_python_json;
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

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    body: &'a str,
    #[serde(rename = "content-encoding")]
    content_encoding: &'a str,
    #[serde(rename = "content-type")]
    content_type: &'a str,
    headers: HeadersJson<'a>,
    properties: PropertiesOut<'a>,
}

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
    #[serde(borrow, default)]
    headers: Option<HeaderPairs<'a>>,
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
    #[serde(default)]
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
        let body = self.body_json()?;
        let mut body_base64 = String::with_capacity(body.len().div_ceil(3) * 4);
        STANDARD.encode_string(&body, &mut body_base64);
        let properties = &self.properties;
        let envelope = EnvelopeOut {
            body: &body_base64,
            content_encoding: &properties.content_encoding,
            content_type: &properties.content_type,
            headers: HeadersJson(self),
            properties: PropertiesOut {
                correlation_id: &properties.correlation_id,
                reply_to: &properties.reply_to,
                origin: properties.origin.as_deref(),
                delivery_mode: properties.delivery_mode.unwrap_or(2),
                expiration: properties.expiration.as_deref(),
                delivery_info: DeliveryInfo {
                    exchange: Cow::Borrowed(&self.routing.exchange),
                    routing_key: Cow::Borrowed(&self.routing.routing_key),
                },
                priority: properties.priority.unwrap_or(0),
                body_encoding: "base64",
                delivery_tag,
            },
        };
        let mut out = Vec::with_capacity(body_base64.len() + 1024);
        write_python_json(&mut out, &envelope).map_err(EncodeError::Body)?;
        // The formatter writes only ASCII.
        String::from_utf8(out).map_err(|e| {
            EncodeError::Body(serde_json::Error::io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.utf8_error(),
            )))
        })
    }

    /// The protocol 2 body, `[args, kwargs, embed]`, as Python's `json.dumps` writes it.
    pub fn body_json(&self) -> Result<Vec<u8>, EncodeError> {
        let mut body = Vec::with_capacity(256);
        write_python_json(&mut body, &BodyJson(self)).map_err(EncodeError::Body)?;
        Ok(body)
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
        let parsed: EnvelopeIn<'_> = match serde_json::from_str(text) {
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
        };

        check_content_type(parsed.content_type.as_deref())?;
        check_content_encoding(parsed.content_encoding.as_deref())?;
        let properties = parsed.properties.unwrap_or_default();
        let body = match properties.body_encoding.as_deref() {
            Some("base64") => STANDARD
                .decode(parsed.body.as_bytes())
                .map_err(DecodeError::InvalidBase64)?,
            None => parsed.body.as_bytes().to_vec(),
            Some(other) => return Err(DecodeError::UnsupportedBodyEncoding(other.to_owned())),
        };

        let mut headers = parsed.headers.unwrap_or_default().0;
        for (name, value) in &mut headers {
            untag(value, || format!("headers.{name}"))?;
        }
        let headers = ParsedHeaders::read(headers, true)?;
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
        };
        let mut message = decode_body(headers, &body, properties, routing)?;
        message.raw_envelope = Some(text.to_owned());
        Ok(message)
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
                r#"{"body": "", "properties": {"priority": 300}}"#,
                "malformed redis envelope: properties.priority: invalid value: integer `300`",
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
}
