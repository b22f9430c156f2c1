//! Interop with real Python Celery (5.7.0, from `scripts/services.sh`): Rust publishes through
//! `CeleryBackend`, a Python Celery worker running `examples/python/domain_events_app.py` runs
//! the `domain_events.<event>` tasks and records what it got on a Redis list, and the test
//! reads that back — on Redis and on RabbitMQ.
//!
//! Without the Python interpreter (`EVENTS_TEST_PYTHON`, default `.venv/bin/python`) these
//! tests fail, and say to run `scripts/services.sh`; they never skip.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use events_celery::codec::Json;
use events_celery::{CeleryBackend, CeleryConfig, Compression};
use events_core::{DomainEvent, Receipt, domain_event};
use serde::{Deserialize, Serialize};
use tests::{
    PythonWorker, PythonWorkerSpec, amqp_url, cleanup_amqp_queue, cleanup_redis_queue, eventually,
    redis_url, task_records, unique_queue,
};

// ---------------------------------------------------------------------------------------------
// The event shapes.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Address {
    street: String,
    city: String,
    country_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Customer {
    id: u64,
    name: String,
    address: Address,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    sku: String,
    quantity: u32,
    unit_price_cents: i64,
    attributes: BTreeMap<String, Vec<String>>,
}

/// Nested structs, lists, maps, a nested enum, and a float Python writes the same way.
#[domain_event(name = "interop.order_nested")]
#[derive(Debug, Clone, PartialEq)]
struct OrderNested {
    order_id: String,
    customer: Customer,
    lines: Vec<Line>,
    status_history: Vec<ShipmentStatus>,
    matrix: Vec<Vec<i32>>,
    weight_kg: f64,
    gift: bool,
}

#[domain_event(name = "interop.unicode_text")]
#[derive(Debug, Clone, PartialEq)]
struct UnicodeText {
    latin: String,
    cjk: String,
    emoji: String,
    rtl: String,
    combining: String,
    escapes: String,
    controls: String,
    by_language: BTreeMap<String, String>,
}

#[domain_event(name = "interop.big_numbers")]
#[derive(Debug, Clone, PartialEq)]
struct BigNumbers {
    u64_max: u64,
    i64_min: i64,
    i64_max: i64,
    beyond_64_bits: i128,
    below_64_bits: i128,
    u128_max: u128,
    zero: u8,
    list: Vec<u64>,
}

#[domain_event(name = "interop.optional_fields")]
#[derive(Debug, Clone, PartialEq)]
struct OptionalFields {
    present: Option<String>,
    absent: Option<String>,
    nested_present: Option<Address>,
    nested_absent: Option<Address>,
    list_present: Option<Vec<Option<u32>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    skipped_when_absent: Option<u32>,
}

/// An enum event: unit, tuple, newtype and struct variants.
#[domain_event(name = "interop.shipment_status")]
#[derive(Debug, Clone, PartialEq)]
enum ShipmentStatus {
    Pending,
    Delayed(u32, String),
    Returned(Address),
    Delivered {
        at: String,
        signed_by: Option<String>,
    },
}

/// For the countdown, expires and priority tests.
#[domain_event(name = "interop.tick")]
#[derive(Debug, Clone, PartialEq)]
struct Tick {
    label: String,
}

const SHAPE_EVENTS: [&str; 5] = [
    "interop.order_nested",
    "interop.unicode_text",
    "interop.big_numbers",
    "interop.optional_fields",
    "interop.shipment_status",
];

fn address() -> Address {
    Address {
        street: "ul. Piotrkowska 104".into(),
        city: "Łódź".into(),
        country_code: Some("PL".into()),
    }
}

fn order_nested() -> OrderNested {
    OrderNested {
        order_id: "ord-2024-0001".into(),
        customer: Customer {
            id: 42,
            name: "Zoë Ångström".into(),
            address: address(),
        },
        lines: vec![
            Line {
                sku: "BRK-PAD-01".into(),
                quantity: 2,
                unit_price_cents: 1999,
                attributes: BTreeMap::from([
                    ("colour".into(), vec!["black".into()]),
                    ("fits".into(), vec!["golf".into(), "polo".into()]),
                ]),
            },
            Line {
                sku: "OIL-5W30".into(),
                quantity: 1,
                unit_price_cents: -500,
                attributes: BTreeMap::new(),
            },
        ],
        status_history: vec![
            ShipmentStatus::Pending,
            ShipmentStatus::Delayed(3, "storm".into()),
        ],
        matrix: vec![vec![1, -2], vec![], vec![3]],
        weight_kg: 12.5,
        gift: false,
    }
}

