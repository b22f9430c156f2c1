//! Answers remote-control requests as a Celery 5.7 worker does (`celery.worker.control`), with
//! no I/O: given a parsed [`PidboxRequest`] and a read-only [`WorkerSnapshot`], it returns the
//! reply message (if any) and the [`Action`]s the worker must carry out.

use crate::broker::queues::{ConsumedQueue, QueueBinding, check_name};
use crate::broker::topology::ExchangeKind;
use crate::codec::{Json, JsonMap, KombuMessage, PidboxRequest, pidbox_reply};

use super::clock::LamportClock;
use super::revoked::RevokedSet;

/// The commands that change the worker's state; [`ControlConfig::read_only`] refuses them.
pub(crate) const STATE_CHANGING_COMMANDS: &[&str] = &[
    "revoke",
    "terminate",
    "revoke_by_stamped_headers",
    "enable_events",
    "disable_events",
    "add_consumer",
    "cancel_consumer",
    "shutdown",
    "rate_limit",
    "time_limit",
    "pool_grow",
    "pool_shrink",
    "pool_restart",
    "autoscale",
    "election",
];

/// Celery commands this worker knows but cannot carry out (it has no process pool, rate limits
/// or memory sampler): they get an error reply naming the command.
const UNSUPPORTED_COMMANDS: &[&str] = &[
    "terminate",
    "revoke_by_stamped_headers",
    "rate_limit",
    "time_limit",
    "pool_grow",
    "pool_shrink",
    "pool_restart",
    "autoscale",
    "election",
    "objgraph",
    "memsample",
    "memdump",
];

/// What the worker must do after a control command (the dispatcher does no I/O).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Drop these task ids before running them (they are in [`ControlState::revoked`] already).
    Revoke(Vec<String>),
    /// Shut down gracefully.
    Shutdown,
    /// Start consuming this queue (declared with its binding); nothing if consumed already.
    AddConsumer(ConsumedQueue),
    /// Stop consuming this queue; nothing if it is not consumed.
    CancelConsumer(String),
    /// Send task events (`true`) or stop (`false`).
    SetTaskEvents(bool),
    /// Send a `worker-heartbeat` now (Celery's `heartbeat` command sends one with `freq` 5).
    SendHeartbeat,
}

/// The result of one request.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Outcome {
    /// The reply to publish (`None`: not for this node, a cast, or `shutdown`).
    pub(crate) reply: Option<KombuMessage>,
    /// The reply's value (`{"ok": "pong"}`), whether or not a reply is sent.
    pub(crate) value: Option<Json>,
    /// What the worker must do.
    pub(crate) actions: Vec<Action>,
}

/// Which event groups the worker sends, as Celery's dispatcher `groups`: empty means all;
/// a worker without task events has `{"worker"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventGroups {
    groups: Vec<String>,
}

impl EventGroups {
    /// With task events (`-E`): every group. Without: only `worker`.
    pub(crate) fn new(task_events: bool) -> Self {
        Self {
            groups: if task_events {
                Vec::new()
            } else {
                vec!["worker".to_owned()]
            },
        }
    }

    /// Whether events of `group` (`task`, `worker`) are sent.
    pub(crate) fn sends(&self, group: &str) -> bool {
        self.groups.is_empty() || self.groups.iter().any(|g| g == group)
    }

    /// `enable_events`: adds `task` to a restricted set; `true` if it changed anything.
    pub(crate) fn enable_task(&mut self) -> bool {
        if !self.groups.is_empty() && !self.groups.iter().any(|g| g == "task") {
            self.groups.push("task".to_owned());
            true
        } else {
            false
        }
    }

    /// `disable_events`: removes `task` if listed; `true` if it changed anything. As in
    /// Celery, a worker started with task events (empty set: all groups) is not changed.
    pub(crate) fn disable_task(&mut self) -> bool {
        let before = self.groups.len();
        self.groups.retain(|g| g != "task");
        self.groups.len() != before
    }
}

