//! [`TaskMessage`]: one model for every Celery task message, whichever broker carried it and
//! whichever protocol version wrote it.

use std::borrow::Cow;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use events_core::{AnyEvent, DomainEvent, EventDescriptor};
use serde::Serialize;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde_json::{Map, Number, Value};

use super::error::{DecodeError, PayloadError, json_type};
use super::timestamp::{isoformat, parse_iso8601};

/// The name of the keyword argument that carries the event: `kwargs = {"payload": <event>}`.
pub const PAYLOAD_KWARG: &str = "payload";

/// The Celery message protocol a message was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProtocolVersion {
    /// Protocol 1: empty headers, everything in a dict body. Upgraded on decode.
    V1,
    /// Protocol 2 (Celery 4 and later): task metadata in headers, body
    /// `[args, kwargs, embed]`. The only one the encoder writes.
    #[default]
    V2,
}

/// A Celery task message: task name and id, headers, properties, arguments and workflow
/// (embed), as Python Celery 5 writes and reads it.
///
/// Build one for an event with [`TaskMessage::from_event`] or [`TaskMessage::from_event_ref`];
/// write it with [`to_redis`](TaskMessage::to_redis) or [`to_amqp`](TaskMessage::to_amqp); read
/// one with [`decode_redis`](TaskMessage::decode_redis) or
/// [`decode_amqp`](TaskMessage::decode_amqp), then get the event with
/// [`payload`](TaskMessage::payload).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskMessage {
    /// The task name (`domain_events.products.product_created`).
    pub task: String,
    /// The task id (a UUID v4 for messages this crate writes).
    pub id: String,
    /// The protocol the message was written in.
    pub protocol: ProtocolVersion,
    /// Positional arguments (always empty for events).
    pub args: Vec<Value>,
    /// Keyword arguments; events travel as `{"payload": <event>}`. Kombu tags are already
    /// converted (see [`codec`](crate::codec#kombu-tagged-values)).
    pub kwargs: Map<String, Value>,
    /// Callbacks, errbacks, chain and chord.
    pub embed: Embed,
    /// Every header other than `task` and `id`.
    pub headers: TaskHeaders,
    /// The message properties.
    pub properties: MessageProperties,
    /// Exchange and routing key.
    pub routing: Routing,
    /// The Redis envelope exactly as it was read (decoded Redis messages only), for kombu's
    /// `unacked` hash.
    pub raw_envelope: Option<String>,
}

/// The workflow part of the body (`embed`), as raw JSON; `Value::Null` when absent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Embed {
    /// Signatures to apply with the result on success (`link`).
    pub callbacks: Value,
    /// Signatures to apply on failure (`link_error`).
    pub errbacks: Value,
    /// The rest of a chain, last task first.
    pub chain: Value,
    /// The chord body this task belongs to.
    pub chord: Value,
}

/// Celery's `timelimit` header: `[hard, soft]` seconds, each `null` for none.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TimeLimit {
    /// The hard limit in seconds (the task is killed).
    pub hard: Option<Number>,
    /// The soft limit in seconds (the task is told).
    pub soft: Option<Number>,
}

impl TimeLimit {
    /// The hard limit as a duration, if set and non-negative.
    pub fn hard_duration(&self) -> Option<Duration> {
        seconds(self.hard.as_ref())
    }

    /// The soft limit as a duration, if set and non-negative.
    pub fn soft_duration(&self) -> Option<Duration> {
        seconds(self.soft.as_ref())
    }
}

fn seconds(number: Option<&Number>) -> Option<Duration> {
    number
        .and_then(Number::as_f64)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

/// The task headers of protocol 2 other than `task` and `id`, in the order Celery writes them,
/// plus any custom ones.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskHeaders {
    /// The sender's language; Celery writes `"py"` (and so does this crate).
    pub lang: Option<String>,
    /// A display name overriding the task name in logs.
    pub shadow: Option<String>,
    /// Do not run before this time.
    pub eta: Option<DateTime<FixedOffset>>,
    /// Do not run after this time.
    pub expires: Option<DateTime<FixedOffset>>,
    /// The group id, when part of a group.
    pub group: Option<String>,
    /// The position in the group.
    pub group_index: Option<u64>,
    /// How many times the task was retried.
    pub retries: u32,
    /// Time limits.
    pub timelimit: TimeLimit,
    /// The id of the first task of the workflow.
    pub root_id: Option<String>,
    /// The id of the task that sent this one.
    pub parent_id: Option<String>,
    /// A Python `repr` of the args, for logs.
    pub argsrepr: Option<String>,
    /// A Python `repr` of the kwargs, for logs (or a redaction of it).
    pub kwargsrepr: Option<String>,
    /// The sender (`gen<pid>@<host>`).
    pub origin: Option<String>,
    /// Whether the result is to be ignored (`null` from `send_task`, `false` on a retry).
    pub ignore_result: Option<bool>,
    /// How many times the task was replaced.
    pub replaced_task_nesting: u32,
    /// Names of stamped headers (Celery 5.3 stamping).
    pub stamped_headers: Option<Vec<String>>,
    /// Stamps.
    pub stamps: Map<String, Value>,
    /// Every other header, in the order it came (Celery merges `headers={...}` here).
    pub custom: Vec<(String, Value)>,
}

