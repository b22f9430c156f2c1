//! [`TaskMessage`]: one model for every Celery task message, whichever broker carried it and
//! whichever protocol version wrote it.

use std::borrow::Cow;
use std::time::Duration;

use super::json::{Json, JsonMap, JsonNumber};
use chrono::{DateTime, FixedOffset};
use events_core::{AnyEvent, DomainEvent, EventDescriptor};
#[cfg(test)]
use serde::Serialize;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
#[cfg(test)]
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};

use super::compression::{COMPRESSION_HEADER, Compression};
use super::error::{DecodeError, PayloadError, json_type};
use super::kombu_json::untag;
use super::python_json::{push_json_str, push_map, push_value};
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
    pub args: Vec<Json>,
    /// Keyword arguments; events travel as `{"payload": <event>}`. Kombu tags are already
    /// converted (see [`codec`](crate::codec#kombu-tagged-values)).
    pub kwargs: JsonMap,
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

/// The workflow part of the body (`embed`), as raw JSON; `Json::Null` when absent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Embed {
    /// Signatures to apply with the result on success (`link`).
    pub callbacks: Json,
    /// Signatures to apply on failure (`link_error`).
    pub errbacks: Json,
    /// The rest of a chain, last task first.
    pub chain: Json,
    /// The chord body this task belongs to.
    pub chord: Json,
}

/// Celery's `timelimit` header: `[hard, soft]` seconds, each `null` for none.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TimeLimit {
    /// The hard limit in seconds (the task is killed).
    pub hard: Option<JsonNumber>,
    /// The soft limit in seconds (the task is told).
    pub soft: Option<JsonNumber>,
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