fn unicode_text() -> UnicodeText {
    UnicodeText {
        latin: "Łódź — Straße — naïve café".into(),
        cjk: "東京 — 北京 — 서울".into(),
        emoji: "🚗🚀 👩‍👩‍👧‍👦 🇵🇱 ✓".into(),
        rtl: "مرحبا שלום".into(),
        combining: "e\u{301} a\u{308} \u{200d}".into(),
        escapes: "quote \" backslash \\ slash / tab\t newline\n".into(),
        controls: "\u{0}\u{1}\u{1f}\u{7f}\u{85}\u{2028}\u{feff}".into(),
        by_language: BTreeMap::from([
            ("日本語".into(), "こんにちは".into()),
            ("emoji 🚗".into(), "🦀".into()),
        ]),
    }
}

fn big_numbers() -> BigNumbers {
    BigNumbers {
        u64_max: u64::MAX,
        i64_min: i64::MIN,
        i64_max: i64::MAX,
        beyond_64_bits: 1 << 70,
        below_64_bits: -(1_i128 << 64) - 1,
        u128_max: u128::MAX,
        zero: 0,
        list: vec![0, 1, u64::MAX - 1, 1 << 53, (1 << 53) + 1],
    }
}

fn optional_fields() -> OptionalFields {
    OptionalFields {
        present: Some("here".into()),
        absent: None,
        nested_present: Some(address()),
        nested_absent: None,
        list_present: Some(vec![Some(1), None, Some(3)]),
        skipped_when_absent: None,
    }
}

