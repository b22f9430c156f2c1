//! The Rust worker with real Python Celery (5.7.0, from `scripts/services.sh`):
//!
//! - Python `send_task` (`examples/python/send_events.py`) → the Rust `Worker` runs every
//!   handler of each event, once, with exactly the values Python sent: a nested payload, an
//!   `eta` (not run before it), a priority, kombu's tagged datetime/date/time/Decimal/UUID/bytes
//!   values, and a protocol-v1 message — on Redis and on RabbitMQ.
//! - A Python worker and a Rust worker on the **same Redis queue** (kombu's `unacked` hash and
//!   `unacked_index`, short visibility timeouts): what a `kill -9`ed Python worker held is
//!   restored and run by the Rust worker, and the other way round. Nothing is lost; duplicates
//!   (at-least-once) are reported.
//!
//! Without the Python interpreter (`EVENTS_TEST_PYTHON`, default `.venv/bin/python`) these
//! tests fail, and say to run `scripts/services.sh`; they never skip.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use events_celery::{CeleryBackend, CeleryConfig, WorkerConfig};
use events_core::{domain_event, handler};
use serde::Serialize;
use serde_json::Value;
use tests::fault::{
    TICK_EVENT, WorkerProcess, WorkerSpec, cleanup_redis_queue_at, forget_run, publish_ticks,
    python_runs, rust_runs,
};
use tests::{
    InProcessWorker, PythonWorkerSpec, amqp_url, cleanup_amqp_queue, cleanup_redis_queue,
    eventually, redis_url, send_events_py, unique_queue,
};

