//! The transactional outbox (`events-outbox`) against the real PostgreSQL, Redis, RabbitMQ and
//! Python Celery: rollback and commit, the registry check of `publish_json_in`, retries and
//! parking, Python workers running relayed events, a relay killed with `kill -9`, PostgreSQL
//! connections terminated under a relay, a broker outage, and two relay processes sharing a
//! table. Each test has its own schema and queue. `OUTBOX_SCALE=full` (scripts/outbox_suite.sh)
//! runs the large sizes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use events_celery::{CeleryBackend, CeleryConfig};
use events_core::{EventBus, MemoryBackend};
use events_outbox::{Outbox, OutboxError, OutboxOptions, Relay, RelayReport};
use tests::outbox::{
    OutboxTick, RelayProcess, RelaySpec, collect_redis, collect_until_all, drop_outbox,
    fresh_outbox, pool, rows, write_ticks,
};
use tests::{PythonWorkerSpec, eventually, redis_url, unique_queue};

const RELAY_EXE: &str = env!("CARGO_BIN_EXE_outbox_relay");

fn full() -> bool {
    std::env::var("OUTBOX_SCALE").is_ok_and(|s| s == "full")
}

fn tick(run: &str, seq: u64) -> OutboxTick {
    OutboxTick {
        run: run.to_owned(),
        seq,
        key: None,
    }
}

/// A bus on a memory backend recording the seq of every tick it handles.
fn recording_bus() -> (Arc<EventBus>, Arc<Mutex<Vec<u64>>>) {
    let bus = EventBus::builder(MemoryBackend::new())
        .collected_handlers(false)
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    bus.subscribe(move |t: &OutboxTick| record.lock().unwrap().push(t.seq))
        .unwrap();
    (Arc::new(bus), seen)
}

/// Runs `relay` on this runtime until the returned sender is used.
fn spawn_relay(
    relay: Relay,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<RelayReport>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(relay.run_until(stopped));
    (stop, done)
}

async fn wait_seen(seen: &Mutex<Vec<u64>>, n: usize) -> Vec<u64> {
    eventually(Duration::from_secs(20), || async {
        let seen = seen.lock().unwrap().clone();
        (seen.len() >= n).then_some(seen)
    })
    .await
    .unwrap_or_else(|| panic!("{n} events not handled: {:?}", seen.lock().unwrap()))
}

/// A rolled-back transaction's event is never delivered; committed ones are, after the commit,
/// in process on the memory backend, and a commit wakes the relay (no poll needed: the poll
/// interval is an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_delivers_nothing_commit_delivers_in_process() {
    let pool = pool("outbox_memory", 4).await;
    let outbox = fresh_outbox(&pool, "memory").await;
    let (bus, seen) = recording_bus();
    let run = "memory";

    let mut tx = pool.begin().await.unwrap();
    outbox.publish_in(&mut tx, &tick(run, 0)).await.unwrap();
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    outbox.publish_in(&mut tx, &tick(run, 1)).await.unwrap();
    outbox
        .publish_all_in(&mut tx, &[tick(run, 2), tick(run, 3)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        rows(&pool, &outbox).await,
        3,
        "the rolled-back row stays out"
    );

    let relay = Relay::for_bus(outbox.clone(), pool.clone(), Arc::clone(&bus))
        .poll_interval(Duration::from_secs(3600));
    let (stop, done) = spawn_relay(relay);
    let mut first = wait_seen(&seen, 3).await;
    first.sort_unstable();
    assert_eq!(first, [1, 2, 3]);

    // Written while the relay idles: NOTIFY wakes it.
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox.publish_in(&mut tx, &tick(run, 4)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.lock().unwrap().len(), 3, "delivered before the commit");
    tx.commit().await.unwrap();
    wait_seen(&seen, 4).await;

    stop.send(()).unwrap();
    let report = done.await.unwrap();
    assert_eq!(report.delivered, 4, "{report:?}");
    assert!(!seen.lock().unwrap().contains(&0));
    assert_eq!(rows(&pool, &outbox).await, 0, "delivered rows are deleted");
    let stats = outbox.stats(&mut conn).await.unwrap();
    assert_eq!((stats.pending, stats.failed), (0, 0), "{stats:?}");
    drop(conn);
    drop_outbox(&pool, &outbox).await;
}