fn shipment_statuses() -> Vec<ShipmentStatus> {
    vec![
        ShipmentStatus::Pending,
        ShipmentStatus::Delayed(7, "customs — 税関".into()),
        ShipmentStatus::Returned(Address {
            country_code: None,
            ..address()
        }),
        ShipmentStatus::Delivered {
            at: "2024-05-17T12:30:45+00:00".into(),
            signed_by: Some("Ada".into()),
        },
        ShipmentStatus::Delivered {
            at: "2024-05-18T08:00:00+00:00".into(),
            signed_by: None,
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Plumbing.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Broker {
    Redis,
    Amqp,
}

impl Broker {
    fn url(self) -> String {
        match self {
            Broker::Redis => redis_url(),
            Broker::Amqp => amqp_url(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Broker::Redis => "redis",
            Broker::Amqp => "amqp",
        }
    }
}

/// One test's queue, result key, backend and (once started) worker; cleans up on drop of
/// [`Setup::finish`], and the worker guard stops the worker even when the test panics.
struct Setup {
    broker: Broker,
    queue: String,
    result_key: String,
    backend: CeleryBackend,
    worker: Option<PythonWorker>,
}

impl Setup {
    async fn new(broker: Broker, what: &str, max_priority: Option<u8>) -> Self {
        // Fail before touching the broker when Python Celery is missing.
        tests::python();
        let queue = unique_queue(&format!("interop_{what}_{}", broker.name()));
        let result_key = format!("{queue}.results");
        let mut config = CeleryConfig::new(&broker.url())
            .unwrap()
            .default_queue(queue.clone());
        if let Some(max) = max_priority {
            config = config.queue_max_priority(max);
        }
        let backend = CeleryBackend::connect(config).await.unwrap();
        Self {
            broker,
            queue,
            result_key,
            backend,
            worker: None,
        }
    }

    fn worker_spec(&self) -> PythonWorkerSpec {
        let mut events: Vec<&str> = SHAPE_EVENTS.to_vec();
        events.push(<Tick as DomainEvent>::NAME);
        PythonWorkerSpec::new(&self.broker.url(), &self.queue, &self.result_key).events(events)
    }

    fn start_worker(&mut self, spec: PythonWorkerSpec) -> &mut PythonWorker {
        self.worker.insert(spec.start())
    }

    fn worker_log(&self) -> String {
        self.worker
            .as_ref()
            .map(PythonWorker::log)
            .unwrap_or_default()
    }

    /// Waits (at most 60 s) until the worker has recorded `count` task runs; returns them in
    /// the order they ran.
    async fn records(&mut self, count: usize) -> Vec<Json> {
        let key = self.result_key.clone();
        let found = eventually(Duration::from_secs(60), || {
            let key = key.clone();
            async move {
                let records = task_records(&key).await;
                (records.len() >= count).then_some(records)
            }
        })
        .await;
        if let Some(worker) = self.worker.as_mut() {
            worker.assert_running();
        }
        found.unwrap_or_else(|| {
            panic!(
                "the Python worker did not record {count} task runs within 60 s; got {:?}\n\
                 worker output:\n{}",
                futures_util::FutureExt::now_or_never(task_records(&self.result_key)),
                self.worker_log()
            )
        })
    }

    async fn finish(mut self) {
        if let Some(mut worker) = self.worker.take() {
            worker.stop();
        }
        match self.broker {
            Broker::Redis => cleanup_redis_queue(&self.queue, &[&self.result_key]).await,
            Broker::Amqp => {
                cleanup_redis_queue(&self.queue, &[&self.result_key]).await;
                cleanup_amqp_queue(&self.queue).await;
            }
        }
    }
}

fn task_id(receipt: &Receipt) -> String {
    match receipt {
        Receipt::Enqueued { task_id, .. } => task_id.clone(),
        other => panic!("expected an enqueued receipt, got {other:?}"),
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn record_for<'a>(records: &'a [Json], id: &str) -> &'a Json {
    records
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no record of task {id} in {records:#?}"))
}

fn ran_at(record: &Json) -> f64 {
    record["ran_at"]
        .as_f64()
        .unwrap_or_else(|| panic!("no ran_at in {record}"))
}

fn labels(records: &[Json]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["payload"]["label"].as_str().unwrap_or("?").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Every shape arrives in Python exactly as Rust serialises it.

async fn shapes_arrive_unchanged(broker: Broker) {
    let mut setup = Setup::new(broker, "shapes", None).await;

    // (task id, event name, the event as JSON on the Rust side, a check that it reads back)
    type ReadBack = Box<dyn Fn(&Json)>;
    let mut sent: Vec<(String, &'static str, Json, ReadBack)> = Vec::new();
    macro_rules! publish {
        ($event:expr, $ty:ty) => {{
            let event: $ty = $event;
            let receipt = setup.backend.publish_with(&event, |o| o).await.unwrap();
            let expected = Json::from_serialize(&event).unwrap();
            let check: ReadBack = Box::new(move |payload: &Json| {
                let back: $ty = payload.deserialize_into().unwrap_or_else(|e| {
                    panic!("{payload} does not read back as {}: {e}", stringify!($ty))
                });
                assert_eq!(back, event);
            });
            sent.push((
                task_id(&receipt),
                <$ty as DomainEvent>::NAME,
                expected,
                check,
            ));
        }};
    }
    publish!(order_nested(), OrderNested);
    publish!(unicode_text(), UnicodeText);
    publish!(big_numbers(), BigNumbers);
    publish!(optional_fields(), OptionalFields);
    for status in shipment_statuses() {
        publish!(status, ShipmentStatus);
    }

    setup.start_worker(setup.worker_spec());
    let records = setup.records(sent.len()).await;
    assert_eq!(records.len(), sent.len(), "{records:#?}");
    for (id, name, expected, read_back) in &sent {
        let record = record_for(&records, id);
        assert_eq!(record["task"], format!("domain_events.{name}"));
        // Exact, big integers included: both sides' JSON is the codec's `Json`, which keeps
        // numbers as written, so 2**70 or u64::MAX would differ if rounded anywhere.
        assert_eq!(&record["payload"], expected, "payload of {name} ({id})");
        read_back(&record["payload"]);
        assert!(
            record["eta"].is_null() && record["expires"].is_null(),
            "{record}"
        );
    }
    // The big numbers really are beyond f64 and i64 on the Python side too.
    let big = &record_for(&records, &sent[2].0)["payload"];
    assert_eq!(big["beyond_64_bits"].to_string(), "1180591620717411303424");
    assert_eq!(big["u64_max"].to_string(), "18446744073709551615");
    assert_eq!(big["i64_min"].to_string(), "-9223372036854775808");
    // Absent options arrive as None (null), the skipped one not at all.
    let optional = record_for(&records, &sent[3].0)["payload"]
        .as_object()
        .unwrap()
        .clone();
    assert!(optional["absent"].is_null());
    assert!(!optional.contains_key("skipped_when_absent"));
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_every_event_shape_reaches_python_celery_unchanged() {
    shapes_arrive_unchanged(Broker::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_every_event_shape_reaches_python_celery_unchanged() {
    shapes_arrive_unchanged(Broker::Amqp).await;
}

// ---------------------------------------------------------------------------------------------
// Countdown and eta: Celery holds the task until then.

async fn countdown_and_eta_are_honoured(broker: Broker) {
    let mut setup = Setup::new(broker, "eta", None).await;
    setup.start_worker(setup.worker_spec()).wait_ready();
    let tick = |label: &str| Tick {
        label: label.to_owned(),
    };
    let delay = Duration::from_secs(2);

    let published_at = now_secs();
    let countdown = setup
        .backend
        .publish_with(&tick("countdown"), |o| o.countdown(delay))
        .await
        .unwrap();
    let eta_at = chrono::Utc::now() + delay;
    let eta = setup
        .backend
        .publish_with(&tick("eta"), |o| o.eta(eta_at))
        .await
        .unwrap();
    let now = setup
        .backend
        .publish_with(&tick("now"), |o| o)
        .await
        .unwrap();

    let records = setup.records(3).await;
    // Clock readings are floats from one machine's clock; allow for their rounding only.
    let slack = 0.02;
    let immediate = record_for(&records, &task_id(&now));
    assert!(immediate["eta"].is_null());
    for (receipt, what) in [(&countdown, "countdown"), (&eta, "eta")] {
        let record = record_for(&records, &task_id(receipt));
        assert!(
            ran_at(record) + slack >= published_at + delay.as_secs_f64(),
            "the {what} task ran {:.3} s after publishing, before its eta (2 s): {record}",
            ran_at(record) - published_at
        );
        assert!(ran_at(immediate) < ran_at(record), "{records:#?}");
        let eta_header = record["eta"].as_str().expect("Celery saw the eta");
        let eta_seen = chrono::DateTime::parse_from_rfc3339(eta_header).unwrap();
        assert!(
            (eta_seen.timestamp_micros() as f64 / 1e6 - (published_at + 2.0)).abs() < 1.0,
            "{what}: eta {eta_header}"
        );
    }
    assert_eq!(labels(&records), ["now", "countdown", "eta"]);
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_python_celery_honours_countdown_and_eta() {
    countdown_and_eta_are_honoured(Broker::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_python_celery_honours_countdown_and_eta() {
    countdown_and_eta_are_honoured(Broker::Amqp).await;
}

// ---------------------------------------------------------------------------------------------
// Expires: an expired message never runs; one that has not expired does.

async fn expired_messages_do_not_run(broker: Broker) {
    let mut setup = Setup::new(broker, "expires", None).await;
    let tick = |label: &str| Tick {
        label: label.to_owned(),
    };

    // 1. Expired before any worker sees it (on RabbitMQ the broker drops it itself: Celery
    //    also sets the per-message TTL; on Redis the Celery worker discards it).
    let expired_in_queue = setup
        .backend
        .publish_with(&tick("expired in queue"), |o| {
            o.expires_in(Duration::from_millis(500))
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    setup.start_worker(setup.worker_spec()).wait_ready();
    // 2. Delivered to the worker at once, but held for its eta, by when it has expired: only
    //    Celery's own check (the `expires` header) can stop this one, on both brokers.
    let expired_at_eta = setup
        .backend
        .publish_with(&tick("expired at eta"), |o| {
            o.countdown(Duration::from_millis(1500))
                .expires_in(Duration::from_millis(500))
        })
        .await
        .unwrap();
    // 3. The sync message: later than both, with an expiry far away, so it runs.
    let sync = setup
        .backend
        .publish_with(&tick("sync"), |o| {
            o.countdown(Duration::from_millis(2000))
                .expires_in(Duration::from_secs(3600))
        })
        .await
        .unwrap();

    let records = setup.records(1).await;
    // Give a wrongly-run expired task a moment to show up after the sync one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records = if task_records(&setup.result_key).await.len() > records.len() {
        task_records(&setup.result_key).await
    } else {
        records
    };
    assert_eq!(labels(&records), ["sync"], "{records:#?}");
    let sync_record = record_for(&records, &task_id(&sync));
    assert!(
        sync_record["expires"].as_str().is_some(),
        "Celery saw the sync message's expiry: {sync_record}"
    );

    let log = setup.worker_log();
    let discarded = |receipt: &Receipt| {
        log.contains(&format!(
            "Discarding revoked task: domain_events.interop.tick[{}]",
            task_id(receipt)
        ))
    };
    assert!(
        discarded(&expired_at_eta),
        "Celery did not log discarding the expired task; worker output:\n{log}"
    );
    match broker {
        Broker::Redis => assert!(
            discarded(&expired_in_queue),
            "Celery did not log discarding the task that expired in the queue; worker \
             output:\n{log}"
        ),
        // RabbitMQ dropped it at its TTL: the worker never received it.
        Broker::Amqp => assert!(
            !log.contains(&task_id(&expired_in_queue)) || discarded(&expired_in_queue),
            "{log}"
        ),
    }
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_python_celery_does_not_run_expired_messages() {
    expired_messages_do_not_run(Broker::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_python_celery_does_not_run_expired_messages() {
    expired_messages_do_not_run(Broker::Amqp).await;
}

// ---------------------------------------------------------------------------------------------
// Priority: with the queue pre-filled and a prefetch of one, the urgent message runs first.

async fn urgent_message_runs_first(broker: Broker) {
    // RabbitMQ: higher is served first, and both sides declare `x-max-priority` 10.
    // Redis (kombu): lower is served first (lists for 0, 3, 6, 9, in that order).
    let (max_priority, low, mid, urgent) = match broker {
        Broker::Amqp => (Some(10), 1, 5, 9),
        Broker::Redis => (None, 9, 5, 0),
    };
    let mut setup = Setup::new(broker, "priority", max_priority).await;
    let tick = |label: &str| Tick {
        label: label.to_owned(),
    };
    for (label, priority) in [
        ("low 1", low),
        ("low 2", low),
        ("mid", mid),
        ("urgent", urgent),
    ] {
        setup
            .backend
            .publish_with(&tick(label), |o| o.priority(priority))
            .await
            .unwrap();
    }
    let mut spec = setup.worker_spec().prefetch_multiplier(1);
    if let Some(max) = max_priority {
        spec = spec.queue_max_priority(max);
    }
    setup.start_worker(spec);
    let records = setup.records(4).await;
    assert_eq!(
        labels(&records),
        ["urgent", "mid", "low 1", "low 2"],
        "{records:#?}"
    );
    for (record, priority) in records.iter().zip([urgent, mid, low, low]) {
        assert_eq!(
            record["priority"].as_u64(),
            Some(u64::from(priority)),
            "{record}"
        );
    }
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_python_celery_serves_the_urgent_priority_first() {
    urgent_message_runs_first(Broker::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_python_celery_serves_the_urgent_priority_first() {
    urgent_message_runs_first(Broker::Amqp).await;
}

// ---------------------------------------------------------------------------------------------
// Compressed messages (kombu's `compression` header) run in Python.

/// One message per compression method kombu has, each from a backend configured with it: on
/// the broker each body is compressed and named as kombu names it, and Python Celery runs every
/// one with the payload Rust sent.
async fn compressed_messages_run_in_python(broker: Broker) {
    let mut setup = Setup::new(broker, "compressed", None).await;
    let mut sent = Vec::new();
    for method in Compression::ALL {
        let config = CeleryConfig::new(&broker.url())
            .unwrap()
            .default_queue(setup.queue.clone())
            .compression(Some(method));
        let backend = CeleryBackend::connect(config).await.unwrap();
        let mut event = order_nested();
        event.order_id = method.content_type().to_owned();
        let receipt = backend.publish_with(&event, |o| o).await.unwrap();
        sent.push((
            task_id(&receipt),
            method,
            serde_json::to_value(&event).unwrap(),
        ));
    }
    if broker == Broker::Redis {
        // What kombu would read: the method's content type in the `compression` header, and
        // a base64 body that is the compressed JSON, not JSON.
        let mut redis = tests::redis().await;
        let envelopes: Vec<String> = redis::cmd("LRANGE")
            .arg(&setup.queue)
            .arg(0)
            .arg(-1)
            .query_async(&mut redis)
            .await
            .unwrap();
        let mut named: Vec<String> = Vec::new();
        for raw in &envelopes {
            let envelope: serde_json::Value = serde_json::from_str(raw).unwrap();
            use base64::Engine;
            let body = base64::engine::general_purpose::STANDARD
                .decode(envelope["body"].as_str().unwrap())
                .unwrap();
            assert!(
                serde_json::from_slice::<serde_json::Value>(&body).is_err(),
                "{envelope}"
            );
            // Key order as written (serde_json's own map sorts keys).
            let ordered = Json::parse(raw).unwrap();
            let header_names = ordered.get("headers").unwrap().as_object().unwrap();
            assert_eq!(header_names.keys().last().unwrap(), "compression");
            let headers = envelope["headers"].as_object().unwrap();
            named.push(headers["compression"].as_str().unwrap().to_owned());
        }
        named.sort();
        let mut expected: Vec<String> = Compression::ALL
            .iter()
            .map(|m| m.content_type().to_owned())
            .collect();
        expected.sort();
        assert_eq!(named, expected);
    }

    setup.start_worker(setup.worker_spec());
    let records = setup.records(sent.len()).await;
    assert_eq!(records.len(), sent.len(), "{records:#?}");
    for (id, method, expected) in &sent {
        let record = record_for(&records, id);
        assert_eq!(&record["payload"], expected, "payload sent with {method}");
    }
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_python_celery_runs_every_compression_method() {
    compressed_messages_run_in_python(Broker::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_python_celery_runs_every_compression_method() {
    compressed_messages_run_in_python(Broker::Amqp).await;
}
