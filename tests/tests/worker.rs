//! The Rust worker on real brokers: runs every handler, retries only the failed ones, dead-
//! letters what cannot run (and replays it), honours eta and expires, and shuts down without
//! losing messages.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use events_celery::{CeleryBackend, CeleryConfig, RetryPolicy, WorkerConfig, replay_dead_letters};
use events_core::{domain_event, handler};
use redis::AsyncCommands;
use tests::{
    InProcessWorker, amqp_channel, amqp_url, delete_amqp_queue, eventually, redis, redis_url,
    unique_queue,
};

/// Handler runs, by (handler, run id).
static RUNS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn record(handler: &str, run: &str) {
    RUNS.lock()
        .unwrap()
        .push((handler.to_owned(), run.to_owned()));
}

fn runs_of(run: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (handler, r) in RUNS.lock().unwrap().iter() {
        if r == run {
            *counts.entry(handler.clone()).or_insert(0) += 1;
        }
    }
    counts
}

#[domain_event(name = "worker.order_paid")]
#[derive(Debug, Clone)]
struct OrderPaid {
    run: String,
    amount_cents: u64,
}

#[handler]
fn send_receipt(event: &OrderPaid) {
    record("send_receipt", &event.run);
}

#[handler]
async fn update_ledger(event: &OrderPaid) {
    tokio::time::sleep(Duration::from_millis(1)).await;
    record("update_ledger", &event.run);
}

#[domain_event(name = "worker.invoice_due")]
#[derive(Debug, Clone)]
struct InvoiceDue {
    run: String,
}

#[handler]
fn archive_invoice(event: &InvoiceDue) {
    record("archive_invoice", &event.run);
}

#[handler(max_retries = 2)]
fn flaky_mailer(event: &InvoiceDue) -> Result<(), std::io::Error> {
    record("flaky_mailer", &event.run);
    Err(std::io::Error::other("smtp server said no"))
}

#[domain_event(name = "worker.slow_report")]
#[derive(Debug, Clone)]
struct SlowReport {
    run: String,
}

#[handler]
async fn build_report(event: &SlowReport) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    record("build_report", &event.run);
}

#[domain_event(name = "worker.stuck_job")]
#[derive(Debug, Clone)]
struct StuckJob {
    run: String,
}

/// Runs that have already hung once: the first delivery of each run never returns (an async
/// handler waiting forever), the redelivery completes.
static HUNG: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[handler]
async fn hang_once(event: &StuckJob) {
    let first = {
        let mut hung = HUNG.lock().unwrap();
        let first = !hung.contains(&event.run);
        if first {
            hung.push(event.run.clone());
        }
        first
    };
    record("hang_once.started", &event.run);
    if first {
        std::future::pending::<()>().await;
    }
    record("hang_once", &event.run);
}

fn worker_expired(worker: &InProcessWorker) -> u64 {
    worker
        .stats
        .expired
        .load(std::sync::atomic::Ordering::Relaxed)
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_millis(400),
    }
}

async fn backend(url: &str, queue: &str) -> CeleryBackend {
    CeleryBackend::connect(CeleryConfig::new(url).unwrap().default_queue(queue))
        .await
        .unwrap()
}

async fn wait_for(run: &str, handler: &str, count: usize) -> bool {
    eventually(Duration::from_secs(20), || async {
        (runs_of(run).get(handler).copied().unwrap_or(0) >= count).then_some(())
    })
    .await
    .is_some()
}