fn seconds(number: Option<&JsonNumber>) -> Option<Duration> {
    number
        .map(JsonNumber::as_f64)
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
    pub stamps: JsonMap,
    /// Every other header, in the order it came (Celery merges `headers={...}` here).
    pub custom: Vec<(String, Json)>,
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
    /// kombu's `compression` header: on decode, the method the body was compressed with (it
    /// is decompressed by then); on encode, the method to compress the body with (the header
    /// is written after all others, as kombu does).
    pub compression: Option<Compression>,
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

    /// The event payload as JSON, kombu tags already converted: the argument that a task
    /// `def handle(payload)` receives — `kwargs["payload"]`, or a single positional argument
    /// when there are no keyword arguments. `None` when the arguments do not bind to that one
    /// parameter (missing, given twice, or with extra arguments); [`payload`](Self::payload)
    /// says why.
    pub fn payload_value(&self) -> Option<&Json> {
        self.bind_payload().ok()
    }

    /// Binds the message's arguments to one parameter, `payload`, as Python binds them when
    /// calling a task `def handle(payload)`: keyword or (alone) positional. Anything else is a
    /// `TypeError` in Python, so the task fails; here it is an error naming what is missing
    /// or extra, never extra data silently dropped.
    fn bind_payload(&self) -> Result<&Json, String> {
        let keyword = self.kwargs.get(PAYLOAD_KWARG);
        match (self.args.as_slice(), keyword) {
            ([], Some(payload)) if self.kwargs.len() == 1 => return Ok(payload),
            ([payload], None) if self.kwargs.is_empty() => return Ok(payload),
            _ => {}
        }
        let mut problems = Vec::new();
        match (self.args.as_slice(), keyword) {
            ([], None) => problems.push(format!("no `{PAYLOAD_KWARG}` keyword argument")),
            ([], Some(_)) => {}
            (args, Some(_)) => problems.push(format!(
                "{} positional argument(s) besides the `{PAYLOAD_KWARG}` keyword argument ({})",
                args.len(),
                describe_args(args)
            )),
            ([_], None) => {}
            ([_, extra @ ..], None) => problems.push(format!(
                "{} positional argument(s) after the payload ({})",
                extra.len(),
                describe_args(extra)
            )),
        }
        let others: Vec<&String> = self.kwargs.keys().filter(|k| *k != PAYLOAD_KWARG).collect();
        if !others.is_empty() {
            problems.push(format!(
                "unexpected keyword argument(s) {}",
                describe_names(&others)
            ));
        }
        Err(format!(
            "the task takes one argument, `{PAYLOAD_KWARG}` (kwargs={{\"{PAYLOAD_KWARG}\": …}}), \
             but the message has {}; refused rather than run with data ignored (Python Celery \
             fails such a call with TypeError too)",
            problems.join(" and ")
        ))
    }

    /// Deserialises the payload into the typed event `E`, exactly as `serde_json::from_str`
    /// would read the payload's text: every serde shape (tagged, adjacent, untagged enums,
    /// `flatten`), and integers of any size into `u128` / `i128` fields.
    ///
    /// The error names the event, the field (`lines[2].sku`) and serde's reason.
    pub fn payload<E: DomainEvent>(&self) -> Result<E, PayloadError> {
        let value = self.payload_or_error(E::NAME, Some(std::any::type_name::<E>()))?;
        // Fast path without tracking; on failure, again with the path for the error.
        match E::deserialize(value) {
            Ok(event) => Ok(event),
            Err(error) => {
                let mut track = serde_path_to_error::Track::new();
                let traced =
                    E::deserialize(serde_path_to_error::Deserializer::new(value, &mut track));
                let reason = match traced {
                    Err(traced) => traced.to_string(),
                    Ok(_) => error.to_string(),
                };
                Err(payload_error(
                    E::NAME,
                    std::any::type_name::<E>(),
                    &track.path().to_string(),
                    reason,
                ))
            }
        }
    }

    /// Deserialises the payload with a descriptor from the registry, when the type is known
    /// only at run time; as [`payload`](Self::payload) reads it.
    pub fn decode_payload(&self, descriptor: &EventDescriptor) -> Result<AnyEvent, PayloadError> {
        let value = self.payload_or_error(descriptor.name(), Some(descriptor.type_name()))?;
        let mut erased = <dyn erased_serde::Deserializer<'_>>::erase(value);
        match descriptor.decode_from(&mut erased) {
            Ok(event) => Ok(event),
            Err(error) => {
                // Again, tracing the path, to say which field does not fit.
                let mut track = serde_path_to_error::Track::new();
                let mut traced = <dyn erased_serde::Deserializer<'_>>::erase(
                    serde_path_to_error::Deserializer::new(value, &mut track),
                );
                let reason = match descriptor.decode_from(&mut traced) {
                    Err(traced) => traced.to_string(),
                    Ok(_) => error.to_string(),
                };
                drop(traced);
                Err(payload_error(
                    descriptor.name(),
                    descriptor.type_name(),
                    &track.path().to_string(),
                    reason,
                ))
            }
        }
    }

    fn payload_or_error(
        &self,
        event: &str,
        type_name: Option<&'static str>,
    ) -> Result<&Json, PayloadError> {
        self.bind_payload().map_err(|reason| PayloadError {
            event: event.to_owned(),
            type_name,
            field: None,
            reason,
        })
    }
}

/// How many names [`describe_names`] and values [`describe_args`] list before "and N more".
const LISTED: usize = 5;

/// Extra keyword argument names for an error: a few, each at most 64 bytes, quoted.
fn describe_names(names: &[&String]) -> String {
    let mut listed: Vec<String> = names
        .iter()
        .take(LISTED)
        .map(|name| format!("`{}`", clip(name, 64)))
        .collect();
    if names.len() > LISTED {
        listed.push(format!("and {} more", names.len() - LISTED));
    }
    listed.join(", ")
}

/// Positional arguments for an error: what each of the first few is.
fn describe_args(args: &[Json]) -> String {
    let mut listed: Vec<String> = args.iter().take(LISTED).map(json_type).collect();
    if args.len() > LISTED {
        listed.push(format!("and {} more", args.len() - LISTED));
    }
    listed.join(", ")
}

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut.
fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// The error for a payload that does not fit its event type: the field's path (a missing
/// field's own path, `customer.vip`), and serde's reason.
fn payload_error(
    event: &str,
    type_name: &'static str,
    path: &str,
    mut reason: String,
) -> PayloadError {
    let field = match (path, missing_field(&reason)) {
        (".", missing) => missing,
        (path, Some(missing)) => Some(format!("{path}.{missing}")),
        (path, None) => Some(path.to_owned()),
    };
    let about_a_value = reason.starts_with("invalid type") || reason.starts_with("invalid value");
    if field.is_none() && about_a_value && !reason.contains(", expected struct ") {
        // A value deep inside, but serde kept no path to it.
        reason.push_str(
            " (serde does not say which field: it reads `#[serde(flatten)]`, internally tagged \
             and untagged parts from a buffer that keeps no path)",
        );
    }
    PayloadError {
        event: event.to_owned(),
        type_name: Some(type_name),
        field,
        reason,
    }
}

