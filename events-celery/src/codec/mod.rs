//! A pure codec between typed domain events and Celery task messages, exactly as Python
//! Celery 5 writes and reads them. No I/O: the broker code moves the bytes.
//!
//! - **Encode**: [`TaskMessage::from_event`] (or [`from_event_ref`](TaskMessage::from_event_ref)
//!   for a type-erased event) builds the message `send_task` would: task
//!   `domain_events.<event name>`, body `[[], {"payload": <event>}, {"callbacks": null, …}]`,
//!   every Celery 5 header, the properties; [`EncodeOptions`] sets the rest. Then
//!   [`TaskMessage::to_redis`] gives kombu's Redis envelope and list key, and
//!   [`TaskMessage::to_amqp`] the AMQP properties, header table and body.
//! - **Decode**: [`TaskMessage::decode_redis`] and [`TaskMessage::decode_amqp`] read either
//!   envelope, protocol 2 or 1, into the same [`TaskMessage`]; [`TaskMessage::payload`] gives
//!   the typed event, [`TaskMessage::decode_payload`] the event for a run-time
//!   [`EventDescriptor`](events_core::EventDescriptor).
//! - **Control plane** (Flower, `celery inspect`, `AsyncResult`): monitoring events
//!   ([`worker_event_message`], [`task_event_message`], [`task_multi_message`]), remote-control
//!   requests and replies ([`PidboxRequest`], [`pidbox_reply`]) and result-backend records
//!   ([`ResultMeta`]), as [`KombuMessage`]s for either broker, byte-identical to what Celery 5.7
//!   sends (checked against captures in `tests/fixtures/control`).
//!
//! # JSON as Python writes it
//!
//! Bodies and Redis envelopes are written with [`PythonJsonFormatter`]: separators `", "` and
//! `": "`, `ensure_ascii` escapes (`\u0141`, surrogate pairs), floats as Python's repr
//! (`1e-07`), keys in the order the value gives them (a struct's field order). A message is
//! therefore byte-identical to Python's apart from ids, `origin`, `reply_to` and the delivery
//! tag.
//!
//! # Numbers, exactly
//!
//! Message JSON is held as the codec's own [`Json`], not `serde_json::Value`: integers of any
//! size stay exact (`2**70` stays `1180591620717411303424` through decoding and re-encoding),
//! floats keep Python's spelling, and object keys keep Python's order — without turning on
//! serde_json's `arbitrary_precision` / `preserve_order`, which Cargo would switch on for the
//! whole program (breaking users' `#[serde(tag)]` / `untagged` / `flatten` types with floats).
//! [`TaskMessage::payload`] reads an event from it exactly as `serde_json::from_str` reads the
//! payload's text: a `u128` / `i128` field gets a wide integer exactly; a field of a smaller
//! type gets an error naming the field and the number. (Inside a tagged, untagged or flattened
//! type serde buffers values without 128-bit integers, there as with serde_json itself.)
//!
//! # NaN and infinity
//!
//! JSON has neither, and serde_json writes `null` for them: publishing an event with a
//! non-finite float is refused ([`EncodeError::Serialize`], naming the field). Python's
//! `json.dumps` writes them as `NaN`, `Infinity`, `-Infinity`, and Python's Celery reads them;
//! so does this codec: they decode into `f64` / `f32` fields as the same values (any other
//! field type gets serde's "invalid type: floating point" error, naming the field), and are
//! written back as Python spells them. A `serde_json::Value` field cannot hold them (serde_json
//! makes them `null`): use `f64`.
//!
//! # Kombu tagged values
//!
//! `{"__type__": …, "__value__": …}` values are converted to plain JSON while decoding:
//!
//! | `__type__` | becomes | reads into |
//! |---|---|---|
//! | `datetime` | the ISO-8601 string, unchanged | `chrono::DateTime<Utc>` (with offset), `NaiveDateTime` (naive) |
//! | `date` | the string (`2024-05-17`) | `chrono::NaiveDate` |
//! | `time` | the string (`12:30:45.000500`) | `chrono::NaiveTime` |
//! | `decimal` | the string (`9.99`), exact | `rust_decimal::Decimal`, `String` |
//! | `uuid` (`{"hex": …}`) | the hyphenated string | `uuid::Uuid` |
//! | `bytes` (UTF-8 text) | an array of byte values | `Vec<u8>` |
//! | `base64` (other bytes) | an array of byte values | `Vec<u8>` |
//!
//! A dict with exactly the keys `__type__` and `__value__` and an unknown type is an error, as
//! in kombu.
//!
//! # Compression
//!
//! kombu's `compression` header (`send_task(..., compression='zlib')`, Celery's
//! `task_compression`) is read on decode: the body is decompressed — never past
//! [`DecodeOptions::max_message_bytes`] — before anything else reads it, and
//! [`MessageProperties::compression`] says which [`Compression`] it was. On encode, setting
//! it (or [`EncodeOptions::compression`]) compresses the body and writes the header last, as
//! kombu does. zlib, bzip2, lzma/xz and zstd are built by default; brotli with the `brotli`
//! feature. An unknown method, a method built without its feature, a body that does not
//! decompress or decompresses past the limit are refused with a [`DecodeError`] naming it.
//!
//! # Untrusted input
//!
//! Decoding never panics and never deserialises anything but JSON: messages over the size
//! limit ([`DecodeOptions::max_message_bytes`], checked first), non-UTF-8, invalid JSON,
//! wrong shapes, a missing or non-string `task`, a body that is not `[args, kwargs, embed]`,
//! and any content type but `application/json` (pickle, yaml, msgpack) are refused with a
//! [`DecodeError`] that names the problem.