/// How the dispatcher behaves.
#[derive(Debug, Clone)]
pub(crate) struct ControlConfig {
    /// The node name, `name@host`.
    pub(crate) hostname: String,
    /// Refuse [`STATE_CHANGING_COMMANDS`] with an error reply.
    pub(crate) read_only: bool,
    /// Whether an event dispatcher exists (events not entirely off); without one,
    /// `enable_events` / `disable_events` answer `event dispatcher unavailable`.
    pub(crate) events_available: bool,
}

/// One task as `inspect active` / `reserved` / `query_task` show it (`Request.info()`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskInfo {
    /// The task id.
    pub(crate) id: String,
    /// The task name.
    pub(crate) name: String,
    /// The positional arguments.
    pub(crate) args: Json,
    /// The keyword arguments.
    pub(crate) kwargs: Json,
    /// The `argsrepr` (shown instead of `args` with `safe=True`).
    pub(crate) argsrepr: String,
    /// The `kwargsrepr`.
    pub(crate) kwargsrepr: String,
    /// When it started running (Unix seconds), if it has.
    pub(crate) time_start: Option<f64>,
    /// Whether its message has been acknowledged.
    pub(crate) acknowledged: bool,
    /// `delivery_info.exchange`.
    pub(crate) exchange: String,
    /// `delivery_info.routing_key`.
    pub(crate) routing_key: String,
    /// `delivery_info.priority`.
    pub(crate) priority: Option<u8>,
    /// `delivery_info.redelivered`.
    pub(crate) redelivered: bool,
    /// The pid running it, if running.
    pub(crate) worker_pid: Option<u32>,
}

/// A task held by this worker while its eta is ahead (`inspect scheduled`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScheduledTask {
    /// The eta, `isoformat()`.
    pub(crate) eta: Option<String>,
    /// The priority of its entry in Celery's timer: 6 for every eta task (the message's own
    /// priority is in the request's `delivery_info`).
    pub(crate) priority: i64,
    /// The request.
    pub(crate) request: TaskInfo,
}

/// A consumed queue (`inspect active_queues`, kombu's `Queue.as_dict(recurse=True)`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueInfo {
    /// The queue.
    pub(crate) name: String,
    /// Its exchange (`""` on the default exchange: shown as the queue's own name, as Celery's
    /// automatic queues are).
    pub(crate) exchange: String,
    /// `direct`, `topic`, `fanout`.
    pub(crate) exchange_type: String,
    /// The binding key.
    pub(crate) routing_key: String,
    /// `x-max-priority`, if set.
    pub(crate) max_priority: Option<u8>,
}

/// What `inspect stats` reports about the broker connection (no password).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BrokerInfo {
    /// Host.
    pub(crate) hostname: String,
    /// User name.
    pub(crate) userid: Option<String>,
    /// Virtual host (AMQP) or database number (Redis), as text.
    pub(crate) virtual_host: String,
    /// Port.
    pub(crate) port: u16,
    /// `amqp` or `redis`.
    pub(crate) transport: String,
    /// TLS.
    pub(crate) ssl: bool,
    /// The AMQP heartbeat, seconds.
    pub(crate) heartbeat: Option<f64>,
}

/// A read-only view of the worker, taken when a request arrives.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkerSnapshot {
    /// The worker's pid.
    pub(crate) pid: u32,
    /// Registered task names.
    pub(crate) registered: Vec<String>,
    /// Tasks running now.
    pub(crate) active: Vec<TaskInfo>,
    /// Tasks received, not running yet, their eta (if any) come: waiting for a slot.
    pub(crate) reserved: Vec<TaskInfo>,
    /// Tasks received whose eta is still ahead.
    pub(crate) scheduled: Vec<ScheduledTask>,
    /// Consumed queues.
    pub(crate) queues: Vec<QueueInfo>,
    /// Tasks processed per name (`stats.total`), in first-seen order.
    pub(crate) total: Vec<(String, u64)>,
    /// Seconds since start.
    pub(crate) uptime_secs: u64,
    /// How many messages run at once.
    pub(crate) concurrency: usize,
    /// The prefetch count.
    pub(crate) prefetch_count: u64,
    /// The broker connection.
    pub(crate) broker: BrokerInfo,
    /// The configuration to show (`inspect conf`): passwords in URLs and secret-looking keys
    /// are masked by the dispatcher.
    pub(crate) conf: JsonMap,
    /// The software line of `inspect report` (`events-celery:0.1.0 rustc`).
    pub(crate) software: String,
    /// The OS (`Linux`).
    pub(crate) system: String,
}