fn missing_field(message: &str) -> Option<String> {
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

/// All headers of a message as one JSON object, in Celery's order: the serde reference for
/// [`push_headers_json`].
#[cfg(test)]
pub(crate) struct HeadersJson<'a>(pub(crate) &'a TaskMessage);

#[cfg(test)]
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
        if let Some(compression) = message.properties.compression {
            map.serialize_entry(COMPRESSION_HEADER, compression.content_type())?;
        }
        map.end()
    }
}

/// Appends the headers as [`HeadersJson`] serialises them, written directly.
pub(crate) fn push_headers_json(
    out: &mut String,
    message: &TaskMessage,
) -> Result<(), serde_json::Error> {
    fn entry(out: &mut String, name: &str) {
        out.push_str(", \"");
        out.push_str(name);
        out.push_str("\": ");
    }
    fn string(out: &mut String, text: Option<&str>) -> Result<(), serde_json::Error> {
        match text {
            None => out.push_str("null"),
            Some(text) => push_json_str(out, text)?,
        }
        Ok(())
    }
    fn timestamp(out: &mut String, at: Option<&DateTime<FixedOffset>>) {
        match at {
            None => out.push_str("null"),
            Some(at) => {
                out.push('"');
                // ASCII digits, `-`, `:`, `.`, `+`, `T` only.
                out.push_str(&isoformat(at));
                out.push('"');
            }
        }
    }
    fn limit(out: &mut String, limit: Option<&JsonNumber>) {
        match limit {
            None => out.push_str("null"),
            Some(number) => out.push_str(number.as_str()),
        }
    }
    let h = &message.headers;
    out.push_str("{\"lang\": ");
    string(out, h.lang.as_deref())?;
    entry(out, "task");
    push_json_str(out, &message.task)?;
    entry(out, "id");
    push_json_str(out, &message.id)?;
    entry(out, "shadow");
    string(out, h.shadow.as_deref())?;
    entry(out, "eta");
    timestamp(out, h.eta.as_ref());
    entry(out, "expires");
    timestamp(out, h.expires.as_ref());
    entry(out, "group");
    string(out, h.group.as_deref())?;
    entry(out, "group_index");
    match h.group_index {
        None => out.push_str("null"),
        Some(index) => push_integer(out, index),
    }
    entry(out, "retries");
    push_integer(out, u64::from(h.retries));
    entry(out, "timelimit");
    out.push('[');
    limit(out, h.timelimit.hard.as_ref());
    out.push_str(", ");
    limit(out, h.timelimit.soft.as_ref());
    out.push(']');
    entry(out, "root_id");
    string(out, h.root_id.as_deref())?;
    entry(out, "parent_id");
    string(out, h.parent_id.as_deref())?;
    entry(out, "argsrepr");
    string(out, h.argsrepr.as_deref())?;
    entry(out, "kwargsrepr");
    string(out, h.kwargsrepr.as_deref())?;
    entry(out, "origin");
    string(out, h.origin.as_deref())?;
    entry(out, "ignore_result");
    out.push_str(match h.ignore_result {
        None => "null",
        Some(true) => "true",
        Some(false) => "false",
    });
    entry(out, "replaced_task_nesting");
    push_integer(out, u64::from(h.replaced_task_nesting));
    entry(out, "stamped_headers");
    match &h.stamped_headers {
        None => out.push_str("null"),
        Some(names) => {
            out.push('[');
            for (index, name) in names.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                push_json_str(out, name)?;
            }
            out.push(']');
        }
    }
    // Inside kombu's envelope and the headers object: 2 levels.
    entry(out, "stamps");
    push_map(out, &h.stamps, 2)?;
    for (name, value) in &h.custom {
        out.push_str(", ");
        push_json_str(out, name)?;
        out.push_str(": ");
        push_value(out, value, 2)?;
    }
    if let Some(compression) = message.properties.compression {
        // kombu adds it to the headers last, after compressing the body.
        entry(out, COMPRESSION_HEADER);
        push_json_str(out, compression.content_type())?;
    }
    out.push('}');
    Ok(())
}