/// The message properties Celery sets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MessageProperties {
    /// The task id again (Celery sets it for result routing).
    pub correlation_id: Option<String>,
    /// The sender's reply queue (for the rpc result backend).
    pub reply_to: Option<String>,
    /// Always `application/json` here: other types are refused on decode.
    pub content_type: String,
    /// Always `utf-8` here.
    pub content_encoding: String,
    /// 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// The priority, 0–9 (Celery sends 0 when none was asked for).
    pub priority: Option<u8>,
    /// Per-message TTL in milliseconds, as a string (`expires` sets it).
    pub expiration: Option<String>,
    /// Redis only: the sender, which kombu copies into the envelope properties on a retry.
    pub origin: Option<String>,
    /// Redis only: kombu's delivery tag (a UUID), the key of the `unacked` hash.
    pub delivery_tag: Option<String>,
}

/// Where a message is published: exchange and routing key. Celery's default is the
/// anonymous exchange `""` with the queue name as routing key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Routing {
    /// The exchange (`""` for the default exchange).
    pub exchange: String,
    /// The routing key (the queue name on the default exchange).
    pub routing_key: String,
}

impl Routing {
    /// Straight to `queue` through the default exchange, as Celery does.
    pub fn queue(queue: impl Into<String>) -> Self {
        Self {
            exchange: String::new(),
            routing_key: queue.into(),
        }
    }
}

impl Default for Routing {
    /// Celery's default queue, `celery`.
    fn default() -> Self {
        Self::queue("celery")
    }
}

impl TaskMessage {
    /// The event name, if the task name is `prefix` followed by it
    /// (`domain_events.products.product_created` → `products.product_created`).
    pub fn event_name(&self, prefix: &str) -> Option<&str> {
        self.task
            .strip_prefix(prefix)
            .filter(|name| !name.is_empty())
    }

    /// The event payload as JSON (`kwargs["payload"]`), kombu tags already converted.
    pub fn payload_value(&self) -> Option<&Value> {
        self.kwargs.get(PAYLOAD_KWARG)
    }

    /// Deserialises the payload into the typed event `E`.
    ///
    /// The error names the event, the field (`lines[2].sku`) and serde's reason.
    pub fn payload<E: DomainEvent>(&self) -> Result<E, PayloadError> {
        let value = self.payload_or_error(E::NAME, Some(std::any::type_name::<E>()))?;
        // Fast path without tracking; on failure, again with the path for the error.
        if let Ok(event) = E::deserialize(value) {
            return Ok(event);
        }
        serde_path_to_error::deserialize::<_, E>(value).map_err(|error| {
            let path = error.path().to_string();
            let mut reason = error.inner().to_string();
            if reason == "invalid number" {
                // serde_json's whole message for an integer too wide for the field's type.
                if let Some(number) = value_at(value, error.path()) {
                    reason = format!("{number} does not fit the field's type (invalid number)");
                }
            }
            PayloadError {
                event: E::NAME.to_owned(),
                type_name: Some(std::any::type_name::<E>()),
                field: (path != ".").then_some(path),
                reason,
            }
        })
    }

    /// Deserialises the payload with a descriptor from the registry, when the type is known
    /// only at run time.
    pub fn decode_payload(&self, descriptor: &EventDescriptor) -> Result<AnyEvent, PayloadError> {
        let value = self.payload_or_error(descriptor.name(), Some(descriptor.type_name()))?;
        descriptor
            .decode_value(value.clone())
            .map_err(|error| PayloadError {
                event: descriptor.name().to_owned(),
                type_name: Some(descriptor.type_name()),
                field: missing_field(&error),
                reason: error.to_string(),
            })
    }

