//! Celery's monitoring events (`celeryev`), built exactly as a Python Celery 5.7 worker sends
//! them (`celery.events.dispatcher.EventDispatcher`, `celery.worker.heartbeat.Heart`,
//! `celery.worker.request.Request.send_event`), for Flower, `celery events` and any
//! `EventReceiver`.
//!
//! Every event is a JSON object whose keys come in Celery's order: `hostname`, `utcoffset`,
//! `pid`, `clock`, the event's own fields, `timestamp`, `type`. It is published to the exchange
//! [`EVENT_EXCHANGE`] (`celeryev`: topic on AMQP, fanout on Redis) with routing key the type with
//! `-` turned into `.` (`worker.heartbeat`, `task.succeeded`), header `hostname`, delivery mode 1
//! (transient). A Python worker with an event loop (prefork, threads, solo on AMQP/Redis)
//! buffers task events and sends them as one JSON **list** with routing key `task.multi`
//! ([`task_multi_message`]); receivers accept both forms.
//!
//! On Redis the message is `PUBLISH`ed on `/{db}.celeryev/{routing_key}`
//! ([`KombuMessage::redis_channel`]) with kombu's envelope ([`KombuMessage::redis_envelope`]).

use super::json::{Json, JsonMap};
use super::kombu_message::KombuMessage;
use super::message::TaskMessage;
use super::timestamp::isoformat;

/// The exchange Celery publishes events to (`event_exchange`): a durable topic exchange on
/// AMQP (declare it `durable=true`, `auto_delete=false`, as kombu does), fanout on Redis.
pub const EVENT_EXCHANGE: &str = "celeryev";

/// Celery's default heartbeat interval, in seconds (`Heart.interval`, the `freq` field).
pub const DEFAULT_HEARTBEAT_FREQ: f64 = 2.0;

/// The routing key of a buffered list of task events.
pub const TASK_MULTI_ROUTING_KEY: &str = "task.multi";

/// The fields every event of one worker carries.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSource {
    /// The node name, `name@host` (`celery@web-1`).
    pub hostname: String,
    /// The worker's process id.
    pub pid: u32,
    /// Hours **west** of UTC, as Celery's `utcoffset()` (`time.timezone / 3600`): `0.0` in
    /// UTC, `-2.0` in UTC+2 ([`utcoffset_hours`]).
    pub utcoffset: f64,
}

/// When an event is sent: the Lamport clock value (forwarded once per event) and the Unix
/// time in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventStamp {
    /// The worker's Lamport clock after forwarding it for this event.
    pub clock: u64,
    /// Seconds since the Unix epoch (`time.time()`).
    pub timestamp: f64,
}

/// What a worker says about its software in worker events (`sw_ident`, `sw_ver`, `sw_sys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftwareInfo {
    /// `py-celery` for Python; [`SoftwareInfo::rust`] says `events-celery`.
    pub ident: String,
    /// The version.
    pub version: String,
    /// The OS, as Python's `platform.system()` (`Linux`, `Darwin`, `Windows`).
    pub system: String,
}

impl SoftwareInfo {
    /// This crate: `events-celery`, its version, the OS as `platform.system()` spells it.
    pub fn rust() -> Self {
        let system = match std::env::consts::OS {
            "linux" => "Linux",
            "macos" => "Darwin",
            "windows" => "Windows",
            "freebsd" => "FreeBSD",
            other => other,
        };
        Self {
            ident: "events-celery".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            system: system.to_owned(),
        }
    }
}

/// The three worker events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerEventKind {
    /// `worker-online`: sent once when the worker starts consuming.
    Online,
    /// `worker-heartbeat`: every `freq` seconds.
    Heartbeat,
    /// `worker-offline`: sent once on shutdown.
    Offline,
}

impl WorkerEventKind {
    /// The event type (`worker-heartbeat`).
    pub fn event_type(self) -> &'static str {
        match self {
            Self::Online => "worker-online",
            Self::Heartbeat => "worker-heartbeat",
            Self::Offline => "worker-offline",
        }
    }
}

/// The worker's state as worker events report it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    /// The heartbeat interval in seconds ([`DEFAULT_HEARTBEAT_FREQ`]).
    pub freq: f64,
    /// Tasks running now.
    pub active: u64,
    /// Tasks processed since start (Celery's `all_total_count`).
    pub processed: u64,
    /// The 1, 5 and 15 minute load averages, rounded up to 2 decimals ([`round_loadavg`]).
    pub loadavg: [f64; 3],
    /// `sw_ident`, `sw_ver`, `sw_sys`.
    pub software: SoftwareInfo,
}

