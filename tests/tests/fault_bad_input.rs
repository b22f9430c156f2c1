//! Fault scenario 4, bad input: a corpus of malformed and hostile messages, pushed raw onto
//! both brokers (Redis `LPUSH` of crafted kombu envelopes; AMQP `basic.publish` with crafted
//! properties, headers and bodies). Each one must end in `<queue>.dead_letter` with a reason
//! that names its problem; the worker stays up and runs a good message right after. An `eta`
//! in the distant future is not bad input: it is postponed — not run, not lost.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use events_celery::{Compression, EncodeOptions, RetryPolicy, TaskMessage, WorkerConfig};
use events_core::{domain_event, handler};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use serde_json::{Value, json};
use tests::fault::{Counts, Published, cleanup_redis_queue_at, command, fault_redis_url};
use tests::{
    InProcessWorker, amqp_channel, amqp_url, cleanup_amqp_queue, eventually, unique_queue,
};

/// Runs of the probe handler, by run id.
static RUNS: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

#[domain_event(name = "fault.probe")]
#[derive(Debug, Clone)]
struct Probe {
    run: String,
    seq: u64,
}

#[handler]
fn probe(event: &Probe) {
    RUNS.lock().unwrap().push((event.run.clone(), event.seq));
}

fn runs_of(run: &str) -> Vec<u64> {
    RUNS.lock()
        .unwrap()
        .iter()
        .filter(|(r, _)| r == run)
        .map(|(_, seq)| *seq)
        .collect()
}

/// The size limit the worker is given; the "too large" case is over it.
const LIMIT: usize = 1024 * 1024;

/// A file a pickle would create if anything unpickled it.
fn pickle_canary() -> std::path::PathBuf {
    std::env::temp_dir().join("events-fault-pickle-was-loaded")
}

/// A message both brokers can carry: content type and encoding, Celery headers, body.
#[derive(Debug, Clone)]
struct Message {
    content_type: Option<String>,
    content_encoding: Option<String>,
    headers: serde_json::Map<String, Value>,
    body: Vec<u8>,
}

/// What is pushed raw.
#[derive(Debug, Clone)]
enum Raw {
    /// A Celery message, wrapped for each broker.
    Message(Message),
    /// A Redis envelope exactly as given (Redis only).
    Envelope(Vec<u8>),
    /// AMQP headers given as AMQP values, with a valid body (RabbitMQ only).
    AmqpHeaders(FieldTable, Vec<u8>),
}

struct Case {
    name: &'static str,
    /// Words the dead-letter reason must contain (case-insensitive), naming the problem;
    /// `!word`: a word it must not contain.
    expect: &'static [&'static str],
    raw: Raw,
}

fn good_headers(task_id: &str) -> serde_json::Map<String, Value> {
    let Value::Object(headers) = json!({
        "lang": "py", "task": "domain_events.fault.probe", "id": task_id, "shadow": null,
        "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0,
        "timelimit": [null, null], "root_id": task_id, "parent_id": null, "argsrepr": "()",
        "kwargsrepr": "{}", "origin": "gen1@fault", "ignore_result": false,
        "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}
    }) else {
        unreachable!()
    };
    headers
}

fn body_with(payload: Value) -> Vec<u8> {
    serde_json::to_vec(&json!([[], {"payload": payload}, {
        "callbacks": null, "errbacks": null, "chain": null, "chord": null
    }]))
    .unwrap()
}

/// A probe message whose body is compressed with `method` (by the codec, as kombu does), its
/// `compression` header replaced by `header` if given; `padding` bytes of text in the payload.
fn compressed(run: &str, method: Compression, header: Option<Value>, padding: usize) -> Raw {
    let payload = json!({"run": run, "seq": 1, "padding": "a".repeat(padding)});
    let options = EncodeOptions::new().compression(Some(method));
    let amqp = TaskMessage::from_payload("fault.probe", payload, &options)
        .unwrap()
        .to_amqp()
        .unwrap();
    let mut message = good(run, 0);
    message.headers.insert(
        "compression".into(),
        header.unwrap_or_else(|| json!(method.content_type())),
    );
    message.body = amqp.body;
    Raw::Message(message)
}

fn good(run: &str, seq: u64) -> Message {
    Message {
        content_type: Some("application/json".to_owned()),
        content_encoding: Some("utf-8".to_owned()),
        headers: good_headers(&uuid::Uuid::new_v4().to_string()),
        body: body_with(json!({"run": run, "seq": seq})),
    }
}

