//! Publishing throughput on the real brokers, in one run: Python Celery's `send_task` loop
//! (`examples/python/bench_send_task.py`), the Rust `CeleryBackend` through the event bus, and
//! the raw client (`redis` / `lapin` with confirms) pushing the very bytes the backend sends —
//! same broker, same queue name scheme, same event.
//!
//! ```sh
//! scripts/services.sh        # brokers + Python Celery in .venv
//! cargo bench -p events-celery --bench celery_publish
//! ```
//!
//! Environment: `BENCH_BROKERS` (`redis,amqp,amqp-transient`), `BENCH_COUNT` (messages per Rust/raw phase,
//! default 100000 on Redis and 50000 on RabbitMQ), `BENCH_PY_COUNT` (default 3000),
//! `BENCH_CONCURRENCY` (publishes in flight, default 256 on Redis and 2000 on RabbitMQ),
//! `BENCH_THREADS` (the publishers' tokio worker threads, default one per core; 0 for a
//! current-thread runtime),
//! `BENCH_ROUNDS` (alternating Rust/raw rounds, best of each, default 2),
//! `EVENTS_TEST_PYTHON` (default `.venv/bin/python`), `EVENTS_TEST_REDIS_URL`,
//! `EVENTS_TEST_AMQP_URL`.

#![allow(missing_docs)]

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use events_celery::{CeleryBackend, CeleryConfig, DeliveryMode, EncodeOptions, TaskMessage};
use events_core::{EventBus, domain_event};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    sku: String,
    quantity: u32,
    unit_price_cents: u64,
}

/// About the size of a real order event: the Redis envelope is ~1.6 kB, the AMQP body ~0.5 kB
/// plus ~0.6 kB of headers.
#[domain_event(name = "bench.order_placed")]
#[derive(Debug, Clone)]
struct OrderPlaced {
    order_id: u64,
    customer_id: String,
    email: String,
    currency: String,
    lines: Vec<Line>,
    shipping_address: String,
    note: Option<String>,
}