    fn payload_or_error(
        &self,
        event: &str,
        type_name: Option<&'static str>,
    ) -> Result<&Value, PayloadError> {
        self.payload_value().ok_or_else(|| PayloadError {
            event: event.to_owned(),
            type_name,
            field: None,
            reason: format!(
                "the message has no `{PAYLOAD_KWARG}` keyword argument (kwargs: {})",
                self.kwargs
                    .keys()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }
}

fn value_at<'v>(mut value: &'v Value, path: &serde_path_to_error::Path) -> Option<&'v Value> {
    use serde_path_to_error::Segment;
    for segment in path.iter() {
        value = match segment {
            Segment::Seq { index } => value.get(*index)?,
            Segment::Map { key } => value.get(key)?,
            Segment::Enum { .. } | Segment::Unknown => return None,
        };
    }
    Some(value)
}

fn missing_field(error: &serde_json::Error) -> Option<String> {
    let message = error.to_string();
    let rest = message.strip_prefix("missing field `")?;
    rest.split_once('`').map(|(field, _)| field.to_owned())
}

// ----- headers <-> JSON -------------------------------------------------------------------

/// The headers Celery 5 writes, in its order (custom headers follow).
pub(crate) const HEADER_NAMES: [&str; 19] = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
];

/// All headers of a message as one JSON object, in Celery's order.
pub(crate) struct HeadersJson<'a>(pub(crate) &'a TaskMessage);

impl Serialize for HeadersJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let message = self.0;
        let h = &message.headers;
        let mut map = serializer.serialize_map(Some(HEADER_NAMES.len() + h.custom.len()))?;
        map.serialize_entry("lang", &h.lang)?;
        map.serialize_entry("task", &message.task)?;
        map.serialize_entry("id", &message.id)?;
        map.serialize_entry("shadow", &h.shadow)?;
        map.serialize_entry("eta", &h.eta.as_ref().map(isoformat))?;
        map.serialize_entry("expires", &h.expires.as_ref().map(isoformat))?;
        map.serialize_entry("group", &h.group)?;
        map.serialize_entry("group_index", &h.group_index)?;
        map.serialize_entry("retries", &h.retries)?;
        map.serialize_entry("timelimit", &(&h.timelimit.hard, &h.timelimit.soft))?;
        map.serialize_entry("root_id", &h.root_id)?;
        map.serialize_entry("parent_id", &h.parent_id)?;
        map.serialize_entry("argsrepr", &h.argsrepr)?;
        map.serialize_entry("kwargsrepr", &h.kwargsrepr)?;
        map.serialize_entry("origin", &h.origin)?;
        map.serialize_entry("ignore_result", &h.ignore_result)?;
        map.serialize_entry("replaced_task_nesting", &h.replaced_task_nesting)?;
        map.serialize_entry("stamped_headers", &h.stamped_headers)?;
        map.serialize_entry("stamps", &h.stamps)?;
        for (name, value) in &h.custom {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// The protocol 2 body: `[args, kwargs, embed]`.
pub(crate) struct BodyJson<'a>(pub(crate) &'a TaskMessage);

impl Serialize for BodyJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(3))?;
        seq.serialize_element(&self.0.args)?;
        seq.serialize_element(&self.0.kwargs)?;
        seq.serialize_element(&self.0.embed)?;
        seq.end()
    }
}

impl Serialize for Embed {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut embed = serializer.serialize_struct("Embed", 4)?;
        embed.serialize_field("callbacks", &self.callbacks)?;
        embed.serialize_field("errbacks", &self.errbacks)?;
        embed.serialize_field("chain", &self.chain)?;
        embed.serialize_field("chord", &self.chord)?;
        embed.end()
    }
}

/// Task name, id and headers read from a header table (protocol 2) or from the fields of a
/// protocol 1 body.
#[derive(Debug, Default)]
pub(crate) struct ParsedHeaders {
    pub(crate) task: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) headers: TaskHeaders,
}