/// Appends the protocol 2 body as [`BodyJson`] serialises it, written directly.
pub(crate) fn push_body_json(
    out: &mut String,
    message: &TaskMessage,
) -> Result<(), serde_json::Error> {
    // The worker parses the body as one document: args' items and embed's values are inside
    // 2 levels, kwargs inside 1, so a payload may nest 126 deep (`MAX_PAYLOAD_DEPTH`).
    out.push('[');
    out.push('[');
    for (index, arg) in message.args.iter().enumerate() {
        if index > 0 {
            out.push_str(", ");
        }
        push_value(out, arg, 2)?;
    }
    out.push_str("], ");
    push_map(out, &message.kwargs, 1)?;
    let embed = &message.embed;
    out.push_str(", {\"callbacks\": ");
    push_value(out, &embed.callbacks, 2)?;
    out.push_str(", \"errbacks\": ");
    push_value(out, &embed.errbacks, 2)?;
    out.push_str(", \"chain\": ");
    push_value(out, &embed.chain, 2)?;
    out.push_str(", \"chord\": ");
    push_value(out, &embed.chord, 2)?;
    out.push_str("}]");
    Ok(())
}

/// Appends a non-negative integer in decimal.
pub(crate) fn push_integer(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // `value % 10` is below 10.
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        out.push(char::from(digit));
    }
}

/// The protocol 2 body: `[args, kwargs, embed]`: the serde reference for [`push_body_json`].
#[cfg(test)]
pub(crate) struct BodyJson<'a>(pub(crate) &'a TaskMessage);

#[cfg(test)]
impl Serialize for BodyJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(3))?;
        seq.serialize_element(&self.0.args)?;
        seq.serialize_element(&self.0.kwargs)?;
        seq.serialize_element(&self.0.embed)?;
        seq.end()
    }
}

