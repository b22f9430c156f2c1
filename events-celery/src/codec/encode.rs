//! Typed events into [`TaskMessage`]s, as Python Celery 5's `send_task` builds them.

use std::sync::OnceLock;
use std::time::Duration;

use super::json::{Json, JsonMap, JsonNumber};
use chrono::{DateTime, FixedOffset, SubsecRound, TimeZone, Utc};
use events_core::{DomainEvent, EventRef, MAX_PAYLOAD_DEPTH};

use super::compression::Compression;
use super::error::EncodeError;
use super::message::{
    Embed, MessageProperties, PAYLOAD_KWARG, ProtocolVersion, Routing, TaskHeaders, TaskMessage,
    TimeLimit,
};
use super::python_repr::{args_repr, kwargs_repr};
use super::uuid4::new_uuid4;

/// The task-name prefix events are published under: `domain_events.<event name>`.
pub const DEFAULT_TASK_PREFIX: &str = "domain_events.";

/// Celery's content type for JSON messages.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Celery's content encoding for JSON messages.
pub const UTF8_CONTENT_ENCODING: &str = "utf-8";

/// The `kwargsrepr` Celery's `send_task` writes for a redacted payload.
pub const REDACTED_KWARGS_REPR: &str = "{'payload': '<redacted>'}";

/// What goes into the `kwargsrepr` header.
///
/// Celery fills it with a Python `repr` of the keyword arguments, which puts the whole event
/// into broker contents, worker logs and Flower. [`Redacted`](KwargsRepr::Redacted) keeps the
/// event out of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KwargsRepr {
    /// `saferepr(kwargs)` exactly as Celery writes it (cut at 1024 characters).
    #[default]
    Python,
    /// [`REDACTED_KWARGS_REPR`]: the header is there, the event is not.
    Redacted,
    /// This text, as given.
    Custom(String),
}

/// Whether RabbitMQ keeps a message on disk: Celery's `task_default_delivery_mode` (or a
/// route's `delivery_mode`), written to the `delivery_mode` property.
///
/// [`Persistent`](DeliveryMode::Persistent), Celery's default, survives a broker restart and is
/// confirmed only once written; [`Transient`](DeliveryMode::Transient) lives in memory, is
/// confirmed sooner (about 1.8× the publish rate on RabbitMQ here) and is lost if the broker
/// restarts before a worker takes it. Redis ignores the property (its own persistence settings
/// decide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMode {
    /// `delivery_mode = 2`: written to disk before the confirm.
    #[default]
    Persistent,
    /// `delivery_mode = 1`: memory only.
    Transient,
}

impl DeliveryMode {
    /// The AMQP property value: 2 or 1.
    pub fn as_amqp(self) -> u8 {
        match self {
            DeliveryMode::Persistent => 2,
            DeliveryMode::Transient => 1,
        }
    }
}

impl std::str::FromStr for DeliveryMode {
    type Err = String;

    /// Celery's spellings: `persistent` / `transient`, or the numbers `2` / `1`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "persistent" | "2" => Ok(DeliveryMode::Persistent),
            "transient" | "1" => Ok(DeliveryMode::Transient),
            other => Err(format!(
                "`{other}` is not a delivery mode: write `persistent` (2) or `transient` (1)"
            )),
        }
    }
}

/// When a task may run (`eta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schedule {
    Countdown(Duration),
    At(DateTime<FixedOffset>),
}

/// When a task expires (`expires`, and the `expiration` property).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    After(Duration),
    At(DateTime<FixedOffset>),
}

