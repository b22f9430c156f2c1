//! The Celery backend's and worker's public API on real brokers: one `CeleryConfig` sets up
//! both the publisher and the worker; the backend's typed `publish`, `publish_blocking`,
//! `publish_with_blocking` and `send(message)` (the task taken from the message).

use std::sync::Mutex;
use std::time::Duration;

use events_celery::codec::{DecodeOptions, TaskMessage};
use events_celery::{CeleryBackend, CeleryConfig, CeleryError, Route, WorkerConfig};
use events_core::{Receipt, domain_event, handler};
use redis::AsyncCommands;
use tests::{
    InProcessWorker, amqp_url, cleanup_amqp_queue, cleanup_redis_queue, eventually, redis,
    redis_url, unique_queue,
};

#[domain_event(name = "api.label_printed")]
#[derive(Debug, Clone, PartialEq)]
struct LabelPrinted {
    run: String,
    copies: u32,
}

#[domain_event(name = "api.invoice_due")]
#[derive(Debug, Clone, PartialEq)]
struct InvoiceDue {
    run: String,
}

/// What the handlers saw: (event, run, detail).
static SEEN: Mutex<Vec<(&'static str, String, u32)>> = Mutex::new(Vec::new());

#[handler]
fn print_label(event: &LabelPrinted) {
    SEEN.lock()
        .unwrap()
        .push(("label", event.run.clone(), event.copies));
}

#[handler]
fn remind(event: &InvoiceDue) {
    SEEN.lock().unwrap().push(("invoice", event.run.clone(), 0));
}

fn seen(run: &str) -> Vec<(&'static str, u32)> {
    let mut seen: Vec<_> = SEEN
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, r, _)| r == run)
        .map(|(e, _, n)| (*e, *n))
        .collect();
    seen.sort_unstable();
    seen
}