#[cfg(test)]
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
        pairs: impl IntoIterator<Item = (K, Json)>,
        keep_custom: bool,
    ) -> Result<Self, DecodeError> {
        let mut parsed = Self::default();
        for (key, value) in pairs {
            parsed.apply_value(key, value, keep_custom)?;
        }
        Ok(parsed)
    }

    /// Applies one header, as [`read`](Self::read) does, taking the common kinds (strings
    /// and nulls of the string headers, counters) without building a JSON value.
    pub(crate) fn apply<K: AsRef<str> + Into<String>>(
        &mut self,
        key: K,
        value: HeaderValue,
        keep_custom: bool,
    ) -> Result<(), DecodeError> {
        let h = &mut self.headers;
        let slot = match key.as_ref() {
            "task" => &mut self.task,
            "id" => &mut self.id,
            "lang" => &mut h.lang,
            "shadow" => &mut h.shadow,
            "group" => &mut h.group,
            "root_id" => &mut h.root_id,
            "parent_id" => &mut h.parent_id,
            "argsrepr" => &mut h.argsrepr,
            "kwargsrepr" => &mut h.kwargsrepr,
            "origin" => &mut h.origin,
            // What `null` means for these (the slow path agrees).
            "eta" | "expires" | "timelimit" | "ignore_result" | "stamped_headers" | "stamps"
                if matches!(value, HeaderValue::Null) =>
            {
                match key.as_ref() {
                    "eta" => h.eta = None,
                    "expires" => h.expires = None,
                    "timelimit" => h.timelimit = TimeLimit::default(),
                    "ignore_result" => h.ignore_result = None,
                    "stamped_headers" => h.stamped_headers = None,
                    _ => h.stamps = JsonMap::new(),
                }
                return Ok(());
            }
            "retries" | "replaced_task_nesting" | "group_index" => {
                if let HeaderValue::Count(count) = value {
                    match key.as_ref() {
                        "group_index" => h.group_index = Some(count),
                        name => match u32::try_from(count) {
                            Ok(count) if name == "retries" => h.retries = count,
                            Ok(count) => h.replaced_task_nesting = count,
                            Err(_) => {
                                return self.apply_value(key, Json::from(count), keep_custom);
                            }
                        },
                    }
                    return Ok(());
                }
                return self.apply_value(key, value.into_value(), keep_custom);
            }
            _ => return self.apply_value(key, value.into_value(), keep_custom),
        };
        match value {
            HeaderValue::Str(text) => *slot = Some(text),
            // `task` and `id` must be strings: the slow path says so.
            HeaderValue::Null if !matches!(key.as_ref(), "task" | "id") => *slot = None,
            other => return self.apply_value(key, other.into_value(), keep_custom),
        }
        Ok(())
    }

    /// Applies one header given as JSON.
    fn apply_value<K: AsRef<str> + Into<String>>(
        &mut self,
        key: K,
        value: Json,
        keep_custom: bool,
    ) -> Result<(), DecodeError> {
        let h = &mut self.headers;
        let name = key.as_ref();
        match name {
            "task" => self.task = Some(required_string(name, value)?),
            "id" => self.id = Some(required_string(name, value)?),
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
                    Json::Null => None,
                    Json::Bool(b) => Some(b),
                    other => return Err(invalid(name, "a boolean or null", &other)),
                }
            }
            "replaced_task_nesting" => h.replaced_task_nesting = counter(name, value)?,
            "stamped_headers" => {
                h.stamped_headers = match value {
                    Json::Null => None,
                    Json::Array(items) => Some(
                        items
                            .into_iter()
                            .map(|item| match item {
                                Json::String(s) => Ok(s),
                                other => Err(invalid(name, "a list of strings or null", &other)),
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                    other => return Err(invalid(name, "a list of strings or null", &other)),
                }
            }
            "stamps" => {
                h.stamps = match value {
                    Json::Null => JsonMap::new(),
                    Json::Object(map) => map,
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
        Ok(())
    }
}

/// A header value: strings, nulls and counters as they are, anything else as JSON.
#[derive(Debug)]
pub(crate) enum HeaderValue {
    /// `null` / void.
    Null,
    /// A string.
    Str(String),
    /// A non-negative integer (AMQP headers only; JSON numbers are [`Other`](Self::Other)).
    Count(u64),
    /// Anything else.
    Other(Json),
}

impl HeaderValue {
    pub(crate) fn into_value(self) -> Json {
        match self {
            Self::Null => Json::Null,
            Self::Str(text) => Json::String(text),
            Self::Count(count) => Json::from(count),
            Self::Other(value) => value,
        }
    }
}

impl<'de> Deserialize<'de> for HeaderValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HeaderValueVisitor)
    }
}

/// Reads strings and nulls directly and everything else exactly as [`Json`] reads it.
struct HeaderValueVisitor;

impl<'de> Visitor<'de> for HeaderValueVisitor {
    type Value = HeaderValue;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("any valid JSON value")
    }

    fn visit_unit<E>(self) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Null)
    }

    fn visit_none<E>(self) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<HeaderValue, D::Error> {
        HeaderValue::deserialize(deserializer)
    }

    fn visit_str<E>(self, text: &str) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Str(text.to_owned()))
    }

    fn visit_string<E>(self, text: String) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Str(text))
    }

    fn visit_bool<E>(self, value: bool) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Other(Json::Bool(value)))
    }

    fn visit_i64<E>(self, value: i64) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Other(Json::from(value)))
    }

    fn visit_u64<E>(self, value: u64) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Other(Json::from(value)))
    }

    fn visit_f64<E>(self, value: f64) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Other(Json::from(value)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<HeaderValue, A::Error> {
        Json::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(HeaderValue::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<HeaderValue, A::Error> {
        Json::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(HeaderValue::Other)
    }
}

/// The header table of a Redis envelope, applied while it is read. Errors are kept for
/// later, so that they come in the order a two-pass read gives: every kombu-tag error before
/// any header error, each the first of its kind, and both after the envelope's own checks.
#[derive(Debug, Default)]
pub(crate) struct HeadersIn {
    pub(crate) parsed: ParsedHeaders,
    pub(crate) untag_error: Option<DecodeError>,
    pub(crate) header_error: Option<DecodeError>,
}

impl HeadersIn {
    /// The headers, or the error a two-pass read would have given first.
    #[inline]
    pub(crate) fn finish(self) -> Result<ParsedHeaders, DecodeError> {
        match (self.untag_error, self.header_error) {
            (Some(error), _) | (None, Some(error)) => Err(error),
            (None, None) => Ok(self.parsed),
        }
    }
}

impl<'de> Deserialize<'de> for HeadersIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(HeadersVisitor)
    }
}