/// The control plane's own state: the revoked ids, the event groups, the configuration.
#[derive(Debug, Clone)]
pub(crate) struct ControlState {
    config: ControlConfig,
    /// The revoked task ids.
    pub(crate) revoked: RevokedSet,
    /// The event groups sent.
    pub(crate) events: EventGroups,
}

impl ControlState {
    /// A fresh state; `task_events` as the worker starts (`-E`).
    pub(crate) fn new(config: ControlConfig, task_events: bool) -> Self {
        Self {
            config,
            revoked: RevokedSet::default(),
            events: EventGroups::new(task_events),
        }
    }

    /// Handles one request as kombu's pidbox `Node` and Celery's `Panel` do: forwards the
    /// clock and adjusts it to the request's, skips a request for other nodes, runs the
    /// command, and builds the reply (with the clock forwarded again) when the request has a
    /// `reply_to`. `now` is a monotonic time in seconds (for the revoked set).
    pub(crate) fn handle(
        &mut self,
        request: &PidboxRequest,
        snapshot: &WorkerSnapshot,
        clock: &mut LamportClock,
        now: f64,
    ) -> Outcome {
        clock.forward();
        clock.adjust(request.clock);
        if !request.is_for(&self.config.hostname) {
            return Outcome::default();
        }
        let mut actions = Vec::new();
        let value = self.run(request, snapshot, clock, now, &mut actions);
        let reply = match (&value, &request.reply_to) {
            (Some(value), Some(reply_to)) => Some(pidbox_reply(
                &self.config.hostname,
                value.clone(),
                reply_to,
                &request.ticket,
                clock.forward(),
            )),
            _ => None,
        };
        Outcome {
            reply,
            value,
            actions,
        }
    }

