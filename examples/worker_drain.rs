//! Drains a pre-filled queue with the Rust worker and a no-op handler, and prints msg/s and
//! the process's peak RSS: the Rust half of the worker benchmark.
//!
//! `cargo run --release -p examples --example worker_drain -- <broker-url> <messages>`
//! (`DRAIN_INBOX=<redis url>`: with a Redis inbox, for `scripts/bench_inbox.sh`;
//! `DRAIN_CONCURRENCY=<n>`: messages at once)
//!
//! `DRAIN_TASK_EVENTS=1` sends Celery's task events (`-E`) while draining;
//! `DRAIN_NO_CONTROL=1` turns the control plane off (no worker events, no remote control), to
//! measure what it costs.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use events_celery::codec::{EncodeOptions, TaskMessage};
use events_celery::{Worker, WorkerConfig};
use events_core::{domain_event, handler};

#[domain_event(name = "bench.noop")]
struct Noop {
    product_id: String,
    name: String,
    stock: u32,
}

#[handler]
fn noop(event: &Noop) {
    std::hint::black_box((&event.product_id, &event.name, event.stock));
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = std::env::var("DRAIN_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(drain())
}

async fn drain() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
    let count: usize = args.next().map_or(Ok(20_000), |n| n.parse())?;
    let queue = args
        .next()
        .unwrap_or_else(|| format!("bench_drain_{}", std::process::id()));
    let prefill = std::env::var("DRAIN_SKIP_PREFILL").is_err();
    if prefill {
        let payload = serde_json::json!({"product_id": "abc-123", "name": "Brake pad", "stock": 4});
        let options = EncodeOptions::new().queue(queue.clone());
        let message = TaskMessage::from_payload("bench.noop", payload, &options)?;
        prefill_queue(&url, &queue, &message, count).await?;
        if std::env::var("DRAIN_PREFILL_ONLY").is_ok() {
            println!("prefilled {count} messages into {queue}");
            return Ok(());
        }
    }
    let flag = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
    let control = !flag("DRAIN_NO_CONTROL");
    let mut config = WorkerConfig::new(&url)?
        .queues([queue.clone()])
        .prefetch(1000)
        .grace_period(Duration::from_secs(5))
        .task_events(flag("DRAIN_TASK_EVENTS"))
        .worker_events(control)
        .remote_control(control);
    // DRAIN_CONCURRENCY=<n>: messages at once (default: the number of cores).
    if let Some(n) = std::env::var("DRAIN_CONCURRENCY")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        config = config.concurrency(n);
    }
    // DRAIN_INBOX=<redis url>: the same drain with a Redis inbox (scripts/bench_inbox.sh).
    if let Ok(inbox) = std::env::var("DRAIN_INBOX") {
        config = config.inbox(
            events_celery::RedisInbox::new(&inbox)?
                .prefix(format!("bench.inbox.{queue}"))
                .retention(Duration::from_secs(600)),
        );
    }
    let worker = Worker::new(config)?;
    let stats = worker.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    while stats.processed.load(Ordering::Relaxed) < count as u64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if started.elapsed() > Duration::from_secs(300) {
            break;
        }
    }
    let elapsed = started.elapsed();
    let _ = stop.send(());
    running.await??;
    let done = stats.processed.load(Ordering::Relaxed);
    println!(
        "rust worker: {done} messages in {:.2}s = {:.0} msg/s, peak RSS {:.1} MiB",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64(),
        peak_rss_kib() as f64 / 1024.0
    );
    let dropped = stats.events_dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        println!("monitoring events dropped (publisher behind): {dropped}");
    }
    Ok(())
}

async fn prefill_queue(
    url: &str,
    queue: &str,
    message: &TaskMessage,
    count: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    if url.starts_with("redis") {
        let client = redis::Client::open(url)?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
            let mut pipe = redis::pipe();
            for _ in chunk {
                let mut m = message.clone();
                m.id = uuid::Uuid::new_v4().to_string();
                pipe.lpush(queue, m.to_redis()?.envelope).ignore();
            }
            pipe.exec_async(&mut connection).await?;
        }
    } else {
        let backend = events_celery::CeleryBackend::connect(
            events_celery::CeleryConfig::new(url)?.default_queue(queue),
        )
        .await?;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..count {
            let backend = backend.clone();
            let mut m = message.clone();
            m.id = uuid::Uuid::new_v4().to_string();
            tasks.spawn(async move { backend.send(m).await });
            if tasks.len() >= 2000 {
                tasks.join_next().await.transpose()?.transpose()?;
            }
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
    }
    Ok(())
}