struct HeadersVisitor;

impl<'de> Visitor<'de> for HeadersVisitor {
    type Value = HeadersIn;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeadersIn, A::Error> {
        let mut headers = HeadersIn::default();
        while let Some(MaybeBorrowed(name)) = map.next_key::<MaybeBorrowed<'de>>()? {
            // The value's text, read by the codec's own parser: serde_json would round
            // integers beyond 64 bits (and some floats) on the way.
            let raw = map.next_value::<&'de serde_json::value::RawValue>()?;
            let mut value = match Json::parse(raw.get()).map_err(serde::de::Error::custom)? {
                Json::Null => HeaderValue::Null,
                Json::String(text) => HeaderValue::Str(text),
                other => HeaderValue::Other(other),
            };
            if let HeaderValue::Other(json) = &mut value
                && let Err(error) = untag(json, || format!("headers.{name}"))
            {
                headers.untag_error.get_or_insert(error);
                continue;
            }
            if headers.untag_error.is_none()
                && headers.header_error.is_none()
                && let Err(error) = headers.parsed.apply(name, value, true)
            {
                headers.header_error = Some(error);
            }
        }
        Ok(headers)
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

fn invalid(name: &str, expected: &'static str, found: &Json) -> DecodeError {
    DecodeError::InvalidHeader {
        name: name.to_owned(),
        expected,
        found: json_type(found),
    }
}

fn required_string(name: &str, value: Json) -> Result<String, DecodeError> {
    match value {
        Json::String(s) => Ok(s),
        other => Err(invalid(name, "a string", &other)),
    }
}

fn optional_string(name: &str, value: Json) -> Result<Option<String>, DecodeError> {
    match value {
        Json::Null => Ok(None),
        Json::String(s) => Ok(Some(s)),
        other => Err(invalid(name, "a string or null", &other)),
    }
}

fn optional_integer(name: &str, value: Json) -> Result<Option<u64>, DecodeError> {
    match &value {
        Json::Null => Ok(None),
        Json::Number(n) => match n.as_u64() {
            Some(n) => Ok(Some(n)),
            None => Err(invalid(name, "a non-negative integer or null", &value)),
        },
        _ => Err(invalid(name, "a non-negative integer or null", &value)),
    }
}

fn counter(name: &str, value: Json) -> Result<u32, DecodeError> {
    match &value {
        Json::Null => Ok(0),
        Json::Number(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Ok(n),
            None => Err(invalid(name, "an integer from 0 to 4294967295", &value)),
        },
        _ => Err(invalid(name, "an integer from 0 to 4294967295", &value)),
    }
}

fn optional_timestamp(
    name: &str,
    value: Json,
) -> Result<Option<DateTime<FixedOffset>>, DecodeError> {
    match &value {
        Json::Null => Ok(None),
        Json::String(text) => match parse_iso8601(text) {
            Some(at) => Ok(Some(at)),
            None => Err(invalid(name, "an ISO-8601 datetime or null", &value)),
        },
        _ => Err(invalid(name, "an ISO-8601 datetime or null", &value)),
    }
}

fn time_limit(name: &str, value: Json) -> Result<TimeLimit, DecodeError> {
    const EXPECTED: &str = "[hard, soft] (numbers or nulls)";
    let limit = |item: &Json| match item {
        Json::Null => Ok(None),
        Json::Number(n) => Ok(Some(n.clone())),
        other => Err(invalid(name, EXPECTED, other)),
    };
    match &value {
        Json::Null => Ok(TimeLimit::default()),
        Json::Array(items) if items.len() == 2 => Ok(TimeLimit {
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

    fn pairs(value: &str) -> Vec<(String, Json)> {
        match Json::parse(value).unwrap() {
            Json::Object(map) => map.into_iter().collect(),
            _ => unreachable!("test input is an object"),
        }
    }

    fn with_arguments(args: serde_json::Value, kwargs: serde_json::Value) -> TaskMessage {
        let (Json::Array(args), Json::Object(kwargs)) = (Json::from(args), Json::from(kwargs))
        else {
            unreachable!("test input is a list and an object")
        };
        TaskMessage {
            task: "domain_events.t".into(),
            args,
            kwargs,
            ..TaskMessage::default()
        }
    }

    #[test]
    fn arguments_bind_to_payload_as_python_binds_them() {
        // kwargs={"payload": …} (what Celery's send_task and this crate write), or the payload
        // alone as the one positional argument: both run in Python, both bind here.
        let keyword = with_arguments(json!([]), json!({"payload": {"a": 1}}));
        assert_eq!(keyword.payload_value().unwrap(), &json!({"a": 1}));
        let positional = with_arguments(json!([{"a": 2}]), json!({}));
        assert_eq!(positional.payload_value().unwrap(), &json!({"a": 2}));
    }

    #[test]
    fn extra_or_missing_arguments_are_refused_naming_what_is_extra() {
        for (args, kwargs, expected) in [
            (
                json!([1, "two"]),
                json!({"payload": {}}),
                &[
                    "2 positional argument(s) besides the `payload`",
                    "the number 1",
                    "the string \"two\"",
                ][..],
            ),
            (
                json!([]),
                // (`json!` sorts keys; a message keeps its own order.)
                json!({"payload": {}, "user_id": 7, "trace": "x"}),
                &["unexpected keyword argument(s) `trace`, `user_id`"],
            ),
            (
                json!([{}, 3]),
                json!({}),
                &["1 positional argument(s) after the payload", "the number 3"],
            ),
            (
                json!([{}]),
                json!({"payload": {}}),
                &["1 positional argument(s) besides the `payload` keyword argument"],
            ),
            (
                json!([{}]),
                json!({"extra": 1}),
                &["unexpected keyword argument(s) `extra`"],
            ),
            (json!([]), json!({}), &["no `payload` keyword argument"]),
            (
                json!([]),
                json!({"other": 1}),
                &[
                    "no `payload` keyword argument",
                    "unexpected keyword argument(s) `other`",
                ],
            ),
            (
                json!([1, 2, 3, 4, 5, 6, 7, 8]),
                json!({}),
                &["7 positional argument(s) after the payload", "and 2 more"],
            ),
        ] {
            let message = with_arguments(args.clone(), kwargs.clone());
            assert_eq!(message.payload_value(), None, "{args} {kwargs}");
            let reason = message.bind_payload().unwrap_err();
            for word in expected {
                assert!(
                    reason.contains(word),
                    "{args} {kwargs}: `{word}` not in: {reason}"
                );
            }
            assert!(reason.contains("TypeError"), "{reason}");
        }
        // Hostile names are listed briefly: a few, each clipped.
        let many: serde_json::Map<String, serde_json::Value> = (0..1000)
            .map(|i| (format!("{}{i}", "k".repeat(10_000)), json!(i)))
            .collect();
        let mut kwargs = many;
        kwargs.insert("payload".into(), json!({}));
        let reason = with_arguments(json!([]), serde_json::Value::Object(kwargs))
            .bind_payload()
            .unwrap_err();
        assert!(reason.len() < 1024, "{} bytes", reason.len());
        assert!(reason.contains("and 995 more"), "{reason}");
    }

    #[test]
    fn reads_every_celery_header_and_keeps_custom_ones_in_order() {
        let parsed = ParsedHeaders::read(
            pairs(
                r#"{
                "lang": "py", "task": "t", "id": "i", "shadow": null,
                "eta": "2026-11-26T09:08:59.059617+00:00", "expires": null, "group": "g",
                "group_index": 2, "retries": 3, "timelimit": [10, 5.5], "root_id": "r",
                "parent_id": "p", "argsrepr": "()", "kwargsrepr": "{}", "origin": "o",
                "ignore_result": false, "replaced_task_nesting": 1,
                "stamped_headers": ["a"], "stamps": {"a": 1},
                "x-z": 1, "x-a": "2"
            }"#,
            ),
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
            vec![
                ("x-z".to_owned(), Json::from(1)),
                ("x-a".to_owned(), Json::from("2"))
            ]
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
            let error =
                ParsedHeaders::read([(header.to_owned(), Json::from(value))], true).unwrap_err();
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
            .push(("x-trace-id".into(), "abc".into()));
        let json = Json::from_serialize(&HeadersJson(&message)).unwrap();
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
