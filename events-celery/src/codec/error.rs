//! The codec's errors: one enum per direction, plus [`PayloadError`] for the typed event.

use std::fmt;

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The event (or a custom header value) could not be serialised to JSON.
    #[error("cannot serialise event `{event}` to JSON: {source}")]
    Serialize {
        /// The event's name.
        event: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// The body (args, kwargs, embed) could not be written as JSON.
    #[error("cannot write the message body as JSON: {0}")]
    Body(#[source] serde_json::Error),
    /// A Redis envelope (restored by the worker) could not be written as JSON.
    #[error("cannot write the Redis envelope as JSON: {0}")]
    Envelope(#[source] serde_json::Error),
    /// A priority outside Celery's 0–9.
    #[error("priority {0} is out of range: Celery priorities are 0 to 9")]
    InvalidPriority(u8),
    /// A countdown, expiry or eta too far away to represent.
    #[error("{option} is out of range")]
    TimeOutOfRange {
        /// `countdown`, `eta` or `expires`.
        option: &'static str,
    },
    /// A header value has no AMQP field type (an integer beyond 64 bits, as py-amqp refuses
    /// too).
    #[error("header `{header}` holds {value}, which no AMQP field type can carry")]
    AmqpValueOutOfRange {
        /// The header's name (dotted for nested values).
        header: String,
        /// The value, as JSON.
        value: String,
    },
    /// A value nests arrays and objects deeper than a worker reads (only a value built in
    /// code can: a message given to `send`, a custom header).
    #[error(
        "{part} nests arrays and objects deeper than {limit} levels, the most a worker reads: \
         it is refused rather than sent as a message no worker can read; send a shallower value"
    )]
    TooDeep {
        /// What nests too deep (`header \`x-tree\``, `the payload`).
        part: String,
        /// The limit.
        limit: usize,
    },
    /// An AMQP field-table key longer than 255 bytes.
    #[error("header name `{0}` is longer than the 255 bytes AMQP allows")]
    AmqpKeyTooLong(String),
    /// Compression was asked for with a method this build has no codec for.
    #[error(
        "compression `{compression}` is not enabled: build events-celery with feature `{feature}`"
    )]
    CompressionNotEnabled {
        /// The method's content type (`application/zstd`).
        compression: &'static str,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// The compressor failed.
    #[error("cannot compress the body with `{compression}`: {reason}")]
    Compress {
        /// The method's content type.
        compression: &'static str,
        /// The compressor's error.
        reason: String,
    },
}