    /// The command's reply value; `None` for `shutdown` (Celery raises before replying).
    fn run(
        &mut self,
        request: &PidboxRequest,
        snapshot: &WorkerSnapshot,
        clock: &mut LamportClock,
        now: f64,
        actions: &mut Vec<Action>,
    ) -> Option<Json> {
        let method = request.method.as_str();
        let host = self.config.hostname.clone();
        let host = host.as_str();
        let empty = JsonMap::new();
        let args = match &request.arguments {
            Json::Object(map) => map,
            Json::Null => &empty,
            other => {
                return Some(error(format!(
                    "TypeError({})",
                    py_repr(&format!(
                        "{}() argument after ** must be a mapping, not {}",
                        method,
                        py_type(other)
                    ))
                )));
            }
        };
        if self.config.read_only && STATE_CHANGING_COMMANDS.contains(&method) {
            return Some(error(format!(
                "control command `{method}` is refused: this worker answers only commands that \
                 do not change its state"
            )));
        }
        if UNSUPPORTED_COMMANDS.contains(&method) {
            return Some(error(format!(
                "control command `{method}` is not supported by this worker (events-celery)"
            )));
        }
        let value = match method {
            "ping" => ok("pong"),
            "stats" => stats(snapshot, clock.value()),
            "active" | "dump_active" => {
                let safe = args.get("safe").is_some_and(truthy);
                Json::Array(snapshot.active.iter().map(|t| t.info(safe, host)).collect())
            }
            "reserved" | "dump_reserved" => Json::Array(
                snapshot
                    .reserved
                    .iter()
                    .map(|t| t.info(false, host))
                    .collect(),
            ),
            "scheduled" | "dump_schedule" => {
                Json::Array(snapshot.scheduled.iter().map(|s| s.to_json(host)).collect())
            }
            "registered" | "dump_tasks" => {
                let builtins = args.get("builtins").is_some_and(truthy);
                let mut names: Vec<&String> = snapshot
                    .registered
                    .iter()
                    .filter(|name| builtins || !name.starts_with("celery."))
                    .collect();
                names.sort();
                names.dedup();
                Json::Array(names.into_iter().map(|n| Json::from(n.as_str())).collect())
            }
            "active_queues" => {
                Json::Array(snapshot.queues.iter().map(QueueInfo::to_json).collect())
            }
            "conf" | "dump_conf" => safe_conf(&snapshot.conf),
            "report" => ok(&report(snapshot)),
            "query_task" => query_task(snapshot, args.get("ids"), host),
            "revoked" | "dump_revoked" => {
                Json::Array(self.revoked.ids().into_iter().map(Json::from).collect())
            }
            "clock" => {
                let mut map = JsonMap::new();
                map.insert("clock".into(), clock.value().into());
                Json::Object(map)
            }
            "revoke" => {
                let Some(ids) = args.get("task_id") else {
                    return Some(missing_argument("revoke", "task_id"));
                };
                let ids = string_list(ids);
                for id in &ids {
                    self.revoked.add(id, now);
                }
                let text = if ids.is_empty() {
                    "set()".to_owned()
                } else {
                    let items: Vec<String> = ids.iter().map(|id| py_repr(id)).collect();
                    format!("{{{}}}", items.join(", "))
                };
                actions.push(Action::Revoke(ids));
                ok(&format!("tasks {text} flagged as revoked"))
            }
            "enable_events" | "disable_events" => {
                if !self.config.events_available {
                    return Some(error("event dispatcher unavailable".to_owned()));
                }
                let enable = method == "enable_events";
                let changed = if enable {
                    self.events.enable_task()
                } else {
                    self.events.disable_task()
                };
                let state = if enable { "enabled" } else { "disabled" };
                if changed {
                    actions.push(Action::SetTaskEvents(enable));
                    ok(&format!("task events {state}"))
                } else {
                    ok(&format!("task events already {state}"))
                }
            }
            "heartbeat" => {
                actions.push(Action::SendHeartbeat);
                Json::Null
            }
            // Celery replies before the consumer changes (`call_soon`), the same whether the
            // queue was consumed already or not.
            "add_consumer" => match add_consumer(args) {
                Ok(queue) => {
                    let text = format!("add consumer {}", queue.name);
                    actions.push(Action::AddConsumer(queue));
                    ok(&text)
                }
                Err(error) => error,
            },
            "cancel_consumer" => {
                let Some(queue) = args.get("queue") else {
                    return Some(missing_argument("cancel_consumer", "queue"));
                };
                match queue_name("cancel_consumer", queue) {
                    Ok(queue) => {
                        let text = format!("no longer consuming from {queue}");
                        actions.push(Action::CancelConsumer(queue));
                        ok(&text)
                    }
                    Err(error) => error,
                }
            }
            "hello" => {
                let Some(from) = args.get("from_node") else {
                    return Some(missing_argument("hello", "from_node"));
                };
                if from.as_str() == Some(self.config.hostname.as_str()) {
                    Json::Null
                } else {
                    if let Some(ids) = args.get("revoked") {
                        for id in string_list(ids) {
                            self.revoked.add(&id, now);
                        }
                    }
                    self.revoked.purge(now);
                    let mut map = JsonMap::new();
                    map.insert(
                        "revoked".into(),
                        Json::Array(self.revoked.ids().into_iter().map(Json::from).collect()),
                    );
                    map.insert("clock".into(), clock.forward().into());
                    Json::Object(map)
                }
            }
            "shutdown" => {
                actions.push(Action::Shutdown);
                return None;
            }
            unknown => error(format!("KeyError({})", py_repr(unknown))),
        };
        Some(value)
    }
}