/// A task event, with the fields Celery 5.7 sends for it (besides `uuid`, which every one
/// carries).
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    /// `task-received`: the worker got the message.
    Received {
        /// The task id.
        uuid: String,
        /// The task name.
        name: String,
        /// The `argsrepr` header (`"(2, 3)"`); `""` when the message has none, as Celery.
        args: String,
        /// The `kwargsrepr` header (`"{}"`); `""` when the message has none.
        kwargs: String,
        /// The `root_id` header.
        root_id: Option<String>,
        /// The `parent_id` header.
        parent_id: Option<String>,
        /// The `retries` header.
        retries: u64,
        /// The `eta` as `isoformat()`.
        eta: Option<String>,
        /// The `expires` as `isoformat()`.
        expires: Option<String>,
    },
    /// `task-started`: a handler began running it.
    Started {
        /// The task id.
        uuid: String,
    },
    /// `task-succeeded`.
    Succeeded {
        /// The task id.
        uuid: String,
        /// `saferepr` of the return value (`"5"`, `"None"`).
        result: String,
        /// Seconds it ran.
        runtime: f64,
    },
    /// `task-failed`.
    Failed {
        /// The task id.
        uuid: String,
        /// `repr` of the exception (`"ValueError('boom')"`).
        exception: String,
        /// The traceback text.
        traceback: String,
    },
    /// `task-retried`.
    Retried {
        /// The task id.
        uuid: String,
        /// `repr` of the exception that caused the retry.
        exception: String,
        /// The traceback text.
        traceback: String,
    },
    /// `task-rejected`: the message was rejected (dead-lettered when `requeue` is false).
    Rejected {
        /// The task id.
        uuid: String,
        /// Whether it went back to the queue.
        requeue: bool,
    },
    /// `task-revoked`: dropped before running, because revoked or expired.
    Revoked {
        /// The task id.
        uuid: String,
        /// Whether a running task was terminated.
        terminated: bool,
        /// The signal number used to terminate it.
        signum: Option<i32>,
        /// Whether it was dropped because its `expires` had passed.
        expired: bool,
    },
}

impl TaskEvent {
    /// `task-received` for a decoded task message, with the fields Celery's worker takes from
    /// it (`argsrepr` / `kwargsrepr` headers, `root_id`, `parent_id`, `retries`, `eta`,
    /// `expires`).
    pub fn received(message: &TaskMessage) -> Self {
        let h = &message.headers;
        Self::Received {
            uuid: message.id.clone(),
            name: message.task.clone(),
            args: h.argsrepr.clone().unwrap_or_default(),
            kwargs: h.kwargsrepr.clone().unwrap_or_default(),
            root_id: h.root_id.clone(),
            parent_id: h.parent_id.clone(),
            retries: u64::from(h.retries),
            eta: h.eta.as_ref().map(isoformat),
            expires: h.expires.as_ref().map(isoformat),
        }
    }

    /// The event type (`task-succeeded`).
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Received { .. } => "task-received",
            Self::Started { .. } => "task-started",
            Self::Succeeded { .. } => "task-succeeded",
            Self::Failed { .. } => "task-failed",
            Self::Retried { .. } => "task-retried",
            Self::Rejected { .. } => "task-rejected",
            Self::Revoked { .. } => "task-revoked",
        }
    }

    /// The task id.
    pub fn uuid(&self) -> &str {
        match self {
            Self::Received { uuid, .. }
            | Self::Started { uuid }
            | Self::Succeeded { uuid, .. }
            | Self::Failed { uuid, .. }
            | Self::Retried { uuid, .. }
            | Self::Rejected { uuid, .. }
            | Self::Revoked { uuid, .. } => uuid,
        }
    }

    /// The event's own fields, `uuid` first, in Celery's order.
    fn push_fields(&self, map: &mut JsonMap) {
        let text = |value: &str| Json::String(value.to_owned());
        let optional = |value: &Option<String>| value.as_deref().map_or(Json::Null, text);
        map.insert("uuid".into(), text(self.uuid()));
        match self {
            Self::Received {
                name,
                args,
                kwargs,
                root_id,
                parent_id,
                retries,
                eta,
                expires,
                ..
            } => {
                map.insert("name".into(), text(name));
                map.insert("args".into(), text(args));
                map.insert("kwargs".into(), text(kwargs));
                map.insert("root_id".into(), optional(root_id));
                map.insert("parent_id".into(), optional(parent_id));
                map.insert("retries".into(), (*retries).into());
                map.insert("eta".into(), optional(eta));
                map.insert("expires".into(), optional(expires));
            }
            Self::Started { .. } => {}
            Self::Succeeded {
                result, runtime, ..
            } => {
                map.insert("result".into(), text(result));
                map.insert("runtime".into(), (*runtime).into());
            }
            Self::Failed {
                exception,
                traceback,
                ..
            }
            | Self::Retried {
                exception,
                traceback,
                ..
            } => {
                map.insert("exception".into(), text(exception));
                map.insert("traceback".into(), text(traceback));
            }
            Self::Rejected { requeue, .. } => {
                map.insert("requeue".into(), (*requeue).into());
            }
            Self::Revoked {
                terminated,
                signum,
                expired,
                ..
            } => {
                map.insert("terminated".into(), (*terminated).into());
                map.insert("signum".into(), signum.map_or(Json::Null, Json::from));
                map.insert("expired".into(), (*expired).into());
            }
        }
    }
}