impl ParsedHeaders {
    /// Reads headers in order; unknown names are kept as custom headers unless `keep_custom`
    /// is false (protocol 1 bodies, whose other fields are not headers).
    pub(crate) fn read<K: AsRef<str> + Into<String>>(
        pairs: impl IntoIterator<Item = (K, Value)>,
        keep_custom: bool,
    ) -> Result<Self, DecodeError> {
        let mut parsed = Self::default();
        let h = &mut parsed.headers;
        for (key, value) in pairs {
            let name = key.as_ref();
            match name {
                "task" => parsed.task = Some(required_string(name, value)?),
                "id" => parsed.id = Some(required_string(name, value)?),
                "lang" => h.lang = optional_string(name, value)?,
                "shadow" => h.shadow = optional_string(name, value)?,
                "eta" => h.eta = optional_timestamp(name, value)?,
                "expires" => h.expires = optional_timestamp(name, value)?,
                "group" => h.group = optional_string(name, value)?,
                "group_index" => h.group_index = optional_integer(name, value)?,
                "retries" => h.retries = counter(name, value)?,
                "timelimit" => h.timelimit = time_limit(name, value)?,
                "root_id" => h.root_id = optional_string(name, value)?,
                "parent_id" => h.parent_id = optional_string(name, value)?,
                "argsrepr" => h.argsrepr = optional_string(name, value)?,
                "kwargsrepr" => h.kwargsrepr = optional_string(name, value)?,
                "origin" => h.origin = optional_string(name, value)?,
                "ignore_result" => {
                    h.ignore_result = match value {
                        Value::Null => None,
                        Value::Bool(b) => Some(b),
                        other => return Err(invalid(name, "a boolean or null", &other)),
                    }
                }
                "replaced_task_nesting" => h.replaced_task_nesting = counter(name, value)?,
                "stamped_headers" => {
                    h.stamped_headers = match value {
                        Value::Null => None,
                        Value::Array(items) => Some(
                            items
                                .into_iter()
                                .map(|item| match item {
                                    Value::String(s) => Ok(s),
                                    other => {
                                        Err(invalid(name, "a list of strings or null", &other))
                                    }
                                })
                                .collect::<Result<_, _>>()?,
                        ),
                        other => return Err(invalid(name, "a list of strings or null", &other)),
                    }
                }
                "stamps" => {
                    h.stamps = match value {
                        Value::Null => Map::new(),
                        Value::Object(map) => map,
                        other => return Err(invalid(name, "an object or null", &other)),
                    }
                }
                _ if keep_custom => {
                    // A repeated name: the last one wins, as in a Python dict.
                    match h.custom.iter_mut().find(|(existing, _)| existing == name) {
                        Some((_, existing)) => *existing = value,
                        None => h.custom.push((key.into(), value)),
                    }
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// A JSON object's entries in order, read without building a map (headers are looked at once,
/// by name, so hashing them would be wasted), names borrowed from the input when they can be.
#[derive(Debug, Default)]
pub(crate) struct HeaderPairs<'a>(pub(crate) Vec<(Cow<'a, str>, Value)>);

impl<'de: 'a, 'a> Deserialize<'de> for HeaderPairs<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PairsVisitor(std::marker::PhantomData))
    }
}

struct PairsVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for PairsVisitor<'a> {
    type Value = HeaderPairs<'a>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderPairs<'a>, A::Error> {
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(20).min(64));
        while let Some(MaybeBorrowed(name)) = map.next_key::<MaybeBorrowed<'a>>()? {
            pairs.push((name, map.next_value::<Value>()?));
        }
        Ok(HeaderPairs(pairs))
    }
}

/// A string borrowed from the input when it has no escapes (serde's own `Cow<str>` always
/// copies).
pub(crate) struct MaybeBorrowed<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeBorrowed<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = MaybeBorrowed<'a>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(StrVisitor(std::marker::PhantomData))
    }
}

fn invalid(name: &str, expected: &'static str, found: &Value) -> DecodeError {
    DecodeError::InvalidHeader {
        name: name.to_owned(),
        expected,
        found: json_type(found),
    }
}

fn required_string(name: &str, value: Value) -> Result<String, DecodeError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(invalid(name, "a string", &other)),
    }
}

fn optional_string(name: &str, value: Value) -> Result<Option<String>, DecodeError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        other => Err(invalid(name, "a string or null", &other)),
    }
}

fn optional_integer(name: &str, value: Value) -> Result<Option<u64>, DecodeError> {
    match &value {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_u64() {
            Some(n) => Ok(Some(n)),
            None => Err(invalid(name, "a non-negative integer or null", &value)),
        },
        _ => Err(invalid(name, "a non-negative integer or null", &value)),
    }
}