/// One configuration — a custom task prefix, a default queue, a routed queue and (RabbitMQ)
/// `x-max-priority` — shared by the publisher and the worker: every event reaches its handler.
/// With `WorkerConfig::new(url)` instead, the worker would look for `domain_events.` tasks on
/// `celery` only, and on RabbitMQ its queue declaration would clash with the publisher's
/// `x-max-priority`.
async fn one_config_for_publisher_and_worker(url: &str) {
    let default_queue = unique_queue("api_default");
    let billing = unique_queue("api_billing");
    let run = default_queue.clone();
    let mut celery = CeleryConfig::new(url)
        .unwrap()
        .task_prefix("shop.")
        .default_queue(&default_queue)
        .route("api.invoice_due", Route::queue(&billing))
        .publish_timeout(Duration::from_secs(5));
    if url.starts_with("amqp") {
        celery = celery.queue_max_priority(10);
    }
    let worker_config = WorkerConfig::from_celery(&celery);
    assert_eq!(
        worker_config.queue_names(),
        [default_queue.clone(), billing.clone()]
    );
    let backend = CeleryBackend::connect(celery).await.unwrap();
    let receipt = backend
        .publish(&LabelPrinted {
            run: run.clone(),
            copies: 3,
        })
        .await
        .unwrap();
    assert!(
        matches!(&receipt, Receipt::Enqueued { event: "api.label_printed", queue, .. } if *queue == default_queue),
        "{receipt:?}"
    );
    let receipt = backend
        .publish(&InvoiceDue { run: run.clone() })
        .await
        .unwrap();
    assert!(
        matches!(&receipt, Receipt::Enqueued { event: "api.invoice_due", queue, .. } if *queue == billing),
        "{receipt:?}"
    );

    let worker = InProcessWorker::start(worker_config);
    let done = eventually(Duration::from_secs(20), || async {
        (seen(&run).len() >= 2).then_some(())
    })
    .await;
    let stats = worker.stop().await;
    assert!(done.is_some(), "{url}: handlers saw {:?}", seen(&run));
    assert_eq!(seen(&run), [("invoice", 0), ("label", 3)], "{url}");
    assert_eq!(
        stats
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "{url}"
    );
    for queue in [&default_queue, &billing] {
        if url.starts_with("amqp") {
            cleanup_amqp_queue(queue).await;
            cleanup_amqp_queue(&format!("{queue}.dead_letter")).await;
        } else {
            cleanup_redis_queue(queue, &[]).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_config_for_publisher_and_worker_redis() {
    one_config_for_publisher_and_worker(&redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_config_for_publisher_and_worker_rabbitmq() {
    one_config_for_publisher_and_worker(&amqp_url()).await;
}

/// The blocking forms and `send(message)` put the messages the codec writes onto Redis, and
/// `send` routes and names the receipt from the message's own task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_publishes_and_send_take_everything_from_their_arguments() {
    let queue = unique_queue("api_send");
    let backend = CeleryBackend::connect(
        CeleryConfig::new(&redis_url())
            .unwrap()
            .default_queue(&queue),
    )
    .await
    .unwrap();
    let event = LabelPrinted {
        run: queue.clone(),
        copies: 1,
    };
    let (blocking, with_options) = tokio::task::spawn_blocking({
        let (backend, event) = (backend.clone(), event.clone());
        move || {
            (
                backend.publish_blocking(&event).unwrap(),
                backend
                    .publish_with_blocking(&event, |o| o.task_id("api-fixed-id"))
                    .unwrap(),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(blocking.event(), "api.label_printed");
    assert!(
        matches!(&with_options, Receipt::Enqueued { task_id, .. } if task_id == "api-fixed-id"),
        "{with_options:?}"
    );

    // A message built by hand: the task names the event; the receipt and the route follow.
    let options = backend
        .config()
        .encode_options("api.label_printed")
        .task_id("api-sent-id");
    let message = TaskMessage::from_payload(
        "api.label_printed",
        serde_json::json!({"run": queue, "copies": 2}),
        &options,
    )
    .unwrap();
    let receipt = backend.send(message).await.unwrap();
    assert_eq!(
        receipt,
        Receipt::Enqueued {
            event: "api.label_printed",
            task_id: "api-sent-id".into(),
            queue: queue.clone(),
        }
    );
    // An event no type declares here (a task only Python runs) is sent too, and named.
    let options = backend.config().encode_options("python_only.audit");
    let message =
        TaskMessage::from_payload("python_only.audit", serde_json::json!({}), &options).unwrap();
    let receipt = tokio::task::spawn_blocking({
        let backend = backend.clone();
        move || backend.send_blocking(message)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(receipt.event(), "python_only.audit");

    let mut redis = redis().await;
    let mut tasks = Vec::new();
    while let Some(raw) = redis
        .rpop::<_, Option<Vec<u8>>>(&queue, None)
        .await
        .unwrap()
    {
        let message = TaskMessage::decode_redis(&raw, &DecodeOptions::new()).unwrap();
        tasks.push((message.task, message.id));
    }
    assert_eq!(tasks.len(), 4, "{tasks:?}");
    assert_eq!(
        tasks[1],
        (
            "domain_events.api.label_printed".into(),
            "api-fixed-id".into()
        )
    );
    assert_eq!(
        tasks[2],
        (
            "domain_events.api.label_printed".into(),
            "api-sent-id".into()
        )
    );
    assert_eq!(tasks[3].0, "domain_events.python_only.audit");

    // A task outside the configured prefix is refused, saying why and what to do.
    let foreign = TaskMessage::from_payload(
        "x",
        serde_json::json!({}),
        &events_celery::EncodeOptions::new().task_prefix("other."),
    )
    .unwrap();
    let err = backend.send(foreign).await.unwrap_err();
    assert!(matches!(err, CeleryError::UnsendableTask { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("`other.x`") && text.contains("`domain_events.`"),
        "{text}"
    );
    cleanup_redis_queue(&queue, &[]).await;
}
