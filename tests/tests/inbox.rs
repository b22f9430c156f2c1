//! The inbox and the task context on real brokers, Redis and PostgreSQL: a message delivered
//! three times (one task id published three times) runs each handler once, with the Redis
//! store and with the PostgreSQL store, on RabbitMQ and on Redis; a handler that recorded its
//! completion in its own transaction and whose worker was `kill -9`ed before the
//! acknowledgement is skipped on redelivery (its business row exists once); handlers read
//! their task (id, retries, queue) with `task::current()`; without an inbox every delivery
//! runs every handler, as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use events_celery::{CeleryBackend, CeleryConfig, RedisInbox, RetryPolicy, WorkerConfig};
use events_core::{BoxError, domain_event, handler, task};
use events_outbox::inbox::{InboxTable, PgInbox};
use tests::{InProcessWorker, amqp_url, eventually, redis_url, unique_queue};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[domain_event(name = "inbox.order_placed")]
#[derive(Debug, Clone)]
struct OrderPlaced {
    run: String,
    order: i64,
    /// `inbox.flaky` fails its first run (retries = 0).
    fail_first: bool,
}

/// What each handler saw, by run: (handler, task id, retries, queue, handler in the context).
type Seen = (String, String, u32, String, String);
static SEEN: Mutex<Vec<(String, Seen)>> = Mutex::new(Vec::new());

/// The PostgreSQL inbox, pool and schema of the runs that use one.
type Pg = (PgInbox, sqlx::PgPool, String);
static PG: Mutex<Vec<(String, Pg)>> = Mutex::new(Vec::new());

fn saw(handler: &str, run: &str) {
    let task = task::current().expect("the worker sets the task context");
    SEEN.lock().unwrap().push((
        run.to_owned(),
        (
            handler.to_owned(),
            task.id().to_owned(),
            task.retries(),
            task.queue().unwrap_or_default().to_owned(),
            task.handler().unwrap_or_default().to_owned(),
        ),
    ));
}

fn seen(run: &str) -> Vec<Seen> {
    SEEN.lock()
        .unwrap()
        .iter()
        .filter(|(r, _)| r == run)
        .map(|(_, s)| s.clone())
        .collect()
}

fn runs(run: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (handler, ..) in seen(run) {
        *counts.entry(handler).or_insert(0) += 1;
    }
    counts
}

#[handler(name = "inbox.count_async")]
async fn count_async(event: &OrderPlaced) {
    tokio::task::yield_now().await;
    saw("inbox.count_async", &event.run);
}

#[handler(name = "inbox.count_sync")]
fn count_sync(event: &OrderPlaced) {
    saw("inbox.count_sync", &event.run);
}

#[handler(name = "inbox.flaky", max_retries = 3)]
fn flaky(event: &OrderPlaced) -> Result<(), std::io::Error> {
    saw("inbox.flaky", &event.run);
    let retries = task::current().map_or(0, |t| t.retries());
    if event.fail_first && retries == 0 {
        return Err(std::io::Error::other("first run fails"));
    }
    Ok(())
}

/// With a PostgreSQL inbox for the run: records its completion and the order row in one
/// transaction.
#[handler(name = "inbox.save_order")]
async fn save_order(event: &OrderPlaced) -> Result<(), BoxError> {
    let pg = PG
        .lock()
        .unwrap()
        .iter()
        .find(|(run, _)| *run == event.run)
        .map(|(_, pg)| pg.clone());
    saw("inbox.save_order", &event.run);
    let Some((inbox, pool, schema)) = pg else {
        return Ok(());
    };
    let mut tx = pool.begin().await?;
    if inbox.complete_in(&mut tx).await? {
        sqlx::query(&format!(
            "INSERT INTO {schema}.orders (run, order_id) VALUES ($1, $2)"
        ))
        .bind(&event.run)
        .bind(event.order)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

const HANDLERS: usize = 4;

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(200),
    }
}

async fn backend(url: &str, queue: &str) -> CeleryBackend {
    CeleryBackend::connect(CeleryConfig::new(url).unwrap().default_queue(queue))
        .await
        .unwrap()
}

/// A schema of the test's own with an `orders` table (dropped by [`drop_schema`]).
async fn pg_schema(pool: &sqlx::PgPool) -> String {
    let schema = unique_queue("inbox").to_lowercase();
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.orders (run text NOT NULL, order_id \
         bigint NOT NULL)"
    ))
    .execute(pool)
    .await
    .expect("PostgreSQL runs on 127.0.0.1:5432 with database `test` (scripts/services.sh)");
    schema
}

async fn drop_schema(pool: &sqlx::PgPool, schema: &str) {
    let _ = sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(pool)
        .await;
}