fn counter(name: &str, value: Value) -> Result<u32, DecodeError> {
    match &value {
        Value::Null => Ok(0),
        Value::Number(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Ok(n),
            None => Err(invalid(name, "an integer from 0 to 4294967295", &value)),
        },
        _ => Err(invalid(name, "an integer from 0 to 4294967295", &value)),
    }
}

fn optional_timestamp(
    name: &str,
    value: Value,
) -> Result<Option<DateTime<FixedOffset>>, DecodeError> {
    match &value {
        Value::Null => Ok(None),
        Value::String(text) => match parse_iso8601(text) {
            Some(at) => Ok(Some(at)),
            None => Err(invalid(name, "an ISO-8601 datetime or null", &value)),
        },
        _ => Err(invalid(name, "an ISO-8601 datetime or null", &value)),
    }
}

fn time_limit(name: &str, value: Value) -> Result<TimeLimit, DecodeError> {
    const EXPECTED: &str = "[hard, soft] (numbers or nulls)";
    let limit = |item: &Value| match item {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(Some(n.clone())),
        other => Err(invalid(name, EXPECTED, other)),
    };
    match &value {
        Value::Null => Ok(TimeLimit::default()),
        Value::Array(items) if items.len() == 2 => Ok(TimeLimit {
            hard: limit(&items[0])?,
            soft: limit(&items[1])?,
        }),
        other => Err(invalid(name, EXPECTED, other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(value: Value) -> Vec<(String, Value)> {
        match value {
            Value::Object(map) => map.into_iter().collect(),
            _ => unreachable!("test input is an object"),
        }
    }

    #[test]
    fn reads_every_celery_header_and_keeps_custom_ones_in_order() {
        let parsed = ParsedHeaders::read(
            pairs(json!({
                "lang": "py", "task": "t", "id": "i", "shadow": null,
                "eta": "2026-11-26T09:08:59.059617+00:00", "expires": null, "group": "g",
                "group_index": 2, "retries": 3, "timelimit": [10, 5.5], "root_id": "r",
                "parent_id": "p", "argsrepr": "()", "kwargsrepr": "{}", "origin": "o",
                "ignore_result": false, "replaced_task_nesting": 1,
                "stamped_headers": ["a"], "stamps": {"a": 1},
                "x-z": 1, "x-a": "2",
            })),
            true,
        )
        .unwrap();
        assert_eq!(parsed.task.as_deref(), Some("t"));
        assert_eq!(parsed.id.as_deref(), Some("i"));
        let h = parsed.headers;
        assert_eq!(h.retries, 3);
        assert_eq!(h.group_index, Some(2));
        assert_eq!(h.timelimit.hard_duration(), Some(Duration::from_secs(10)));
        assert_eq!(
            h.timelimit.soft_duration(),
            Some(Duration::from_millis(5500))
        );
        assert_eq!(h.ignore_result, Some(false));
        assert_eq!(h.stamped_headers, Some(vec!["a".to_owned()]));
        assert_eq!(
            isoformat(&h.eta.unwrap()),
            "2026-11-26T09:08:59.059617+00:00"
        );
        assert_eq!(
            h.custom,
            vec![("x-z".to_owned(), json!(1)), ("x-a".to_owned(), json!("2"))]
        );
    }

    #[test]
    fn wrong_header_types_are_named() {
        for (header, value, expected) in [
            (
                "task",
                json!(1),
                "header `task` must be a string, found the number 1",
            ),
            (
                "retries",
                json!(-1),
                "header `retries` must be an integer from 0 to 4294967295, found the number -1",
            ),
            (
                "eta",
                json!("soon"),
                "header `eta` must be an ISO-8601 datetime or null, found the string \"soon\"",
            ),
            (
                "timelimit",
                json!([1]),
                "header `timelimit` must be [hard, soft] (numbers or nulls), found an array",
            ),
            (
                "stamps",
                json!([]),
                "header `stamps` must be an object or null, found an array",
            ),
        ] {
            let error = ParsedHeaders::read([(header.to_owned(), value)], true).unwrap_err();
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn headers_are_written_in_celery_order() {
        let mut message = TaskMessage {
            task: "t".into(),
            id: "i".into(),
            ..TaskMessage::default()
        };
        message
            .headers
            .custom
            .push(("x-trace-id".into(), json!("abc")));
        let json = serde_json::to_value(HeadersJson(&message)).unwrap();
        let names: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = HEADER_NAMES.to_vec();
        expected.push("x-trace-id");
        assert_eq!(names, expected);
    }
}