/// The options of `add_consumer` (kombu `Queue` keywords, passed by
/// `app.control.add_consumer(..., options={...})`) that agree with how this worker declares and
/// consumes every queue: durable, shared, acknowledged after the handlers ran.
const AGREEING_OPTIONS: &[(&str, bool)] = &[
    ("durable", true),
    ("auto_delete", false),
    ("exclusive", false),
    ("no_ack", false),
];

/// `add_consumer(queue, exchange=None, exchange_type=None, routing_key=None, **options)`, as
/// Celery's `add_task_queue` reads it: the exchange defaults to the queue's name, its type to
/// `direct`, the routing key to the queue's name; the exchange `""` means the default exchange
/// only. Every name is checked as configured queues are. `Err`: the error reply.
fn add_consumer(args: &JsonMap) -> Result<ConsumedQueue, Json> {
    const METHOD: &str = "add_consumer";
    let Some(queue) = args.get("queue") else {
        return Err(missing_argument(METHOD, "queue"));
    };
    let name = queue_name(METHOD, queue)?;
    let text = |argument: &str| -> Result<Option<String>, Json> {
        match args.get(argument) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(wrong_type(METHOD, argument, other)),
        }
    };
    let exchange = text("exchange")?.unwrap_or_else(|| name.clone());
    let exchange_type = text("exchange_type")?;
    let routing_key = text("routing_key")?.unwrap_or_else(|| name.clone());
    for (option, value) in args.iter() {
        if ["queue", "exchange", "exchange_type", "routing_key"].contains(&option.as_str())
            || value.is_null()
            || AGREEING_OPTIONS
                .iter()
                .any(|(o, v)| o == option && *value == Json::Bool(*v))
        {
            continue;
        }
        return Err(error(format!(
            "ValueError({})",
            py_repr(&format!(
                "add_consumer option {} is not supported by this worker (events-celery \
                 declares every queue durable, shared, with the worker's queue arguments, and \
                 acknowledges after the handlers ran)",
                py_repr(&shortened(option))
            ))
        )));
    }
    let kind = match exchange_type.as_deref() {
        None | Some("") => ExchangeKind::Direct,
        Some(kind) => ExchangeKind::parse(kind).ok_or_else(|| {
            value_error(format!(
                "exchange type {} is not supported: use direct, topic or fanout",
                py_repr(&shortened(kind))
            ))
        })?,
    };
    check_name("exchange", &exchange).map_err(value_error)?;
    check_name("routing key", &routing_key).map_err(value_error)?;
    let binding = (!exchange.is_empty()).then_some(QueueBinding {
        exchange,
        kind,
        routing_key,
    });
    Ok(ConsumedQueue { name, binding })
}

/// The `queue` argument of `method`: a string, checked as configured queue names are.
fn queue_name(method: &str, queue: &Json) -> Result<String, Json> {
    let Json::String(queue) = queue else {
        return Err(wrong_type(method, "queue", queue));
    };
    check_name("queue", queue).map_err(value_error)?;
    Ok(queue.clone())
}

fn wrong_type(method: &str, argument: &str, value: &Json) -> Json {
    error(format!(
        "TypeError({})",
        py_repr(&format!(
            "{method}() argument '{argument}' must be str, not {}",
            py_type(value)
        ))
    ))
}

fn value_error(problem: String) -> Json {
    error(format!("ValueError({})", py_repr(&problem)))
}

