//! Fault scenario 2, broker restarts: RabbitMQ (`rabbitmqctl stop_app` / `start_app`) and Redis
//! (`redis-cli shutdown`, then `redis-server` again) restarted while publishing — every
//! `publish` either returns `Ok` and its message is later consumed, or returns an error — and
//! while a `fault_worker` consumes: it reconnects and finishes the queue.
//!
//! Redis runs as a private `redis-server` with `--appendonly yes --appendfsync always`: the
//! shared one on 6379 has no persistence, so a restart would drop every queued message by
//! design (see `docs/RELIABILITY.md`). The RabbitMQ tests stop the shared broker, so they
//! run one at a time, and a guard starts it again even when a test fails.

use std::time::Duration;

use events_celery::{CeleryBackend, CeleryConfig};
use tests::fault::{
    Counts, PrivateRedis, Published, Publishing, RabbitOutage, WorkerProcess, WorkerSpec, command,
    forget_run, publish_ticks, rust_count, rust_runs, sized, wait_processed,
};
use tests::{amqp_url, cleanup_amqp_queue, eventually, unique_queue};

const WORKER: &str = env!("CARGO_BIN_EXE_fault_worker");

/// RabbitMQ restarts, one at a time.
static RABBIT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long each outage lasts.
fn outage() -> Duration {
    Duration::from_secs(sized(2, 8))
}

/// How long the consuming scenarios' handler sleeps: slow enough that half the quick run
/// (500 messages, 4 at a time) outlasts a `rabbitmqctl stop_app` on a loaded machine (10 ms
/// let a CI run finish the queue before the broker was down).
fn handler_sleep() -> Duration {
    Duration::from_millis(sized(40, 10))
}

/// How many restarts a scenario goes through.
fn restarts() -> usize {
    sized(1, 3)
}