/// How to turn an event into a task message: routing, scheduling, priority, lineage, extra
/// headers. The defaults are what Python's `app.send_task(name, kwargs=...)` does.
///
/// ```
/// use std::time::Duration;
/// use events_celery::codec::{EncodeOptions, KwargsRepr};
///
/// let options = EncodeOptions::new()
///     .queue("default")
///     .countdown(Duration::from_secs(30))
///     .expires_in(Duration::from_secs(3600))
///     .priority(5)
///     .header("x-trace-id", "abc")
///     .kwargs_repr(KwargsRepr::Redacted);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeOptions {
    task_prefix: String,
    routing: Routing,
    task_id: Option<String>,
    schedule: Option<Schedule>,
    expiry: Option<Expiry>,
    priority: Option<u8>,
    retries: u32,
    parent_id: Option<String>,
    root_id: Option<String>,
    headers: Vec<(String, Json)>,
    /// A header [`header`](Self::header) refused for nesting too deep (encoding then fails).
    too_deep_header: Option<String>,
    kwargs_repr: KwargsRepr,
    time_limit: TimeLimit,
    reply_to: Option<String>,
    origin: Option<String>,
    delivery_mode: DeliveryMode,
    compression: Option<Compression>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl EncodeOptions {
    /// Celery's defaults: prefix `domain_events.`, queue `celery`, no eta, no expiry,
    /// priority 0, a fresh UUID v4 as id and root id.
    pub fn new() -> Self {
        Self {
            task_prefix: DEFAULT_TASK_PREFIX.to_owned(),
            routing: Routing::default(),
            task_id: None,
            schedule: None,
            expiry: None,
            priority: None,
            retries: 0,
            parent_id: None,
            root_id: None,
            headers: Vec::new(),
            too_deep_header: None,
            kwargs_repr: KwargsRepr::Python,
            time_limit: TimeLimit::default(),
            reply_to: None,
            origin: None,
            delivery_mode: DeliveryMode::Persistent,
            compression: None,
        }
    }

    /// Persistent (Celery's default) or transient messages; see [`DeliveryMode`].
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.delivery_mode = mode;
        self
    }

    /// Compress the body as Python's `send_task(..., compression=...)` does (kombu's
    /// `compression` header); `None` (the default) sends it as it is. Encoding fails with
    /// [`EncodeError::CompressionNotEnabled`] if this build lacks the method's feature.
    pub fn compression(mut self, compression: Option<Compression>) -> Self {
        self.compression = compression;
        self
    }

    /// The task-name prefix (`domain_events.` by default; may be empty).
    pub fn task_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.task_prefix = prefix.into();
        self
    }

    /// Publish straight to `queue` through the default exchange (Celery's way).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.routing = Routing::queue(queue);
        self
    }

    /// Publish to `exchange` with `routing_key`.
    pub fn routing(mut self, exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        self.routing = Routing {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        };
        self
    }

    /// Use this task id instead of a fresh UUID v4.
    pub fn task_id(mut self, id: impl Into<String>) -> Self {
        self.task_id = Some(id.into());
        self
    }

    /// Run no sooner than `delay` from now (Celery's `countdown`).
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.schedule = Some(Schedule::Countdown(delay));
        self
    }

    /// Run no sooner than `at` (Celery's `eta`).
    pub fn eta<Tz: TimeZone>(mut self, at: DateTime<Tz>) -> Self {
        self.schedule = Some(Schedule::At(at.fixed_offset()));
        self
    }

    /// Expire `after` from now (Celery's `expires=<seconds>`).
    pub fn expires_in(mut self, after: Duration) -> Self {
        self.expiry = Some(Expiry::After(after));
        self
    }

    /// Expire at `at` (Celery's `expires=<datetime>`).
    pub fn expires_at<Tz: TimeZone>(mut self, at: DateTime<Tz>) -> Self {
        self.expiry = Some(Expiry::At(at.fixed_offset()));
        self
    }

    /// The priority, 0–9 (checked when encoding).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// The `retries` header.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The id of the task that sends this one.
    pub fn parent_id(mut self, id: impl Into<String>) -> Self {
        self.parent_id = Some(id.into());
        self
    }

    /// The id of the first task of the workflow (default: this task's id).
    pub fn root_id(mut self, id: impl Into<String>) -> Self {
        self.root_id = Some(id.into());
        self
    }

    /// Adds a custom header (after Celery's own, as `send_task(headers=...)` puts it). Setting
    /// a name again replaces its value, as in a Python dict; a name Celery uses for its own
    /// headers is ignored.
    ///
    /// A value nesting arrays and objects deeper than a worker reads (126 levels) is not kept:
    /// encoding with these options then fails with [`EncodeError::TooDeep`].
    pub fn header(mut self, name: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        let name = name.into();
        let value = Json::from(value.into());
        if value.nests_deeper_than(MAX_PAYLOAD_DEPTH) {
            value.drop_iteratively();
            self.too_deep_header = Some(name);
            return self;
        }
        match self
            .headers
            .iter_mut()
            .find(|(existing, _)| *existing == name)
        {
            Some((_, existing)) => *existing = value,
            None => self.headers.push((name, value)),
        }
        self
    }

    /// What to put in `kwargsrepr` (default: Python's repr of the payload).
    pub fn kwargs_repr(mut self, repr: KwargsRepr) -> Self {
        self.kwargs_repr = repr;
        self
    }

    /// The `timelimit` header: hard and soft limits.
    pub fn time_limit(mut self, hard: Option<Duration>, soft: Option<Duration>) -> Self {
        let seconds =
            |limit: Option<Duration>| limit.map(|d| JsonNumber::from_f64(d.as_secs_f64()));
        self.time_limit = TimeLimit {
            hard: seconds(hard),
            soft: seconds(soft),
        };
        self
    }

    /// The `reply_to` property (default: one UUID per process, as Celery has one per app).
    pub fn reply_to(mut self, queue: impl Into<String>) -> Self {
        self.reply_to = Some(queue.into());
        self
    }

    /// The `origin` header (default: `gen<pid>@<hostname>`, as Celery writes it).
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// The task name for an event name: the prefix, then the name.
    pub fn task_name(&self, event_name: &str) -> String {
        let mut name = String::with_capacity(self.task_prefix.len() + event_name.len());
        name.push_str(&self.task_prefix);
        name.push_str(event_name);
        name
    }
}

