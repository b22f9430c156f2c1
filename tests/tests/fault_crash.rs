//! Fault scenario 1, worker crash: a `fault_worker` process with a slow handler is killed with
//! `kill -9` mid-way through N messages; another worker (on Redis, once the visibility timeout
//! has passed) processes every one of them. Counts in `docs/RELIABILITY.md`.

use std::time::Duration;

use events_celery::{CeleryBackend, CeleryConfig};
use tests::fault::{
    Counts, WorkerProcess, WorkerSpec, cleanup_redis_queue_at, command, fault_redis_url,
    forget_run, publish_ticks, rust_count, rust_runs, sized, wait_processed,
};
use tests::{amqp_url, cleanup_amqp_queue, unique_queue};

const WORKER: &str = env!("CARGO_BIN_EXE_fault_worker");

async fn crash_mid_way(broker: &str, url: &str, test: &str) -> String {
    let queue = unique_queue("fault_crash");
    let run = queue.clone();
    let n: u64 = sized(300, 2000);
    let crashes: u64 = sized(2, 5);
    let backend = CeleryBackend::connect(CeleryConfig::new(url).unwrap().default_queue(&queue))
        .await
        .unwrap();
    let published = publish_ticks(&backend, &run, n, 32).await;
    assert_eq!(
        published.confirmed.len() as u64,
        n,
        "{:?}",
        published.errors
    );

    let sleep = Duration::from_millis(20);
    let visibility = Duration::from_secs(3);
    let final_spec = WorkerSpec {
        sleep,
        concurrency: 4,
        prefetch: 16,
        visibility_timeout: Some(visibility),
        restore_interval: Some(Duration::from_millis(500)),
        ..WorkerSpec::new(url, &queue)
    };
    // The workers to be killed restore only at start-up, so that a kill never lands while
    // one holds kombu's `unacked_mutex` (which would block restores for its 300 s expiry).
    let doomed_spec = WorkerSpec {
        restore_interval: Some(Duration::from_secs(600)),
        ..final_spec.clone()
    };
    let mut killed_at = Vec::new();
    for i in 1..=crashes {
        let mut worker = WorkerProcess::start(WORKER, &doomed_spec);
        let target = (n * i / (crashes + 1)) as usize;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            worker.assert_running();
            let done = rust_count(&run).await;
            if done >= target {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {done} of {n} processed; worker output:\n{}",
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worker.kill9();
        let done = rust_count(&run).await;
        assert!(
            done < n as usize,
            "the kill came after the end: nothing was at stake"
        );
        killed_at.push(done);
    }
    let mut last = WorkerProcess::start(WORKER, &final_spec);
    wait_processed(&run, None, &published.confirmed, Duration::from_secs(120)).await;
    // Let late duplicates (if any) land before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs = rust_runs(&run).await;
    last.assert_running();
    assert!(last.terminate(Duration::from_secs(15)), "{}", last.log());
    let what = format!(
        "{n} msgs, handler sleeps {} ms, concurrency 4; `kill -9` {} at {killed_at:?} processed, \
         then a new worker{}",
        sleep.as_millis(),
        if crashes == 1 {
            "once".to_owned()
        } else {
            format!("{crashes} times (one worker after another)")
        },
        if broker == "Redis" {
            format!(" (visibility timeout {} s)", visibility.as_secs())
        } else {
            String::new()
        }
    );
    Counts::new(
        &format!("1. worker crash, {broker}"),
        &what,
        &published,
        &runs,
        &command("fault_crash", test),
    )
    .report();
    forget_run(&run, None).await;
    queue
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_worker_crash_loses_nothing() {
    let url = fault_redis_url();
    let queue = crash_mid_way("Redis", &url, "redis_worker_crash_loses_nothing").await;
    cleanup_redis_queue_at(&url, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_worker_crash_loses_nothing() {
    let queue = crash_mid_way("RabbitMQ", &amqp_url(), "amqp_worker_crash_loses_nothing").await;
    cleanup_amqp_queue(&queue).await;
}