/// The corpus: `run` marks the payloads, `queue` the routing.
fn corpus(run: &str, queue: &str, redis: bool) -> Vec<Case> {
    let with_headers = |change: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut message = good(run, 0);
        change(&mut message.headers);
        Raw::Message(message)
    };
    let with_body = |body: Vec<u8>| {
        let mut message = good(run, 0);
        message.body = body;
        Raw::Message(message)
    };
    let with_payload = |payload: Value| with_body(body_with(payload));
    let with_type = |content_type: Option<&str>, body: Vec<u8>| {
        let mut message = good(run, 0);
        message.content_type = content_type.map(str::to_owned);
        message.body = body;
        Raw::Message(message)
    };
    let deep = |depth: usize| "[".repeat(depth) + &"]".repeat(depth);
    // pickle.dumps({'a': 1}, protocol=2)
    let pickle = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s.".to_vec();
    // A pickle that runs `os.system('touch <canary>')` when loaded.
    let evil_pickle =
        format!("cos\nsystem\n(S'touch {}'\ntR.", pickle_canary().display()).into_bytes();
    let mut cases = vec![
        Case { name: "body is not JSON", expect: &["body", "json"], raw: with_body(b"this is not json".to_vec()) },
        Case { name: "body is not UTF-8", expect: &["body", "utf-8"], raw: with_body(vec![0x5b, 0xff, 0xfe, 0x5d]) },
        Case { name: "empty body", expect: &["body", "json"], raw: with_body(Vec::new()) },
        Case { name: "body is JSON null", expect: &["body"], raw: with_body(b"null".to_vec()) },
        Case { name: "body is an object, not [args, kwargs, embed]", expect: &["body"], raw: with_body(br#"{"payload": {}}"#.to_vec()) },
        Case { name: "body list too short", expect: &["body"], raw: with_body(b"[[]]".to_vec()) },
        Case { name: "args not a list", expect: &["args"], raw: with_body(br#"["x", {}, {}]"#.to_vec()) },
        Case { name: "kwargs not a dict", expect: &["kwargs"], raw: with_body(br#"[[], [1, 2], {}]"#.to_vec()) },
        Case { name: "no payload kwarg", expect: &["payload"], raw: with_body(br#"[[], {"other": 1}, {}]"#.to_vec()) },
        Case { name: "payload is null", expect: &["fault.probe"], raw: with_payload(Value::Null) },
        Case { name: "payload field of the wrong type", expect: &["fault.probe", "invalid type", "expected u64"], raw: with_payload(json!({"run": run, "seq": "one"})) },
        Case { name: "payload field missing", expect: &["missing field `seq`"], raw: with_payload(json!({"run": run})) },
        Case { name: "negative number for an unsigned field", expect: &["fault.probe", "field `seq`", "integer `-1`", "expected u64"], raw: with_payload(json!({"run": run, "seq": -1})) },
        Case { name: "2**70 for a u64 field", expect: &["fault.probe", "field `seq`", "integer `1180591620717411303424`", "expected u64"], raw: with_body(format!(r#"[[], {{"payload": {{"run": "{run}", "seq": 1180591620717411303424}}}}, {{}}]"#).into_bytes()) },
        Case { name: "float for an integer field", expect: &["fault.probe", "field `seq`", "floating point `1.5`", "expected u64"], raw: with_payload(json!({"run": run, "seq": 1.5})) },
        Case { name: "huge string (512 KiB) for an integer field", expect: &["fault.probe", "invalid type", "expected u64"], raw: with_payload(json!({"run": run, "seq": "9".repeat(512 * 1024)})) },
        Case { name: "deep nesting (100 levels) in a string field", expect: &["fault.probe", "expected a string"], raw: with_body(format!(r#"[[], {{"payload": {{"run": {}, "seq": 1}}}}, {{}}]"#, deep(100)).into_bytes()) },
        Case { name: "deep nesting (100,000 levels) as the body", expect: &["body", "json"], raw: with_body(deep(100_000).into_bytes()) },
        Case { name: "NaN for an integer field (Python's json.dumps writes it; it reads into floats)", expect: &["fault.probe", "field `seq`", "floating point `NaN`", "expected u64"], raw: with_body(format!(r#"[[], {{"payload": {{"run": "{run}", "seq": NaN}}}}, {{}}]"#).into_bytes()) },
        Case { name: "lone UTF-16 surrogate escape", expect: &["body", "json"], raw: with_body(br#"[[], {"payload": {"run": "\ud800", "seq": 1}}, {}]"#.to_vec()) },
        Case { name: "unknown task (not a domain event)", expect: &["unknown task", "tasks.add"], raw: with_headers(&|h| { h.insert("task".into(), json!("tasks.add")); }) },
        Case { name: "unknown event", expect: &["unknown task", "fault.no_such_event", "!did you mean"], raw: with_headers(&|h| { h.insert("task".into(), json!("domain_events.fault.no_such_event")); }) },
        Case { name: "unknown event in a known namespace, nothing close", expect: &["unknown task", "fault.nope", "!did you mean", "!closest", "!probe"], raw: with_headers(&|h| { h.insert("task".into(), json!("domain_events.fault.nope")); }) },
        Case { name: "unknown event, a typo of a known one", expect: &["unknown task", "fault.prbe", "did you mean `domain_events.fault.probe`?"], raw: with_headers(&|h| { h.insert("task".into(), json!("domain_events.fault.prbe")); }) },
        Case { name: "event name without the task prefix", expect: &["unknown task", "did you mean `domain_events.fault.probe`?"], raw: with_headers(&|h| { h.insert("task".into(), json!("fault.probe")); }) },
        Case { name: "extra keyword arguments beside payload", expect: &["fault.probe", "unexpected keyword argument", "`user_id`", "TypeError"], raw: with_body(serde_json::to_vec(&json!([[], {"payload": {"run": run, "seq": 0}, "user_id": 7}, {}])).unwrap()) },
        Case { name: "positional args beside the payload kwarg", expect: &["fault.probe", "2 positional argument(s) besides", "the number 1", "TypeError"], raw: with_body(serde_json::to_vec(&json!([[1, 2], {"payload": {"run": run, "seq": 0}}, {}])).unwrap()) },
        Case { name: "positional args after a positional payload", expect: &["fault.probe", "1 positional argument(s) after the payload", "the string \"extra\""], raw: with_body(serde_json::to_vec(&json!([[{"run": run, "seq": 0}, "extra"], {}, {}])).unwrap()) },
        Case { name: "task header not a string", expect: &["task"], raw: with_headers(&|h| { h.insert("task".into(), json!(42)); }) },
        Case { name: "no task header", expect: &["no task"], raw: with_headers(&|h| { h.remove("task"); }) },
        Case { name: "no task id", expect: &["id"], raw: with_headers(&|h| { h.remove("id"); }) },
        Case { name: "task id not a string", expect: &["id"], raw: with_headers(&|h| { h.insert("id".into(), json!(7)); }) },
        Case { name: "unparsable eta", expect: &["eta"], raw: with_headers(&|h| { h.insert("eta".into(), json!("next tuesday")); }) },
        Case { name: "eta of the wrong type", expect: &["eta"], raw: with_headers(&|h| { h.insert("eta".into(), json!(1_700_000_000)); }) },
        Case { name: "eta beyond the representable range", expect: &["eta"], raw: with_headers(&|h| { h.insert("eta".into(), json!("+275760-09-14T00:00:00+00:00")); }) },
        Case { name: "unparsable expires", expect: &["expires"], raw: with_headers(&|h| { h.insert("expires".into(), json!("soon")); }) },
        Case { name: "negative retries", expect: &["retries"], raw: with_headers(&|h| { h.insert("retries".into(), json!(-1)); }) },
        Case { name: "retries as a string", expect: &["retries"], raw: with_headers(&|h| { h.insert("retries".into(), json!("3")); }) },
        Case { name: "timelimit of the wrong type", expect: &["timelimit"], raw: with_headers(&|h| { h.insert("timelimit".into(), json!("fast")); }) },
        Case { name: "pending-handlers header not a list", expect: &["x-events-handlers"], raw: with_headers(&|h| { h.insert("x-events-handlers".into(), json!("fault_bad_input::probe")); }) },
        Case { name: "pending-handlers header names no handler here", expect: &["none of the handlers", "nobody"], raw: with_headers(&|h| { h.insert("x-events-handlers".into(), json!(["nobody"])); }) },
        Case { name: "pickle content type with a pickle body", expect: &["application/x-python-serialize", "refused"], raw: with_type(Some("application/x-python-serialize"), pickle.clone()) },
        Case { name: "JSON content type with a valid pickle body", expect: &["body"], raw: with_type(Some("application/json"), pickle) },
        Case { name: "JSON content type with a pickle that runs a command when loaded", expect: &["body"], raw: with_type(Some("application/json"), evil_pickle.clone()) },
        Case { name: "pickle content type with a pickle that runs a command", expect: &["application/x-python-serialize", "refused"], raw: with_type(Some("application/x-python-serialize"), evil_pickle) },
        Case { name: "yaml content type", expect: &["application/x-yaml", "refused"], raw: with_type(Some("application/x-yaml"), b"!!python/object/apply:os.system ['true']".to_vec()) },
        Case { name: "msgpack content type", expect: &["application/x-msgpack", "refused"], raw: with_type(Some("application/x-msgpack"), vec![0x93, 0x90, 0x80, 0x80]) },
        Case { name: "text/plain content type", expect: &["text/plain", "refused"], raw: with_type(Some("text/plain"), body_with(json!({"run": run, "seq": 1}))) },
        Case { name: "no content type", expect: &["no content type"], raw: with_type(None, body_with(json!({"run": run, "seq": 1}))) },
        Case { name: "binary content encoding", expect: &["content encoding", "binary"], raw: { let mut m = good(run, 0); m.content_encoding = Some("binary".into()); Raw::Message(m) } },
        Case { name: "unknown kombu tagged type", expect: &["kombu", "pickle"], raw: with_payload(json!({"run": {"__type__": "pickle", "__value__": "gASVAAAAAAAAAACMBG9zLnN5c3RlbZST"}, "seq": 1})) },
        Case { name: "kombu tagged uuid with a bad value", expect: &["kombu", "uuid"], raw: with_payload(json!({"run": {"__type__": "uuid", "__value__": {"hex": "zz"}}, "seq": 1})) },
        Case { name: "over the size limit (and not JSON either)", expect: &["over the", "limit"], raw: with_body(vec![b'x'; 2 * LIMIT]) },
        Case { name: "protocol 1 body without a task", expect: &["no task"], raw: { let mut m = good(run, 0); m.headers = serde_json::Map::new(); m.body = br#"{"id": "p1", "args": [], "kwargs": {}}"#.to_vec(); Raw::Message(m) } },
        Case { name: "unknown compression method", expect: &["compression", "`snappy`", "unknown"], raw: compressed(run, Compression::Zlib, Some(json!("snappy")), 0) },
        Case { name: "compression header not a string", expect: &["compression", "string"], raw: compressed(run, Compression::Zlib, Some(json!(["zlib"])), 0) },
        Case { name: "zlib header on an uncompressed body", expect: &["decompress", "application/x-gzip"], raw: { let mut m = good(run, 0); m.headers.insert("compression".into(), json!("zlib")); Raw::Message(m) } },
        Case { name: "bzip2 header on a zlib body", expect: &["decompress", "application/x-bz2"], raw: compressed(run, Compression::Zlib, Some(json!("application/x-bz2")), 0) },
        Case { name: "truncated xz body", expect: &["decompress", "application/x-lzma"], raw: { let Raw::Message(mut m) = compressed(run, Compression::Lzma, None, 0) else { unreachable!() }; m.body.truncate(m.body.len() / 2); Raw::Message(m) } },
    ];
    // Zip bombs: a small body (a few KiB) that decompresses past the limit, in every method.
    for (method, name) in [
        (
            Compression::Zlib,
            "zip bomb: zlib body decompressing to 2 MiB over the 1 MiB limit",
        ),
        (
            Compression::Bzip2,
            "zip bomb: bzip2 body decompressing to 2 MiB over the 1 MiB limit",
        ),
        (
            Compression::Lzma,
            "zip bomb: xz body decompressing to 2 MiB over the 1 MiB limit",
        ),
        (
            Compression::Zstd,
            "zip bomb: zstd body decompressing to 2 MiB over the 1 MiB limit",
        ),
        (
            Compression::Brotli,
            "zip bomb: brotli body decompressing to 2 MiB over the 1 MiB limit",
        ),
    ] {
        let raw = compressed(run, method, None, 2 * LIMIT);
        let Raw::Message(message) = &raw else {
            unreachable!()
        };
        assert!(
            message.body.len() < LIMIT / 64,
            "{name}: {} bytes",
            message.body.len()
        );
        let expect: &'static [&'static str] = match method {
            Compression::Zlib => &["application/x-gzip", "over the", "limit"],
            Compression::Bzip2 => &["application/x-bz2", "over the", "limit"],
            Compression::Lzma => &["application/x-lzma", "over the", "limit"],
            Compression::Zstd => &["application/zstd", "over the", "limit"],
            _ => &["application/x-brotli", "over the", "limit"],
        };
        cases.push(Case { name, expect, raw });
    }
    if redis {
        let envelope = |value: Value| Raw::Envelope(serde_json::to_vec(&value).unwrap());
        let props = json!({"delivery_tag": uuid::Uuid::new_v4().to_string(), "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": queue}, "delivery_mode": 2, "priority": 0});
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(body_with(json!({"run": run, "seq": 1})));
        let headers = Value::Object(good_headers("redis-only"));
        cases.extend([
            Case { name: "redis: envelope is not JSON", expect: &["redis envelope", "json"], raw: Raw::Envelope(b"garbage".to_vec()) },
            Case { name: "redis: envelope is not UTF-8", expect: &["redis envelope", "utf-8"], raw: Raw::Envelope(vec![0x7b, 0xff, 0x7d]) },
            Case { name: "redis: empty envelope", expect: &["redis envelope"], raw: Raw::Envelope(Vec::new()) },
            Case { name: "redis: envelope is an array", expect: &["envelope", "array"], raw: Raw::Envelope(b"[1, 2, 3]".to_vec()) },
            Case { name: "redis: envelope nested 100,000 levels", expect: &["redis envelope", "array"], raw: Raw::Envelope(deep(100_000).into_bytes()) },
            Case { name: "redis: envelope without body", expect: &["body"], raw: envelope(json!({"content-type": "application/json", "headers": headers, "properties": props})) },
            Case { name: "redis: body not base64", expect: &["base64"], raw: envelope(json!({"body": "!!not base64!!", "content-type": "application/json", "content-encoding": "utf-8", "headers": headers, "properties": props})) },
            Case { name: "redis: gzip body encoding", expect: &["body encoding", "gzip"], raw: envelope(json!({"body": b64, "content-type": "application/json", "content-encoding": "utf-8", "headers": headers, "properties": {"body_encoding": "gzip", "delivery_tag": "gz"}})) },
            Case { name: "redis: headers not an object", expect: &["headers"], raw: envelope(json!({"body": b64, "content-type": "application/json", "content-encoding": "utf-8", "headers": "x", "properties": props})) },
            Case { name: "redis: properties not an object", expect: &["properties"], raw: envelope(json!({"body": b64, "content-type": "application/json", "content-encoding": "utf-8", "headers": headers, "properties": [1]})) },
            // Python's `b64decode` would skip the `-` (decoding other bytes than meant) and
            // ignore what follows the padding: refused here (`kombu_tolerated_input_runs`).
            Case { name: "redis: body base64 with a URL-safe `-`", expect: &["base64"], raw: envelope(json!({"body": format!("{}-{}", &b64[..8], &b64[8..]), "content-type": "application/json", "content-encoding": "utf-8", "headers": headers, "properties": props})) },
            Case { name: "redis: body base64 with data after the padding", expect: &["base64"], raw: envelope(json!({"body": "W10=W10=", "content-type": "application/json", "content-encoding": "utf-8", "headers": headers, "properties": props})) },
        ]);
    } else {
        let table = |pairs: Vec<(&str, AMQPValue)>| {
            let mut table = FieldTable::default();
            for (key, value) in pairs {
                table.insert(ShortString::from(key), value);
            }
            table
        };
        let text = |s: &str| AMQPValue::LongString(s.into());
        let body = body_with(json!({"run": run, "seq": 1}));
        let task = ("task", text("domain_events.fault.probe"));
        cases.extend([
            Case {
                name: "amqp: no header table at all",
                expect: &["no task"],
                raw: Raw::AmqpHeaders(FieldTable::default(), body.clone()),
            },
            Case {
                name: "amqp: retries as a byte array",
                expect: &["retries"],
                raw: Raw::AmqpHeaders(
                    table(vec![
                        task.clone(),
                        ("id", text("a1")),
                        ("retries", AMQPValue::ByteArray(vec![1u8].into())),
                    ]),
                    body.clone(),
                ),
            },
            Case {
                name: "amqp: task id as a table",
                expect: &["id"],
                raw: Raw::AmqpHeaders(
                    table(vec![
                        task.clone(),
                        ("id", AMQPValue::FieldTable(FieldTable::default())),
                    ]),
                    body.clone(),
                ),
            },
            Case {
                name: "amqp: task name as a number",
                expect: &["task"],
                raw: Raw::AmqpHeaders(
                    table(vec![
                        ("task", AMQPValue::LongLongInt(3)),
                        ("id", text("a3")),
                    ]),
                    body.clone(),
                ),
            },
            Case {
                name: "amqp: eta as a boolean",
                expect: &["eta"],
                raw: Raw::AmqpHeaders(
                    table(vec![
                        task.clone(),
                        ("id", text("a4")),
                        ("eta", AMQPValue::Boolean(true)),
                    ]),
                    body.clone(),
                ),
            },
            Case {
                name: "amqp: timelimit as an array of strings",
                expect: &["timelimit"],
                raw: Raw::AmqpHeaders(
                    table(vec![
                        task,
                        ("id", text("a5")),
                        (
                            "timelimit",
                            AMQPValue::FieldArray(FieldArray::from(vec![text("a"), text("b")])),
                        ),
                    ]),
                    body,
                ),
            },
        ]);
    }
    cases
}

fn redis_envelope(message: &Message, queue: &str, tag: &str) -> Vec<u8> {
    let mut envelope = json!({
        "body": base64::engine::general_purpose::STANDARD.encode(&message.body),
        "headers": Value::Object(message.headers.clone()),
        "properties": {
            "correlation_id": message.headers.get("id").cloned().unwrap_or(Value::Null),
            "reply_to": "", "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0, "body_encoding": "base64", "delivery_tag": tag
        }
    });
    if let Some(ct) = &message.content_type {
        envelope["content-type"] = json!(ct);
    }
    if let Some(ce) = &message.content_encoding {
        envelope["content-encoding"] = json!(ce);
    }
    serde_json::to_vec(&envelope).unwrap()
}

fn amqp_value(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(amqp_value).collect::<Vec<_>>(),
        )),
        Value::Object(map) => AMQPValue::FieldTable(amqp_table(map)),
    }
}

fn amqp_table(map: &serde_json::Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in map {
        table.insert(ShortString::from(key.as_str()), amqp_value(value));
    }
    table
}

fn start_worker(url: &str, queue: &str) -> InProcessWorker {
    let config = WorkerConfig::new(url)
        .unwrap()
        .queues([queue])
        .max_message_bytes(LIMIT)
        .retry(RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        });
    InProcessWorker::start(config)
}

/// Checks every dead letter against its case, then that a good message still runs, and
/// reports the row.
async fn check(
    broker: &str,
    cases: &[Case],
    letters: &HashMap<String, Vec<String>>,
    run: &str,
    worker: &InProcessWorker,
    test: &str,
) {
    let mut problems = Vec::new();
    for case in cases {
        match letters.get(case.name).map(Vec::as_slice) {
            None | Some([]) => problems.push(format!("{}: no dead letter", case.name)),
            Some([reason]) if reason.len() > 2048 => problems.push(format!(
                "{}: a reason of {} bytes (hostile input must not bloat dead letters and logs)",
                case.name,
                reason.len()
            )),
            Some([reason]) => {
                let lower = reason.to_lowercase();
                // `!word`: the reason must not contain it.
                if let Some(word) = case.expect.iter().find(|w| match w.strip_prefix('!') {
                    Some(absent) => lower.contains(&absent.to_lowercase()),
                    None => !lower.contains(&w.to_lowercase()),
                }) {
                    problems.push(format!("{}: reason fails `{word}`: {reason}", case.name));
                }
            }
            Some(many) => problems.push(format!("{}: {} dead letters", case.name, many.len())),
        }
    }
    for (name, reasons) in letters {
        eprintln!("{broker} | {name} | {}", reasons.join(" / "));
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(!pickle_canary().exists(), "a pickle was loaded");
    assert!(!worker.is_finished(), "the worker stopped");
    // The corpus' messages carrying this run's payload never ran a handler.
    assert_eq!(runs_of(run), vec![1_000_000], "only the good message ran");
    let total = cases.len() + 1;
    let mut published = Published::default();
    published.confirmed.extend(0..total as u64);
    let runs: HashMap<u64, u64> = (0..total as u64).map(|i| (i, 1)).collect();
    let mut counts = Counts::new(
        &format!("4. bad input corpus, {broker}"),
        &format!(
            "{} distinct malformed/hostile messages pushed raw, then 1 good one: each bad one \
             dead-lettered with a reason naming its problem (\"processed\" = dead-lettered + \
             run); the good one ran; the worker stayed up",
            cases.len()
        ),
        &published,
        &runs,
        &command("fault_bad_input", test),
    );
    counts.failed = 0;
    counts.report();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bad_input_is_dead_lettered() {
    let url = fault_redis_url();
    let queue = unique_queue("fault_bad");
    let run = queue.clone();
    let cases = corpus(&run, &queue, true);
    assert!(cases.len() >= 30);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut by_envelope = HashMap::new();
    for (i, case) in cases.iter().enumerate() {
        let bytes = match &case.raw {
            Raw::Message(message) => redis_envelope(message, &queue, &format!("bad-{i}")),
            Raw::Envelope(bytes) => bytes.clone(),
            Raw::AmqpHeaders(..) => unreachable!(),
        };
        assert!(
            by_envelope.insert(bytes.clone(), case.name).is_none(),
            "{} twice",
            case.name
        );
        let _: () = redis::cmd("LPUSH")
            .arg(&queue)
            .arg(bytes)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    let worker = start_worker(&url, &queue);
    let dead = format!("{queue}.dead_letter");
    let expected = cases.len();
    let records: Vec<Value> = eventually(Duration::from_secs(60), || {
        let (mut connection, dead) = (connection.clone(), dead.clone());
        async move {
            let raw: Vec<String> = redis::cmd("LRANGE")
                .arg(&dead)
                .arg(0)
                .arg(-1)
                .query_async(&mut connection)
                .await
                .ok()?;
            (raw.len() >= expected).then(|| {
                raw.iter()
                    .map(|r| serde_json::from_str(r).unwrap())
                    .collect()
            })
        }
    })
    .await
    .unwrap_or_default();
    let mut letters: HashMap<String, Vec<String>> = HashMap::new();
    for record in &records {
        let bytes = match (
            record["envelope"].as_str(),
            record["envelope_base64"].as_str(),
        ) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
            _ => panic!("a dead letter without its envelope: {record}"),
        };
        let name = by_envelope.get(&bytes).copied().unwrap_or("(unknown)");
        letters
            .entry(name.to_owned())
            .or_default()
            .push(record["reason"].as_str().unwrap_or_default().to_owned());
    }
    // A good message right after: it runs.
    let good = redis_envelope(&good(&run, 1_000_000), &queue, "good");
    let _: () = redis::cmd("LPUSH")
        .arg(&queue)
        .arg(good)
        .query_async(&mut connection)
        .await
        .unwrap();
    let ran = eventually(Duration::from_secs(20), || async {
        (!runs_of(&run).is_empty()).then_some(())
    })
    .await;
    assert!(
        ran.is_some(),
        "the good message did not run after the corpus"
    );
    check(
        "Redis",
        &cases,
        &letters,
        &run,
        &worker,
        "redis_bad_input_is_dead_lettered",
    )
    .await;
    worker.stop().await;
    cleanup_redis_queue_at(&url, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_bad_input_is_dead_lettered() {
    let url = amqp_url();
    let queue = unique_queue("fault_bad");
    let run = queue.clone();
    let cases = corpus(&run, &queue, false);
    assert!(cases.len() >= 30);
    let (connection, channel) = amqp_channel().await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    let publish = |properties: BasicProperties, body: Vec<u8>| {
        let (channel, queue) = (channel.clone(), queue.clone());
        async move {
            let name = properties.message_id().clone();
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .unwrap_or_else(|e| panic!("publishing {name:?}: {e}"));
        }
    };
    for case in &cases {
        let base = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(case.name.into());
        match &case.raw {
            Raw::Message(message) => {
                let mut properties = base.with_headers(amqp_table(&message.headers));
                if let Some(ct) = &message.content_type {
                    properties = properties.with_content_type(ct.as_str().into());
                }
                if let Some(ce) = &message.content_encoding {
                    properties = properties.with_content_encoding(ce.as_str().into());
                }
                publish(properties, message.body.clone()).await;
            }
            Raw::AmqpHeaders(headers, body) => {
                let properties = base
                    .with_headers(headers.clone())
                    .with_content_type("application/json".into())
                    .with_content_encoding("utf-8".into());
                publish(properties, body.clone()).await;
            }
            Raw::Envelope(_) => unreachable!(),
        }
    }
    let dead = format!("{queue}.dead_letter");
    // Declared as the worker declares it, so that `basic.get` can poll it before it exists.
    channel
        .queue_declare(dead.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    let worker = start_worker(&url, &queue);
    let mut letters: HashMap<String, Vec<String>> = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut got = 0;
    while got < cases.len() && std::time::Instant::now() < deadline {
        let message = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .ok()
            .flatten();
        let Some(message) = message else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        got += 1;
        let properties = &message.delivery.properties;
        let name = properties
            .message_id()
            .as_ref()
            .map_or("(unknown)".to_owned(), |m| m.to_string());
        let reason = properties
            .headers()
            .as_ref()
            .and_then(|h| match h.inner().get("x-dead-letter-reason") {
                Some(AMQPValue::LongString(s)) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                _ => None,
            })
            .unwrap_or_else(|| "(no reason header)".to_owned());
        letters.entry(name).or_default().push(reason);
    }
    let good = good(&run, 1_000_000);
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_headers(amqp_table(&good.headers));
    publish(properties, good.body.clone()).await;
    let ran = eventually(Duration::from_secs(20), || async {
        (!runs_of(&run).is_empty()).then_some(())
    })
    .await;
    assert!(
        ran.is_some(),
        "the good message did not run after the corpus"
    );
    check(
        "RabbitMQ",
        &cases,
        &letters,
        &run,
        &worker,
        "amqp_bad_input_is_dead_lettered",
    )
    .await;
    worker.stop().await;
    let _ = connection.close(200, "done".into()).await;
    cleanup_amqp_queue(&queue).await;
    cleanup_amqp_queue(&dead).await;
}

/// What kombu and Python Celery accept is not bad input: a `priority` outside 0–9 or of
/// another type (kombu's `_get_message_priority` clamps `int(priority)` into 0–9 and uses the
/// default when `int()` fails) and a base64 body with line breaks or other whitespace
/// (`base64.b64decode` skips them). Each such message runs; none is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kombu_tolerated_input_runs() {
    let url = fault_redis_url();
    let queue = unique_queue("fault_tolerated");
    let run = queue.clone();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let priorities = [
        json!(10),
        json!(255),
        json!(256),
        json!(1000),
        json!(-1),
        json!(-300),
        serde_json::from_str::<Value>("1180591620717411303424").unwrap(),
        json!(5.7),
        json!(1e30),
        json!("7"),
        json!("high"),
        json!(true),
        json!([1]),
        json!({"p": 1}),
    ];
    let mut pushed = Vec::new();
    for (seq, priority) in priorities.iter().enumerate() {
        let mut envelope: Value =
            serde_json::from_slice(&redis_envelope(&good(&run, seq as u64), &queue, "p")).unwrap();
        envelope["properties"]["priority"] = priority.clone();
        pushed.push((
            format!("priority {priority}"),
            serde_json::to_vec(&envelope).unwrap(),
        ));
    }
    type Spacing = fn(&str) -> String;
    let spaced: [(&str, Spacing); 4] = [
        ("base64 in 76-character lines (base64.encodebytes)", |b| {
            lines(b, 76, "\n") + "\n"
        }),
        ("base64 in CRLF lines", |b| lines(b, 64, "\r\n")),
        ("base64 with spaces and tabs", |b| lines(b, 3, " \t")),
        ("base64 with leading and trailing whitespace", |b| {
            format!(" \n{b}\r\n ")
        }),
    ];
    for (name, space) in spaced {
        let seq = pushed.len() as u64;
        let mut envelope: Value =
            serde_json::from_slice(&redis_envelope(&good(&run, seq), &queue, "b")).unwrap();
        envelope["body"] = json!(space(envelope["body"].as_str().unwrap()));
        pushed.push((name.to_owned(), serde_json::to_vec(&envelope).unwrap()));
    }
    for (_, bytes) in &pushed {
        let _: () = redis::cmd("LPUSH")
            .arg(&queue)
            .arg(bytes)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    let worker = start_worker(&url, &queue);
    let all: Vec<u64> = (0..pushed.len() as u64).collect();
    let ran = eventually(Duration::from_secs(30), || async {
        let mut seen = runs_of(&run);
        seen.sort_unstable();
        (seen == all).then_some(())
    })
    .await;
    let mut seen = runs_of(&run);
    seen.sort_unstable();
    let reasons = tests::fault::dead_letter_reasons(&url, &queue)
        .await
        .unwrap_or_default();
    worker.stop().await;
    cleanup_redis_queue_at(&url, &queue).await;
    let missing: Vec<&str> = pushed
        .iter()
        .enumerate()
        .filter(|(seq, _)| !seen.contains(&(*seq as u64)))
        .map(|(_, (name, _))| name.as_str())
        .collect();
    assert!(
        ran.is_some() && reasons.is_empty(),
        "not run: {missing:?}; dead letters: {reasons:?}; ran {seen:?}"
    );
}

/// Postponed messages are each their own: identical envelopes with the same `eta` (pushed 3
/// and 2 times) each run once per push, as Python Celery runs them, and so does one message
/// pushed with 3 distinct etas. Before, identical envelopes collapsed into one member of the
/// postponed sorted set: pushed 3 times, run once, with no log and no dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_identical_eta_envelopes_each_run() {
    let url = fault_redis_url();
    let queue = unique_queue("fault_eta_twins");
    let run = queue.clone();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    // Far enough ahead that the worker sees each one before it is due (checked below).
    let eta = chrono::Utc::now() + chrono::Duration::seconds(5);
    let with_eta = |seq: u64, eta: chrono::DateTime<chrono::Utc>| {
        let mut message = good(&run, seq);
        message
            .headers
            .insert("eta".into(), json!(eta.to_rfc3339()));
        redis_envelope(&message, &queue, &format!("twin-{seq}"))
    };
    let thrice = with_eta(1, eta);
    let twice = with_eta(2, eta);
    let mut pushes = vec![thrice.clone(), twice.clone(), thrice.clone(), twice, thrice];
    for later in 0..3 {
        pushes.push(with_eta(
            3,
            eta + chrono::Duration::milliseconds(700 * later),
        ));
    }
    for bytes in &pushes {
        let _: () = redis::cmd("LPUSH")
            .arg(&queue)
            .arg(bytes)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    let worker = start_worker(&url, &queue);
    let expected: HashMap<u64, usize> = [(1, 3), (2, 2), (3, 3)].into();
    let count = |run: &str| {
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for seq in runs_of(run) {
            *counts.entry(seq).or_default() += 1;
        }
        counts
    };
    let ran = eventually(Duration::from_secs(30), || async {
        (count(&run) == expected).then_some(())
    })
    .await;
    let counts = count(&run);
    let reasons = tests::fault::dead_letter_reasons(&url, &queue)
        .await
        .unwrap_or_default();
    let stats = worker.stop().await;
    cleanup_redis_queue_at(&url, &queue).await;
    let postponed = stats.postponed.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        postponed,
        pushes.len() as u64,
        "every push must have been postponed first, or the test proves nothing"
    );
    assert!(
        ran.is_some() && reasons.is_empty(),
        "runs by seq {counts:?}, expected {expected:?}; dead letters {reasons:?}"
    );
}

/// `text` cut into lines of `width` characters joined by `separator`.
fn lines(text: &str, width: usize, separator: &str) -> String {
    text.as_bytes()
        .chunks(width)
        .map(|chunk| std::str::from_utf8(chunk).unwrap())
        .collect::<Vec<_>>()
        .join(separator)
}

/// An `eta` centuries away is not bad input: the message waits (Redis: in the worker's
/// postponed set; RabbitMQ: in the longest delay queue), neither run nor dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_far_future_eta_is_postponed_not_lost() {
    let url = fault_redis_url();
    let queue = unique_queue("fault_eta");
    let run = queue.clone();
    let mut message = good(&run, 5);
    message
        .headers
        .insert("eta".into(), json!("2999-01-01T00:00:00+00:00"));
    let envelope = redis_envelope(&message, &queue, "far-future");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(&queue)
        .arg(&envelope)
        .query_async(&mut connection)
        .await
        .unwrap();
    let worker = start_worker(&url, &queue);
    let delayed = format!("_events.delayed.{queue}");
    let waiting = eventually(Duration::from_secs(20), || {
        let (mut connection, delayed) = (connection.clone(), delayed.clone());
        async move {
            let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                .arg(&delayed)
                .arg(0)
                .arg(-1)
                .query_async(&mut connection)
                .await
                .ok()?;
            (!members.is_empty()).then_some(members)
        }
    })
    .await
    .expect("the message is postponed");
    // One member: `events-delayed:<id>:` then the envelope, unchanged.
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert!(
        waiting[0].starts_with(b"events-delayed:") && waiting[0].ends_with(&envelope),
        "{}",
        String::from_utf8_lossy(&waiting[0])
    );
    let dead: i64 = redis::cmd("LLEN")
        .arg(format!("{queue}.dead_letter"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    assert!(runs_of(&run).is_empty());
    worker.stop().await;
    cleanup_redis_queue_at(&url, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_far_future_eta_is_postponed_not_lost() {
    let url = amqp_url();
    let queue = unique_queue("fault_eta");
    let run = queue.clone();
    let (connection, channel) = amqp_channel().await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    let mut message = good(&run, 5);
    message
        .headers
        .insert("eta".into(), json!("2999-01-01T00:00:00+00:00"));
    let marker = format!("far-future-{queue}");
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(marker.as_str().into())
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_headers(amqp_table(&message.headers));
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            &message.body,
            properties,
        )
        .await
        .unwrap();
    let worker = start_worker(&url, &queue);
    // The longest delay bucket (2^21 s): the message waits there, hop after hop.
    let bucket = "events.delay.2097152s";
    let found = eventually(Duration::from_secs(20), || {
        let (connection, marker) = (&connection, marker.clone());
        async move {
            // Take every waiting message unacknowledged, settle ours, and close the channel,
            // which returns the others.
            let peek = connection.create_channel().await.ok()?;
            let mut ours = None;
            while let Some(m) = peek
                .basic_get(bucket.into(), BasicGetOptions { no_ack: false })
                .await
                .ok()
                .flatten()
            {
                if m.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .is_some_and(|id| id.as_str() == marker)
                {
                    ours = Some(m.delivery.delivery_tag);
                }
            }
            if let Some(tag) = ours {
                peek.basic_ack(tag, lapin::options::BasicAckOptions::default())
                    .await
                    .ok()?;
            }
            let _ = peek.close(200, "peeked".into()).await;
            ours.map(drop)
        }
    })
    .await;
    assert!(
        found.is_some(),
        "the far-future message is not in the delay queue: lost"
    );
    assert!(runs_of(&run).is_empty());
    let dead = channel
        .basic_get(
            format!("{queue}.dead_letter").as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .ok()
        .flatten();
    assert!(dead.is_none(), "dead-lettered");
    worker.stop().await;
    let _ = connection.close(200, "done".into()).await;
    cleanup_amqp_queue(&queue).await;
}