impl TaskMessage {
    /// The task message for a typed event.
    ///
    /// Serialises the event once, to JSON; the message then writes to either broker with
    /// [`to_redis`](TaskMessage::to_redis) or [`to_amqp`](TaskMessage::to_amqp).
    pub fn from_event<E: DomainEvent>(
        event: &E,
        options: &EncodeOptions,
    ) -> Result<Self, EncodeError> {
        Self::from_event_ref(EventRef::new(event), options)
    }

    /// The task message for a type-erased event (what a backend receives).
    pub fn from_event_ref(
        event: EventRef<'_>,
        options: &EncodeOptions,
    ) -> Result<Self, EncodeError> {
        // Into the codec's own JSON value: wide integers exact, and a NaN or infinity refused
        // with its field named (serde_json would silently write `null`).
        // `from_serialize` refuses a value nesting deeper than a worker reads.
        let payload =
            Json::from_serialize(event.serializable()).map_err(|error| EncodeError::Serialize {
                event: event.name().to_owned(),
                source: serde::ser::Error::custom(error),
            })?;
        Self::from_bounded_payload(event.name(), payload, options)
    }

    /// The task message for an event given as its name and JSON payload (a [`Json`], or a
    /// `serde_json::Value`).
    pub fn from_payload(
        event_name: &str,
        payload: impl Into<Json>,
        options: &EncodeOptions,
    ) -> Result<Self, EncodeError> {
        // Converted without recursion; a value built in code may be deeper than the stack.
        let payload = payload.into();
        if payload.nests_deeper_than(MAX_PAYLOAD_DEPTH) {
            payload.drop_iteratively();
            return Err(EncodeError::TooDeep {
                part: format!("the payload of `{event_name}`"),
                limit: MAX_PAYLOAD_DEPTH,
            });
        }
        Self::from_bounded_payload(event_name, payload, options)
    }

