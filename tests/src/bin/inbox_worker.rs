//! A Celery worker process for the inbox tests (`tests/tests/inbox.rs`): a worker with a
//! PostgreSQL inbox whose handler `inbox.a_save_order` records its completion in its own
//! transaction, inserts an order row, commits — and on its first attempt then hangs, so the
//! test can `kill -9` the worker between the commit and the acknowledgement. Handler
//! `inbox.b_mark` (run after it) records the task context it saw in Redis.
//!
//! Environment: `INBOX_BROKER_URL`, `INBOX_QUEUE`, `INBOX_PG_URL`, `INBOX_PG_SCHEMA` (the inbox
//! table and `orders` live there), `INBOX_RECORD_URL` (Redis), `INBOX_VISIBILITY_MS`,
//! `INBOX_RESTORE_MS`.

use std::sync::OnceLock;
use std::time::Duration;

use events_celery::{Worker, WorkerConfig};
use events_core::{BoxError, domain_event, handler, task};
use events_outbox::inbox::{InboxTable, PgInbox};

#[domain_event(name = "inbox.crash_order")]
#[derive(Debug, Clone)]
struct CrashOrder {
    run: String,
    order: i64,
}

static INBOX: OnceLock<(PgInbox, sqlx::PgPool, String)> = OnceLock::new();

async fn recorder() -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
    let url =
        std::env::var("INBOX_RECORD_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

#[handler(name = "inbox.a_save_order")]
async fn save_order(event: &CrashOrder) -> Result<(), BoxError> {
    let mut redis = recorder().await?;
    let attempt: i64 = redis::cmd("INCR")
        .arg(format!("inbox:{}:attempts", event.run))
        .query_async(&mut redis)
        .await?;
    let (inbox, pool, schema) = INBOX.get().expect("set in main");
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
    redis::cmd("RPUSH")
        .arg(format!("inbox:{}:committed", event.run))
        .arg(attempt)
        .query_async::<i64>(&mut redis)
        .await?;
    if attempt == 1 {
        // Committed, not acknowledged: the test kills the process now.
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    Ok(())
}

#[handler(name = "inbox.b_mark")]
async fn mark(event: &CrashOrder) -> Result<(), BoxError> {
    let task = task::current().ok_or("no task context")?;
    let mut redis = recorder().await?;
    redis::cmd("RPUSH")
        .arg(format!("inbox:{}:marks", event.run))
        .arg(format!(
            "{}|{}|{}|{}",
            task.id(),
            task.retries(),
            task.redelivered(),
            task.queue().unwrap_or("")
        ))
        .query_async::<i64>(&mut redis)
        .await?;
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::var("INBOX_BROKER_URL").map_err(|_| "set INBOX_BROKER_URL")?;
    let queue = std::env::var("INBOX_QUEUE").map_err(|_| "set INBOX_QUEUE")?;
    let pg = std::env::var("INBOX_PG_URL").map_err(|_| "set INBOX_PG_URL")?;
    let schema = std::env::var("INBOX_PG_SCHEMA").map_err(|_| "set INBOX_PG_SCHEMA")?;
    let pool = sqlx::PgPool::connect(&pg).await?;
    let inbox = PgInbox::new(pool.clone()).table(InboxTable::new(&schema, "inbox")?);
    inbox.migrate().await?;
    let _ = INBOX.set((inbox.clone(), pool, schema));
    let mut config = WorkerConfig::new(&url)?
        .queues([queue])
        .concurrency(2)
        .grace_period(Duration::from_secs(1))
        .inbox(inbox);
    if let Some(ms) = env_u64("INBOX_VISIBILITY_MS") {
        config = config.visibility_timeout(Duration::from_millis(ms));
    }
    if let Some(ms) = env_u64("INBOX_RESTORE_MS") {
        config = config.restore_interval(Duration::from_millis(ms));
    }
    let stats = Worker::new(config)?.run().await?;
    eprintln!("inbox_worker stopped: {:?}", stats.snapshot());
    Ok(())
}