async fn every_handler_runs_once(url: &str) {
    let queue = unique_queue("worker_all");
    let run = queue.clone();
    let backend = backend(url, &queue).await;
    for amount in 0..20 {
        backend
            .publish(&OrderPaid {
                run: run.clone(),
                amount_cents: amount,
            })
            .await
            .unwrap();
    }
    let worker = InProcessWorker::start(
        WorkerConfig::new(url)
            .unwrap()
            .queues([queue.clone()])
            .concurrency(4),
    );
    assert!(
        wait_for(&run, "send_receipt", 20).await,
        "{:?}",
        runs_of(&run)
    );
    assert!(
        wait_for(&run, "update_ledger", 20).await,
        "{:?}",
        runs_of(&run)
    );
    let stats = worker.stop().await;
    assert_eq!(
        runs_of(&run),
        HashMap::from([("send_receipt".into(), 20), ("update_ledger".into(), 20)])
    );
    assert_eq!(stats.snapshot()[0], ("processed", 20));
    assert_eq!(stats.snapshot()[1], ("succeeded", 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_worker_runs_every_handler_once() {
    every_handler_runs_once(&redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_worker_runs_every_handler_once() {
    every_handler_runs_once(&amqp_url()).await;
}

async fn failed_handlers_are_retried_alone_then_dead_lettered(url: &str) -> String {
    let queue = unique_queue("worker_retry");
    let run = queue.clone();
    let backend = backend(url, &queue).await;
    backend
        .publish(&InvoiceDue { run: run.clone() })
        .await
        .unwrap();
    let worker = InProcessWorker::start(
        WorkerConfig::new(url)
            .unwrap()
            .queues([queue.clone()])
            .retry(fast_retries()),
    );
    // One first run plus `max_retries = 2` retries of the failing handler only.
    assert!(
        wait_for(&run, "flaky_mailer", 3).await,
        "{:?}",
        runs_of(&run)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = worker.stop().await;
    assert_eq!(
        runs_of(&run),
        HashMap::from([("archive_invoice".into(), 1), ("flaky_mailer".into(), 3)])
    );
    let snapshot: HashMap<_, _> = stats.snapshot().into_iter().collect();
    assert_eq!(snapshot["retried"], 2);
    assert_eq!(snapshot["dead_lettered"], 1);
    queue
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_retries_dead_letters_and_replays() {
    let url = redis_url();
    let queue = failed_handlers_are_retried_alone_then_dead_lettered(&url).await;
    let mut redis = redis().await;
    let letters: Vec<String> = redis
        .lrange(format!("{queue}.dead_letter"), 0, -1)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let record: serde_json::Value = serde_json::from_str(&letters[0]).unwrap();
    assert_eq!(record["handler"], "worker::flaky_mailer");
    let reason = record["reason"].as_str().unwrap();
    assert!(
        reason.contains("failed after 2 retries: smtp server said no"),
        "{reason}"
    );
    assert_eq!(record["task"], "domain_events.worker.invoice_due");

    // Replaying runs the exhausted handler alone, with fresh retries.
    assert_eq!(replay_dead_letters(&url, &queue, 10).await.unwrap(), 1);
    let worker = InProcessWorker::start(
        WorkerConfig::new(&url)
            .unwrap()
            .queues([queue.clone()])
            .retry(RetryPolicy {
                max_retries: 0,
                ..fast_retries()
            }),
    );
    assert!(wait_for(&queue, "flaky_mailer", 4).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.stop().await;
    assert_eq!(runs_of(&queue)["archive_invoice"], 1);
    let _: () = redis.del(format!("{queue}.dead_letter")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_retries_dead_letters_and_replays() {
    let url = amqp_url();
    let queue = failed_handlers_are_retried_alone_then_dead_lettered(&url).await;
    let (_connection, channel) = amqp_channel().await;
    let letter = channel
        .basic_get(
            format!("{queue}.dead_letter").as_str().into(),
            lapin::options::BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("a dead letter");
    let headers = letter.delivery.properties.headers().clone().unwrap();
    let reason = match headers.inner().get("x-dead-letter-reason") {
        Some(lapin::types::AMQPValue::LongString(s)) => {
            String::from_utf8_lossy(s.as_bytes()).into_owned()
        }
        other => panic!("no reason header: {other:?}"),
    };
    assert!(reason.contains("smtp server said no"), "{reason}");
    channel
        .basic_nack(
            letter.delivery.delivery_tag,
            lapin::options::BasicNackOptions {
                requeue: true,
                multiple: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(replay_dead_letters(&url, &queue, 10).await.unwrap(), 1);
    let worker = InProcessWorker::start(
        WorkerConfig::new(&url)
            .unwrap()
            .queues([queue.clone()])
            .retry(RetryPolicy {
                max_retries: 0,
                ..fast_retries()
            }),
    );
    assert!(wait_for(&queue, "flaky_mailer", 4).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.stop().await;
    assert_eq!(runs_of(&queue)["archive_invoice"], 1);
    delete_amqp_queue(&channel, &queue).await;
    delete_amqp_queue(&channel, &format!("{queue}.dead_letter")).await;
}

async fn eta_is_honoured_and_expired_messages_do_not_run(url: &str) {
    let queue = unique_queue("worker_eta");
    let run = queue.clone();
    let backend = backend(url, &queue).await;
    let published = std::time::Instant::now();
    backend
        .publish_with(
            &OrderPaid {
                run: run.clone(),
                amount_cents: 1,
            },
            |o| o.countdown(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    backend
        // Due after it expires: the worker postpones it, then finds it expired.
        .publish_with(&InvoiceDue { run: run.clone() }, |o| {
            o.countdown(Duration::from_secs(2))
                .expires_in(Duration::from_secs(1))
        })
        .await
        .unwrap();
    let worker = InProcessWorker::start(WorkerConfig::new(url).unwrap().queues([queue.clone()]));
    assert!(wait_for(&run, "send_receipt", 1).await);
    assert!(
        published.elapsed() >= Duration::from_secs(2),
        "ran before its eta"
    );
    let expired = eventually(Duration::from_secs(10), || async {
        (worker_expired(&worker) >= 1).then_some(())
    })
    .await;
    assert!(expired.is_some(), "the expired message was not discarded");
    let stats = worker.stop().await;
    let runs = runs_of(&run);
    assert!(
        !runs.contains_key("archive_invoice"),
        "the expired message ran: {runs:?}"
    );
    let snapshot: HashMap<_, _> = stats.snapshot().into_iter().collect();
    assert_eq!(snapshot["expired"], 1);
    assert!(snapshot["postponed"] >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_eta_and_expires() {
    eta_is_honoured_and_expired_messages_do_not_run(&redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_eta_and_expires() {
    eta_is_honoured_and_expired_messages_do_not_run(&amqp_url()).await;
}

async fn shutdown_finishes_running_messages_and_returns_the_rest(url: &str) -> String {
    let queue = unique_queue("worker_shutdown");
    let run = queue.clone();
    let backend = backend(url, &queue).await;
    for _ in 0..10 {
        backend
            .publish(&SlowReport { run: run.clone() })
            .await
            .unwrap();
    }
    let worker = InProcessWorker::start(
        WorkerConfig::new(url)
            .unwrap()
            .queues([queue.clone()])
            .concurrency(2)
            .prefetch(2)
            .redis_fetchers(2)
            .grace_period(Duration::from_secs(5)),
    );
    assert!(wait_for(&run, "build_report", 2).await);
    let stats = worker.stop().await;
    let done = runs_of(&run).get("build_report").copied().unwrap_or(0);
    assert!(
        done < 10,
        "everything ran before the stop; the test proves nothing"
    );
    let snapshot: HashMap<_, _> = stats.snapshot().into_iter().collect();
    assert_eq!(
        snapshot["processed"] as usize, done,
        "a started message was not finished"
    );
    // The rest is back in the queue: a second worker finishes it, and nothing is lost.
    let worker = InProcessWorker::start(
        WorkerConfig::new(url)
            .unwrap()
            .queues([queue.clone()])
            .concurrency(4),
    );
    assert!(
        wait_for(&run, "build_report", 10).await,
        "{:?}",
        runs_of(&run)
    );
    worker.stop().await;
    assert_eq!(runs_of(&run)["build_report"], 10, "a message ran twice");
    queue
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_graceful_shutdown_loses_nothing() {
    shutdown_finishes_running_messages_and_returns_the_rest(&redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_graceful_shutdown_loses_nothing() {
    let queue = shutdown_finishes_running_messages_and_returns_the_rest(&amqp_url()).await;
    let (_connection, channel) = amqp_channel().await;
    delete_amqp_queue(&channel, &queue).await;
}

/// A handler that never returns cannot keep the worker from stopping: after the grace period
/// the stop returns (`InProcessWorker::stop` panics past its limit), and the message, never
/// acknowledged, goes back to the queue, where the next worker runs it.
async fn a_hung_handler_does_not_hang_the_shutdown(url: &str) -> String {
    let queue = unique_queue("worker_hung");
    let run = queue.clone();
    let backend = backend(url, &queue).await;
    backend
        .publish(&StuckJob { run: run.clone() })
        .await
        .unwrap();
    let worker = InProcessWorker::start(
        WorkerConfig::new(url)
            .unwrap()
            .queues([queue.clone()])
            .redis_fetchers(1)
            .grace_period(Duration::from_secs(1)),
    );
    assert!(wait_for(&run, "hang_once.started", 1).await);
    let stats = worker.stop().await;
    let snapshot: HashMap<_, _> = stats.snapshot().into_iter().collect();
    assert_eq!(snapshot["processed"], 0, "the hung message was settled");
    let worker = InProcessWorker::start(WorkerConfig::new(url).unwrap().queues([queue.clone()]));
    assert!(
        wait_for(&run, "hang_once", 1).await,
        "the hung message was not returned to the queue: {:?}",
        runs_of(&run)
    );
    worker.stop().await;
    assert_eq!(runs_of(&run)["hang_once.started"], 2);
    queue
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_handler_does_not_hang_the_shutdown() {
    let queue = a_hung_handler_does_not_hang_the_shutdown(&redis_url()).await;
    tests::cleanup_redis_queue(&queue, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_hung_handler_does_not_hang_the_shutdown() {
    let queue = a_hung_handler_does_not_hang_the_shutdown(&amqp_url()).await;
    let (_connection, channel) = amqp_channel().await;
    delete_amqp_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dead_lettered_and_the_worker_keeps_going() {
    let url = redis_url();
    let queue = unique_queue("worker_bad");
    let run = queue.clone();
    let mut redis = redis().await;
    let good = backend(&url, &queue).await;
    let worker = InProcessWorker::start(WorkerConfig::new(&url).unwrap().queues([queue.clone()]));
    for bad in [
        "not json at all",
        "{\"body\": \"e30=\", \"content-type\": \"application/x-python-serialize\", \"content-encoding\": \"binary\", \"headers\": {\"task\": \"domain_events.worker.order_paid\", \"id\": \"1\"}, \"properties\": {\"body_encoding\": \"base64\", \"delivery_tag\": \"bad-1\"}}",
    ] {
        let _: () = redis.lpush(&queue, bad).await.unwrap();
    }
    good.publish(&OrderPaid {
        run: run.clone(),
        amount_cents: 5,
    })
    .await
    .unwrap();
    assert!(wait_for(&run, "send_receipt", 1).await);
    let letters: Vec<String> = eventually(Duration::from_secs(10), || {
        let mut redis = redis.clone();
        let key = format!("{queue}.dead_letter");
        async move {
            let letters: Vec<String> = redis.lrange(key, 0, -1).await.ok()?;
            (letters.len() == 2).then_some(letters)
        }
    })
    .await
    .expect("two dead letters");
    worker.stop().await;
    let reasons: Vec<String> = letters
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("application/x-python-serialize")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("undecodable")),
        "{reasons:?}"
    );
    let _: () = redis.del(format!("{queue}.dead_letter")).await.unwrap();
}

/// Awaited outside a tokio runtime (here: polled by hand, as another executor would), a
/// worker says what it needs instead of panicking with "there is no reactor running".
#[test]
fn a_worker_outside_tokio_is_an_error_not_a_panic() {
    use std::future::Future;
    let poll_once = |future: std::pin::Pin<&mut dyn Future<Output = _>>| {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.poll(&mut cx) {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => panic!("the worker started outside tokio"),
        }
    };
    for until in [false, true] {
        let worker = events_celery::Worker::new(WorkerConfig::new(&amqp_url()).unwrap()).unwrap();
        assert!(format!("{worker:?}").contains("Worker"));
        let result: Result<_, events_celery::CeleryError> = if until {
            poll_once(std::pin::pin!(worker.run_until(std::future::pending())))
        } else {
            poll_once(std::pin::pin!(worker.run()))
        };
        let error = result.expect_err("no runtime").to_string();
        assert!(error.contains("inside a tokio runtime"), "{error}");
        assert!(error.contains("#[tokio::main]"), "{error}");
    }
}
