//! Fault scenario: the result backend cannot be reached. A worker whose Redis result backend
//! refuses every connection runs its tasks as usual, tries the backend once per backoff step
//! (not once per result), counts the results it could not store
//! (`WorkerStats::results_dropped`, in its final stats line), and stops gracefully.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use events_celery::{CeleryBackend, CeleryConfig};
use tests::fault::{
    Refusing, WorkerProcess, WorkerSpec, cleanup_redis_queue_at, fault_redis_url, forget_run,
    most_attempts, publish_ticks, rust_count, sized,
};
use tests::unique_queue;

const WORKER: &str = env!("CARGO_BIN_EXE_fault_worker");

/// `name`'s value in the worker's final stats line (`fault_worker stopped: [("processed",
/// 200), …]`).
fn final_stat(log: &str, name: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("fault_worker stopped:"))?;
    let rest = line.split(&format!("(\"{name}\", ")).nth(1)?;
    rest.split(')').next()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_result_backend_unreachable_tasks_run_and_lost_results_are_counted() {
    // Each connection closed at once: a writer without backoff would try once per result.
    let backend_server = Refusing::start(Duration::ZERO).await;
    let url = fault_redis_url();
    let queue = unique_queue("fault_results");
    let run = queue.clone();
    let mut spec = WorkerSpec::new(&url, &queue);
    spec.env.push((
        "FAULT_RESULT_BACKEND".into(),
        format!("redis://127.0.0.1:{}/0", backend_server.port),
    ));
    let backend = CeleryBackend::connect(CeleryConfig::new(&url).unwrap().default_queue(&queue))
        .await
        .unwrap();
    let started = Instant::now();
    let mut worker = WorkerProcess::start(WORKER, &spec);
    // Tasks in several waves over a few seconds: one result after another for the writer to
    // fail on.
    let waves: u64 = sized(4, 8);
    let per_wave: u64 = 50;
    for wave in 0..waves {
        let published = publish_ticks(&backend, &format!("{run}-{wave}"), per_wave, 16).await;
        assert_eq!(
            published.confirmed.len() as u64,
            per_wave,
            "{:?}",
            published.errors
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while rust_count(&format!("{run}-{wave}")).await < per_wave as usize {
            worker.assert_running();
            assert!(
                Instant::now() < deadline,
                "wave {wave} not processed:\n{}",
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let exited = worker.terminate(Duration::from_secs(20));
    let elapsed = started.elapsed();
    backend_server.stop();
    let log = worker.log();
    for wave in 0..waves {
        forget_run(&format!("{run}-{wave}"), None).await;
    }
    cleanup_redis_queue_at(&url, &queue).await;
    let attempts = backend_server.made.load(Ordering::SeqCst);
    let warnings = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("result"))
        .count();
    let tasks = waves * per_wave;
    eprintln!(
        "{elapsed:?}: {tasks} tasks, {attempts} connection attempts to the result backend, \
         {warnings} WARN lines about results"
    );
    assert!(exited, "the worker did not stop by itself:\n{log}");
    assert_eq!(final_stat(&log, "succeeded"), Some(tasks), "{log}");
    assert_eq!(
        final_stat(&log, "results_dropped"),
        Some(tasks),
        "every result counted as not stored:\n{log}"
    );
    assert!(attempts >= 1, "the result backend was never tried");
    assert!(
        attempts <= most_attempts(elapsed, Duration::from_secs(10)),
        "{attempts} connection attempts in {elapsed:?} for {tasks} results: more than one per \
         backoff step"
    );
    // Once when it fails, once at the end with the count.
    assert!(warnings <= 2, "{warnings} WARN lines about results:\n{log}");
}