// ---------------------------------------------------------------------------------------------
// The events Python sends (`examples/python/send_events.py`), two handlers each.

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
struct Address {
    city: String,
    zip: String,
    lines: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
struct Customer {
    name: String,
    address: Address,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
struct Line {
    sku: String,
    quantity: u32,
    unit_price_cents: u64,
}

#[domain_event(name = "worker_interop.order_placed")]
#[derive(Debug, Clone, PartialEq)]
struct OrderPlaced {
    run: String,
    case: String,
    order_id: u64,
    customer: Customer,
    lines: Vec<Line>,
    tags: Vec<String>,
    note: Option<String>,
    total: f64,
}

#[domain_event(name = "worker_interop.reminder_due")]
#[derive(Debug, Clone, PartialEq)]
struct ReminderDue {
    run: String,
    case: String,
}

/// kombu's tagged values, read into typed fields and, for some, into strings (to see the
/// exact text the codec hands over).
#[domain_event(name = "worker_interop.typed_values")]
#[derive(Debug, Clone, PartialEq)]
struct TypedValues {
    run: String,
    case: String,
    at_utc: DateTime<Utc>,
    at_utc_text: String,
    at_offset: DateTime<FixedOffset>,
    naive: NaiveDateTime,
    day: NaiveDate,
    time_of_day: NaiveTime,
    price: String,
    prices: Vec<String>,
    id: uuid::Uuid,
    id_text: String,
    raw: Vec<u8>,
    blob: Vec<u8>,
}

/// One handler run: handler, run id, case, the event as JSON, when.
struct Run {
    handler: &'static str,
    run: String,
    case: String,
    event: Value,
    at: DateTime<Utc>,
}

static RUNS: Mutex<Vec<Run>> = Mutex::new(Vec::new());

fn record<E: Serialize>(handler: &'static str, run: &str, case: &str, event: &E) {
    RUNS.lock().unwrap().push(Run {
        handler,
        run: run.to_owned(),
        case: case.to_owned(),
        event: serde_json::to_value(event).unwrap(),
        at: Utc::now(),
    });
}

#[handler]
fn order_placed_sync(event: &OrderPlaced) {
    record("order_placed_sync", &event.run, &event.case, event);
}

#[handler]
async fn order_placed_async(event: &OrderPlaced) {
    tokio::task::yield_now().await;
    record("order_placed_async", &event.run, &event.case, event);
}

#[handler]
fn reminder_sync(event: &ReminderDue) {
    record("reminder_sync", &event.run, &event.case, event);
}

#[handler]
async fn reminder_async(event: &ReminderDue) {
    tokio::task::yield_now().await;
    record("reminder_async", &event.run, &event.case, event);
}

#[handler]
fn typed_values_sync(event: &TypedValues) {
    record("typed_values_sync", &event.run, &event.case, event);
}

#[handler]
async fn typed_values_async(event: &TypedValues) {
    tokio::task::yield_now().await;
    record("typed_values_async", &event.run, &event.case, event);
}

/// The handler runs of one test: (case, handler) → (event, when) of each run.
type RunsByCase = BTreeMap<(String, &'static str), Vec<(Value, DateTime<Utc>)>>;

/// The handler runs of `run`.
fn runs_of(run: &str) -> RunsByCase {
    let mut runs: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for r in RUNS.lock().unwrap().iter().filter(|r| r.run == run) {
        runs.entry((r.case.clone(), r.handler))
            .or_default()
            .push((r.event.clone(), r.at));
    }
    runs
}

fn expected_order(run: &str, case: &str) -> OrderPlaced {
    OrderPlaced {
        run: run.to_owned(),
        case: case.to_owned(),
        order_id: 1_000_042,
        customer: Customer {
            name: "Zoë Ångström".into(),
            address: Address {
                city: "Łódź".into(),
                zip: "90-926".into(),
                lines: vec!["ul. Piotrkowska 104".into()],
            },
        },
        lines: vec![
            Line {
                sku: "BRAKE-PAD".into(),
                quantity: 2,
                unit_price_cents: 1999,
            },
            Line {
                sku: "OIL-5W30".into(),
                quantity: 1,
                unit_price_cents: 4550,
            },
        ],
        tags: vec!["new".into(), "vip".into()],
        note: None,
        total: 85.48,
    }
}

fn expected_typed(run: &str) -> TypedValues {
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap();
    TypedValues {
        run: run.to_owned(),
        case: "kombu_types".into(),
        at_utc: at("2024-05-17T12:30:45.123456Z").with_timezone(&Utc),
        at_utc_text: "2024-05-17T12:30:45.123456+00:00".into(),
        at_offset: at("2024-05-17T14:30:45+02:00"),
        naive: NaiveDate::from_ymd_opt(2024, 5, 17)
            .unwrap()
            .and_hms_opt(12, 30, 45)
            .unwrap(),
        day: NaiveDate::from_ymd_opt(2024, 5, 17).unwrap(),
        time_of_day: NaiveTime::from_hms_micro_opt(12, 30, 45, 500).unwrap(),
        price: "9.99".into(),
        prices: vec!["0.10".into(), "1E+3".into()],
        id: uuid::Uuid::parse_str("6f1c2b8e-3f4a-4c5d-9e10-2f10aa55cc01").unwrap(),
        id_text: "6f1c2b8e-3f4a-4c5d-9e10-2f10aa55cc01".into(),
        raw: b"hello".to_vec(),
        blob: vec![0x00, 0xff, 0xfe, 0x80],
    }
}

// ---------------------------------------------------------------------------------------------
// The Python sender.

/// What `send_events.py` printed for one message.
#[derive(Debug, serde::Deserialize)]
struct Sent {
    case: String,
    eta: Option<String>,
}

/// Runs `send_events.py`; returns what it sent, by case.
async fn python_sends(
    broker_url: &str,
    queue: &str,
    run: &str,
    max_priority: Option<u8>,
    cases: &str,
    compression: Option<&str>,
) -> HashMap<String, Sent> {
    let mut args: Vec<String> = [
        "--broker",
        broker_url,
        "--queue",
        queue,
        "--run",
        run,
        "--cases",
        cases,
        "--countdown",
        "3",
    ]
    .map(str::to_owned)
    .into();
    if let Some(compression) = compression {
        args.extend(["--compression".to_owned(), compression.to_owned()]);
    }
    if let Some(max) = max_priority {
        args.extend(["--max-priority".to_owned(), max.to_string()]);
    }
    send_events_py(args)
        .await
        .lines()
        .map(|line| {
            let sent: Sent = serde_json::from_str(line).expect("a JSON line");
            (sent.case.clone(), sent)
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Broker {
    Redis,
    Amqp,
}

async fn python_send_task_runs_every_rust_handler(broker: Broker) {
    let queue = unique_queue("py_to_rust");
    let run = queue.clone();
    let (url, max_priority) = match broker {
        Broker::Redis => (redis_url(), None),
        // RabbitMQ priorities need `x-max-priority` on the queue, declared alike on both sides.
        Broker::Amqp => (amqp_url(), Some(10)),
    };
    let mut config = WorkerConfig::new(&url)
        .unwrap()
        .queues([queue.clone()])
        .concurrency(4);
    if let Some(max) = max_priority {
        config = config.queue_max_priority(max);
    }
    let worker = InProcessWorker::start(config);
    let sent = python_sends(
        &url,
        &queue,
        &run,
        max_priority,
        "plain,eta,priority,kombu_types,protocol_v1",
        None,
    )
    .await;
    assert_eq!(sent.len(), 5, "{sent:?}");

    // Five messages, two handlers each.
    let all_ran = eventually(Duration::from_secs(30), || async {
        (runs_of(&run).values().map(Vec::len).sum::<usize>() >= 10).then_some(())
    })
    .await;
    // Anything that would run twice has had time to.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats: HashMap<_, _> = worker.stop().await.snapshot().into_iter().collect();
    let runs = runs_of(&run);
    assert!(
        all_ran.is_some(),
        "not every handler ran within 30 s: {:?}; stats {stats:?}",
        runs.keys().collect::<Vec<_>>()
    );

    let expected: Vec<(&str, [&'static str; 2], Value)> = vec![
        (
            "plain",
            ["order_placed_async", "order_placed_sync"],
            serde_json::to_value(expected_order(&run, "plain")).unwrap(),
        ),
        (
            "protocol_v1",
            ["order_placed_async", "order_placed_sync"],
            serde_json::to_value(expected_order(&run, "protocol_v1")).unwrap(),
        ),
        (
            "eta",
            ["reminder_async", "reminder_sync"],
            serde_json::to_value(ReminderDue {
                run: run.clone(),
                case: "eta".into(),
            })
            .unwrap(),
        ),
        (
            "priority",
            ["reminder_async", "reminder_sync"],
            serde_json::to_value(ReminderDue {
                run: run.clone(),
                case: "priority".into(),
            })
            .unwrap(),
        ),
        (
            "kombu_types",
            ["typed_values_async", "typed_values_sync"],
            serde_json::to_value(expected_typed(&run)).unwrap(),
        ),
    ];
    let mut expected_keys = BTreeSet::new();
    for (case, handlers, event) in &expected {
        for handler in handlers {
            expected_keys.insert((case.to_string(), *handler));
            let seen = runs
                .get(&(case.to_string(), *handler))
                .unwrap_or_else(|| panic!("{handler} did not run for the {case} message"));
            assert_eq!(
                seen.len(),
                1,
                "{handler} ran {} times for {case}",
                seen.len()
            );
            assert_eq!(&seen[0].0, event, "{handler} got other values for {case}");
        }
    }
    assert_eq!(
        runs.keys().cloned().collect::<BTreeSet<_>>(),
        expected_keys,
        "unexpected handler runs"
    );

    // The eta message ran at its eta, not before (the printed eta is a lower bound).
    let eta = DateTime::parse_from_rfc3339(sent["eta"].eta.as_deref().expect("an eta"))
        .unwrap()
        .with_timezone(&Utc);
    for handler in ["reminder_async", "reminder_sync"] {
        let at = runs[&("eta".to_owned(), handler)][0].1;
        assert!(at >= eta, "{handler} ran at {at}, before the eta {eta}");
    }
    assert_eq!(stats["processed"], 5, "{stats:?}");
    assert_eq!(stats["succeeded"], 5, "{stats:?}");
    assert_eq!(stats["dead_lettered"], 0, "{stats:?}");
    assert!(
        stats["postponed"] >= 1,
        "the eta message was not postponed: {stats:?}"
    );

    match broker {
        Broker::Redis => cleanup_redis_queue(&queue, &[]).await,
        Broker::Amqp => cleanup_amqp_queue(&queue).await,
    }
}

/// Python's `send_task(..., compression=...)` with every method kombu has, by every name
/// (`gzip` and `xz` are aliases) → the Rust worker decompresses each message and runs every
/// handler once with exactly the values Python sent (before, these were dead-lettered as "body
/// is not valid UTF-8").
async fn python_compressed_messages_run_in_rust(broker: Broker) {
    const METHODS: [&str; 7] = ["zlib", "gzip", "bzip2", "lzma", "xz", "zstd", "brotli"];
    let queue = unique_queue("py_compressed");
    let url = match broker {
        Broker::Redis => redis_url(),
        Broker::Amqp => amqp_url(),
    };
    let config = WorkerConfig::new(&url)
        .unwrap()
        .queues([queue.clone()])
        .concurrency(4);
    let worker = InProcessWorker::start(config);
    for method in METHODS {
        let run = format!("{queue}-{method}");
        let sent = python_sends(&url, &queue, &run, None, "plain,kombu_types", Some(method)).await;
        assert_eq!(sent.len(), 2, "{method}: {sent:?}");
    }
    // Two messages per method, two handlers each.
    let expected_runs = METHODS.len() * 4;
    let runs_of_all = || {
        METHODS
            .iter()
            .map(|m| {
                runs_of(&format!("{queue}-{m}"))
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
            })
            .sum::<usize>()
    };
    let all_ran = eventually(Duration::from_secs(30), || async {
        (runs_of_all() >= expected_runs).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats: HashMap<_, _> = worker.stop().await.snapshot().into_iter().collect();
    assert!(
        all_ran.is_some(),
        "{} of {expected_runs} handler runs within 30 s; stats {stats:?}",
        runs_of_all()
    );
    for method in METHODS {
        let run = format!("{queue}-{method}");
        let runs = runs_of(&run);
        let expected = [
            (
                "plain",
                "order_placed_async",
                serde_json::to_value(expected_order(&run, "plain")).unwrap(),
            ),
            (
                "plain",
                "order_placed_sync",
                serde_json::to_value(expected_order(&run, "plain")).unwrap(),
            ),
            (
                "kombu_types",
                "typed_values_async",
                serde_json::to_value(expected_typed(&run)).unwrap(),
            ),
            (
                "kombu_types",
                "typed_values_sync",
                serde_json::to_value(expected_typed(&run)).unwrap(),
            ),
        ];
        assert_eq!(runs.len(), expected.len(), "{method}: {:?}", runs.keys());
        for (case, handler, event) in &expected {
            let seen = &runs[&(case.to_string(), *handler)];
            assert_eq!(
                seen.len(),
                1,
                "{method}: {handler} ran {} times",
                seen.len()
            );
            assert_eq!(&seen[0].0, event, "{method}: {handler} got other values");
        }
    }
    assert_eq!(stats["processed"], METHODS.len() as u64 * 2, "{stats:?}");
    assert_eq!(stats["dead_lettered"], 0, "{stats:?}");
    match broker {
        Broker::Redis => cleanup_redis_queue(&queue, &[]).await,
        Broker::Amqp => cleanup_amqp_queue(&queue).await,
    }
}

/// The tests of this file run one at a time: each runs Python Celery workers and Rust workers
/// with visibility timeouts of a few seconds, and on this 2-core machine their restore sweeps
/// were seen to fall behind when all four ran at once.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_python_send_task_runs_every_rust_handler() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    python_send_task_runs_every_rust_handler(Broker::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_python_send_task_runs_every_rust_handler() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    python_send_task_runs_every_rust_handler(Broker::Amqp).await;
}

// ---------------------------------------------------------------------------------------------
// A Python worker and a Rust worker on the same Redis queue.

/// The Redis database of the shared-queue tests. kombu's `unacked` hash is per database, and
/// these tests restore with visibility timeouts of a few seconds: in their own databases they
/// never restore another test's messages. `EVENTS_TEST_SHARED_REDIS_URL_<db>` overrides them.
fn shared_redis_url(db: u8) -> String {
    std::env::var(format!("EVENTS_TEST_SHARED_REDIS_URL_{db}"))
        .unwrap_or_else(|_| format!("redis://127.0.0.1:6379/{db}"))
}

/// The `seq`s of `run`'s messages in kombu's `unacked` hash at `url`: what a worker holds.
async fn unacked_seqs(url: &str, run: &str) -> BTreeSet<u64> {
    let mut connection = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let entries: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("unacked")
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut seqs = BTreeSet::new();
    for entry in entries.values() {
        // kombu's entry: [envelope, exchange, routing_key].
        let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(entry) else {
            continue;
        };
        let Some(body) = parts.first().and_then(|e| e["body"].as_str()) else {
            continue;
        };
        let Ok(body) = base64::engine::general_purpose::STANDARD.decode(body) else {
            continue;
        };
        let Ok(body) = serde_json::from_slice::<Value>(&body) else {
            continue;
        };
        let payload = &body[1]["payload"];
        if payload["run"] == run
            && let Some(seq) = payload["seq"].as_u64()
        {
            seqs.insert(seq);
        }
    }
    seqs
}

const SHARED_MESSAGES: u64 = 20;

async fn publish_shared(url: &str, queue: &str, run: &str) {
    let backend = CeleryBackend::connect(CeleryConfig::new(url).unwrap().default_queue(queue))
        .await
        .unwrap();
    let published = publish_ticks(&backend, run, SHARED_MESSAGES, 20).await;
    assert_eq!(
        published.confirmed.len() as u64,
        SHARED_MESSAGES,
        "{published:?}"
    );
}

/// Runs seen so far: (Python's, Rust's), seq → runs.
async fn shared_runs(run: &str, python_key: &str) -> (HashMap<u64, u64>, HashMap<u64, u64>) {
    (python_runs(python_key, run).await, rust_runs(run).await)
}

fn report(what: &str, python: &HashMap<u64, u64>, rust: &HashMap<u64, u64>, held: &BTreeSet<u64>) {
    let duplicated: Vec<u64> = (0..SHARED_MESSAGES)
        .filter(|seq| python.get(seq).unwrap_or(&0) + rust.get(seq).unwrap_or(&0) > 1)
        .collect();
    eprintln!(
        "{what}: {} messages; Python ran {}, Rust ran {}; held by the killed worker {held:?}; \
         duplicated (at-least-once) {duplicated:?}",
        SHARED_MESSAGES,
        python.values().sum::<u64>(),
        rust.values().sum::<u64>(),
    );
}

/// A Python worker (acks late, prefetch 4, slow tasks) is `kill -9`ed while it holds messages;
/// the Rust worker restores them after the visibility timeout and runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rust_worker_restores_what_a_killed_python_worker_held() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let url = shared_redis_url(6);
    let queue = unique_queue("shared_py_dies");
    let run = queue.clone();
    let python_key = format!("{queue}.python");
    publish_shared(&url, &queue, &run).await;

    let mut python_worker = PythonWorkerSpec::new(&url, &queue, &python_key)
        .events([TICK_EVENT])
        .prefetch_multiplier(4)
        .acks_late()
        .task_sleep(Duration::from_millis(400))
        .visibility_timeout(Duration::from_secs(4))
        .start();
    // Kill it in the middle of a task: just after a run was recorded (and acknowledged), the
    // next message is taken and its task sleeps 400 ms, unacknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    loop {
        python_worker.assert_running();
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Python worker did not run 3 tasks within 60 s:\n{}",
            python_worker.log()
        );
        let now = python_runs(&python_key, &run).await.len();
        if now > seen && now >= 3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if !unacked_seqs(&url, &run).await.is_empty() {
                break;
            }
        }
        seen = now;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    python_worker.kill();
    let held = unacked_seqs(&url, &run).await;
    let (python_before, _) = shared_runs(&run, &python_key).await;
    assert!(
        !held.is_empty(),
        "the killed Python worker held nothing unacknowledged: the test proves nothing"
    );
    assert!(
        (python_before.len() as u64) < SHARED_MESSAGES,
        "Python ran everything before it was killed: the test proves nothing"
    );

    let mut spec = WorkerSpec::new(&url, &queue);
    spec.visibility_timeout = Some(Duration::from_secs(3));
    spec.restore_interval = Some(Duration::from_millis(500));
    let mut rust_worker = WorkerProcess::start(env!("CARGO_BIN_EXE_fault_worker"), &spec);
    let done = eventually(Duration::from_secs(30), || async {
        let (python, rust) = shared_runs(&run, &python_key).await;
        let all = (0..SHARED_MESSAGES).all(|s| python.contains_key(&s) || rust.contains_key(&s));
        (all && held.iter().all(|s| rust.contains_key(s))).then_some(())
    })
    .await;
    rust_worker.assert_running();
    rust_worker.terminate(Duration::from_secs(5));
    let (python, rust) = shared_runs(&run, &python_key).await;
    report("Python killed, Rust restores", &python, &rust, &held);
    cleanup_redis_queue_at(&url, &queue).await;
    forget_run(&run, Some(&python_key)).await;

    assert!(
        done.is_some(),
        "messages lost or not restored: held {held:?}, Python ran {python:?}, Rust ran {rust:?}"
    );
    let lost: Vec<u64> = (0..SHARED_MESSAGES)
        .filter(|s| !python.contains_key(s) && !rust.contains_key(s))
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    for seq in &held {
        assert!(
            rust.contains_key(seq),
            "message {seq}, held by the killed Python worker, was not run by the Rust worker"
        );
    }
}

/// A Rust worker (slow handler, several messages held) is `kill -9`ed; a Python worker with a
/// short visibility timeout restores what it held, and runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_python_worker_restores_what_a_killed_rust_worker_held() {
    python_restores_what_a_killed_rust_worker_held(false).await;
}

/// The same with messages that share delivery tags (one tag on 2 messages, one on 5): each
/// has its own `unacked` entry while the Rust worker holds it, and kombu's `restore_visible`
/// restores every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_python_worker_restores_repeated_tags_a_killed_rust_worker_held() {
    python_restores_what_a_killed_rust_worker_held(true).await;
}

async fn python_restores_what_a_killed_rust_worker_held(repeated_tags: bool) {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let url = shared_redis_url(7);
    let queue = unique_queue("shared_rust_dies");
    let run = queue.clone();
    let python_key = format!("{queue}.python");
    if repeated_tags {
        let backend =
            CeleryBackend::connect(CeleryConfig::new(&url).unwrap().default_queue(&queue))
                .await
                .unwrap();
        let mut connection = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for seq in 0..SHARED_MESSAGES {
            let mut message = tests::fault::tick(&backend, &run, seq);
            message.properties.delivery_tag = Some(match seq {
                1 | 18 => format!("{queue}-two"),
                2 | 6 | 10 | 14 | 19 => format!("{queue}-five"),
                _ => format!("{queue}-{seq}"),
            });
            let _: () = redis::cmd("LPUSH")
                .arg(&queue)
                .arg(message.to_redis().unwrap().envelope)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
    } else {
        publish_shared(&url, &queue, &run).await;
    }

    let mut spec = WorkerSpec::new(&url, &queue);
    spec.sleep = Duration::from_millis(1000);
    spec.concurrency = 4;
    spec.prefetch = 8;
    spec.visibility_timeout = Some(Duration::from_secs(4));
    spec.restore_interval = Some(Duration::from_millis(500));
    let mut rust_worker = WorkerProcess::start(env!("CARGO_BIN_EXE_fault_worker"), &spec);
    // With repeated tags, once the first 4 have run (and been acked): the next 4, running,
    // include the second message of the tag on 5 (seq 6), whose backup the ack of seq 2 took
    // before each message had an entry of its own.
    let ran_before_kill = if repeated_tags { 4 } else { 1 };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while rust_runs(&run).await.len() < ran_before_kill {
        rust_worker.assert_running();
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Rust worker ran nothing within 30 s:\n{}",
            rust_worker.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rust_worker.kill9();
    let held = unacked_seqs(&url, &run).await;
    assert!(
        !held.is_empty(),
        "the killed Rust worker held nothing unacknowledged: the test proves nothing"
    );

    let mut python_worker = PythonWorkerSpec::new(&url, &queue, &python_key)
        .events([TICK_EVENT])
        .visibility_timeout(Duration::from_secs(3))
        .start();
    let done = eventually(Duration::from_secs(45), || async {
        let (python, rust) = shared_runs(&run, &python_key).await;
        let all = (0..SHARED_MESSAGES).all(|s| python.contains_key(&s) || rust.contains_key(&s));
        (all && held.iter().all(|s| python.contains_key(s))).then_some(())
    })
    .await;
    python_worker.assert_running();
    let log = python_worker.log();
    python_worker.stop();
    let (python, rust) = shared_runs(&run, &python_key).await;
    report("Rust killed, Python restores", &python, &rust, &held);
    cleanup_redis_queue_at(&url, &queue).await;
    forget_run(&run, Some(&python_key)).await;

    assert!(
        done.is_some(),
        "messages lost or not restored: held {held:?}, Python ran {python:?}, Rust ran \
         {rust:?}; the Python worker's output:\n{log}"
    );
    for seq in &held {
        assert!(
            python.contains_key(seq),
            "message {seq}, held by the killed Rust worker, was not run by the Python worker"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_python_compressed_messages_run_in_rust() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    python_compressed_messages_run_in_rust(Broker::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_python_compressed_messages_run_in_rust() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    python_compressed_messages_run_in_rust(Broker::Amqp).await;
}