/// The routing key of an event type: `-` becomes `.` (`task-succeeded` → `task.succeeded`).
pub fn event_routing_key(event_type: &str) -> String {
    event_type.replace('-', ".")
}

/// The group of an event type, the part before the first `-` (`task`, `worker`): what
/// `enable_events` / `disable_events` switch.
pub fn event_group(event_type: &str) -> &str {
    event_type.split('-').next().unwrap_or(event_type)
}

/// Celery's `utcoffset()` from the local offset **east** of UTC in seconds: hours west, exact
/// (`+19800` s, UTC+5:30, gives `-5.5`).
pub fn utcoffset_hours(east_seconds: i32) -> f64 {
    -f64::from(east_seconds) / 3600.0
}

/// Celery's `load_average()`: each value rounded **up** to 2 decimals.
pub fn round_loadavg(loadavg: [f64; 3]) -> [f64; 3] {
    loadavg.map(|value| (value * 100.0).ceil() / 100.0)
}

fn event_body(source: &EventSource, stamp: EventStamp, event_type: &str, fields: JsonMap) -> Json {
    let mut map = JsonMap::with_capacity(fields.len() + 6);
    map.insert("hostname".into(), source.hostname.clone().into());
    map.insert("utcoffset".into(), source.utcoffset.into());
    map.insert("pid".into(), source.pid.into());
    map.insert("clock".into(), stamp.clock.into());
    for (key, value) in fields {
        map.insert(key, value);
    }
    map.insert("timestamp".into(), stamp.timestamp.into());
    map.insert("type".into(), event_type.into());
    Json::Object(map)
}

fn event_message(source: &EventSource, routing_key: String, body: Json) -> KombuMessage {
    let mut headers = JsonMap::with_capacity(1);
    headers.insert("hostname".into(), source.hostname.clone().into());
    KombuMessage {
        exchange: EVENT_EXCHANGE.to_owned(),
        routing_key,
        headers,
        delivery_mode: 1,
        body,
    }
}

/// The body of a worker event (`worker-heartbeat`…): `hostname, utcoffset, pid, clock, freq,
/// active, processed, loadavg, sw_ident, sw_ver, sw_sys, timestamp, type`.
pub fn worker_event_body(
    source: &EventSource,
    kind: WorkerEventKind,
    status: &WorkerStatus,
    stamp: EventStamp,
) -> Json {
    let mut fields = JsonMap::with_capacity(7);
    fields.insert("freq".into(), status.freq.into());
    fields.insert("active".into(), status.active.into());
    fields.insert("processed".into(), status.processed.into());
    fields.insert(
        "loadavg".into(),
        Json::Array(status.loadavg.iter().map(|&v| v.into()).collect()),
    );
    fields.insert("sw_ident".into(), status.software.ident.clone().into());
    fields.insert("sw_ver".into(), status.software.version.clone().into());
    fields.insert("sw_sys".into(), status.software.system.clone().into());
    event_body(source, stamp, kind.event_type(), fields)
}

/// A worker event as a message for `celeryev` (routing key `worker.online` / `.heartbeat` /
/// `.offline`).
pub fn worker_event_message(
    source: &EventSource,
    kind: WorkerEventKind,
    status: &WorkerStatus,
    stamp: EventStamp,
) -> KombuMessage {
    let body = worker_event_body(source, kind, status, stamp);
    event_message(source, event_routing_key(kind.event_type()), body)
}

/// The body of a task event: `hostname, utcoffset, pid, clock, uuid, <fields>, timestamp, type`.
pub fn task_event_body(source: &EventSource, event: &TaskEvent, stamp: EventStamp) -> Json {
    let mut fields = JsonMap::with_capacity(10);
    event.push_fields(&mut fields);
    event_body(source, stamp, event.event_type(), fields)
}

/// One task event as its own message (routing key `task.received`, `task.succeeded`…), as a
/// Python worker without an event loop sends it.
pub fn task_event_message(
    source: &EventSource,
    event: &TaskEvent,
    stamp: EventStamp,
) -> KombuMessage {
    let body = task_event_body(source, event, stamp);
    event_message(source, event_routing_key(event.event_type()), body)
}

/// Task event bodies ([`task_event_body`]) as one `task.multi` message whose body is their
/// list, as a Python worker with an event loop flushes its buffer.
pub fn task_multi_message(source: &EventSource, bodies: Vec<Json>) -> KombuMessage {
    event_message(
        source,
        TASK_MULTI_ROUTING_KEY.to_owned(),
        Json::Array(bodies),
    )
}
