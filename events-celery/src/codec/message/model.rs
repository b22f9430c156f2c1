//! The message model: [`TaskMessage`] and its parts (headers, properties, embed, routing), one
//! model for every Celery task message, whichever broker carried it and whichever protocol
//! version wrote it.

use std::time::Duration;

use chrono::{DateTime, FixedOffset};

use super::super::compression::Compression;
use super::super::json::{Json, JsonMap, JsonNumber};

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