fn event() -> OrderPlaced {
    OrderPlaced {
        order_id: 1_000_042,
        customer_id: "cus_8f14e45fceea167a5a36dedd4bea2543".into(),
        email: "zoe.angstrom@example.com".into(),
        currency: "EUR".into(),
        lines: (0..3)
            .map(|i| Line {
                sku: format!("SKU-{i:05}-BRAKE-PAD"),
                quantity: i + 1,
                unit_price_cents: 1999 + u64::from(i),
            })
            .collect(),
        shipping_address: "ul. Piotrkowska 104, 90-926 Łódź, Poland".into(),
        note: Some("leave at the door".into()),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Broker {
    Redis,
    Amqp,
    /// RabbitMQ with transient messages (`task_default_delivery_mode = "transient"`): still
    /// confirmed, but not written to disk.
    AmqpTransient,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Redis => "redis",
            Broker::Amqp => "amqp",
            Broker::AmqpTransient => "amqp-transient",
        }
    }

    fn is_amqp(self) -> bool {
        matches!(self, Broker::Amqp | Broker::AmqpTransient)
    }

    fn delivery_mode(self) -> DeliveryMode {
        match self {
            Broker::AmqpTransient => DeliveryMode::Transient,
            Broker::Redis | Broker::Amqp => DeliveryMode::Persistent,
        }
    }

    fn url(self) -> String {
        match self {
            Broker::Redis => std::env::var("EVENTS_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into()),
            Broker::Amqp | Broker::AmqpTransient => std::env::var("EVENTS_TEST_AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672//".into()),
        }
    }

    fn count(self) -> usize {
        env_usize("BENCH_COUNT").unwrap_or(match self {
            Broker::Redis => 100_000,
            Broker::Amqp | Broker::AmqpTransient => 50_000,
        })
    }

    fn concurrency(self) -> usize {
        env_usize("BENCH_CONCURRENCY").unwrap_or(match self {
            Broker::Redis => 256,
            Broker::Amqp | Broker::AmqpTransient => 2_000,
        })
    }
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn python() -> std::path::PathBuf {
    let path = std::env::var_os("EVENTS_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"));
    if !path.exists() {
        eprintln!(
            "no Python Celery at {}: run scripts/services.sh (or set EVENTS_TEST_PYTHON)",
            path.display()
        );
        std::process::exit(1);
    }
    path
}

/// Python Celery's `send_task` loop, in msg/s.
fn python_send_task(broker: Broker, queue: &str, payload: &str, confirm: bool) -> f64 {
    let count = env_usize("BENCH_PY_COUNT").unwrap_or(3000);
    let mut command = Command::new(python());
    command
        .arg(workspace().join("examples/python/bench_send_task.py"))
        .args(["--broker", &broker.url(), "--queue", queue])
        .args(["--task", "domain_events.bench.order_placed"])
        .args(["--payload", payload, "--count", &count.to_string()]);
    if !confirm {
        command.arg("--no-confirm");
    }
    if broker.delivery_mode() == DeliveryMode::Transient {
        command.arg("--transient");
    }
    let output = command.output().expect("run bench_send_task.py");
    assert!(
        output.status.success(),
        "bench_send_task.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON result");
    line["msg_per_s"].as_f64().expect("msg_per_s")
}

/// `count` publishes through the bus, `concurrency` at a time; msg/s.
async fn rust_backend(bus: Arc<EventBus>, count: usize, concurrency: usize) -> f64 {
    let event = Arc::new(event());
    let per_task = count / concurrency;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let bus = Arc::clone(&bus);
            let event = Arc::clone(&event);
            tokio::spawn(async move {
                for _ in 0..per_task {
                    bus.publish(&*event).await.expect("publish");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("publisher task");
    }
    (per_task * concurrency) as f64 / started.elapsed().as_secs_f64()
}

/// The raw Redis client: `LPUSH` of the backend's own envelope, `concurrency` in flight over
/// one multiplexed connection; msg/s.
async fn raw_redis(
    url: &str,
    queue: &str,
    envelope: &str,
    count: usize,
    concurrency: usize,
) -> f64 {
    let client = redis::Client::open(url).unwrap();
    let connection = client.get_multiplexed_async_connection().await.unwrap();
    let envelope: Arc<str> = envelope.into();
    let queue: Arc<str> = queue.into();
    let per_task = count / concurrency;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut connection = connection.clone();
            let (envelope, queue) = (Arc::clone(&envelope), Arc::clone(&queue));
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let _: () = redis::cmd("LPUSH")
                        .arg(&*queue)
                        .arg(&*envelope)
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (per_task * concurrency) as f64 / started.elapsed().as_secs_f64()
}

/// The raw AMQP client: `lapin` with publisher confirms on one channel, the backend's body and
/// headers and delivery mode, `concurrency` in flight; msg/s.
async fn raw_amqp(
    channel: &lapin::Channel,
    queue: &str,
    message: &events_celery::AmqpMessage,
    count: usize,
    concurrency: usize,
) -> f64 {
    use lapin::options::BasicPublishOptions;
    use lapin::types::ShortString;
    let properties = lapin_properties(message);
    let body: Arc<[u8]> = message.body.clone().into();
    let mut in_flight = FuturesUnordered::new();
    let started = Instant::now();
    for _ in 0..count {
        if in_flight.len() >= concurrency {
            let confirm: lapin::Confirmation = in_flight.next().await.unwrap();
            assert!(confirm.is_ack());
        }
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                BasicPublishOptions::default(),
                &body,
                properties.clone(),
            )
            .await
            .unwrap();
        in_flight.push(async move { confirm.await.unwrap() });
    }
    while let Some(confirm) = in_flight.next().await {
        assert!(confirm.is_ack());
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn lapin_properties(message: &events_celery::AmqpMessage) -> lapin::BasicProperties {
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    let mut headers = FieldTable::default();
    for (name, value) in message.headers.iter() {
        // Good enough for the bench: strings as strings, the rest as void.
        let value = match value.as_str() {
            Some(s) => AMQPValue::LongString(LongString::from(s)),
            None => AMQPValue::Void,
        };
        headers.insert(ShortString::from(name), value);
    }
    let p = &message.properties;
    lapin::BasicProperties::default()
        .with_headers(headers)
        .with_content_type(ShortString::from(
            p.content_type.clone().unwrap_or_default(),
        ))
        .with_content_encoding(ShortString::from(
            p.content_encoding.clone().unwrap_or_default(),
        ))
        .with_delivery_mode(p.delivery_mode.unwrap_or(2))
        .with_priority(0)
        .with_correlation_id(ShortString::from(
            p.correlation_id.clone().unwrap_or_default(),
        ))
        .with_reply_to(ShortString::from(p.reply_to.clone().unwrap_or_default()))
}

struct Row {
    broker: Broker,
    python: f64,
    python_no_confirm: Option<f64>,
    rust: f64,
    raw: f64,
    message_bytes: usize,
}

async fn bench(broker: Broker) -> Row {
    let url = broker.url();
    let count = broker.count();
    let concurrency = broker.concurrency().min(count);
    let queue = format!(
        "bench_{}_{}",
        broker.name(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let payload = serde_json::to_string(&event()).unwrap();
    let message = TaskMessage::from_event(
        &event(),
        &EncodeOptions::new()
            .queue(queue.clone())
            .delivery_mode(broker.delivery_mode()),
    )
    .unwrap();

    // The queue exists (and Python declares it the same way) before anyone measures.
    let backend = CeleryBackend::connect(
        CeleryConfig::new(&url)
            .unwrap()
            .default_queue(queue.clone())
            .delivery_mode(broker.delivery_mode()),
    )
    .await
    .unwrap();
    let bus = Arc::new(
        EventBus::builder(backend)
            .collected_handlers(false)
            .warn_unhandled_events(false)
            .build()
            .unwrap(),
    );
    bus.publish(&event()).await.unwrap();

    let python = python_send_task(broker, &queue, &payload, true);
    let python_no_confirm = broker
        .is_amqp()
        .then(|| python_send_task(broker, &queue, &payload, false));
    let mut cleanup = Cleanup::new(broker, &url, &queue).await;
    cleanup.purge().await;

    // Warm up (connections, channels, allocator), then measure: Rust and raw alternate for
    // `BENCH_ROUNDS` rounds (default 2), and each reports its best round.
    let rounds = env_usize("BENCH_ROUNDS").unwrap_or(2).max(1);
    rust_backend(Arc::clone(&bus), concurrency * 4, concurrency).await;
    cleanup.purge().await;
    let envelope = message.to_redis().unwrap().envelope;
    let amqp = message.to_amqp().unwrap();
    let raw_channel = cleanup.channel.clone();
    if let Some(channel) = &raw_channel {
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .unwrap();
    }
    let raw_once = |count: usize| {
        let (url, queue, envelope, amqp, channel) = (&url, &queue, &envelope, &amqp, &raw_channel);
        async move {
            match broker {
                Broker::Redis => raw_redis(url, queue, envelope, count, concurrency).await,
                Broker::Amqp | Broker::AmqpTransient => {
                    let channel = channel.as_ref().unwrap();
                    raw_amqp(channel, queue, amqp, count, concurrency).await
                }
            }
        }
    };
    raw_once(concurrency * 4).await;
    cleanup.purge().await;
    let (mut rust, mut raw) = (0.0_f64, 0.0_f64);
    for _ in 0..rounds {
        rust = rust.max(rust_backend(Arc::clone(&bus), count, concurrency).await);
        cleanup.purge().await;
        raw = raw.max(raw_once(count).await);
        cleanup.purge().await;
    }
    let message_bytes = match broker {
        Broker::Redis => envelope.len(),
        // The body plus the headers and properties, roughly.
        Broker::Amqp | Broker::AmqpTransient => amqp.body.len() + 600,
    };
    cleanup.finish().await;
    Row {
        broker,
        python,
        python_no_confirm,
        rust,
        raw,
        message_bytes,
    }
}

struct Cleanup {
    broker: Broker,
    queue: String,
    redis: Option<redis::aio::MultiplexedConnection>,
    connection: Option<lapin::Connection>,
    channel: Option<lapin::Channel>,
}

impl Cleanup {
    async fn new(broker: Broker, url: &str, queue: &str) -> Self {
        let mut cleanup = Self {
            broker,
            queue: queue.to_owned(),
            redis: None,
            connection: None,
            channel: None,
        };
        match broker {
            Broker::Redis => {
                let client = redis::Client::open(url).unwrap();
                cleanup.redis = Some(client.get_multiplexed_async_connection().await.unwrap());
            }
            Broker::Amqp | Broker::AmqpTransient => {
                let connection = lapin::Connection::connect(
                    &url.replace("5672//", "5672/%2f"),
                    lapin::ConnectionProperties::default(),
                )
                .await
                .unwrap();
                cleanup.channel = Some(connection.create_channel().await.unwrap());
                cleanup.connection = Some(connection);
            }
        }
        cleanup
    }

    async fn purge(&mut self) {
        if let Some(redis) = self.redis.as_mut() {
            let _: () = redis::cmd("DEL")
                .arg(&self.queue)
                .query_async(redis)
                .await
                .unwrap();
        }
        if let Some(channel) = &self.channel {
            channel
                .queue_purge(
                    self.queue.as_str().into(),
                    lapin::options::QueuePurgeOptions::default(),
                )
                .await
                .unwrap();
        }
    }

    async fn finish(mut self) {
        self.purge().await;
        if let Some(redis) = self.redis.as_mut() {
            let _: () = redis::cmd("DEL")
                .arg(format!("_kombu.binding.{}", self.queue))
                .arg(format!("_kombu.binding_permanent.{}", self.queue))
                .query_async(redis)
                .await
                .unwrap();
        }
        if let Some(channel) = &self.channel {
            let _ = channel
                .queue_delete(self.queue.as_str().into(), Default::default())
                .await;
            let _ = channel
                .exchange_delete(self.queue.as_str().into(), Default::default())
                .await;
        }
        let _ = self.broker;
    }
}

fn main() {
    let brokers: Vec<Broker> = std::env::var("BENCH_BROKERS")
        .unwrap_or_else(|_| "redis,amqp,amqp-transient".into())
        .split(',')
        .filter_map(|b| match b.trim() {
            "redis" => Some(Broker::Redis),
            "amqp" | "rabbitmq" => Some(Broker::Amqp),
            "amqp-transient" => Some(Broker::AmqpTransient),
            _ => None,
        })
        .collect();
    // The publishers' tasks (and the raw clients) run here; the backend's connections live on
    // its own I/O thread.
    // Tokio's default (what `#[tokio::main]` builds): one worker thread per core; or
    // `BENCH_THREADS=0` for a current-thread runtime.
    let threads = env_usize("BENCH_THREADS").unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    let runtime = match threads {
        0 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        threads => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap(),
    };
    let rows: Vec<Row> = brokers
        .into_iter()
        .map(|broker| runtime.block_on(bench(broker)))
        .collect();

    println!();
    println!(
        "{:<14} {:>9} {:>22} {:>14} {:>14} {:>11} {:>9}",
        "broker",
        "msg bytes",
        "Python send_task",
        "Rust backend",
        "raw client",
        "Rust/Python",
        "Rust/raw"
    );
    for row in rows {
        let python = match row.python_no_confirm {
            Some(no_confirm) => format!("{:.0} ({:.0} w/o conf)", row.python, no_confirm),
            None => format!("{:.0}", row.python),
        };
        println!(
            "{:<14} {:>9} {:>22} {:>14.0} {:>14.0} {:>10.1}x {:>8.0}%",
            row.broker.name(),
            row.message_bytes,
            python,
            row.rust,
            row.raw,
            row.rust / row.python,
            100.0 * row.rust / row.raw
        );
    }
    println!(
        "(msg/s; RabbitMQ: with publisher confirms unless noted; `amqp` persistent, Celery's \
         default; `amqp-transient`: delivery_mode 1, not written to disk)"
    );
}