/// A backend that holds the delivery of tick 0 until released, and records every tick it was
/// handed.
struct Gated {
    handed: Mutex<Vec<u64>>,
    release: tokio::sync::Semaphore,
}

impl events_core::Backend for Gated {
    fn kind(&self) -> events_core::BackendKind {
        events_core::BackendKind::MEMORY
    }
    fn subscribe(&self, _: events_core::Handler) -> Result<(), events_core::Error> {
        Ok(())
    }
    fn publish<'a>(
        &'a self,
        event: events_core::EventRef<'a>,
    ) -> events_core::BoxFuture<'a, Result<events_core::Receipt, events_core::Error>> {
        let seq = event
            .value()
            .downcast_ref::<OutboxTick>()
            .expect("only ticks")
            .seq;
        Box::pin(async move {
            self.handed.lock().unwrap().push(seq);
            if seq == 0 {
                self.release.acquire().await.unwrap().forget();
            }
            Ok(events_core::Receipt::Handled {
                event: event.name(),
                handlers: 1,
            })
        })
    }
    fn publish_blocking(
        &self,
        _: events_core::EventRef<'_>,
    ) -> Result<events_core::Receipt, events_core::Error> {
        unreachable!("the relay publishes asynchronously")
    }
}

/// Claiming does not wait for the broker: while an event's confirmation is outstanding, an
/// event committed after it is claimed (in the same transaction, by a relay with one loop and
/// no polling) and handed to the backend, and both are marked once confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claiming_does_not_wait_for_outstanding_confirmations() {
    let pool = pool("outbox_pipelined", 4).await;
    let outbox = fresh_outbox(&pool, "pipelined").await;
    let backend = Arc::new(Gated {
        handed: Mutex::default(),
        release: tokio::sync::Semaphore::new(0),
    });
    let relay = Relay::from_shared(outbox.clone(), pool.clone(), backend.clone())
        .concurrency(1)
        .poll_interval(Duration::from_secs(3600));
    let (stop, done) = spawn_relay(relay);
    let handed = |n: usize| {
        let backend = Arc::clone(&backend);
        eventually(Duration::from_secs(20), move || {
            let backend = Arc::clone(&backend);
            async move {
                let handed = backend.handed.lock().unwrap().clone();
                (handed.len() >= n).then_some(handed)
            }
        })
    };
    let mut conn = pool.acquire().await.unwrap();
    outbox
        .publish_in(&mut conn, &tick("pipelined", 0))
        .await
        .unwrap();
    handed(1)
        .await
        .expect("tick 0 was not handed to the backend");
    outbox
        .publish_in(&mut conn, &tick("pipelined", 1))
        .await
        .unwrap();
    let both = handed(2).await;
    backend.release.add_permits(1);
    assert_eq!(
        both.expect("tick 1 waited for tick 0's confirmation"),
        [0, 1]
    );
    eventually(Duration::from_secs(20), || async {
        (rows(&pool, &outbox).await == 0).then_some(())
    })
    .await
    .expect("the delivered rows were not deleted");
    stop.send(()).unwrap();
    let report = done.await.unwrap();
    assert_eq!(report.delivered, 2, "{report:?}");
    drop(conn);
    drop_outbox(&pool, &outbox).await;
}

