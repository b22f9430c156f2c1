//! Fault scenario 5, handler faults: a handler that panics, one that returns an error, async
//! handlers that never return (ended by `#[handler(time_limit_ms)]` or
//! `WorkerConfig::time_limit`), a sync handler that overruns its limit, a sync handler that
//! blocks its thread while other messages keep flowing, and an async handler that blocks its
//! runtime thread (reported by the worker). Each failure is retried, then dead-lettered with
//! its reason; the worker keeps running everything else.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use events_celery::{CeleryBackend, CeleryConfig, RetryPolicy, WorkerConfig};
use events_core::{domain_event, handler};
use tests::fault::{
    Counts, Published, cleanup_redis_queue_at, command, dead_letter_reasons, fault_redis_url,
};
use tests::{InProcessWorker, amqp_url, cleanup_amqp_queue, eventually, unique_queue};

/// Handler runs: (run, what).
static RUNS: Mutex<Vec<(String, &'static str)>> = Mutex::new(Vec::new());
/// Blocking handlers wait while this is set.
static HOLD: AtomicBool = AtomicBool::new(true);

fn record(run: &str, what: &'static str) {
    RUNS.lock().unwrap().push((run.to_owned(), what));
}

fn count(run: &str, what: &str) -> usize {
    RUNS.lock()
        .unwrap()
        .iter()
        .filter(|(r, w)| r == run && *w == what)
        .count()
}

#[domain_event(name = "fault.panics")]
#[derive(Debug, Clone)]
struct Panics {
    run: String,
}

#[handler(max_retries = 1)]
fn panicking(event: &Panics) {
    record(&event.run, "panics");
    panic!("the handler panicked on purpose");
}

#[domain_event(name = "fault.errors")]
#[derive(Debug, Clone)]
struct Errors {
    run: String,
}

#[handler(max_retries = 1)]
async fn failing(event: &Errors) -> Result<(), std::io::Error> {
    record(&event.run, "errors");
    Err(std::io::Error::other("the downstream service said no"))
}

#[domain_event(name = "fault.hangs")]
#[derive(Debug, Clone)]
struct Hangs {
    run: String,
}

#[handler(time_limit_ms = 300, max_retries = 1)]
async fn never_returns(event: &Hangs) {
    record(&event.run, "hangs");
    std::future::pending::<()>().await;
}

#[domain_event(name = "fault.hangs_unlimited")]
#[derive(Debug, Clone)]
struct HangsUnlimited {
    run: String,
}

/// No limit of its own: `WorkerConfig::time_limit` ends it.
#[handler(max_retries = 0)]
async fn never_returns_either(event: &HangsUnlimited) {
    record(&event.run, "hangs_unlimited");
    std::future::pending::<()>().await;
}

#[domain_event(name = "fault.overruns")]
#[derive(Debug, Clone)]
struct Overruns {
    run: String,
}

#[handler(time_limit_ms = 200, max_retries = 0)]
fn sleeps_too_long(event: &Overruns) {
    record(&event.run, "overruns");
    std::thread::sleep(Duration::from_millis(1500));
}

#[domain_event(name = "fault.blocks")]
#[derive(Debug, Clone)]
struct Blocks {
    run: String,
}

/// Blocks its thread until the test lets it go (its own limit overrides the worker's).
#[handler(time_limit_ms = 120000)]
fn blocks_its_thread(event: &Blocks) {
    record(&event.run, "blocking");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while HOLD.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    record(&event.run, "unblocked");
}

#[domain_event(name = "fault.blocks_runtime")]
#[derive(Debug, Clone)]
struct BlocksRuntime {
    run: String,
}

/// The mistake the worker reports: blocking inside an `async fn`, without yielding.
#[handler(time_limit_ms = 10000)]
async fn blocks_its_runtime_thread(event: &BlocksRuntime) {
    record(&event.run, "blocks_runtime");
    std::thread::sleep(Duration::from_millis(400));
}

#[domain_event(name = "fault.quick")]
#[derive(Debug, Clone)]
struct Quick {
    run: String,
}

#[handler]
fn quick(event: &Quick) {
    record(&event.run, "quick");
}

/// The dead-letter reasons of `queue`.
async fn reasons(url: &str, queue: &str, expected: usize) -> Vec<String> {
    let found = eventually(Duration::from_secs(30), || async move {
        let reasons = dead_letter_reasons(url, queue).await?;
        (reasons.len() >= expected).then_some(reasons)
    })
    .await;
    found.unwrap_or_default()
}

async fn handler_faults(broker: &str, url: &str, test: &str) -> String {
    let queue = unique_queue("fault_handlers");
    let run = queue.clone();
    let backend = CeleryBackend::connect(CeleryConfig::new(url).unwrap().default_queue(&queue))
        .await
        .unwrap();
    let config = WorkerConfig::new(url)
        .unwrap()
        .queues([queue.clone()])
        .concurrency(4)
        .time_limit(Duration::from_millis(300))
        .blocking_poll_warning(Duration::from_millis(250))
        .retry(RetryPolicy {
            max_retries: 1,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(200),
        });
    let worker = InProcessWorker::start(config);

    let r = || run.clone();
    // A handler that blocks its thread, then messages that must flow meanwhile.
    backend.publish(&Blocks { run: r() }).await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            (count(&run, "blocking") == 1).then_some(())
        })
        .await
        .is_some(),
        "the blocking handler did not start"
    );
    backend.publish(&BlocksRuntime { run: r() }).await.unwrap();
    for _ in 0..20 {
        backend.publish(&Quick { run: r() }).await.unwrap();
    }
    backend.publish(&Panics { run: r() }).await.unwrap();
    backend.publish(&Errors { run: r() }).await.unwrap();
    backend.publish(&Hangs { run: r() }).await.unwrap();
    backend.publish(&HangsUnlimited { run: r() }).await.unwrap();
    backend.publish(&Overruns { run: r() }).await.unwrap();
    let flowed = eventually(Duration::from_secs(30), || async {
        (count(&run, "quick") == 20).then_some(())
    })
    .await;
    assert!(
        flowed.is_some(),
        "messages stopped flowing while a handler blocked its thread"
    );
    assert_eq!(
        count(&run, "unblocked"),
        0,
        "the blocking handler was not blocking meanwhile"
    );

    // Five failing messages; panics, errors and hangs are retried once, the others not.
    let reasons = reasons(url, &queue, 5).await;
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    let has = |needle: &str| reasons.iter().any(|r| r.contains(needle));
    assert!(
        has("failed after 1 retries: panicked: the handler panicked on purpose"),
        "{reasons:?}"
    );
    assert!(
        has("failed after 1 retries: the downstream service said no"),
        "{reasons:?}"
    );
    assert!(
        has("never_returns` failed after 1 retries: did not finish within its time limit of 300ms"),
        "{reasons:?}"
    );
    assert!(
        has(
            "never_returns_either` failed after 0 retries: did not finish within its time limit of 300ms"
        ),
        "{reasons:?}"
    );
    assert!(
        has(
            "sleeps_too_long` failed after 0 retries: did not finish within its time limit of 200ms"
        ),
        "{reasons:?}"
    );
    assert_eq!(count(&run, "panics"), 2);
    assert_eq!(count(&run, "errors"), 2);
    assert_eq!(count(&run, "hangs"), 2);
    assert_eq!(count(&run, "hangs_unlimited"), 1);
    assert_eq!(count(&run, "overruns"), 1);
    assert_eq!(count(&run, "blocks_runtime"), 1);

    // Let the blocked handler go: its message completes, and the worker stops cleanly.
    HOLD.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || async {
            (count(&run, "unblocked") == 1).then_some(())
        })
        .await
        .is_some()
    );
    assert!(!worker.is_finished(), "the worker stopped");
    let stats = worker.stop().await;
    let snapshot: HashMap<_, _> = stats.snapshot().into_iter().collect();
    assert_eq!(snapshot["dead_lettered"], 5, "{snapshot:?}");
    assert_eq!(snapshot["succeeded"], 22, "{snapshot:?}");
    // Only the async handler that slept in `std::thread::sleep` blocked a runtime thread: the
    // ones that wait in `.await` yield, and sync handlers run on the blocking pool.
    assert_eq!(snapshot["blocking_polls"], 1, "{snapshot:?}");

    let total = 27u64;
    let mut published = Published::default();
    published.confirmed.extend(0..total);
    let runs: HashMap<u64, u64> = (0..total).map(|i| (i, 1)).collect();
    Counts::new(
        &format!("5. handler faults, {broker}"),
        "1 handler blocking its thread, 1 async handler blocking its runtime thread 400 ms \
         (reported as a blocking poll) + 20 quick messages (all ran meanwhile); a panic, an error, \
         2 async handlers that never return (`time_limit_ms = 300`; `WorkerConfig::time_limit`), \
         a sync handler over its 200 ms limit: each retried as configured, then dead-lettered \
         with its reason (\"processed\" = ran to success or dead-lettered)",
        &published,
        &runs,
        &command("fault_handlers", test),
    )
    .report();
    queue
}

/// Both brokers in one test: the blocking handler's hold is process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_faults_on_both_brokers() {
    let url = fault_redis_url();
    let queue = handler_faults("Redis", &url, "handler_faults_on_both_brokers").await;
    cleanup_redis_queue_at(&url, &queue).await;
    HOLD.store(true, Ordering::SeqCst);
    let queue = handler_faults("RabbitMQ", &amqp_url(), "handler_faults_on_both_brokers").await;
    cleanup_amqp_queue(&queue).await;
    cleanup_amqp_queue(&format!("{queue}.dead_letter")).await;
}
