//! A Celery worker process for the fault suite (`tests/tests/fault_*.rs`): runs
//! `events_celery::Worker` on one queue with one handler, for the `fault.tick` event, that
//! records each run with `HINCRBY fault:<run>:runs <seq> 1` — after sleeping
//! `FAULT_SLEEP_MS` when asked to be slow. Tests start it, `kill -9` it, and count.
//!
//! Environment: `FAULT_BROKER_URL` (required), `FAULT_QUEUE` (default `celery`; several,
//! comma-separated, are consumed in that order),
//! `FAULT_RECORD_URL` (the Redis to record on, default `redis://127.0.0.1:6379/0`),
//! `FAULT_SLEEP_MS`, `FAULT_CONCURRENCY`, `FAULT_PREFETCH`, `FAULT_VISIBILITY_MS`,
//! `FAULT_RESTORE_MS`, `FAULT_RECONNECT_MAX_MS`, `FAULT_MAX_BYTES`, `FAULT_DEAD_LETTER_MAX`,
//! `FAULT_RESULT_BACKEND` (a Redis URL: store task results there).
//! Stops gracefully on
//! SIGTERM.

use std::time::Duration;

use events_celery::{Worker, WorkerConfig};
use events_core::{domain_event, handler};
use tokio::sync::OnceCell;

#[domain_event(name = "fault.tick")]
#[derive(Debug, Clone)]
struct Tick {
    run: String,
    seq: u64,
}

static RECORDER: OnceCell<redis::aio::MultiplexedConnection> = OnceCell::const_new();

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[handler(name = "fault.record_tick")]
async fn record_tick(event: &Tick) -> Result<(), redis::RedisError> {
    let sleep = env_u64("FAULT_SLEEP_MS").unwrap_or(0);
    if sleep > 0 {
        tokio::time::sleep(Duration::from_millis(sleep)).await;
    }
    let mut connection = RECORDER
        .get_or_try_init(|| async {
            let url = std::env::var("FAULT_RECORD_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
            redis::Client::open(url)?
                .get_multiplexed_async_connection()
                .await
        })
        .await?
        .clone();
    redis::cmd("HINCRBY")
        .arg(format!("fault:{}:runs", event.run))
        .arg(event.seq)
        .arg(1)
        .query_async::<i64>(&mut connection)
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::var("FAULT_BROKER_URL").map_err(|_| "set FAULT_BROKER_URL")?;
    let queue = std::env::var("FAULT_QUEUE").unwrap_or_else(|_| "celery".to_owned());
    let mut config = WorkerConfig::new(&url)?
        .queues(queue.split(',').map(str::to_owned))
        .grace_period(Duration::from_secs(10));
    if let Some(n) = env_u64("FAULT_CONCURRENCY") {
        config = config.concurrency(n as usize);
    }
    if let Some(n) = env_u64("FAULT_PREFETCH") {
        config = config
            .prefetch(u16::try_from(n).unwrap_or(u16::MAX))
            .redis_fetchers((n as usize).clamp(1, 16));
    }
    if let Some(ms) = env_u64("FAULT_VISIBILITY_MS") {
        config = config.visibility_timeout(Duration::from_millis(ms));
    }
    if let Some(ms) = env_u64("FAULT_RESTORE_MS") {
        config = config.restore_interval(Duration::from_millis(ms));
    }
    if let Some(ms) = env_u64("FAULT_RECONNECT_MAX_MS") {
        config = config.reconnect_max_delay(Duration::from_millis(ms));
    }
    if let Some(n) = env_u64("FAULT_MAX_BYTES") {
        config = config.max_message_bytes(usize::try_from(n)?);
    }
    if let Some(n) = env_u64("FAULT_DEAD_LETTER_MAX") {
        config = config.dead_letter_max_len(usize::try_from(n)?);
    }
    if let Ok(url) = std::env::var("FAULT_RESULT_BACKEND") {
        config = config.result_backend(&url)?;
    }
    let stats = Worker::new(config)?.run().await?;
    eprintln!("fault_worker stopped: {:?}", stats.snapshot());
    Ok(())
}
