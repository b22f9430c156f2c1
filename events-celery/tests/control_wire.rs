//! The control-plane codec against what Python Celery 5.7 put on the wire
//! (`tests/fixtures/control/{amqp,redis}.json`, made by `capture_control.py`): events, pidbox
//! requests and replies, result-backend writes, rebuilt from their values and compared byte
//! for byte, with the exchanges, routing keys, Redis channels and keys.

use chrono::DateTime;
use events_celery::codec::{
    DEFAULT_RESULT_EXPIRES_SECS, EVENT_EXCHANGE, EventSource, EventStamp, Json, JsonMap,
    KombuMessage, PIDBOX_EXCHANGE, PIDBOX_REPLY_EXCHANGE, PidboxRequest, ReceivedKombuMessage,
    ReplyTo, ResultMeta, SoftwareInfo, TASK_MULTI_ROUTING_KEY, TaskEvent, TaskState,
    WorkerEventKind, WorkerStatus, parse_redis_binding, pidbox_queue, pidbox_reply,
    redis_binding_key, redis_fanout_channel, result_key, task_event_body, task_multi_message,
    worker_event_message,
};
use serde_json::Value;

const HOST: &str = "capture@fixture-host";
const MAX: usize = 1 << 20;

fn fixture(broker: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/control/{broker}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn amqp_records(exchange: &str) -> Vec<Value> {
    fixture("amqp")["amqp_published"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["exchange"] == exchange)
        .cloned()
        .collect()
}

/// `(channel or key, payload)` of every `command` on Redis database `db`.
fn redis_commands(command: &str, db: u64) -> Vec<(String, Vec<String>)> {
    fixture("redis")["redis_commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["command"] == command && r["db"] == db)
        .map(|r| {
            let args: Vec<String> = r["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect();
            (args[0].clone(), args[1..].to_vec())
        })
        .collect()
}

fn json_map(value: &Value) -> JsonMap {
    match Json::from(value.clone()) {
        Json::Object(map) => map,
        _ => JsonMap::new(),
    }
}

fn text(value: &Json) -> Option<String> {
    value.as_str().map(str::to_owned)
}

/// An event body (a Python worker's) back into the codec's types.
fn source_and_stamp(body: &Json) -> (EventSource, EventStamp) {
    (
        EventSource {
            hostname: body["hostname"].as_str().unwrap().to_owned(),
            pid: body["pid"].as_u64().unwrap() as u32,
            utcoffset: body["utcoffset"].as_f64().unwrap(),
        },
        EventStamp {
            clock: body["clock"].as_u64().unwrap(),
            timestamp: body["timestamp"].as_f64().unwrap(),
        },
    )
}

fn task_event(body: &Json) -> TaskEvent {
    let uuid = text(&body["uuid"]).unwrap();
    let s = |key: &str| text(&body[key]).unwrap();
    match body["type"].as_str().unwrap() {
        "task-received" => TaskEvent::Received {
            uuid,
            name: s("name"),
            args: s("args"),
            kwargs: s("kwargs"),
            root_id: text(&body["root_id"]),
            parent_id: text(&body["parent_id"]),
            retries: body["retries"].as_u64().unwrap(),
            eta: text(&body["eta"]),
            expires: text(&body["expires"]),
        },
        "task-started" => TaskEvent::Started { uuid },
        "task-succeeded" => TaskEvent::Succeeded {
            uuid,
            result: s("result"),
            runtime: body["runtime"].as_f64().unwrap(),
        },
        "task-failed" => TaskEvent::Failed {
            uuid,
            exception: s("exception"),
            traceback: s("traceback"),
        },
        "task-retried" => TaskEvent::Retried {
            uuid,
            exception: s("exception"),
            traceback: s("traceback"),
        },
        "task-rejected" => TaskEvent::Rejected {
            uuid,
            requeue: body["requeue"] == Json::Bool(true),
        },
        "task-revoked" => TaskEvent::Revoked {
            uuid,
            terminated: body["terminated"] == Json::Bool(true),
            signum: body["signum"].as_i64().map(|n| n as i32),
            expired: body["expired"] == Json::Bool(true),
        },
        other => panic!("unexpected event {other}"),
    }
}

/// A worker event rebuilt from a Python worker's body.
fn rebuild_worker_event(body: &Json) -> KombuMessage {
    let kind = match body["type"].as_str().unwrap() {
        "worker-online" => WorkerEventKind::Online,
        "worker-heartbeat" => WorkerEventKind::Heartbeat,
        "worker-offline" => WorkerEventKind::Offline,
        other => panic!("unexpected {other}"),
    };
    let load: Vec<f64> = body["loadavg"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let status = WorkerStatus {
        freq: body["freq"].as_f64().unwrap(),
        active: body["active"].as_u64().unwrap(),
        processed: body["processed"].as_u64().unwrap(),
        loadavg: [load[0], load[1], load[2]],
        software: SoftwareInfo {
            ident: text(&body["sw_ident"]).unwrap(),
            version: text(&body["sw_ver"]).unwrap(),
            system: text(&body["sw_sys"]).unwrap(),
        },
    };
    let (source, stamp) = source_and_stamp(body);
    worker_event_message(&source, kind, &status, stamp)
}

/// Task events (a `task.multi` list) rebuilt from a Python worker's bodies.
fn rebuild_task_multi(bodies: &Json) -> KombuMessage {
    let events: Vec<Json> = bodies
        .as_array()
        .unwrap()
        .iter()
        .map(|body| {
            let (source, stamp) = source_and_stamp(body);
            task_event_body(&source, &task_event(body), stamp)
        })
        .collect();
    let source = source_and_stamp(&bodies[0]).0;
    task_multi_message(&source, events)
}

fn rebuild_event(routing_key: &str, body: &Json) -> KombuMessage {
    if routing_key == TASK_MULTI_ROUTING_KEY {
        rebuild_task_multi(body)
    } else {
        rebuild_worker_event(body)
    }
}

fn reply_of(body: &Json, headers: &JsonMap, exchange: &str, routing_key: &str) -> KombuMessage {
    let (hostname, value) = body.as_object().unwrap().iter().next().unwrap();
    pidbox_reply(
        hostname,
        value.clone(),
        &ReplyTo {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        },
        headers.get("ticket").unwrap(),
        headers.get("clock").unwrap().as_u64().unwrap(),
    )
}

fn assert_amqp_properties(record: &Value, delivery_mode: u64) {
    let p = &record["properties"];
    assert_eq!(p["content_type"], "application/json");
    assert_eq!(p["content_encoding"], "utf-8");
    assert_eq!(p["delivery_mode"], delivery_mode);
    assert_eq!(p["priority"], 0);
    for absent in ["correlation_id", "reply_to", "expiration"] {
        assert!(p.get(absent).is_none(), "{absent}");
    }
}

#[test]
fn amqp_events_are_byte_identical_to_celerys() {
    let records = amqp_records(EVENT_EXCHANGE);
    let mut kinds = std::collections::BTreeSet::new();
    for record in &records {
        let routing_key = record["routing_keys"][0].as_str().unwrap();
        let body = Json::parse(record["body_text"].as_str().unwrap()).unwrap();
        let ours = rebuild_event(routing_key, &body).to_amqp().unwrap();
        assert_eq!(ours.exchange, "celeryev");
        assert_eq!(ours.routing_key, routing_key);
        assert_eq!(
            String::from_utf8(ours.body).unwrap(),
            record["body_text"].as_str().unwrap()
        );
        assert_amqp_properties(record, 1);
        assert_eq!(ours.properties.delivery_mode, Some(1));
        assert_eq!(ours.headers.len(), 1);
        assert_eq!(ours.headers.get("hostname").unwrap().as_str(), Some(HOST));
        assert_eq!(record["headers"]["hostname"], HOST);
        assert_eq!(record["header_types"]["hostname"], "str");
        kinds.insert(routing_key.to_owned());
        if routing_key == TASK_MULTI_ROUTING_KEY {
            for event in body.as_array().unwrap() {
                kinds.insert(event["type"].as_str().unwrap().to_owned());
            }
        }
    }
    for expected in [
        "worker.online",
        "worker.heartbeat",
        "worker.offline",
        "task.multi",
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
        "task-retried",
        "task-revoked",
        "task-rejected",
    ] {
        assert!(
            kinds.contains(expected),
            "{expected} not captured: {kinds:?}"
        );
    }
}

#[test]
fn redis_events_are_byte_identical_to_celerys() {
    let publishes = redis_commands("PUBLISH", 13);
    let mut count = 0;
    for (channel, args) in publishes
        .iter()
        .filter(|(c, _)| c.starts_with("/13.celeryev/"))
    {
        let envelope = &args[0];
        let received = ReceivedKombuMessage::from_redis_envelope(envelope.as_bytes(), MAX).unwrap();
        assert_eq!(received.exchange, "celeryev");
        assert_eq!(
            *channel,
            redis_fanout_channel(13, &received.exchange, &received.routing_key)
        );
        let body = Json::parse(std::str::from_utf8(&received.body).unwrap()).unwrap();
        let ours = rebuild_event(&received.routing_key, &body);
        assert_eq!(ours.redis_channel(13), *channel);
        let tag = Json::parse(envelope).unwrap()["properties"]["delivery_tag"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(ours.redis_envelope(&tag).unwrap(), *envelope);
        count += 1;
    }
    assert!(count >= 4, "only {count} events captured");
}

#[test]
fn pidbox_requests_parse_and_rebuild_on_both_brokers() {
    let mut methods = Vec::new();
    for record in amqp_records(PIDBOX_EXCHANGE) {
        assert_eq!(record["routing_keys"][0], "");
        assert_amqp_properties(&record, 2);
        assert_eq!(record["header_types"]["clock"], "int");
        assert_eq!(record["header_types"]["expires"], "float");
        let body = record["body_text"].as_str().unwrap();
        let request =
            PidboxRequest::parse(body.as_bytes(), &json_map(&record["headers"]), MAX).unwrap();
        let rebuilt = request.to_message();
        assert_eq!(rebuilt.body_json().unwrap(), body);
        assert_eq!(rebuilt.exchange, PIDBOX_EXCHANGE);
        assert_eq!(
            Json::Object(rebuilt.headers.clone()),
            Json::from(record["headers"].clone())
        );
        let reply_to = request
            .reply_to
            .clone()
            .expect("every capture asked for a reply");
        assert_eq!(reply_to.exchange, PIDBOX_REPLY_EXCHANGE);
        let for_us = request.is_for(HOST);
        let named = request
            .destination
            .as_ref()
            .is_some_and(|d| d.iter().any(|n| n == HOST));
        let broadcast = request.destination.is_none() && request.pattern.is_none();
        assert_eq!(
            for_us,
            named || broadcast || request.pattern.is_some(),
            "{body}"
        );
        methods.push(request.method);
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
        "shutdown",
        "no_such_command",
    ] {
        assert!(methods.iter().any(|m| m == expected), "{expected} missing");
    }

    let publishes = redis_commands("PUBLISH", 13);
    let mut count = 0;
    for (channel, args) in publishes.iter().filter(|(c, _)| c == "/13.celery.pidbox") {
        let request = PidboxRequest::from_redis_envelope(args[0].as_bytes(), MAX).unwrap();
        let tag = Json::parse(&args[0]).unwrap()["properties"]["delivery_tag"]
            .as_str()
            .unwrap()
            .to_owned();
        let rebuilt = request.to_message();
        assert_eq!(rebuilt.redis_channel(13), *channel);
        assert_eq!(rebuilt.redis_envelope(&tag).unwrap(), args[0]);
        count += 1;
    }
    assert!(count >= 15, "only {count} requests captured on redis");
}

#[test]
fn pidbox_replies_are_byte_identical_on_both_brokers() {
    let replies = amqp_records(PIDBOX_REPLY_EXCHANGE);
    assert!(replies.len() >= 15);
    for record in &replies {
        assert_amqp_properties(record, 1);
        assert_eq!(record["header_types"]["ticket"], "str");
        assert_eq!(record["header_types"]["clock"], "int");
        let body = Json::parse(record["body_text"].as_str().unwrap()).unwrap();
        assert!(body.get(HOST).is_some());
        let headers = json_map(&record["headers"]);
        // (serde_json's map sorts the keys; their order is checked on the Redis envelope.)
        assert_eq!(headers.keys().collect::<Vec<_>>(), ["clock", "ticket"]);
        let ours = reply_of(
            &body,
            &headers,
            PIDBOX_REPLY_EXCHANGE,
            record["routing_keys"][0].as_str().unwrap(),
        );
        let amqp = ours.to_amqp().unwrap();
        assert_eq!(amqp.exchange, PIDBOX_REPLY_EXCHANGE);
        assert_eq!(
            amqp.routing_key,
            record["routing_keys"][0].as_str().unwrap()
        );
        assert_eq!(amqp.headers.get("ticket").unwrap().type_tag(), 'S');
        assert_eq!(amqp.headers.get("clock").unwrap().type_tag(), 'I');
        assert_eq!(
            String::from_utf8(amqp.body).unwrap(),
            record["body_text"].as_str().unwrap()
        );
    }

    // Redis: the worker LPUSHes onto the queue the reply exchange's binding set routes the
    // oid to, `{oid}.reply.celery.pidbox`.
    let bindings: Vec<String> = redis_commands("SADD", 13)
        .into_iter()
        .filter(|(key, _)| *key == redis_binding_key(PIDBOX_REPLY_EXCHANGE))
        .flat_map(|(_, members)| members)
        .collect();
    let pushes: Vec<_> = redis_commands("LPUSH", 13)
        .into_iter()
        .filter(|(key, _)| key.ends_with(".reply.celery.pidbox"))
        .collect();
    assert!(pushes.len() >= 15);
    for (queue, args) in &pushes {
        let received = ReceivedKombuMessage::from_redis_envelope(args[0].as_bytes(), MAX).unwrap();
        assert_eq!(received.exchange, PIDBOX_REPLY_EXCHANGE);
        assert_eq!(
            *queue,
            format!("{}.reply.celery.pidbox", received.routing_key)
        );
        assert!(bindings.iter().any(|member| {
            parse_redis_binding(member) == Some((&received.routing_key, "", queue.as_str()))
        }));
        let body = Json::parse(std::str::from_utf8(&received.body).unwrap()).unwrap();
        let ours = reply_of(
            &body,
            &received.headers,
            &received.exchange,
            &received.routing_key,
        );
        let tag = Json::parse(&args[0]).unwrap()["properties"]["delivery_tag"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(ours.redis_envelope(&tag).unwrap(), args[0]);
    }
    // The worker's own mailbox binding.
    let own: Vec<String> = redis_commands("SADD", 13)
        .into_iter()
        .filter(|(key, _)| *key == redis_binding_key(PIDBOX_EXCHANGE))
        .flat_map(|(_, members)| members)
        .collect();
    assert_eq!(
        parse_redis_binding(&own[0]),
        Some(("", "", pidbox_queue(HOST).as_str()))
    );
}

fn rebuild_result(value: &Json) -> ResultMeta {
    let status = match value["status"].as_str().unwrap() {
        "SUCCESS" => TaskState::Success,
        "FAILURE" => TaskState::Failure,
        "STARTED" => TaskState::Started,
        "RETRY" => TaskState::Retry,
        "REVOKED" => TaskState::Revoked,
        other => panic!("{other}"),
    };
    let id = value["task_id"].as_str().unwrap();
    let date_done = value["date_done"]
        .as_str()
        .map(|at| DateTime::parse_from_rfc3339(at).unwrap());
    let mut meta = match status {
        TaskState::Started => ResultMeta::started(
            id,
            value["result"]["pid"].as_u64().unwrap() as u32,
            value["result"]["hostname"].as_str().unwrap(),
        ),
        TaskState::Success => ResultMeta::success(id, value["result"].clone(), date_done.unwrap()),
        TaskState::Revoked => ResultMeta::revoked(
            id,
            value["result"]["exc_message"][0].as_str().unwrap(),
            date_done.unwrap(),
        ),
        _ => {
            let exception = events_celery::codec::ExceptionInfo {
                exc_type: text(&value["result"]["exc_type"]).unwrap(),
                exc_message: value["result"]["exc_message"].as_array().unwrap().clone(),
                exc_module: text(&value["result"]["exc_module"]).unwrap(),
            };
            let mut meta = ResultMeta::failure(
                id,
                &exception,
                text(&value["traceback"]),
                date_done.unwrap_or_else(|| {
                    DateTime::parse_from_rfc3339("2000-01-01T00:00:00+00:00").unwrap()
                }),
            );
            meta.status = status;
            meta.date_done = date_done;
            meta
        }
    };
    meta.children = value["children"].clone();
    meta.parent_id = text(&value["parent_id"]);
    meta
}

#[test]
fn result_backend_writes_are_byte_identical_on_both_brokers() {
    let setex = redis_commands("SETEX", 14);
    let publishes = redis_commands("PUBLISH", 14);
    assert_eq!(setex.len(), publishes.len());
    let mut states = std::collections::BTreeSet::new();
    for ((key, args), (channel, published)) in setex.iter().zip(&publishes) {
        assert_eq!(key, channel, "PUBLISH on the key's own name");
        assert_eq!(args[0], DEFAULT_RESULT_EXPIRES_SECS.to_string());
        assert_eq!(args[1], published[0]);
        let value = Json::parse(&args[1]).unwrap();
        let meta = rebuild_result(&value);
        assert_eq!(*key, result_key(&meta.task_id));
        let write = meta.redis_write(DEFAULT_RESULT_EXPIRES_SECS).unwrap();
        assert_eq!(write.value, args[1]);
        assert_eq!(write.key, *key);
        states.insert(meta.status.as_str());
    }
    for expected in ["STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED"] {
        assert!(states.contains(expected), "{expected}");
    }
}

#[test]
fn builders_write_celerys_shapes_from_scratch() {
    // Not rebuilt from a capture: the values a Rust worker would give.
    let source = EventSource {
        hostname: "rust@host".into(),
        pid: 42,
        utcoffset: events_celery::codec::utcoffset_hours(19_800),
    };
    assert_eq!(source.utcoffset, -5.5);
    let stamp = EventStamp {
        clock: 3,
        timestamp: 1_796_145_550.5,
    };
    let failed = TaskEvent::Failed {
        uuid: "id-1".into(),
        exception: "RuntimeError('handler failed')".into(),
        traceback: "".into(),
    };
    assert_eq!(
        task_event_body(&source, &failed, stamp).to_string(),
        r#"{"hostname": "rust@host", "utcoffset": -5.5, "pid": 42, "clock": 3, "uuid": "id-1", "exception": "RuntimeError('handler failed')", "traceback": "", "timestamp": 1796145550.5, "type": "task-failed"}"#
    );
    assert_eq!(
        events_celery::codec::round_loadavg([0.001, 1.234, 2.0]),
        [0.01, 1.24, 2.0]
    );
    let started = ResultMeta::started("id-1", 42, "rust@host");
    assert_eq!(
        started.to_json_string().unwrap(),
        r#"{"status": "STARTED", "result": {"pid": 42, "hostname": "rust@host"}, "traceback": null, "children": [], "date_done": null, "task_id": "id-1"}"#
    );
    let failed = ResultMeta::failure(
        "id-1",
        &events_celery::codec::ExceptionInfo::builtin("RuntimeError", "handlers failed: a, b"),
        Some("trace".into()),
        DateTime::parse_from_rfc3339("2026-12-01T17:19:53.219989+00:00").unwrap(),
    );
    assert_eq!(
        failed.to_json_string().unwrap(),
        r#"{"status": "FAILURE", "result": {"exc_type": "RuntimeError", "exc_message": ["handlers failed: a, b"], "exc_module": "builtins"}, "traceback": "trace", "children": [], "date_done": "2026-12-01T17:19:53.219989+00:00", "task_id": "id-1"}"#
    );
    assert!(TaskState::Success.is_ready() && !TaskState::Started.is_ready());
    assert_eq!(SoftwareInfo::rust().ident, "events-celery");
}