    /// [`from_payload`](Self::from_payload) for a payload known to nest at most
    /// [`MAX_PAYLOAD_DEPTH`] deep.
    fn from_bounded_payload(
        event_name: &str,
        payload: Json,
        options: &EncodeOptions,
    ) -> Result<Self, EncodeError> {
        if let Some(header) = &options.too_deep_header {
            return Err(EncodeError::TooDeep {
                part: format!("header `{header}`"),
                limit: MAX_PAYLOAD_DEPTH,
            });
        }
        if let Some(priority) = options.priority.filter(|&p| p > 9) {
            return Err(EncodeError::InvalidPriority(priority));
        }
        if let Some(compression) = options.compression {
            compression.ensure_enabled()?;
        }
        // Python's datetimes have microseconds. The clock is read once, and only when a time
        // is asked for.
        let clock = std::cell::OnceCell::new();
        let now = || *clock.get_or_init(|| Utc::now().fixed_offset().trunc_subsecs(6));
        let eta = match options.schedule {
            None => None,
            Some(Schedule::At(at)) => Some(at.trunc_subsecs(6)),
            Some(Schedule::Countdown(delay)) => Some(later(now(), delay, "countdown")?),
        };
        let (expires, expiration) = match options.expiry {
            None => (None, None),
            Some(Expiry::After(after)) => (
                Some(later(now(), after, "expires")?),
                Some(after.as_millis()),
            ),
            Some(Expiry::At(at)) => {
                let at = at.trunc_subsecs(6);
                // Python: `str(int(max(expires - now, 0) * 1000))`.
                let left = (at - now()).num_milliseconds().max(0).unsigned_abs();
                (Some(at), Some(u128::from(left)))
            }
        };

        let id = options.task_id.clone().unwrap_or_else(new_uuid4);
        let mut kwargs = JsonMap::with_capacity(1);
        kwargs.insert(PAYLOAD_KWARG.to_owned(), payload);
        let kwargsrepr = match &options.kwargs_repr {
            KwargsRepr::Python => kwargs_repr(&kwargs),
            KwargsRepr::Redacted => REDACTED_KWARGS_REPR.to_owned(),
            KwargsRepr::Custom(text) => text.clone(),
        };
        let custom = options
            .headers
            .iter()
            .filter(|(name, _)| super::message::Header::from_name(name).is_none())
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();

        Ok(TaskMessage {
            task: options.task_name(event_name),
            protocol: ProtocolVersion::V2,
            args: Vec::new(),
            kwargs,
            embed: Embed::default(),
            headers: TaskHeaders {
                lang: Some("py".to_owned()),
                shadow: None,
                eta,
                expires,
                group: None,
                group_index: None,
                retries: options.retries,
                timelimit: options.time_limit.clone(),
                root_id: Some(options.root_id.clone().unwrap_or_else(|| id.clone())),
                parent_id: options.parent_id.clone(),
                argsrepr: Some(args_repr(&[])),
                kwargsrepr: Some(kwargsrepr),
                origin: Some(
                    options
                        .origin
                        .clone()
                        .unwrap_or_else(|| default_origin().to_owned()),
                ),
                ignore_result: None,
                replaced_task_nesting: 0,
                stamped_headers: None,
                stamps: JsonMap::new(),
                custom,
            },
            properties: MessageProperties {
                correlation_id: Some(id.clone()),
                reply_to: Some(
                    options
                        .reply_to
                        .clone()
                        .unwrap_or_else(|| default_reply_to().to_owned()),
                ),
                content_type: JSON_CONTENT_TYPE.to_owned(),
                content_encoding: UTF8_CONTENT_ENCODING.to_owned(),
                delivery_mode: Some(options.delivery_mode.as_amqp()),
                priority: Some(options.priority.unwrap_or(0)),
                expiration: expiration.map(|ms| ms.to_string()),
                origin: None,
                delivery_tag: None,
                compression: options.compression,
            },
            routing: options.routing.clone(),
            raw_envelope: None,
            id,
        })
    }
}

fn later(
    now: DateTime<FixedOffset>,
    delay: Duration,
    option: &'static str,
) -> Result<DateTime<FixedOffset>, EncodeError> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|delay| now.checked_add_signed(delay))
        .ok_or(EncodeError::TimeOutOfRange { option })
}

/// `gen<pid>@<hostname>`, as Celery's `origin` (computed once).
fn default_origin() -> &'static str {
    static ORIGIN: OnceLock<String> = OnceLock::new();
    ORIGIN.get_or_init(|| format!("gen{}@{}", std::process::id(), hostname()))
}

