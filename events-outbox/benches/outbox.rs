//! The outbox's costs, against the real PostgreSQL, Redis and RabbitMQ of this machine
//! (`scripts/bench_outbox.sh`; `cargo bench -p events-outbox --bench outbox`), printed as
//! ratios from one run:
//!
//! 1. a transaction inserting one business row and `publish_in` vs the same transaction
//!    without the event (goal: ≤ 1.3×);
//! 2. relay throughput, commit to broker confirmation, vs the `CeleryBackend`'s direct publish
//!    in the same run, on Redis and on RabbitMQ (goal: ≥ 50%);
//! 3. commit-to-broker-confirmation latency at 1,000 events/s (goal: p50 ≤ 5 ms, p99 ≤ 50 ms).
//!
//! Environment: `EVENTS_TEST_PG_URL`, `EVENTS_TEST_REDIS_URL`, `EVENTS_TEST_AMQP_URL` (the
//! local services by default), `OUTBOX_BENCH_N` (events per throughput run, default 20,000),
//! `OUTBOX_BENCH_BATCH` and `OUTBOX_BENCH_CONCURRENCY` (the throughput relay's batch size and
//! batches in flight; the relay's defaults if unset), `OUTBOX_BENCH_BROKERS` (default `redis,rabbitmq`),
//! `OUTBOX_BENCH_DETAIL` (a path prefix: each event's times of the latency runs are written to
//! `<prefix>.<broker>.csv` and `<prefix>.<broker>.direct.csv`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events_celery::{CeleryBackend, CeleryConfig};
use events_core::{Backend, BackendKind, BoxFuture, EventRef, Handler, PublishOptions, Receipt};
use events_outbox::{Entry, Outbox, OutboxConfig, Relay};
use futures_util::StreamExt;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[events_core::domain_event(name = "outbox_bench.order_placed")]
struct OrderPlaced {
    order_id: i64,
    customer: String,
    total_cents: i64,
}

fn order(i: i64) -> OrderPlaced {
    OrderPlaced {
        order_id: i,
        customer: format!("customer-{}", i % 1000),
        total_cents: 1999 + i % 100,
    }
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn unique(what: &str) -> String {
    format!(
        "{what}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A backend that records when the relay handed each task id over and when it was confirmed.
struct Timed {
    inner: CeleryBackend,
    started: Mutex<HashMap<String, Instant>>,
    confirmed: Mutex<HashMap<String, Instant>>,
}

impl Backend for Timed {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn subscribe(&self, handler: Handler) -> Result<(), events_core::Error> {
        Backend::subscribe(&self.inner, handler)
    }
    fn publish<'a>(
        &'a self,
        event: EventRef<'a>,
    ) -> BoxFuture<'a, Result<Receipt, events_core::Error>> {
        Backend::publish(&self.inner, event)
    }
    fn publish_with<'a>(
        &'a self,
        event: EventRef<'a>,
        options: &'a PublishOptions,
    ) -> BoxFuture<'a, Result<Receipt, events_core::Error>> {
        Box::pin(async move {
            if let Some(id) = &options.task_id {
                let now = Instant::now();
                self.started.lock().unwrap().insert(id.clone(), now);
            }
            let receipt = Backend::publish_with(&self.inner, event, options).await?;
            if let Some(id) = &options.task_id {
                let now = Instant::now();
                self.confirmed.lock().unwrap().insert(id.clone(), now);
            }
            Ok(receipt)
        })
    }
    fn publish_blocking(&self, event: EventRef<'_>) -> Result<Receipt, events_core::Error> {
        Backend::publish_blocking(&self.inner, event)
    }
}

async fn outbox(pool: &PgPool, schema: &str) -> Outbox {
    let outbox = Outbox::new(OutboxConfig::new().schema(schema).table("outbox")).unwrap();
    outbox.migrate(pool).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE TABLE \"{schema}\".orders (id bigint PRIMARY KEY, customer text NOT NULL, \
         total_cents bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
    ))
    .execute(pool)
    .await
    .unwrap();
    outbox
}