/// At most 64 characters of `text` (a name quoted in an error reply).
fn shortened(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn ok(text: &str) -> Json {
    let mut map = JsonMap::with_capacity(1);
    map.insert("ok".into(), text.into());
    Json::Object(map)
}

fn error(text: String) -> Json {
    let mut map = JsonMap::with_capacity(1);
    map.insert("error".into(), text.into());
    Json::Object(map)
}

fn missing_argument(method: &str, name: &str) -> Json {
    error(format!(
        "TypeError({})",
        py_repr(&format!(
            "{method}() missing 1 required positional argument: '{name}'"
        ))
    ))
}

/// Python truthiness of a JSON value.
fn truthy(value: &Json) -> bool {
    match value {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64() != 0.0,
        Json::String(s) => !s.is_empty() && !matches!(s.as_str(), "false" | "False" | "0" | "no"),
        Json::Array(items) => !items.is_empty(),
        Json::Object(map) => !map.is_empty(),
    }
}

/// Python's type name of a JSON value.
fn py_type(value: &Json) -> &'static str {
    match value {
        Json::Null => "NoneType",
        Json::Bool(_) => "bool",
        Json::Number(n) if n.is_integer() => "int",
        Json::Number(_) => "float",
        Json::String(_) => "str",
        Json::Array(_) => "list",
        Json::Object(_) => "dict",
    }
}

/// Celery's `maybe_list`: a string is one id, a list its string items (others skipped); ids
/// deduplicated in order, as a Python set would hold them.
fn string_list(value: &Json) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let mut push = |id: &str| {
        if !ids.iter().any(|known| known == id) {
            ids.push(id.to_owned());
        }
    };
    match value {
        Json::String(id) => push(id),
        Json::Array(items) => items.iter().filter_map(Json::as_str).for_each(push),
        _ => {}
    }
    ids
}

/// Python's `repr()` of a `str`.
pub(crate) fn py_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

impl TaskInfo {
    /// `Request.info(safe)`.
    pub(crate) fn info(&self, safe: bool, hostname: &str) -> Json {
        let mut map = JsonMap::with_capacity(10);
        map.insert("id".into(), self.id.clone().into());
        map.insert("name".into(), self.name.clone().into());
        if safe {
            map.insert("args".into(), self.argsrepr.clone().into());
            map.insert("kwargs".into(), self.kwargsrepr.clone().into());
        } else {
            map.insert("args".into(), self.args.clone());
            map.insert("kwargs".into(), self.kwargs.clone());
        }
        map.insert("type".into(), self.name.clone().into());
        map.insert("hostname".into(), hostname.into());
        map.insert(
            "time_start".into(),
            self.time_start.map_or(Json::Null, Json::from),
        );
        map.insert("acknowledged".into(), self.acknowledged.into());
        let mut delivery = JsonMap::with_capacity(4);
        delivery.insert("exchange".into(), self.exchange.clone().into());
        delivery.insert("routing_key".into(), self.routing_key.clone().into());
        delivery.insert(
            "priority".into(),
            self.priority.map_or(Json::Null, Json::from),
        );
        delivery.insert("redelivered".into(), self.redelivered.into());
        map.insert("delivery_info".into(), Json::Object(delivery));
        map.insert(
            "worker_pid".into(),
            self.worker_pid.map_or(Json::Null, Json::from),
        );
        Json::Object(map)
    }
}

impl ScheduledTask {
    fn to_json(&self, hostname: &str) -> Json {
        let mut map = JsonMap::with_capacity(3);
        map.insert(
            "eta".into(),
            self.eta.clone().map_or(Json::Null, Json::from),
        );
        map.insert("priority".into(), self.priority.into());
        map.insert("request".into(), self.request.info(false, hostname));
        Json::Object(map)
    }
}