async fn order_rows(pool: &sqlx::PgPool, schema: &str, run: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {schema}.orders WHERE run = $1"
    ))
    .bind(run)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Store {
    None,
    Redis,
    Postgres,
}

/// Publishes one event three times under one task id to a worker with `store`; returns the
/// handler runs and the worker's `inbox_skipped`.
async fn delivered_three_times(url: &str, store: Store) -> (HashMap<String, usize>, u64) {
    let queue = unique_queue("inbox_dup");
    let run = queue.clone();
    let mut config = WorkerConfig::new(url)
        .unwrap()
        .queues([queue.clone()])
        // One message at a time: the deliveries come one after another, as redeliveries do.
        .concurrency(1);
    let mut pg = None;
    match store {
        Store::None => {}
        Store::Redis => {
            config = config.inbox(
                RedisInbox::new(&redis_url())
                    .unwrap()
                    .prefix(format!("test.inbox.{run}"))
                    .retention(Duration::from_secs(60)),
            );
        }
        Store::Postgres => {
            let pool = sqlx::PgPool::connect(PG_URL).await.unwrap();
            let schema = pg_schema(&pool).await;
            let inbox =
                PgInbox::new(pool.clone()).table(InboxTable::new(&schema, "inbox").unwrap());
            inbox.migrate().await.unwrap();
            PG.lock()
                .unwrap()
                .push((run.clone(), (inbox.clone(), pool.clone(), schema.clone())));
            config = config.inbox(inbox);
            pg = Some((pool, schema));
        }
    }
    let backend = backend(url, &queue).await;
    let task_id = format!("order-{run}");
    for _ in 0..3 {
        backend
            .publish_with(
                &OrderPlaced {
                    run: run.clone(),
                    order: 7,
                    fail_first: false,
                },
                |o| o.task_id(task_id.clone()),
            )
            .await
            .unwrap();
    }
    let worker = InProcessWorker::start(config);
    let expected_runs = match store {
        Store::None => 3,
        _ => 1,
    };
    let settled = eventually(Duration::from_secs(30), || async {
        let processed = worker.stats.processed.load(Ordering::Relaxed);
        (processed >= 3).then_some(())
    })
    .await;
    let stats = worker.stop().await;
    assert!(
        settled.is_some(),
        "not all deliveries processed: {:?}",
        stats.snapshot()
    );
    let counts = runs(&run);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![expected_runs; HANDLERS],
        "{counts:?}"
    );
    assert_eq!(stats.succeeded.load(Ordering::Relaxed), 3);
    if let Some((pool, schema)) = pg {
        assert_eq!(order_rows(&pool, &schema, &run).await, 1);
        let recorded: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.inbox"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(recorded, HANDLERS as i64, "one row per handler");
        drop_schema(&pool, &schema).await;
    }
    cleanup(url, &queue).await;
    (counts, stats.inbox_skipped.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_broker_redis_inbox_runs_each_handler_once() {
    let (_, skipped) = delivered_three_times(&redis_url(), Store::Redis).await;
    assert_eq!(skipped, 2 * HANDLERS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_broker_redis_inbox_runs_each_handler_once() {
    let (_, skipped) = delivered_three_times(&amqp_url(), Store::Redis).await;
    assert_eq!(skipped, 2 * HANDLERS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_broker_pg_inbox_runs_each_handler_once() {
    let (_, skipped) = delivered_three_times(&redis_url(), Store::Postgres).await;
    assert_eq!(skipped, 2 * HANDLERS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_broker_pg_inbox_runs_each_handler_once() {
    let (_, skipped) = delivered_three_times(&amqp_url(), Store::Postgres).await;
    assert_eq!(skipped, 2 * HANDLERS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_inbox_every_delivery_runs_every_handler() {
    let (_, skipped) = delivered_three_times(&redis_url(), Store::None).await;
    assert_eq!(skipped, 0);
}

/// Handlers read their task: its id, the handler running, the queue, and retries counting up
/// on a retry (same task id, as Celery's `Task.retry`).
async fn handlers_read_their_task(url: &str) {
    let queue = unique_queue("inbox_ctx");
    let run = queue.clone();
    let backend = backend(url, &queue).await;
    let task_id = format!("ctx-{run}");
    backend
        .publish_with(
            &OrderPlaced {
                run: run.clone(),
                order: 1,
                fail_first: true,
            },
            |o| o.task_id(task_id.clone()),
        )
        .await
        .unwrap();
    let worker = InProcessWorker::start(
        WorkerConfig::new(url)
            .unwrap()
            .queues([queue.clone()])
            .retry(fast_retries())
            .inbox(
                RedisInbox::new(&redis_url())
                    .unwrap()
                    .prefix(format!("test.inbox.{run}")),
            ),
    );
    let done = eventually(Duration::from_secs(30), || async {
        (runs(&run).get("inbox.flaky").copied() == Some(2)).then_some(())
    })
    .await;
    let stats = worker.stop().await;
    assert!(done.is_some(), "{:?} {:?}", seen(&run), stats.snapshot());
    let seen = seen(&run);
    for (handler, id, _, seen_queue, in_context) in &seen {
        assert_eq!(id, &task_id);
        assert_eq!(seen_queue, &queue);
        assert_eq!(handler, in_context, "the context names the running handler");
    }
    let flaky: Vec<u32> = seen
        .iter()
        .filter(|s| s.0 == "inbox.flaky")
        .map(|s| s.2)
        .collect();
    assert_eq!(flaky, [0, 1], "retries as each run saw them");
    assert_eq!(
        runs(&run).get("inbox.count_sync"),
        Some(&1),
        "the retry runs the failed handler alone"
    );
    assert!(task::current().is_none(), "no context outside handlers");
    cleanup(url, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_handlers_read_their_task() {
    handlers_read_their_task(&redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_handlers_read_their_task() {
    handlers_read_their_task(&amqp_url()).await;
}

/// `kill -9` between the handler's commit and the acknowledgement: the redelivery skips the
/// handler (its completion was committed with its row), and the order exists once.
async fn crash_after_commit(url: &str) {
    let queue = unique_queue("inbox_crash");
    let run = queue.clone();
    let pool = sqlx::PgPool::connect(PG_URL).await.unwrap();
    let schema = pg_schema(&pool).await;
    let start = || {
        let log = std::env::temp_dir().join(format!("{queue}.{}.inbox-worker.log", short_id()));
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_inbox_worker"));
        command
            .env("INBOX_BROKER_URL", url)
            .env("INBOX_QUEUE", &queue)
            .env("INBOX_PG_URL", PG_URL)
            .env("INBOX_PG_SCHEMA", &schema)
            .env("INBOX_RECORD_URL", redis_url())
            .env("INBOX_VISIBILITY_MS", "2000")
            .env("INBOX_RESTORE_MS", "300");
        tests::LoggedChild::spawn("inbox_worker", &mut command, log)
    };
    let backend = backend(url, &queue).await;
    backend
        .publish_with(
            &CrashOrder {
                run: run.clone(),
                order: 42,
            },
            |o| o.task_id(format!("crash-{run}")),
        )
        .await
        .unwrap();
    let mut first = start();
    let mut redis = tests::redis().await;
    let committed = format!("inbox:{run}:committed");
    let list = |key: String| {
        let mut redis = redis.clone();
        async move {
            redis::cmd("LRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query_async::<Vec<String>>(&mut redis)
                .await
                .unwrap()
        }
    };
    let up = eventually(Duration::from_secs(30), || async {
        (!list(committed.clone()).await.is_empty()).then_some(())
    })
    .await;
    assert!(up.is_some(), "the handler never committed: {}", first.log());
    first.kill9();
    let mut second = start();
    let marks = eventually(Duration::from_secs(30), || async {
        let marks = list(format!("inbox:{run}:marks")).await;
        (!marks.is_empty()).then_some(marks)
    })
    .await;
    second.assert_running();
    let marks = marks.unwrap_or_else(|| panic!("never redelivered: {}", second.log()));
    let log = second.log();
    second.terminate(Duration::from_secs(10));
    let attempts: Option<i64> = redis::cmd("GET")
        .arg(format!("inbox:{run}:attempts"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(attempts, Some(1), "the handler ran once: {log}");
    assert_eq!(order_rows(&pool, &schema, &run).await, 1);
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert!(
        marks[0].starts_with(&format!("crash-{run}|0|true|{queue}")),
        "the redelivery is marked redelivered: {marks:?}"
    );
    let _: redis::RedisResult<()> = redis::cmd("DEL")
        .arg(&committed)
        .arg(format!("inbox:{run}:marks"))
        .arg(format!("inbox:{run}:attempts"))
        .query_async(&mut redis)
        .await;
    drop_schema(&pool, &schema).await;
    cleanup(url, &queue).await;
}

async fn cleanup(url: &str, queue: &str) {
    if url.starts_with("redis") {
        tests::cleanup_redis_queue(queue, &[]).await;
    } else {
        tests::cleanup_amqp_queue(queue).await;
    }
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// The event of the `inbox_worker` process (its handlers live there).
#[domain_event(name = "inbox.crash_order")]
#[derive(Debug, Clone)]
struct CrashOrder {
    run: String,
    order: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill_after_commit_runs_the_handler_once() {
    crash_after_commit(&redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_kill_after_commit_runs_the_handler_once() {
    crash_after_commit(&amqp_url()).await;
}