async fn backend(url: &str, queue: &str) -> CeleryBackend {
    CeleryBackend::connect(
        CeleryConfig::new(url)
            .unwrap()
            .default_queue(queue)
            .publish_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap()
}

/// Waits until `publishing` has `more` confirmed publishes than now.
async fn until_confirmed(publishing: &Publishing, more: usize) {
    let target = publishing.confirmed() + more;
    let confirmed = eventually(Duration::from_secs(90), || async {
        (publishing.confirmed() >= target).then_some(())
    })
    .await;
    assert!(
        confirmed.is_some(),
        "publishing did not recover: {} confirmed, {} failed",
        publishing.confirmed(),
        publishing.failed()
    );
}

/// Publishes without pause while `restart` is called `restarts()` times; then a worker
/// consumes everything. Returns the outcome and the runs.
async fn publish_through_restarts<R, F>(
    url: &str,
    queue: &str,
    mut restart: R,
) -> (Published, std::collections::HashMap<u64, u64>)
where
    R: FnMut() -> F,
    F: std::future::Future<Output = ()>,
{
    let run = queue.to_owned();
    let backend = backend(url, queue).await;
    let publishing = Publishing::start(&backend, &run, 8, None);
    until_confirmed(&publishing, 200).await;
    let mut failed_during = Vec::new();
    for _ in 0..restarts() {
        let failed_before = publishing.failed();
        restart().await;
        failed_during.push(publishing.failed() - failed_before);
        // The backend reconnects by itself: publishes succeed again.
        until_confirmed(&publishing, 200).await;
    }
    let published = publishing.finish(true).await;
    assert!(
        failed_during.iter().all(|&n| n > 0),
        "a restart went unnoticed by the publisher ({failed_during:?} errors per outage): the \
         test proves nothing"
    );
    let mut worker = WorkerProcess::start(WORKER, &WorkerSpec::new(url, queue));
    let runs = wait_processed(&run, None, &published.confirmed, Duration::from_secs(120)).await;
    worker.assert_running();
    assert!(
        worker.terminate(Duration::from_secs(15)),
        "{}",
        worker.log()
    );
    eprintln!("publish errors seen: {:?}", published.errors);
    (published, runs)
}

/// Publishes `n`, starts a slow worker, and calls `restart` (`restarts()` times) while it
/// consumes; returns the outcome and the runs once everything was processed.
async fn consume_through_restarts<R, F>(
    url: &str,
    queue: &str,
    n: u64,
    mut restart: R,
) -> (Published, std::collections::HashMap<u64, u64>)
where
    R: FnMut() -> F,
    F: std::future::Future<Output = ()>,
{
    let run = queue.to_owned();
    let backend = backend(url, queue).await;
    let published = publish_ticks(&backend, &run, n, 32).await;
    assert_eq!(
        published.confirmed.len() as u64,
        n,
        "{:?}",
        published.errors
    );
    let spec = WorkerSpec {
        sleep: handler_sleep(),
        concurrency: 4,
        prefetch: 32,
        visibility_timeout: Some(Duration::from_secs(3)),
        restore_interval: Some(Duration::from_secs(1)),
        ..WorkerSpec::new(url, queue)
    };
    let mut worker = WorkerProcess::start(WORKER, &spec);
    let rounds = restarts() as u64;
    for i in 1..=rounds {
        let target = (n * i / (rounds + 1)) as usize;
        let reached = eventually(Duration::from_secs(120), || async {
            (rust_count(&run).await >= target).then_some(())
        })
        .await;
        assert!(
            reached.is_some(),
            "stuck before restart {i}:\n{}",
            worker.log()
        );
        worker.assert_running();
        restart().await;
        let done = rust_count(&run).await;
        assert!(
            done < n as usize,
            "the restart came after the end: nothing was at stake"
        );
    }
    let runs = wait_processed(&run, None, &published.confirmed, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs = if runs.len() as u64 == n {
        rust_runs(&run).await
    } else {
        runs
    };
    worker.assert_running();
    let log = worker.log();
    assert!(worker.terminate(Duration::from_secs(15)), "{log}");
    (published, runs)
}

async fn restart_rabbit() {
    tokio::task::spawn_blocking(|| {
        let down = RabbitOutage::begin();
        std::thread::sleep(outage());
        down.end();
    })
    .await
    .expect("restarting RabbitMQ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_restart_while_publishing() {
    let _one_at_a_time = RABBIT.lock().await;
    let queue = unique_queue("fault_restart_pub");
    let (published, runs) = publish_through_restarts(&amqp_url(), &queue, restart_rabbit).await;
    Counts::new(
        "2. broker restart while publishing, RabbitMQ",
        &format!(
            "8 concurrent publishers (confirms, 2 s publish timeout); `rabbitmqctl stop_app`, {} s \
             down, `start_app` ×{}; then one worker drains the queue",
            outage().as_secs(),
            restarts()
        ),
        &published,
        &runs,
        &command("fault_restart", "amqp_restart_while_publishing"),
    )
    .report();
    forget_run(&queue, None).await;
    cleanup_amqp_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_restart_while_consuming() {
    let _one_at_a_time = RABBIT.lock().await;
    let queue = unique_queue("fault_restart_con");
    let n = sized(1000, 10_000);
    let (published, runs) = consume_through_restarts(&amqp_url(), &queue, n, restart_rabbit).await;
    Counts::new(
        "2. broker restart while consuming, RabbitMQ",
        &format!(
            "{n} msgs, handler sleeps {} ms; `rabbitmqctl stop_app`, {} s down, `start_app` ×{} \
             mid-way; the worker reconnects",
            handler_sleep().as_millis(),
            outage().as_secs(),
            restarts()
        ),
        &published,
        &runs,
        &command("fault_restart", "amqp_restart_while_consuming"),
    )
    .report();
    forget_run(&queue, None).await;
    cleanup_amqp_queue(&queue).await;
}

/// Shuts the private Redis down with its own command, waits, starts it again.
async fn restart_redis(redis: &std::sync::Arc<std::sync::Mutex<PrivateRedis>>) {
    let redis = std::sync::Arc::clone(redis);
    tokio::task::spawn_blocking(move || {
        redis.lock().unwrap().shutdown();
        std::thread::sleep(outage());
        redis.lock().unwrap().restart();
    })
    .await
    .expect("restarting Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_while_publishing() {
    let redis = std::sync::Arc::new(std::sync::Mutex::new(PrivateRedis::start()));
    let url = redis.lock().unwrap().url();
    let queue = unique_queue("fault_restart_pub");
    let (published, runs) = publish_through_restarts(&url, &queue, || restart_redis(&redis)).await;
    Counts::new(
        "2. broker restart while publishing, Redis",
        &format!(
            "8 concurrent publishers (2 s publish timeout) to a private `redis-server \
             --appendonly yes --appendfsync always`; `redis-cli shutdown`, {} s down, restart ×{}; \
             then one worker drains the queue",
            outage().as_secs(),
            restarts()
        ),
        &published,
        &runs,
        &command("fault_restart", "redis_restart_while_publishing"),
    )
    .report();
    forget_run(&queue, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_while_consuming() {
    let redis = std::sync::Arc::new(std::sync::Mutex::new(PrivateRedis::start()));
    let url = redis.lock().unwrap().url();
    let queue = unique_queue("fault_restart_con");
    let n = sized(1000, 10_000);
    let (published, runs) =
        consume_through_restarts(&url, &queue, n, || restart_redis(&redis)).await;
    Counts::new(
        "2. broker restart while consuming, Redis",
        &format!(
            "{n} msgs, handler sleeps {} ms, private persistent `redis-server`; `redis-cli \
             shutdown`, {} s down, restart ×{} mid-way; the worker reconnects (visibility \
             timeout 3 s)",
            handler_sleep().as_millis(),
            outage().as_secs(),
            restarts()
        ),
        &published,
        &runs,
        &command("fault_restart", "redis_restart_while_consuming"),
    )
    .report();
    forget_run(&queue, None).await;
}