/// Why a message could not be decoded. Every variant names the problem; none of them is
/// ever reached by a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message is over the configured size limit (checked before anything is parsed).
    #[error("message of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// The message's size in bytes.
        size: usize,
        /// The configured limit ([`DecodeOptions::max_message_bytes`](crate::codec::DecodeOptions::max_message_bytes)).
        limit: usize,
    },
    /// Part of the message is not UTF-8.
    #[error("{part} is not valid UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 {
        /// `redis envelope`, `body` or `header <name>`.
        part: String,
        /// Where the first invalid byte is.
        offset: usize,
    },
    /// Part of the message is not JSON, or not the JSON Celery writes.
    #[error("{part} is not valid JSON: {source}")]
    InvalidJson {
        /// `redis envelope` or `body`.
        part: &'static str,
        /// serde_json's error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// The Redis envelope has the wrong shape.
    #[error("malformed redis envelope: {path}: {reason}")]
    InvalidEnvelope {
        /// Where in the envelope (`properties.priority`).
        path: String,
        /// What is wrong there.
        reason: String,
    },
    /// A content type other than JSON: pickle, yaml, msgpack… are never deserialised.
    #[error(
        "content type `{0}` is refused: only application/json is accepted (pickle, yaml and msgpack are never deserialised)"
    )]
    UnsupportedContentType(String),
    /// No content type at all.
    #[error("the message has no content type (expected application/json)")]
    MissingContentType,
    /// A content encoding other than UTF-8.
    #[error("content encoding `{0}` is refused: only utf-8 is accepted")]
    UnsupportedContentEncoding(String),
    /// A Redis body encoding other than base64 (or none).
    #[error("redis body encoding `{0}` is refused: only base64 is accepted")]
    UnsupportedBodyEncoding(String),
    /// The Redis body is not valid base64.
    #[error("redis body is not valid base64: {0}")]
    InvalidBase64(#[source] base64::DecodeError),
    /// No `task` header (protocol 2) nor `task` field in a dict body (protocol 1).
    #[error(
        "the message names no task: no `task` header (protocol 2) nor `task` in the body (protocol 1)"
    )]
    MissingTask,
    /// No task id.
    #[error("the message has no task `id`")]
    MissingId,
    /// A header (or protocol 1 body field) of the wrong type or value.
    #[error("header `{name}` must be {expected}, found {found}")]
    InvalidHeader {
        /// The header's name.
        name: String,
        /// What it should be (`a string`, `a non-negative integer`…).
        expected: &'static str,
        /// What it is (a JSON type, or the bad value).
        found: String,
    },
    /// A message property of the wrong type or value.
    #[error("property `{name}` must be {expected}, found {found}")]
    InvalidProperty {
        /// The property's name.
        name: &'static str,
        /// What it should be.
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// The body is not `[args, kwargs, embed]` (protocol 2) or a task dict (protocol 1).
    #[error("malformed task body: {0}")]
    InvalidBody(String),
    /// A `compression` header naming no method kombu knows.
    #[error(
        "compression `{name}` is unknown: kombu's methods are {known} (or their content types)"
    )]
    UnknownCompression {
        /// The header's value.
        name: String,
        /// The methods kombu registers, for the message.
        known: String,
    },
    /// A `compression` kombu knows, but this build has no codec for.
    #[error(
        "compression `{compression}` is not enabled: build events-celery with feature `{feature}`"
    )]
    CompressionNotEnabled {
        /// The method's content type (`application/x-brotli`).
        compression: &'static str,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// The body does not decompress with the method its `compression` header names.
    #[error("body does not decompress as `{compression}`: {reason}")]
    Decompress {
        /// The method's content type.
        compression: &'static str,
        /// The decoder's error.
        reason: String,
    },
    /// The body decompresses to more than the size limit; refused while decompressing, so no
    /// more than the limit was ever held.
    #[error(
        "body decompressed with `{compression}` is over the {limit}-byte limit (refused while decompressing)"
    )]
    DecompressedTooLarge {
        /// The method's content type.
        compression: &'static str,
        /// The configured limit ([`DecodeOptions::max_message_bytes`](crate::codec::DecodeOptions::max_message_bytes)).
        limit: usize,
    },
    /// A kombu tagged value (`{"__type__": …, "__value__": …}`) with an unknown type.
    #[error("unknown kombu JSON type `{type_name}` at {path}")]
    UnknownKombuType {
        /// The `__type__`.
        type_name: String,
        /// Where the value is (`kwargs.payload.when`).
        path: String,
    },
    /// A kombu tagged value whose `__value__` does not fit its `__type__`.
    #[error("invalid kombu `{type_name}` value at {path}: {reason}")]
    InvalidKombuValue {
        /// The `__type__`.
        type_name: String,
        /// Where the value is.
        path: String,
        /// What is wrong.
        reason: String,
    },

    /// The AMQP connection refused the message's header table before it was parsed (it nests
    /// too deep to parse safely); the text says why. The original headers are gone.
    #[error("the message's headers were refused: {0}")]
    RefusedHeaders(String),
}

/// The event payload of a decoded message does not fit the event type.
///
/// Names the event, the field (a dotted path from the payload, when serde could tell) and the
/// reason.
#[derive(Debug)]
pub struct PayloadError {
    pub(crate) event: String,
    pub(crate) type_name: Option<&'static str>,
    pub(crate) field: Option<String>,
    pub(crate) reason: String,
}

impl PayloadError {
    /// The event's name (`products.product_created`).
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The path of the offending field inside the payload (`stock`, `lines[2].sku`), or `None`
    /// when the payload as a whole is wrong (missing, or not an object).
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// Why the payload does not fit (serde's message).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot decode event `{}`", self.event)?;
        if let Some(type_name) = self.type_name {
            write!(f, " as `{type_name}`")?;
        }
        match &self.field {
            Some(field) => write!(f, ": field `{field}`: {}", self.reason),
            None => write!(f, ": {}", self.reason),
        }
    }
}

impl std::error::Error for PayloadError {}

/// A short name for a JSON value's type, for error messages.
pub(crate) fn json_type(value: &super::json::Json) -> String {
    use super::json::Json as Value;
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.len() <= 64 => format!("the string {s:?}"),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}
