//! The README's Python command for the example worker (`send_events.py --cases shop`) sends
//! the events `examples/celery_worker.rs` declares, in shapes its Rust types read: a Rust
//! worker with handlers on those types runs every one, with exactly the values sent, and
//! dead-letters none — on Redis and on RabbitMQ.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use events_celery::WorkerConfig;
use events_core::handler;
use examples::shop::{OrderCancelled, OrderPlaced, ProductCreated};
use tests::{
    InProcessWorker, amqp_channel, amqp_url, cleanup_amqp_queue, cleanup_redis_queue, eventually,
    redis_url, send_events_py, unique_queue,
};

/// What the handlers saw, as text, with the queue's worker's broker URL to tell the tests apart.
static SEEN: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn record(line: String) {
    let broker = CURRENT.lock().unwrap().clone();
    SEEN.lock().unwrap().push((broker, line));
}

/// The broker whose test is running (the two tests take turns, see `SERIAL`).
static CURRENT: Mutex<String> = Mutex::new(String::new());
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[handler]
fn product_created(event: &ProductCreated) {
    record(format!(
        "product {} {:?} {}",
        event.product_id, event.name, event.stock
    ));
}

#[handler]
fn order_placed(event: &OrderPlaced) {
    let lines: Vec<String> = event
        .lines
        .iter()
        .map(|l| format!("{}x{}@{}", l.quantity, l.product_id, l.unit_price_cents))
        .collect();
    record(format!(
        "order {} {:?} {:?} {:?}",
        event.order_id, event.customer, lines, event.coupon
    ));
}

#[handler]
fn order_cancelled(event: &OrderCancelled) {
    record(match event {
        OrderCancelled::ByCustomer { order_id, reason } => {
            format!("cancelled {order_id} by customer: {reason}")
        }
        OrderCancelled::OutOfStock(order_id) => format!("cancelled {order_id}: out of stock"),
    });
}

fn seen(broker: &str) -> Vec<String> {
    let mut lines: Vec<String> = SEEN
        .lock()
        .unwrap()
        .iter()
        .filter(|(b, _)| b == broker)
        .map(|(_, line)| line.clone())
        .collect();
    lines.sort();
    lines
}

async fn python_feeds_the_example_worker(url: &str) {
    let _serial = SERIAL.lock().await;
    *CURRENT.lock().unwrap() = url.to_owned();
    let queue = unique_queue("example_feed");
    let worker = InProcessWorker::start(WorkerConfig::new(url).unwrap().queues([queue.clone()]));
    if url.starts_with("amqp") {
        // Python publishes to the queue's exchange; wait until the worker has declared it.
        // (A passive declare of a missing queue closes its channel: one channel per try.)
        let (connection, _channel) = amqp_channel().await;
        let declared = eventually(Duration::from_secs(20), || {
            let channel = connection.create_channel();
            let queue = queue.clone();
            async move {
                let channel = channel.await.ok()?;
                let passive = lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                channel
                    .queue_declare(queue.as_str().into(), passive, Default::default())
                    .await
                    .ok()
            }
        })
        .await;
        assert!(declared.is_some(), "the worker did not declare `{queue}`");
    }
    let output = send_events_py(["--broker", url, "--queue", &queue, "--cases", "shop"]).await;
    let sent = output.lines().count();
    assert_eq!(sent, 4, "{output}");
    let done = eventually(Duration::from_secs(20), || async {
        (seen(url).len() >= 4).then_some(())
    })
    .await;
    let stats = worker.stop().await;
    assert!(
        done.is_some(),
        "{url}: the handlers saw {:?}; worker {:?}",
        seen(url),
        stats.snapshot()
    );
    assert_eq!(
        seen(url),
        [
            "cancelled 1001 by customer: changed my mind",
            "cancelled 1002: out of stock",
            r#"order 1001 "Zoë Ångström 🚗" ["2xabc-123@1999"] None"#,
            r#"product abc-123 "Brake pad" 4"#,
        ],
        "{url}"
    );
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0, "{url}");
    assert_eq!(stats.succeeded.load(Ordering::Relaxed), 4, "{url}");
    if url.starts_with("amqp") {
        cleanup_amqp_queue(&queue).await;
        cleanup_amqp_queue(&format!("{queue}.dead_letter")).await;
    } else {
        cleanup_redis_queue(&queue, &[]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_feeds_the_example_worker_redis() {
    python_feeds_the_example_worker(&redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_feeds_the_example_worker_rabbitmq() {
    python_feeds_the_example_worker(&amqp_url()).await;
}