/// `publish_json_in` checks the name and payload against the program's events: an unknown name
/// or a payload that does not fit writes nothing.
#[tokio::test]
async fn publish_json_in_checks_the_registry() {
    let pool = pool("outbox_json", 2).await;
    let outbox = fresh_outbox(&pool, "json").await;
    let mut conn = pool.acquire().await.unwrap();

    let unknown = outbox
        .publish_json_in(&mut conn, "outbox_test.tock", serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            unknown,
            OutboxError::Event(events_core::Error::UnknownEvent { .. })
        ),
        "{unknown}"
    );
    assert!(
        unknown.to_string().contains("outbox_test.tick"),
        "{unknown}"
    );

    let mismatch = outbox
        .publish_json_in(
            &mut conn,
            "outbox_test.tick",
            serde_json::json!({"run": "json", "seq": "seven", "key": null}),
        )
        .await
        .unwrap_err();
    assert!(mismatch.to_string().contains("seq"), "{mismatch}");
    assert_eq!(rows(&pool, &outbox).await, 0);

    outbox
        .publish_json_in(
            &mut conn,
            "outbox_test.tick",
            serde_json::json!({"run": "json", "seq": 7, "key": null}),
        )
        .await
        .unwrap();
    assert_eq!(rows(&pool, &outbox).await, 1);
    // Migrating again changes nothing.
    assert_eq!(outbox.migrate(&pool).await.unwrap(), 0);
    drop(conn);
    drop_outbox(&pool, &outbox).await;
}

/// A failing delivery is retried; after the last attempt the row is parked with its error,
/// listed, and delivered once replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_parked_and_replayed() {
    let pool = pool("outbox_failures", 4).await;
    let outbox = fresh_outbox(&pool, "failures").await;
    let bus = EventBus::builder(MemoryBackend::new())
        .collected_handlers(false)
        .build()
        .unwrap();
    let failing = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (f, s) = (Arc::clone(&failing), Arc::clone(&seen));
    bus.subscribe(move |t: &OutboxTick| {
        if f.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("the mail server is down"));
        }
        s.lock().unwrap().push(t.seq);
        Ok(())
    })
    .unwrap();

    let mut conn = pool.acquire().await.unwrap();
    let id = outbox
        .publish_in(&mut conn, &tick("failures", 1))
        .await
        .unwrap();
    let relay = Relay::for_bus(outbox.clone(), pool.clone(), Arc::new(bus))
        .max_attempts(3)
        .backoff(Duration::from_millis(20), Duration::from_millis(50))
        .poll_interval(Duration::from_millis(20));
    let stats = relay.stats();
    let (stop, done) = spawn_relay(relay);

    let failed = eventually(Duration::from_secs(20), || async {
        let mut conn = pool.acquire().await.unwrap();
        let failed = outbox.failed(&mut conn, 10).await.unwrap();
        (!failed.is_empty()).then_some(failed)
    })
    .await
    .expect("the event was not parked");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, id);
    assert_eq!(failed[0].attempts, 3);
    assert!(
        failed[0].error.contains("the mail server is down"),
        "{:?}",
        failed[0]
    );
    assert_eq!(stats.snapshot().parked, 1);
    assert_eq!(stats.snapshot().failed_attempts, 3);
    // Parked: not retried any more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stats.snapshot().failed_attempts, 3);

    failing.store(false, Ordering::SeqCst);
    assert_eq!(outbox.replay_failed(&mut conn).await.unwrap(), 1);
    assert_eq!(wait_seen(&seen, 1).await, [1]);
    stop.send(()).unwrap();
    done.await.unwrap();
    assert_eq!(rows(&pool, &outbox).await, 0);
    drop(conn);
    drop_outbox(&pool, &outbox).await;
}

/// With a retention, delivered rows are kept (and counted) instead of deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_delivered_rows() {
    let pool = pool("outbox_retention", 4).await;
    let outbox = fresh_outbox(&pool, "retention").await;
    let (bus, seen) = recording_bus();
    write_ticks(&pool, &outbox, "retention", 0..5, 5, 0, "").await;
    let relay = Relay::for_bus(outbox.clone(), pool.clone(), bus)
        .retention(Some(Duration::from_secs(3600)));
    assert_eq!(relay.drain().await.unwrap(), 5);
    assert_eq!(seen.lock().unwrap().len(), 5);
    let mut conn = pool.acquire().await.unwrap();
    let stats = outbox.stats(&mut conn).await.unwrap();
    assert_eq!((stats.pending, stats.delivered), (0, 5), "{stats:?}");
    assert_eq!(
        outbox
            .purge_delivered(&mut conn, Duration::ZERO, 100)
            .await
            .unwrap(),
        5
    );
    drop(conn);
    drop_outbox(&pool, &outbox).await;
}