/// Mean time of one transaction: a business row, with or without its event.
async fn transactions(pool: &PgPool, schema: &str, outbox: &Outbox, rounds: usize) -> (f64, f64) {
    let insert =
        format!("INSERT INTO \"{schema}\".orders (id, customer, total_cents) VALUES ($1, $2, $3)");
    let mut conn = pool.acquire().await.unwrap();
    let (mut plain, mut with_event) = (Duration::ZERO, Duration::ZERO);
    let mut id = 0_i64;
    // Alternating blocks, so that drift (checkpoints, caches) hits both alike.
    for round in 0..rounds * 2 {
        let publish = round % 2 == 1;
        let started = Instant::now();
        for _ in 0..100 {
            id += 1;
            let event = order(id);
            let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
            sqlx::query(&insert)
                .bind(event.order_id)
                .bind(&event.customer)
                .bind(event.total_cents)
                .execute(&mut *tx)
                .await
                .unwrap();
            if publish {
                outbox.publish_in(&mut tx, &event).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
        let took = started.elapsed();
        if publish {
            with_event += took;
        } else {
            plain += took;
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / (rounds * 100) as f64;
    (per(plain), per(with_event))
}

/// Events per second published straight through the backend, `in_flight` at a time.
async fn direct(backend: &CeleryBackend, n: i64, in_flight: usize) -> f64 {
    let started = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|i| async move {
            let event = order(i);
            backend.publish(&event).await.unwrap();
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<()>>()
        .await;
    n as f64 / started.elapsed().as_secs_f64()
}

/// Events per second a relay delivers from committed rows to broker confirmations.
async fn relayed(pool: &PgPool, outbox: &Outbox, backend: CeleryBackend, n: i64) -> f64 {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut tx = pool.begin().await.unwrap();
        let entries = chunk
            .iter()
            .map(|&i| Entry::new(&order(i)).unwrap())
            .collect();
        outbox.insert_in(&mut tx, entries).await.unwrap();
        tx.commit().await.unwrap();
    }
    let mut relay = Relay::new(outbox.clone(), pool.clone(), backend);
    if let Ok(batch) = std::env::var("OUTBOX_BENCH_BATCH") {
        relay = relay.batch_size(batch.parse().unwrap());
    }
    if let Ok(concurrency) = std::env::var("OUTBOX_BENCH_CONCURRENCY") {
        relay = relay.concurrency(concurrency.parse().unwrap());
    }
    let stats = relay.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let running = tokio::spawn(relay.run_until(stopped));
    while stats.snapshot().delivered < n as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    stop.send(()).unwrap();
    running.await.unwrap();
    n as f64 / took.as_secs_f64()
}

/// Where the commit-to-confirmation time of the events of one latency run went (ms, each
/// sorted): in total, from the commit until the relay handed the event to the backend (waiting
/// for a claim), and from then until the broker confirmed it.
struct Latencies {
    total: Vec<f64>,
    claim: Vec<f64>,
    broker: Vec<f64>,
    /// Every event: committed, handed to the backend and confirmed, in ms since the run's
    /// start (written to the CSV file `OUTBOX_BENCH_DETAIL` names, if set).
    timeline: Vec<(f64, f64, f64)>,
}

/// Commit-to-confirmation latencies of events committed at `rate` per second for `seconds`,
/// one per transaction, from 4 writers.
async fn latencies(
    pool: &PgPool,
    outbox: &Outbox,
    backend: CeleryBackend,
    rate: u64,
    seconds: u64,
) -> Latencies {
    let timed = Arc::new(Timed {
        inner: backend,
        started: Mutex::default(),
        confirmed: Mutex::default(),
    });
    let relay = Relay::from_shared(
        outbox.clone(),
        pool.clone(),
        timed.clone() as Arc<dyn Backend>,
    )
    .poll_interval(Duration::from_secs(1));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run_until(stopped));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writers = 4;
    let per_writer = rate * seconds / writers;
    let interval = Duration::from_secs_f64(writers as f64 / rate as f64);
    let committed = Arc::new(Mutex::new(HashMap::new()));
    let run_started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (pool, outbox, committed) = (pool.clone(), outbox.clone(), Arc::clone(&committed));
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for i in 0..per_writer {
                    ticker.tick().await;
                    let mut tx = pool.begin().await.unwrap();
                    let id = outbox
                        .publish_in(&mut tx, &order((w * per_writer + i) as i64))
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                    committed
                        .lock()
                        .unwrap()
                        .insert(id.to_string(), Instant::now());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let total = (per_writer * writers) as usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    while timed.confirmed.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap();
    let started = timed.started.lock().unwrap();
    let confirmed = timed.confirmed.lock().unwrap();
    let committed = committed.lock().unwrap();
    let ms = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1000.0;
    // A confirmation can come before the writer took its "committed" time: 0.
    let mut events: Vec<(f64, f64, f64, f64)> = committed
        .iter()
        .filter_map(|(id, &at)| {
            let (&start, &done) = (started.get(id)?, confirmed.get(id)?);
            Some((
                ms(at, done),
                ms(run_started, at),
                ms(at, start),
                ms(start.max(at), done),
            ))
        })
        .collect();
    assert_eq!(events.len(), total, "not every event was confirmed");
    events.sort_by(|a, b| b.0.total_cmp(&a.0));
    let sorted = |pick: fn(&(f64, f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = events.iter().map(pick).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    Latencies {
        total: sorted(|e| e.0),
        claim: sorted(|e| e.2),
        broker: sorted(|e| e.3),
        timeline: events.iter().map(|e| (e.1, e.1 + e.2, e.1 + e.0)).collect(),
    }
}

/// When each of the direct publishes at `rate` per second for `seconds` started and was
/// confirmed (ms since the run's start), for their publish-to-confirmation latencies: the broker's own share of the outbox latency. Open loop, like the outbox's
/// writers: each publish starts at its own time, whether or not earlier ones were confirmed, so
/// a stall of the broker counts for every event it held up (not only for the few in flight).
async fn direct_latencies(backend: &CeleryBackend, rate: u64, seconds: u64) -> Vec<(f64, f64)> {
    let n = rate * seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let run_started = Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        ticker.tick().await;
        let backend = backend.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            backend.publish(&order(i as i64)).await.unwrap();
            let ms = |at: Instant| at.duration_since(run_started).as_secs_f64() * 1000.0;
            (ms(started), ms(Instant::now()))
        }));
    }
    let mut timeline = Vec::with_capacity(tasks.len());
    for task in tasks {
        timeline.push(task.await.unwrap());
    }
    timeline
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn delete_queue(broker: &str, url: &str, queue: &str) {
    if broker == "redis" {
        let mut redis = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("DEL")
            .arg(queue)
            .query_async(&mut redis)
            .await
            .unwrap();
    } else {
        let connection = lapin::Connection::connect(
            &url.replace("5672//", "5672/%2f"),
            lapin::ConnectionProperties::default(),
        )
        .await
        .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let _ = channel
            .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
            .await;
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else to read.
    let pg = env(
        "EVENTS_TEST_PG_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    );
    let n: i64 = env("OUTBOX_BENCH_N", "20000").parse().unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&pg)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (scripts/services.sh)");
    let schema = unique("outbox_bench");
    let outbox = outbox(&pool, &schema).await;

    println!("== outbox benchmarks (one run; PostgreSQL {pg})");
    let (plain, with_event) = transactions(&pool, &schema, &outbox, 10).await;
    println!(
        "transaction, business row only:        {plain:8.1} µs\n\
         transaction, business row + publish_in: {with_event:8.1} µs   ratio {:.2}x (goal ≤ 1.3x)",
        with_event / plain
    );

    for (broker, url) in [
        (
            "redis",
            env("EVENTS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        ),
        (
            "rabbitmq",
            env(
                "EVENTS_TEST_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672//",
            ),
        ),
    ] {
        if !env("OUTBOX_BENCH_BROKERS", "redis,rabbitmq")
            .split(',')
            .any(|b| b == broker)
        {
            continue;
        }
        let queue = unique("outbox_bench");
        let config = CeleryConfig::new(&url)
            .unwrap()
            .default_queue(queue.clone());
        let backend = CeleryBackend::connect(config).await.unwrap();
        // Warm-up: connections, queue declaration.
        direct(&backend, 500, 256).await;
        let direct_rate = direct(&backend, n, 256).await;
        let relay_rate = relayed(&pool, &outbox, backend.clone(), n).await;
        println!(
            "{broker:8}: direct publish {direct_rate:8.0} ev/s, relay (commit → confirm) \
             {relay_rate:8.0} ev/s = {:.0}% of direct (goal ≥ 50%)",
            relay_rate / direct_rate * 100.0
        );
        let backend_for_latency = backend.clone();
        let lat = latencies(&pool, &outbox, backend, 1000, 5).await;
        let ms = &lat.total;
        println!(
            "{broker:8}: commit → broker confirmation at 1,000 ev/s ({} events): p50 {:.2} ms, \
             p99 {:.2} ms, max {:.2} ms (goal p50 ≤ 5, p99 ≤ 50)",
            ms.len(),
            percentile(ms, 0.5),
            percentile(ms, 0.99),
            ms[ms.len() - 1]
        );
        for (part, ms) in [
            ("commit → handed to the backend", &lat.claim),
            ("handed to the backend → confirm", &lat.broker),
        ] {
            println!(
                "{broker:8}:   of which {part}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                percentile(ms, 0.5),
                percentile(ms, 0.99),
                ms[ms.len() - 1]
            );
        }
        if let Ok(path) = std::env::var("OUTBOX_BENCH_DETAIL") {
            let mut csv = String::from("committed_ms,handed_ms,confirmed_ms\n");
            for (committed, handed, confirmed) in &lat.timeline {
                csv.push_str(&format!("{committed:.3},{handed:.3},{confirmed:.3}\n"));
            }
            std::fs::write(format!("{path}.{broker}.csv"), csv).unwrap();
        }
        let direct = direct_latencies(&backend_for_latency, 1000, 5).await;
        let mut direct_ms: Vec<f64> = direct.iter().map(|(start, done)| done - start).collect();
        direct_ms.sort_by(f64::total_cmp);
        println!(
            "{broker:8}: direct publish → confirmation at 1,000 ev/s (same run, baseline): \
             p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&direct_ms, 0.5),
            percentile(&direct_ms, 0.99),
            direct_ms[direct_ms.len() - 1]
        );
        if let Ok(path) = std::env::var("OUTBOX_BENCH_DETAIL") {
            let mut csv = String::from("started_ms,confirmed_ms\n");
            for (started, confirmed) in &direct {
                csv.push_str(&format!("{started:.3},{confirmed:.3}\n"));
            }
            std::fs::write(format!("{path}.{broker}.direct.csv"), csv).unwrap();
        }
        delete_queue(broker, &url, &queue).await;
    }
    let _ = sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&pool)
        .await;
}