/// One reply-to id per process, as Celery has one per app and process.
fn default_reply_to() -> &'static str {
    static REPLY_TO: OnceLock<String> = OnceLock::new();
    REPLY_TO.get_or_init(new_uuid4)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Json {
        Json::parse(r#"{"product_id": "abc-123", "name": "Brake pad", "stock": 4}"#).unwrap()
    }

    #[test]
    fn defaults_match_send_task() {
        let message =
            TaskMessage::from_payload("products.product_created", seed(), &EncodeOptions::new())
                .unwrap();
        assert_eq!(message.task, "domain_events.products.product_created");
        let id = uuid::Uuid::parse_str(&message.id).unwrap();
        assert_eq!(id.get_version_num(), 4);
        assert_eq!(
            message.headers.root_id.as_deref(),
            Some(message.id.as_str())
        );
        assert_eq!(
            message.properties.correlation_id.as_deref(),
            Some(message.id.as_str())
        );
        assert_eq!(message.headers.argsrepr.as_deref(), Some("()"));
        assert_eq!(
            message.headers.kwargsrepr.as_deref(),
            Some("{'payload': {'product_id': 'abc-123', 'name': 'Brake pad', 'stock': 4}}")
        );
        assert!(
            message
                .headers
                .origin
                .as_deref()
                .unwrap()
                .starts_with("gen")
        );
        assert_eq!(message.properties.priority, Some(0));
        assert_eq!(message.properties.delivery_mode, Some(2));
        assert_eq!(message.routing, Routing::queue("celery"));
        assert_eq!(message.headers.eta, None);
        assert_eq!(message.properties.expiration, None);
    }

    #[test]
    fn options_land_in_headers_and_properties() {
        let options = EncodeOptions::new()
            .task_prefix("tasks.")
            .routing("events", "products")
            .task_id("fixed")
            .countdown(Duration::from_secs(30))
            .expires_in(Duration::from_secs(3600))
            .priority(5)
            .retries(2)
            .parent_id("parent")
            .root_id("root")
            .header("x-trace-id", "first")
            .header("retries", 99)
            .header("x-trace-id", "abc")
            .kwargs_repr(KwargsRepr::Redacted)
            .time_limit(Some(Duration::from_secs(10)), None)
            .reply_to("replies")
            .origin("gen1@host");
        let before = Utc::now();
        let message = TaskMessage::from_payload("p.c", seed(), &options).unwrap();
        assert_eq!(message.task, "tasks.p.c");
        assert_eq!(message.id, "fixed");
        let eta = message.headers.eta.unwrap();
        let expires = message.headers.expires.unwrap();
        assert_eq!((expires - eta).num_seconds(), 3570);
        assert!((eta.with_timezone(&Utc) - before).num_seconds() >= 30);
        assert_eq!(message.properties.expiration.as_deref(), Some("3600000"));
        assert_eq!(message.properties.priority, Some(5));
        assert_eq!(message.headers.retries, 2);
        assert_eq!(message.headers.parent_id.as_deref(), Some("parent"));
        assert_eq!(message.headers.root_id.as_deref(), Some("root"));
        assert_eq!(
            message.headers.custom,
            vec![("x-trace-id".to_owned(), Json::from("abc"))]
        );
        assert_eq!(
            message.headers.kwargsrepr.as_deref(),
            Some(REDACTED_KWARGS_REPR)
        );
        assert_eq!(
            message.headers.timelimit.hard_duration(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(message.properties.reply_to.as_deref(), Some("replies"));
        assert_eq!(message.headers.origin.as_deref(), Some("gen1@host"));
        assert_eq!(
            message.routing,
            Routing {
                exchange: "events".into(),
                routing_key: "products".into()
            }
        );
    }

    #[test]
    fn priority_above_nine_is_refused() {
        let error =
            TaskMessage::from_payload("e", seed(), &EncodeOptions::new().priority(10)).unwrap_err();
        assert!(matches!(error, EncodeError::InvalidPriority(10)));
    }

    #[test]
    fn expiry_in_the_past_sets_a_zero_ttl() {
        let at = Utc::now() - chrono::Duration::seconds(5);
        let message =
            TaskMessage::from_payload("e", seed(), &EncodeOptions::new().expires_at(at)).unwrap();
        assert_eq!(message.properties.expiration.as_deref(), Some("0"));
        assert_eq!(
            message.headers.expires,
            Some(at.fixed_offset().trunc_subsecs(6))
        );
    }
}