impl QueueInfo {
    /// kombu's `Queue.as_dict(recurse=True)` for a queue Celery declares.
    fn to_json(&self) -> Json {
        let exchange_name = if self.exchange.is_empty() {
            self.name.clone()
        } else {
            self.exchange.clone()
        };
        let mut exchange = JsonMap::with_capacity(8);
        exchange.insert("name".into(), exchange_name.into());
        exchange.insert("type".into(), self.exchange_type.clone().into());
        exchange.insert("arguments".into(), Json::Null);
        exchange.insert("durable".into(), true.into());
        exchange.insert("passive".into(), false.into());
        exchange.insert("auto_delete".into(), false.into());
        exchange.insert("delivery_mode".into(), Json::Null);
        exchange.insert("no_declare".into(), false.into());
        let mut map = JsonMap::with_capacity(22);
        map.insert("name".into(), self.name.clone().into());
        map.insert("exchange".into(), Json::Object(exchange));
        map.insert("routing_key".into(), self.routing_key.clone().into());
        let queue_arguments = self.max_priority.map_or(Json::Null, |max| {
            let mut args = JsonMap::new();
            args.insert("x-max-priority".into(), max.into());
            Json::Object(args)
        });
        map.insert("queue_arguments".into(), queue_arguments);
        map.insert("binding_arguments".into(), Json::Null);
        map.insert("consumer_arguments".into(), Json::Null);
        map.insert("durable".into(), true.into());
        map.insert("exclusive".into(), false.into());
        map.insert("auto_delete".into(), false.into());
        map.insert("no_ack".into(), false.into());
        map.insert("alias".into(), Json::Null);
        map.insert("bindings".into(), Json::Array(Vec::new()));
        map.insert("no_declare".into(), Json::Null);
        map.insert("expires".into(), Json::Null);
        map.insert("message_ttl".into(), Json::Null);
        map.insert("max_length".into(), Json::Null);
        map.insert("max_length_bytes".into(), Json::Null);
        map.insert(
            "max_priority".into(),
            self.max_priority.map_or(Json::Null, Json::from),
        );
        Json::Object(map)
    }
}

/// `inspect stats`: Celery's keys (`total`, `pid`, `clock` as a string, `uptime`, `pool`,
/// `broker`, `prefetch_count`, `rusage`).
fn stats(snapshot: &WorkerSnapshot, clock: u64) -> Json {
    let mut total = JsonMap::new();
    for (name, count) in &snapshot.total {
        total.insert(name.clone(), (*count).into());
    }
    let mut pool = JsonMap::new();
    pool.insert("implementation".into(), "events_celery::worker".into());
    pool.insert("max-concurrency".into(), snapshot.concurrency.into());
    pool.insert("processes".into(), Json::Array(vec![snapshot.pid.into()]));
    pool.insert("max-tasks-per-child".into(), "N/A".into());
    pool.insert("put-guarded-by-semaphore".into(), false.into());
    pool.insert("timeouts".into(), Json::Array(vec![0u8.into(), 0u8.into()]));
    let b = &snapshot.broker;
    let mut broker = JsonMap::new();
    broker.insert("hostname".into(), b.hostname.clone().into());
    broker.insert(
        "userid".into(),
        b.userid.clone().map_or(Json::Null, Json::from),
    );
    broker.insert("virtual_host".into(), b.virtual_host.clone().into());
    broker.insert("port".into(), b.port.into());
    broker.insert("insist".into(), false.into());
    broker.insert("ssl".into(), b.ssl.into());
    broker.insert("transport".into(), b.transport.clone().into());
    broker.insert("connect_timeout".into(), 4u8.into());
    broker.insert("transport_options".into(), Json::Object(JsonMap::new()));
    // kombu's default for AMQP; Redis has none.
    let login = (b.transport == "amqp").then(|| Json::from("PLAIN"));
    broker.insert("login_method".into(), login.unwrap_or_default());
    broker.insert("uri_prefix".into(), Json::Null);
    broker.insert(
        "heartbeat".into(),
        b.heartbeat.map_or(Json::Null, Json::from),
    );
    broker.insert("failover_strategy".into(), "round-robin".into());
    broker.insert("alternates".into(), Json::Array(Vec::new()));
    broker.insert("credential_provider".into(), Json::Null);
    let mut map = JsonMap::new();
    map.insert("total".into(), Json::Object(total));
    map.insert("pid".into(), snapshot.pid.into());
    map.insert("clock".into(), clock.to_string().into());
    map.insert("uptime".into(), snapshot.uptime_secs.into());
    map.insert("pool".into(), Json::Object(pool));
    map.insert("broker".into(), Json::Object(broker));
    map.insert("prefetch_count".into(), snapshot.prefetch_count.into());
    map.insert("rusage".into(), "N/A".into());
    Json::Object(map)
}

