//! The dispatcher against what a Celery 5.7 worker replied to the same requests
//! (`tests/fixtures/control/amqp.json`, captured by `capture_control.py`), plus robustness:
//! arbitrary requests never panic and get bounded replies.

use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::broker::queues::{ConsumedQueue, QueueBinding};
use crate::broker::topology::ExchangeKind;
use crate::codec::{Json, JsonMap, PidboxRequest};

const HOST: &str = "capture@fixture-host";

fn fixture() -> Value {
    let path = format!(
        "{}/tests/fixtures/control/amqp.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every captured request with Python's reply body text (`None`: it did not reply).
fn exchanges() -> Vec<(PidboxRequest, Option<String>)> {
    let fixture = fixture();
    let records = fixture["amqp_published"].as_array().unwrap();
    let mut out = Vec::new();
    for record in records.iter().filter(|r| r["exchange"] == "celery.pidbox") {
        let body = record["body_text"].as_str().unwrap();
        let mut headers = JsonMap::new();
        headers.insert(
            "clock".into(),
            Json::from(record["headers"]["clock"].clone()),
        );
        let request = PidboxRequest::parse(body.as_bytes(), &headers, 1 << 20).unwrap();
        let ticket = request.ticket.as_str().unwrap().to_owned();
        let reply = records
            .iter()
            .find(|r| r["exchange"] == "reply.celery.pidbox" && r["headers"]["ticket"] == ticket)
            .map(|r| r["body_text"].as_str().unwrap().to_owned());
        out.push((request, reply));
    }
    out
}

/// `TaskInfo` from a Python `Request.info()` reply.
fn task_info(info: &Json) -> TaskInfo {
    let d = &info["delivery_info"];
    TaskInfo {
        id: info["id"].as_str().unwrap().to_owned(),
        name: info["name"].as_str().unwrap().to_owned(),
        args: info["args"].clone(),
        kwargs: info["kwargs"].clone(),
        argsrepr: String::new(),
        kwargsrepr: String::new(),
        time_start: info["time_start"].as_f64(),
        acknowledged: info["acknowledged"] == Json::Bool(true),
        exchange: d["exchange"].as_str().unwrap().to_owned(),
        routing_key: d["routing_key"].as_str().unwrap().to_owned(),
        priority: d["priority"].as_u64().map(|p| p as u8),
        redelivered: d["redelivered"] == Json::Bool(true),
        worker_pid: info["worker_pid"].as_u64().map(|p| p as u32),
    }
}

/// The reply value Python sent for `method` (first capture).
fn python_value(exchanges: &[(PidboxRequest, Option<String>)], method: &str) -> Json {
    let text = exchanges
        .iter()
        .find(|(r, reply)| r.method == method && reply.is_some())
        .and_then(|(_, reply)| reply.clone())
        .unwrap_or_else(|| panic!("no reply to {method} captured"));
    Json::parse(&text).unwrap()[HOST].clone()
}

/// A snapshot of the Rust worker holding the tasks the Python one held.
fn snapshot(exchanges: &[(PidboxRequest, Option<String>)]) -> WorkerSnapshot {
    let active = python_value(exchanges, "active");
    let reserved = python_value(exchanges, "reserved");
    let scheduled = python_value(exchanges, "scheduled");
    let mut registered: Vec<String> = python_value(exchanges, "registered")
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    registered.push("celery.chord".to_owned());
    let mut conf = JsonMap::new();
    conf.insert(
        "broker_url".into(),
        "amqp://guest:guest@127.0.0.1:5672/ctl_capture".into(),
    );
    conf.insert("result_backend".into(), "redis://127.0.0.1:6379/14".into());
    conf.insert("task_default_queue".into(), "ctlq".into());
    conf.insert("secret_key".into(), "hunter2".into());
    WorkerSnapshot {
        pid: 4242,
        registered,
        active: active.as_array().unwrap().iter().map(task_info).collect(),
        reserved: reserved.as_array().unwrap().iter().map(task_info).collect(),
        scheduled: scheduled
            .as_array()
            .unwrap()
            .iter()
            .map(|s| ScheduledTask {
                eta: s["eta"].as_str().map(str::to_owned),
                priority: s["priority"].as_i64().unwrap(),
                request: task_info(&s["request"]),
            })
            .collect(),
        queues: vec![QueueInfo {
            name: "ctlq".into(),
            exchange: String::new(),
            exchange_type: "direct".into(),
            routing_key: "ctlq".into(),
            max_priority: None,
        }],
        total: python_value(exchanges, "stats")["total"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, count)| (name.clone(), count.as_u64().unwrap()))
            .collect(),
        uptime_secs: 10,
        concurrency: 2,
        prefetch_count: 8,
        broker: BrokerInfo {
            hostname: "127.0.0.1".into(),
            userid: Some("guest".into()),
            virtual_host: "ctl_capture".into(),
            port: 5672,
            transport: "amqp".into(),
            ssl: false,
            heartbeat: Some(120.0),
        },
        conf,
        software: "events-celery:0.1.0 rust".into(),
        system: "Linux".into(),
    }
}

fn state(read_only: bool) -> ControlState {
    ControlState::new(
        ControlConfig {
            hostname: HOST.to_owned(),
            read_only,
            events_available: true,
        },
        // The captured worker ran with -E.
        true,
    )
}

/// Same JSON types and, for objects, the same keys (recursively; arrays by their first item).
fn same_shape(ours: &Json, python: &Json, path: &str) {
    match (ours, python) {
        (Json::Object(a), Json::Object(b)) => {
            let ak: Vec<_> = a.keys().collect();
            let bk: Vec<_> = b.keys().collect();
            assert_eq!(ak, bk, "keys at {path}");
            for (key, value) in a.iter() {
                same_shape(value, &b[key.as_str()], &format!("{path}.{key}"));
            }
        }
        (Json::Array(a), Json::Array(b)) => {
            if let (Some(x), Some(y)) = (a.first(), b.first()) {
                same_shape(x, y, &format!("{path}[0]"));
            }
        }
        (Json::Number(a), Json::Number(b)) => {
            assert_eq!(a.is_integer(), b.is_integer(), "number kind at {path}")
        }
        (a, b) => assert_eq!(
            std::mem::discriminant(a),
            std::mem::discriminant(b),
            "type at {path}: {a} vs {b}"
        ),
    }
}

#[test]
fn replies_are_celerys_for_every_captured_request() {
    let exchanges = exchanges();
    let mut snapshot = snapshot(&exchanges);
    let mut control = state(false);
    let mut clock = LamportClock::new();
    let mut seen = Vec::new();
    // Pings sent while the Python worker was starting found no mailbox yet.
    let first_answered = exchanges
        .iter()
        .position(|(_, reply)| reply.is_some())
        .unwrap();
    for (request, python) in &exchanges[first_answered..] {
        let before = clock.value();
        let outcome = control.handle(request, &snapshot, &mut clock, 0.0);
        assert!(clock.value() > before.max(request.clock));
        // The worker carries out the queue changes: later snapshots show them.
        for action in &outcome.actions {
            match action {
                Action::AddConsumer(queue) => {
                    snapshot.queues.push(super::plane::queue_info(queue, None))
                }
                Action::CancelConsumer(name) => snapshot.queues.retain(|q| &q.name != name),
                _ => {}
            }
        }
        let method = request.method.as_str();
        let Some(python) = python else {
            // Python did not reply: shutdown (it raises first) or a request for another node.
            assert!(
                outcome.reply.is_none(),
                "{method}: we replied, Python did not"
            );
            if method == "shutdown" {
                assert_eq!(outcome.actions, [Action::Shutdown]);
            } else {
                assert!(!request.is_for(HOST), "{method}");
            }
            continue;
        };
        let reply = outcome
            .reply
            .unwrap_or_else(|| panic!("{method}: no reply"));
        let body = reply.body_json().unwrap();
        let ours = &reply.body[HOST];
        let theirs = &Json::parse(python).unwrap()[HOST];
        match method {
            // Exactly Python's bytes.
            "ping" | "registered" | "no_such_command" | "add_consumer" | "cancel_consumer"
            | "active" | "reserved" | "scheduled" | "query_task" | "enable_events"
            | "disable_events" | "active_queues" => assert_eq!(body, *python, "{method}"),
            "revoke" => {
                let ids = string_list(&request.arguments["task_id"]);
                if let [id] = ids.as_slice() {
                    assert_eq!(body, *python, "{method}");
                    assert!(outcome.actions.contains(&Action::Revoke(vec![id.clone()])));
                } else if ids.is_empty() {
                    assert_eq!(body, *python, "revoke without task_id");
                } else {
                    // Python's set order is arbitrary: the same ids.
                    same_shape(ours, theirs, method);
                    for id in &ids {
                        assert!(body.contains(id.as_str()));
                    }
                }
                for id in ids {
                    assert!(control.revoked.contains(&id));
                }
            }
            "stats" | "conf" | "report" | "clock" | "revoked" => {
                if method == "stats" {
                    // The prefork pool's `writes` and the `rusage` numbers are not ours.
                    let mut theirs = theirs.clone();
                    let pool = theirs["pool"].as_object_mut().unwrap();
                    pool.remove("writes");
                    theirs["rusage"] = Json::from("N/A");
                    same_shape(ours, &theirs, method);
                    assert_eq!(
                        ours["clock"].as_str().map(|c| c.parse::<u64>().is_ok()),
                        Some(true)
                    );
                } else if method == "conf" {
                    assert_eq!(
                        ours["broker_url"].as_str(),
                        theirs["broker_url"].as_str(),
                        "password masked as Celery does"
                    );
                    assert_eq!(ours["secret_key"].as_str(), Some("********"));
                } else {
                    same_shape(ours, theirs, method);
                }
            }
            other => panic!("captured {other} has no check"),
        }
        seen.push(method.to_owned());
    }
    for expected in [
        "ping",
        "stats",
        "active",
        "reserved",
        "scheduled",
        "registered",
        "active_queues",
        "conf",
        "report",
        "query_task",
        "revoke",
        "enable_events",
        "disable_events",
        "add_consumer",
        "cancel_consumer",
        "no_such_command",
        "clock",
        "revoked",
    ] {
        assert!(seen.iter().any(|m| m == expected), "{expected} not checked");
    }
}

fn request(method: &str, arguments: &str) -> PidboxRequest {
    let body = format!(
        r#"{{"method": "{method}", "arguments": {arguments}, "destination": null, "pattern": null, "matcher": null, "ticket": "t", "reply_to": {{"exchange": "reply.celery.pidbox", "routing_key": "oid"}}}}"#
    );
    PidboxRequest::parse(body.as_bytes(), &JsonMap::new(), 1 << 20).unwrap()
}

fn reply_text(control: &mut ControlState, request: &PidboxRequest) -> String {
    let snapshot = snapshot(&exchanges());
    let outcome = control.handle(request, &snapshot, &mut LamportClock::new(), 0.0);
    outcome.value.map(|v| v.to_string()).unwrap_or_default()
}

#[test]
fn read_only_refuses_state_changes_and_answers_inspection() {
    let mut control = state(true);
    for method in [
        "revoke",
        "shutdown",
        "add_consumer",
        "cancel_consumer",
        "enable_events",
    ] {
        let text = reply_text(
            &mut control,
            &request(method, r#"{"task_id": "x", "queue": "q"}"#),
        );
        assert!(
            text.starts_with(r#"{"error": "control command `"#),
            "{text}"
        );
        assert!(!control.revoked.contains("x"));
        let outcome = control.handle(
            &request(method, r#"{"task_id": "x", "queue": "q"}"#),
            &snapshot(&exchanges()),
            &mut LamportClock::new(),
            0.0,
        );
        assert!(
            outcome.actions.is_empty(),
            "{method}: {:?}",
            outcome.actions
        );
    }
    assert_eq!(
        reply_text(&mut control, &request("ping", "{}")),
        r#"{"ok": "pong"}"#
    );
}

#[test]
fn events_switch_as_celery_does_without_task_events() {
    let mut control = ControlState::new(
        ControlConfig {
            hostname: HOST.to_owned(),
            read_only: false,
            events_available: true,
        },
        false,
    );
    let snapshot = snapshot(&exchanges());
    let mut clock = LamportClock::new();
    let mut run = |method: &str| control.handle(&request(method, "{}"), &snapshot, &mut clock, 0.0);
    let enabled = run("enable_events");
    assert_eq!(
        enabled.value.unwrap().to_string(),
        r#"{"ok": "task events enabled"}"#
    );
    assert_eq!(enabled.actions, [Action::SetTaskEvents(true)]);
    let again = run("enable_events");
    assert_eq!(
        again.value.unwrap().to_string(),
        r#"{"ok": "task events already enabled"}"#
    );
    assert!(again.actions.is_empty());
    let disabled = run("disable_events");
    assert_eq!(
        disabled.value.unwrap().to_string(),
        r#"{"ok": "task events disabled"}"#
    );
    assert_eq!(disabled.actions, [Action::SetTaskEvents(false)]);
}

#[test]
fn bad_arguments_and_unknown_commands_get_celerys_errors() {
    let mut control = state(false);
    assert_eq!(
        reply_text(&mut control, &request("ping", "[1, 2]")),
        r#"{"error": "TypeError('ping() argument after ** must be a mapping, not list')"}"#
    );
    assert_eq!(
        reply_text(&mut control, &request("add_consumer", "{}")),
        r#"{"error": "TypeError(\"add_consumer() missing 1 required positional argument: 'queue'\")"}"#
    );
    assert_eq!(
        reply_text(&mut control, &request("it's", "{}")),
        r#"{"error": "KeyError(\"it's\")"}"#
    );
    assert!(reply_text(&mut control, &request("pool_grow", "{}")).contains("not supported"));
    let add = control.handle(
        &request("add_consumer", r#"{"queue": "q2", "exchange_type": null}"#),
        &snapshot(&exchanges()),
        &mut LamportClock::new(),
        0.0,
    );
    assert_eq!(
        add.actions,
        [Action::AddConsumer(ConsumedQueue {
            name: "q2".into(),
            binding: Some(QueueBinding {
                exchange: "q2".into(),
                kind: ExchangeKind::Direct,
                routing_key: "q2".into(),
            }),
        })]
    );
}

/// The reply value and actions of one request.
fn answer(method: &str, arguments: &str) -> (String, Vec<Action>) {
    let outcome = state(false).handle(
        &request(method, arguments),
        snapshot_cache(),
        &mut LamportClock::new(),
        0.0,
    );
    let value = outcome.value.map(|v| v.to_string()).unwrap_or_default();
    (value, outcome.actions)
}

#[test]
fn add_and_cancel_consumer_reply_as_celery_and_ask_for_the_queue_change() {
    // Celery's replies, whether the queue is consumed already or not (it replies first).
    let (reply, actions) = answer("add_consumer", r#"{"queue": "q2"}"#);
    assert_eq!(reply, r#"{"ok": "add consumer q2"}"#);
    assert_eq!(actions.len(), 1);
    let (reply, actions) = answer("cancel_consumer", r#"{"queue": "ctlq"}"#);
    assert_eq!(reply, r#"{"ok": "no longer consuming from ctlq"}"#);
    assert_eq!(actions, [Action::CancelConsumer("ctlq".into())]);
    let (reply, _) = answer("cancel_consumer", r#"{"queue": "never-consumed"}"#);
    assert_eq!(
        reply,
        r#"{"ok": "no longer consuming from never-consumed"}"#
    );
    // What `app.control.add_consumer("q3", "events", "topic", "orders.#")` sends, with
    // options that agree with how the worker consumes.
    let (reply, actions) = answer(
        "add_consumer",
        r#"{"queue": "q3", "exchange": "events", "exchange_type": "topic",
            "routing_key": "orders.#", "durable": true, "auto_delete": false,
            "queue_arguments": null}"#,
    );
    assert_eq!(reply, r#"{"ok": "add consumer q3"}"#);
    assert_eq!(
        actions,
        [Action::AddConsumer(ConsumedQueue {
            name: "q3".into(),
            binding: Some(QueueBinding {
                exchange: "events".into(),
                kind: ExchangeKind::Topic,
                routing_key: "orders.#".into(),
            }),
        })]
    );
    // The exchange "" is the default exchange: nothing to bind.
    let (_, actions) = answer("add_consumer", r#"{"queue": "q4", "exchange": ""}"#);
    assert_eq!(actions, [Action::AddConsumer(ConsumedQueue::plain("q4"))]);
}

#[test]
fn bad_queue_changes_get_an_error_and_change_nothing() {
    let huge = "x".repeat(300_000);
    for (method, arguments, expected) in [
        (
            "add_consumer",
            r#"{"queue": 5}"#.to_owned(),
            r#"{"error": "TypeError(\"add_consumer() argument 'queue' must be str, not int\")"}"#,
        ),
        (
            "cancel_consumer",
            r#"{"queue": ["a"]}"#.to_owned(),
            r#"{"error": "TypeError(\"cancel_consumer() argument 'queue' must be str, not list\")"}"#,
        ),
        (
            "cancel_consumer",
            "{}".to_owned(),
            r#"{"error": "TypeError(\"cancel_consumer() missing 1 required positional argument: 'queue'\")"}"#,
        ),
        (
            "add_consumer",
            r#"{"queue": ""}"#.to_owned(),
            r#"{"error": "ValueError('a queue name cannot be empty')"}"#,
        ),
        (
            "add_consumer",
            format!(r#"{{"queue": "{huge}"}}"#),
            r#"{"error": "ValueError('queue name of 300000 bytes is longer than the 255 bytes AMQP allows')"}"#,
        ),
        (
            "cancel_consumer",
            format!(r#"{{"queue": "{huge}"}}"#),
            r#"{"error": "ValueError('queue name of 300000 bytes is longer than the 255 bytes AMQP allows')"}"#,
        ),
        (
            "add_consumer",
            r#"{"queue": "q", "exchange": {"name": "x"}}"#.to_owned(),
            r#"{"error": "TypeError(\"add_consumer() argument 'exchange' must be str, not dict\")"}"#,
        ),
        (
            "add_consumer",
            r#"{"queue": "q", "exchange_type": "headers"}"#.to_owned(),
            r#"{"error": "ValueError(\"exchange type 'headers' is not supported: use direct, topic or fanout\")"}"#,
        ),
        (
            "add_consumer",
            format!(r#"{{"queue": "q", "routing_key": "{huge}"}}"#),
            r#"{"error": "ValueError('routing key name of 300000 bytes is longer than the 255 bytes AMQP allows')"}"#,
        ),
    ] {
        let (reply, actions) = answer(method, &arguments);
        assert_eq!(
            reply,
            expected,
            "{method} {}",
            &arguments[..arguments.len().min(80)]
        );
        assert!(actions.is_empty(), "{method}: {actions:?}");
    }
    // A control character (kombu's Redis separator is two of them).
    let (reply, actions) = answer("add_consumer", r#"{"queue": "a\u0006\u0016b"}"#);
    assert!(reply.contains("control character U+0006"), "{reply}");
    assert!(actions.is_empty());
    // An option the worker cannot honour is refused, naming it (bounded).
    let (reply, actions) = answer("add_consumer", r#"{"queue": "q", "exclusive": true}"#);
    assert!(
        reply.contains("option 'exclusive' is not supported"),
        "{reply}"
    );
    assert!(actions.is_empty());
    let long_option = format!(r#"{{"queue": "q", "{huge}": 1}}"#);
    let (reply, _) = answer("add_consumer", &long_option);
    assert!(reply.len() < 1024, "{} bytes", reply.len());
}

#[test]
fn clock_and_reply_headers_follow_kombu() {
    let mut control = state(false);
    let mut ping = request("ping", "{}");
    ping.clock = 100;
    let mut clock = LamportClock::new();
    let outcome = control.handle(&ping, &snapshot(&exchanges()), &mut clock, 0.0);
    // forward (1), adjust to 100 (101), forward for the reply (102).
    assert_eq!(clock.value(), 102);
    let reply = outcome.reply.unwrap();
    assert_eq!(reply.headers.get("clock").and_then(Json::as_u64), Some(102));
    assert_eq!(
        reply.headers.get("ticket").and_then(Json::as_str),
        Some("t")
    );
    assert_eq!(reply.routing_key, "oid");
    assert_eq!(reply.exchange, "reply.celery.pidbox");
    // A cast (no reply_to) runs but does not reply.
    let mut cast = request("revoke", r#"{"task_id": "c"}"#);
    cast.reply_to = None;
    let outcome = control.handle(&cast, &snapshot(&exchanges()), &mut clock, 0.0);
    assert!(outcome.reply.is_none());
    assert!(control.revoked.contains("c"));
}

#[test]
fn helpers_mask_and_repr_as_python() {
    assert_eq!(
        mask_url_password("amqp://guest:guest@127.0.0.1:5672/ctl_capture"),
        "amqp://guest:********@127.0.0.1:5672/ctl_capture"
    );
    assert_eq!(
        mask_url_password("redis://127.0.0.1:6379/0"),
        "redis://127.0.0.1:6379/0"
    );
    assert_eq!(
        mask_url_password("redis://:s3cret@host:6379/0"),
        "redis://:********@host:6379/0"
    );
    assert_eq!(py_repr("a'b"), "\"a'b\"");
    assert_eq!(py_repr("a'b\"c\n"), "'a\\'b\"c\\n'");
}

fn string_list(value: &Json) -> Vec<String> {
    match value {
        Json::String(id) => vec![id.clone()],
        Json::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Arbitrary JSON values, a few levels deep.
fn arbitrary_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Json::from),
        ".{0,24}".prop_map(Json::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Json::Array),
            prop::collection::vec((".{0,12}", inner), 0..8)
                .prop_map(|pairs| Json::Object(pairs.into_iter().collect())),
        ]
    })
}

const METHODS: &[&str] = &[
    "ping",
    "stats",
    "active",
    "reserved",
    "scheduled",
    "registered",
    "active_queues",
    "conf",
    "report",
    "query_task",
    "revoke",
    "revoked",
    "enable_events",
    "disable_events",
    "heartbeat",
    "add_consumer",
    "cancel_consumer",
    "shutdown",
    "clock",
    "hello",
    "dump_tasks",
    "pool_grow",
    "nope",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any bytes: a request or a typed error, never a panic.
    #[test]
    fn parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = PidboxRequest::parse(&bytes, &JsonMap::new(), 1 << 20);
        let _ = PidboxRequest::from_redis_envelope(&bytes, 1 << 20);
    }

    /// Any JSON document as a body, directly and in a Redis envelope: a request or a typed
    /// error, never a panic.
    #[test]
    fn parser_never_panics_on_json(value in arbitrary_json(), headers in arbitrary_json()) {
        use base64::Engine;
        let text = value.to_string();
        let headers_map = headers.as_object().cloned().unwrap_or_default();
        let _ = PidboxRequest::parse(text.as_bytes(), &headers_map, 1 << 20);
        let envelope = format!(
            r#"{{"body": "{}", "headers": {}, "properties": {{"body_encoding": "base64"}}}}"#,
            base64::engine::general_purpose::STANDARD.encode(&text),
            headers
        );
        let _ = PidboxRequest::from_redis_envelope(envelope.as_bytes(), 1 << 20);
        let _ = PidboxRequest::from_redis_envelope(text.as_bytes(), 1 << 20);
    }

    /// Any JSON body with any method and arguments: the dispatcher answers without panicking,
    /// with a reply bounded by the request and the snapshot.
    #[test]
    fn dispatcher_never_panics_and_replies_boundedly(
        method in prop::sample::select(METHODS),
        arguments in arbitrary_json(),
        destination in arbitrary_json(),
        pattern in arbitrary_json(),
        matcher in prop_oneof![Just(Json::from("glob")), Just(Json::from("pcre")), arbitrary_json()],
        reply_to in arbitrary_json(),
        clock in any::<u64>(),
    ) {
        let mut body = JsonMap::new();
        body.insert("method".into(), method.into());
        body.insert("arguments".into(), arguments);
        body.insert("destination".into(), destination);
        body.insert("pattern".into(), pattern);
        body.insert("matcher".into(), matcher);
        body.insert("reply_to".into(), reply_to);
        body.insert("ticket".into(), "t".into());
        let text = Json::Object(body).to_string();
        let mut headers = JsonMap::new();
        headers.insert("clock".into(), clock.into());
        let request = PidboxRequest::parse(text.as_bytes(), &headers, 1 << 20).unwrap();
        let snapshot = snapshot_cache();
        let mut control = state(false);
        let mut lamport = LamportClock::new();
        let outcome = control.handle(&request, snapshot, &mut lamport, 0.0);
        if let Some(value) = &outcome.value {
            let size = value.to_string().len();
            prop_assert!(size <= 64 * 1024 + 4 * text.len(), "reply of {} bytes", size);
        }
        if let Some(reply) = outcome.reply {
            prop_assert!(reply.to_redis_envelope().is_ok());
            prop_assert!(reply.to_amqp().is_ok());
        }
        prop_assert!(control.revoked.len() <= REVOKES_MAX);
    }

    /// Hostname patterns of any text: matching terminates and never panics.
    #[test]
    fn matchers_never_panic(name in ".{0,64}", pattern in ".{0,64}") {
        let _ = crate::codec::pattern_matches(&name, &pattern, "glob");
        let _ = crate::codec::pattern_matches(&name, &pattern, "pcre");
    }
}

fn snapshot_cache() -> &'static WorkerSnapshot {
    static SNAPSHOT: std::sync::OnceLock<WorkerSnapshot> = std::sync::OnceLock::new();
    SNAPSHOT.get_or_init(|| snapshot(&exchanges()))
}