mod amqp;
mod celery_events;
mod compression;
mod decode;
#[cfg(test)]
mod depth_tests;
mod encode;
mod error;
mod event_text;
mod json;
mod kombu_json;
mod kombu_message;
mod message;
mod pidbox;
mod python_json;
mod python_repr;
mod redis;
mod result_meta;
mod scan;
mod timestamp;
mod uuid4;

pub use amqp::{AmqpMessage, AmqpProperties, AmqpTable, AmqpValue};
pub use celery_events::{
    DEFAULT_HEARTBEAT_FREQ, EVENT_EXCHANGE, EventSource, EventStamp, SoftwareInfo,
    TASK_MULTI_ROUTING_KEY, TaskEvent, WorkerEventKind, WorkerStatus, event_group,
    event_routing_key, round_loadavg, task_event_body, task_event_message, task_multi_message,
    utcoffset_hours, worker_event_body, worker_event_message,
};
pub use event_text::{TaskEventBatch, push_task_event_body};
pub use kombu_message::{
    KombuMessage, PreparedMessage, REDIS_BINDING_SEPARATOR, ReceivedKombuMessage,
    parse_redis_binding, redis_binding_key, redis_direct_queues, redis_fanout_channel,
};
pub use pidbox::{
    DEFAULT_MAX_PIDBOX_BYTES, MAX_PATTERN_LEN, PIDBOX_EXCHANGE, PIDBOX_QUEUE_EXPIRES_MS,
    PIDBOX_QUEUE_TTL_MS, PIDBOX_REPLY_EXCHANGE, PidboxError, PidboxRequest, ReplyTo,
    pattern_matches, pidbox_queue, pidbox_reply,
};
pub use result_meta::{
    DEFAULT_RESULT_EXPIRES_SECS, ExceptionInfo, RedisResultWrite, ResultMeta, TaskState, result_key,
};

pub(crate) use amqp::MAX_HEADER_DEPTH;
pub use compression::{COMPRESSION_HEADER, Compression};
pub use decode::{DEFAULT_MAX_MESSAGE_BYTES, DecodeOptions};
pub use encode::{
    DEFAULT_TASK_PREFIX, DeliveryMode, EncodeOptions, JSON_CONTENT_TYPE, KwargsRepr,
    REDACTED_KWARGS_REPR, UTF8_CONTENT_ENCODING,
};
pub use error::{DecodeError, EncodeError, PayloadError};
pub use json::{Json, JsonError, JsonMap, JsonNumber};
pub(crate) use message::REFUSED_HEADER;
pub use message::{
    Embed, MessageProperties, PAYLOAD_KWARG, PUBLISH_CHAIN_HEADER, PUBLISH_DEPTH_HEADER,
    ProtocolVersion, Routing, TaskHeaders, TaskMessage, TimeLimit,
};
pub use python_json::{PythonJsonFormatter, to_python_json, write_python_json};
pub(crate) use redis::kombu_priority;
pub use redis::{REDIS_PRIORITY_SEPARATOR, REDIS_PRIORITY_STEPS, RedisMessage, redis_queue_key};
pub(crate) use timestamp::isoformat;