/// Celery's `HIDDEN_SETTINGS`: keys whose values `report` / `conf` mask.
fn is_hidden_setting(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    [
        "API",
        "TOKEN",
        "KEY",
        "SECRET",
        "PASS",
        "PROFANITIES_LIST",
        "SIGNATURE",
        "DATABASE",
        "BEAT_DBURI",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// Celery's `maybe_sanitize_url`: the password of `scheme://user:password@host` becomes
/// `********`.
pub(crate) fn mask_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = rest[..at].find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:********{}",
        &url[..scheme_end + 3],
        &rest[..colon],
        &rest[at..]
    )
}

/// The configuration with URL passwords and hidden settings masked, `__` keys dropped.
fn safe_conf(conf: &JsonMap) -> Json {
    let mut out = JsonMap::with_capacity(conf.len());
    for (key, value) in conf.iter() {
        if key.starts_with("__") {
            continue;
        }
        let value = match value {
            Json::String(text) if text.contains("://") => Json::String(mask_url_password(text)),
            Json::String(_) if is_hidden_setting(key) && !key.ends_with("_url") => {
                "********".into()
            }
            other => other.clone(),
        };
        out.insert(key.clone(), value);
    }
    Json::Object(out)
}

/// Python's `repr()` of a configuration value, for `report`.
fn py_value_repr(value: &Json) -> String {
    match value {
        Json::Null => "None".to_owned(),
        Json::Bool(true) => "True".to_owned(),
        Json::Bool(false) => "False".to_owned(),
        Json::Number(n) => n.to_string(),
        Json::String(text) => py_repr(text),
        Json::Array(items) => {
            let items: Vec<String> = items.iter().map(py_value_repr).collect();
            format!("[{}]", items.join(", "))
        }
        Json::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", py_repr(k), py_value_repr(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

/// `inspect report`: Celery's bug-report layout, for this worker.
fn report(snapshot: &WorkerSnapshot) -> String {
    let Json::Object(conf) = safe_conf(&snapshot.conf) else {
        return String::new();
    };
    let results = conf
        .get("result_backend")
        .and_then(Json::as_str)
        .unwrap_or("disabled")
        .to_owned();
    let mut text = format!(
        "\nsoftware -> {}\nplatform -> system:{} arch:{}\nsettings -> transport:{} results:{}\n\n",
        snapshot.software,
        snapshot.system,
        std::env::consts::ARCH,
        snapshot.broker.transport,
        results
    );
    for (key, value) in conf.iter() {
        text.push_str(key);
        text.push_str(": ");
        text.push_str(&py_value_repr(value));
        text.push('\n');
    }
    text
}

/// `query_task`: `{id: [state, info]}` for the ids this worker holds (active, then reserved,
/// then scheduled).
fn query_task(snapshot: &WorkerSnapshot, ids: Option<&Json>, hostname: &str) -> Json {
    let mut out = JsonMap::new();
    for id in ids.map(string_list).unwrap_or_default() {
        let found = snapshot
            .active
            .iter()
            .find(|t| t.id == id)
            .map(|t| ("active", t))
            .or_else(|| {
                snapshot
                    .reserved
                    .iter()
                    .find(|t| t.id == id)
                    .map(|t| ("reserved", t))
            })
            .or_else(|| {
                snapshot
                    .scheduled
                    .iter()
                    .find(|s| s.request.id == id)
                    .map(|s| ("scheduled", &s.request))
            });
        if let Some((state, task)) = found {
            out.insert(
                id,
                Json::Array(vec![state.into(), task.info(false, hostname)]),
            );
        }
    }
    Json::Object(out)
}
