//! Fault scenario 3, load: `fault.tick` events through two `fault_worker` processes sharing
//! one queue (and once with a Python Celery worker as the third): all processed, none lost,
//! none twice (no fault is induced). 10,000 events in CI; 100,000 with `FAULT_SCALE=full`.

use std::time::Duration;

use events_celery::{CeleryBackend, CeleryConfig};
use tests::fault::{
    Counts, TICK_EVENT, WorkerProcess, WorkerSpec, all_runs, cleanup_redis_queue_at, command,
    fault_redis_url, forget_run, publish_ticks, sized, wait_processed,
};
use tests::{PythonWorkerSpec, amqp_url, cleanup_amqp_queue, unique_queue};

const WORKER: &str = env!("CARGO_BIN_EXE_fault_worker");

async fn load(broker: &str, url: &str, with_python: bool, test: &str) -> String {
    let queue = unique_queue("fault_load");
    let run = queue.clone();
    let python_key = format!("{queue}.python_runs");
    let n: u64 = sized(10_000, 100_000);
    let mut python = with_python.then(|| {
        let mut python = PythonWorkerSpec::new(url, &queue, &python_key)
            .events([TICK_EVENT])
            .start();
        python.wait_ready();
        python
    });
    let spec = WorkerSpec::new(url, &queue);
    let mut workers = [
        WorkerProcess::start(WORKER, &spec),
        WorkerProcess::start(WORKER, &spec),
    ];
    let backend = CeleryBackend::connect(CeleryConfig::new(url).unwrap().default_queue(&queue))
        .await
        .unwrap();
    let published = publish_ticks(&backend, &run, n, 256).await;
    assert_eq!(
        published.confirmed.len() as u64,
        n,
        "{:?}",
        published.errors
    );
    let key = with_python.then_some(python_key.as_str());
    let limit = Duration::from_secs(sized(180, 1200));
    wait_processed(&run, key, &published.confirmed, limit).await;
    // Anything processed twice would show up now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = all_runs(&run, key).await;
    for worker in &mut workers {
        worker.assert_running();
    }
    let by_python = match python.as_mut() {
        Some(python) => {
            python.assert_running();
            let count = tests::fault::python_runs(&python_key, &run)
                .await
                .values()
                .sum::<u64>();
            python.stop();
            Some(count)
        }
        None => None,
    };
    for worker in &mut workers {
        assert!(
            worker.terminate(Duration::from_secs(15)),
            "{}",
            worker.log()
        );
    }
    let what = match by_python {
        Some(count) => format!(
            "{n} events, 2 Rust worker processes (concurrency 8 each) + 1 Python Celery 5.7 \
             worker (solo pool; it ran {count}) on one queue"
        ),
        None => format!("{n} events, 2 Rust worker processes (concurrency 8 each) on one queue"),
    };
    let counts = Counts::new(
        &format!("3. load, {broker}"),
        &what,
        &published,
        &runs,
        &command("fault_load", test),
    );
    counts.report();
    assert_eq!(counts.duplicated, 0, "duplicates without any fault");
    assert_eq!(counts.processed as u64, n);
    if let Some(count) = by_python {
        assert!(
            count > 0,
            "the Python worker took no share: the test proves nothing"
        );
    }
    forget_run(&run, Some(&python_key)).await;
    queue
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_load_two_rust_workers() {
    let url = fault_redis_url();
    let queue = load("Redis", &url, false, "redis_load_two_rust_workers").await;
    cleanup_redis_queue_at(&url, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_load_two_rust_workers() {
    let queue = load("RabbitMQ", &amqp_url(), false, "amqp_load_two_rust_workers").await;
    cleanup_amqp_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_load_two_rust_workers_and_python() {
    let url = fault_redis_url();
    let queue = load(
        "Redis",
        &url,
        true,
        "redis_load_two_rust_workers_and_python",
    )
    .await;
    cleanup_redis_queue_at(&url, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_load_two_rust_workers_and_python() {
    let queue = load(
        "RabbitMQ",
        &amqp_url(),
        true,
        "amqp_load_two_rust_workers_and_python",
    )
    .await;
    cleanup_amqp_queue(&queue).await;
}