/// A real Python Celery worker runs the relayed events; the task id is the outbox row's id,
/// and the publish options stored with the row reach the message.
async fn python_worker_runs_relayed_events(broker_url: &str, what: &str) {
    let pool = pool(&format!("outbox_python_{what}"), 4).await;
    let outbox = fresh_outbox(&pool, &format!("python_{what}")).await;
    let queue = unique_queue(&format!("outbox_py_{what}"));
    let result_key = format!("{queue}:results");
    let mut worker = PythonWorkerSpec::new(broker_url, &queue, &result_key)
        .events(["outbox_test.tick"])
        .start();
    worker.wait_ready();

    let mut tx = pool.begin().await.unwrap();
    let plain = outbox.publish_in(&mut tx, &tick(what, 1)).await.unwrap();
    let options = OutboxOptions::new()
        .expires_in(Duration::from_secs(3600))
        .key("order-1");
    let with_options = outbox
        .publish_in_with(&mut tx, &tick(what, 2), options)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let config = CeleryConfig::new(broker_url)
        .unwrap()
        .default_queue(queue.clone());
    let relay = Relay::new(
        outbox.clone(),
        pool.clone(),
        CeleryBackend::new(config).unwrap(),
    );
    let (stop, done) = spawn_relay(relay);
    let records = eventually(Duration::from_secs(30), || async {
        let records = tests::task_records(&result_key).await;
        (records.len() >= 2).then_some(records)
    })
    .await
    .unwrap_or_else(|| panic!("the worker did not run both events:\n{}", worker.log()));
    stop.send(()).unwrap();
    done.await.unwrap();

    let by_id = |id: uuid::Uuid| {
        records
            .iter()
            .find(|r| r["id"].as_str() == Some(id.to_string().as_str()))
            .unwrap_or_else(|| panic!("no run with task id {id}: {records:?}"))
    };
    assert_eq!(by_id(plain)["payload"]["seq"].as_u64(), Some(1));
    assert_eq!(by_id(plain)["expires"].as_str(), None);
    let run = by_id(with_options);
    assert_eq!(run["payload"]["seq"].as_u64(), Some(2));
    assert!(run["expires"].as_str().is_some(), "{run:?}");
    assert_eq!(run["task"].as_str(), Some("domain_events.outbox_test.tick"));
    drop(worker);
    if what == "redis" {
        tests::cleanup_redis_queue(&queue, &[&result_key]).await;
    } else {
        tests::cleanup_amqp_queue(&queue).await;
        tests::cleanup_redis_queue("", &[&result_key]).await;
    }
    drop_outbox(&pool, &outbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_runs_relayed_events_redis() {
    python_worker_runs_relayed_events(&redis_url(), "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_runs_relayed_events_amqp() {
    python_worker_runs_relayed_events(&tests::amqp_url(), "amqp").await;
}

/// A relay process killed with `kill -9` in the middle of its batches: the next relay delivers
/// every committed event; none lost, per-key order held, the duplicates (batches published
/// but not yet marked) counted, each with its first delivery's task id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_batch_loses_nothing() {
    let n: u64 = if full() { 100_000 } else { 5_000 };
    let pool = pool("outbox_kill", 4).await;
    let outbox = fresh_outbox(&pool, "kill").await;
    let queue = unique_queue("outbox_kill");
    let keys = if full() { 1_000 } else { 100 };
    write_ticks(&pool, &outbox, "kill", 0..n, 500, keys, "").await;
    let spec = RelaySpec {
        table: outbox.table_name().to_owned(),
        broker_url: redis_url(),
        queue: queue.clone(),
        batch: 200,
    };
    let mut redis = tests::redis().await;
    let mut delivered = tests::outbox::Delivered::default();
    let mut kills = 0;
    for round in 0..3 {
        let mut relay = RelayProcess::start(RELAY_EXE, &spec, round);
        // Kill once a part of the backlog went out: batches are in flight all the time.
        let target = (n / 5) * (round as u64 + 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while (delivered.counts().len() as u64) < target {
            relay.assert_running();
            assert!(std::time::Instant::now() < deadline, "{}", relay.log());
            collect_redis(&mut redis, &queue, &mut delivered).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Then at the moment a batch reaches the broker: most likely before its rows are
        // marked delivered.
        let length = || {
            let mut redis = redis.clone();
            let queue = queue.clone();
            async move {
                redis::cmd("LLEN")
                    .arg(&queue)
                    .query_async::<u64>(&mut redis)
                    .await
                    .unwrap()
            }
        };
        let before = length().await;
        while length().await == before {
            relay.assert_running();
            assert!(std::time::Instant::now() < deadline, "{}", relay.log());
        }
        relay.kill9();
        kills += 1;
    }
    let mut last = RelayProcess::start(RELAY_EXE, &spec, 9);
    let limit = Duration::from_secs(if full() { 600 } else { 120 });
    let delivered =
        collect_until_all(&pool, &outbox, &redis_url(), &queue, n, limit, delivered).await;
    last.terminate(Duration::from_secs(10));
    let lost = delivered.lost(n);
    println!(
        "kill -9 x{kills}: {n} committed, {} distinct delivered, {} lost, {} duplicates",
        delivered.counts().len(),
        lost.len(),
        delivered.duplicates()
    );
    assert!(lost.is_empty(), "lost: {:?}", &lost[..lost.len().min(20)]);
    assert!(
        delivered.task_ids_stable(),
        "a redelivery got a new task id"
    );
    let violations = delivered.order_violations();
    assert!(
        violations.is_empty(),
        "out of order: {:?}",
        &violations[..violations.len().min(20)]
    );
    tests::cleanup_redis_queue(&queue, &[]).await;
    drop_outbox(&pool, &outbox).await;
}

/// Two relay processes on one table while events are being committed: every event delivered
/// exactly once, and the events of each key in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relay_processes_deliver_each_event_once_in_key_order() {
    let n: u64 = if full() { 100_000 } else { 5_000 };
    let pool = pool("outbox_two", 6).await;
    let outbox = fresh_outbox(&pool, "two").await;
    let queue = unique_queue("outbox_two");
    let spec = RelaySpec {
        table: outbox.table_name().to_owned(),
        broker_url: redis_url(),
        queue: queue.clone(),
        batch: 256,
    };
    let mut a = RelayProcess::start(RELAY_EXE, &spec, 1);
    let mut b = RelayProcess::start(RELAY_EXE, &spec, 2);
    // Committed while both relay, from two writers, each with its own keys (a key's commit
    // order is then its seq order; `keyed_transactions_commit_in_seq_order` covers one key
    // written by concurrent transactions).
    let half = n / 2;
    let (p1, p2, o1, o2) = (pool.clone(), pool.clone(), outbox.clone(), outbox.clone());
    let w1 =
        tokio::spawn(async move { write_ticks(&p1, &o1, "two", 0..half, 100, 500, "a").await });
    let w2 =
        tokio::spawn(async move { write_ticks(&p2, &o2, "two", half..n, 100, 500, "b").await });
    w1.await.unwrap();
    w2.await.unwrap();
    let limit = Duration::from_secs(if full() { 600 } else { 120 });
    let delivered = collect_until_all(
        &pool,
        &outbox,
        &redis_url(),
        &queue,
        n,
        limit,
        Default::default(),
    )
    .await;
    a.assert_running();
    b.assert_running();
    assert!(a.terminate(Duration::from_secs(10)), "{}", a.log());
    assert!(b.terminate(Duration::from_secs(10)), "{}", b.log());
    let by = |log: String| {
        log.lines()
            .rfind(|l| l.contains("outbox_relay stopped"))
            .unwrap_or_default()
            .to_owned()
    };
    println!(
        "two relays, {n} events: {} messages, {} duplicates\n  {}\n  {}",
        delivered.messages.len(),
        delivered.duplicates(),
        by(a.log()),
        by(b.log())
    );
    assert!(delivered.lost(n).is_empty());
    assert_eq!(delivered.duplicates(), 0, "no fault, so no duplicate");
    let violations = delivered.order_violations();
    assert!(
        violations.is_empty(),
        "out of order: {:?}",
        &violations[..violations.len().min(20)]
    );
    tests::cleanup_redis_queue(&queue, &[]).await;
    drop_outbox(&pool, &outbox).await;
}

/// The relay's PostgreSQL connections terminated (`pg_terminate_backend`) again and again
/// while it relays: it reconnects, and every committed event is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_terminated_connections() {
    let n: u64 = 3_000;
    let app = format!(
        "outbox_terminated_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let relay_pool = pool(&app, 4).await;
    let pool = pool("outbox_terminator", 4).await;
    let outbox = fresh_outbox(&pool, "terminated").await;
    let queue = unique_queue("outbox_terminated");
    let config = CeleryConfig::new(&redis_url())
        .unwrap()
        .default_queue(queue.clone());
    let relay = Relay::new(
        outbox.clone(),
        relay_pool,
        CeleryBackend::new(config).unwrap(),
    )
    .batch_size(50)
    .poll_interval(Duration::from_millis(100));
    let stats = relay.stats();
    let (stop, done) = spawn_relay(relay);
    let (p, o) = (pool.clone(), outbox.clone());
    let writer = tokio::spawn(async move {
        for chunk in 0..(n / 100) {
            let range = chunk * 100..(chunk + 1) * 100;
            write_ticks(&p, &o, "terminated", range, 10, 20, "").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut terminated = 0_i64;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&app)
        .fetch_all(&pool)
        .await
        .unwrap();
        terminated += killed.iter().filter(|&&k| k).count() as i64;
    }
    writer.await.unwrap();
    let limit = Duration::from_secs(120);
    let delivered = collect_until_all(
        &pool,
        &outbox,
        &redis_url(),
        &queue,
        n,
        limit,
        Default::default(),
    )
    .await;
    stop.send(()).unwrap();
    let report = done.await.unwrap();
    println!(
        "{terminated} connections terminated: {n} events, {} duplicates, {report:?}",
        delivered.duplicates()
    );
    assert!(terminated > 0, "no relay connection was terminated");
    assert!(delivered.lost(n).is_empty());
    assert!(delivered.order_violations().is_empty());
    assert!(stats.snapshot().delivered >= n);
    tests::cleanup_redis_queue(&queue, &[]).await;
    drop_outbox(&pool, &outbox).await;
}

/// The broker down: committed events wait in the table (the relay retries with backoff), and
/// drain once it is back; none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_events_wait_then_drain() {
    let n: u64 = 500;
    let mut broker = tests::fault::PrivateRedis::start();
    let pool = pool("outbox_outage", 4).await;
    let outbox = fresh_outbox(&pool, "outage").await;
    let queue = unique_queue("outbox_outage");
    let config = CeleryConfig::new(&broker.url())
        .unwrap()
        .default_queue(queue.clone())
        .publish_timeout(Duration::from_secs(1));
    let relay = Relay::new(
        outbox.clone(),
        pool.clone(),
        CeleryBackend::new(config).unwrap(),
    )
    .max_attempts(1_000)
    .backoff(Duration::from_millis(100), Duration::from_millis(500))
    .poll_interval(Duration::from_millis(100));
    let stats = relay.stats();
    let (stop, done) = spawn_relay(relay);

    broker.shutdown();
    write_ticks(&pool, &outbox, "outage", 0..n, 50, 10, "").await;
    eventually(Duration::from_secs(30), || async {
        (stats.snapshot().failed_attempts >= n).then_some(())
    })
    .await
    .expect("the relay did not try while the broker was down");
    if full() {
        // The 30 s outage; the relay keeps retrying (backoff up to 500 ms).
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    assert_eq!(stats.snapshot().delivered, 0);
    assert_eq!(
        rows(&pool, &outbox).await,
        n as i64,
        "the events wait in the table"
    );

    broker.restart();
    let limit = Duration::from_secs(60);
    let delivered = collect_until_all(
        &pool,
        &outbox,
        &broker.url(),
        &queue,
        n,
        limit,
        Default::default(),
    )
    .await;
    stop.send(()).unwrap();
    let report = done.await.unwrap();
    println!(
        "broker outage: {n} events, {} failed attempts, {} duplicates",
        report.failed_attempts,
        delivered.duplicates()
    );
    assert!(delivered.lost(n).is_empty());
    assert_eq!(report.parked, 0);
    drop_outbox(&pool, &outbox).await;
}

/// The default outbox's free functions and a stale name: the error says to migrate.
#[tokio::test]
async fn an_unmigrated_table_says_to_migrate() {
    let pool = pool("outbox_unmigrated", 2).await;
    let outbox = Outbox::new(
        events_outbox::OutboxConfig::new()
            .schema(tests::outbox::unique_schema("none"))
            .table("outbox"),
    )
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let err = outbox
        .publish_in(&mut conn, &tick("none", 0))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Outbox::migrate"), "{err}");
}

/// Transactions writing events of one ordering key commit one after the other (the second
/// waits for the first's commit), so a key's `seq` order is its commit order; another key does
/// not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_transactions_commit_in_seq_order() {
    let pool = pool("outbox_keyed", 6).await;
    let outbox = fresh_outbox(&pool, "keyed").await;
    let keyed = |seq: u64, key: &str| {
        let tick = OutboxTick {
            run: "keyed".to_owned(),
            seq,
            key: Some(key.to_owned()),
        };
        (tick, OutboxOptions::new().key(key))
    };
    let mut first = pool.begin().await.unwrap();
    let (t, o) = keyed(1, "order-1");
    outbox.publish_in_with(&mut first, &t, o).await.unwrap();

    // Another key: not held up.
    let mut other = pool.begin().await.unwrap();
    let (t, o) = keyed(2, "order-2");
    tokio::time::timeout(
        Duration::from_secs(5),
        outbox.publish_in_with(&mut other, &t, o),
    )
    .await
    .expect("another key waited")
    .unwrap();
    other.commit().await.unwrap();

    // The same key, in one statement with others: waits for the first transaction.
    let (p, ob) = (pool.clone(), outbox.clone());
    let second = tokio::spawn(async move {
        let mut tx = p.begin().await.unwrap();
        let entries = vec![
            events_outbox::Entry::new(&keyed(3, "order-3").0).unwrap(),
            events_outbox::Entry::new(&keyed(4, "order-1").0)
                .unwrap()
                .with(OutboxOptions::new().key("order-1")),
        ];
        ob.insert_in(&mut tx, entries).await.unwrap();
        tx.commit().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "the second writer of order-1 did not wait"
    );
    first.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second writer still waits after the first committed")
        .unwrap();

    let (bus, seen) = recording_bus();
    let relay = Relay::for_bus(outbox.clone(), pool.clone(), bus);
    assert_eq!(relay.drain().await.unwrap(), 4);
    let seen = seen.lock().unwrap().clone();
    let position = |seq| seen.iter().position(|&s| s == seq).unwrap();
    assert!(position(1) < position(4), "{seen:?}");
    drop_outbox(&pool, &outbox).await;
}
