//! A Rust Celery worker for the shop's events: consumes what `celery_publisher` (or Python's
//! `send_task("domain_events.<event>", kwargs={"payload": …})`) sends and runs every handler.
//!
//! ```sh
//! # RabbitMQ (the default broker), queue `celery`
//! cargo run -p examples --example celery_worker
//! # Redis, two queues, 8 messages at once
//! CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \
//!     cargo run -p examples --example celery_worker -- --queue celery --queue default --concurrency 8
//! # Move up to 100 dead letters of `celery` back onto it, then exit
//! cargo run -p examples --example celery_worker -- --replay-dead-letters 100
//! ```
//!
//! Feed it from Python Celery (`send_task`, the shop's three events, as the Rust types here
//! declare them):
//!
//! ```sh
//! .venv/bin/python examples/python/send_events.py --broker amqp://guest:guest@127.0.0.1:5672// \
//!     --queue celery --cases shop
//! ```
//!
//! Without `--queue`, it consumes what the publisher's configuration sends to: the default
//! queue (`EVENTS_CELERY_DEFAULT_QUEUE`, `celery`) and every queue in `EVENTS_CELERY_ROUTES`.
//!
//! Logging: `RUST_LOG` (`RUST_LOG=debug`, `RUST_LOG=warn,events_celery=debug`) or
//! `--loglevel <level>` (Celery's flag); default `info`. Colour only on a terminal.
//!
//! Stop it with Ctrl-C or SIGTERM: it finishes the running messages (grace period 30 s) and
//! returns the rest to the queue.

use std::time::Duration;

use examples::logging;

use events_celery::{CeleryConfig, Worker, WorkerConfig, replay_dead_letters};
use events_core::handler;
use examples::shop::{OrderCancelled, OrderPlaced, ProductCreated};

#[handler]
fn index_product(event: &ProductCreated) {
    tracing::info!(product = %event.product_id, name = %event.name, "indexed for search");
}

#[handler]
async fn reserve_stock(event: &OrderPlaced) {
    for line in &event.lines {
        tracing::info!(order = event.order_id, product = %line.product_id, quantity = line.quantity, "reserved");
    }
}

#[handler(max_retries = 5)]
fn charge_customer(event: &OrderPlaced) -> Result<(), PaymentDeclined> {
    let total: u64 = event
        .lines
        .iter()
        .map(|l| l.unit_price_cents * u64::from(l.quantity))
        .sum();
    if event.coupon.as_deref() == Some("DECLINE") {
        return Err(PaymentDeclined(event.order_id));
    }
    tracing::info!(order = event.order_id, customer = %event.customer, total_cents = total, "charged");
    Ok(())
}

#[handler]
fn release_stock(event: &OrderCancelled) {
    match event {
        OrderCancelled::ByCustomer { order_id, reason } => {
            tracing::info!(order = order_id, reason = %reason, "cancelled by the customer");
        }
        OrderCancelled::OutOfStock(order_id) => {
            tracing::info!(order = order_id, "cancelled: out of stock");
        }
    }
}

/// The payment provider declined an order.
#[derive(Debug, thiserror::Error)]
#[error("the payment provider declined order {0}")]
struct PaymentDeclined(u64);

const DEFAULT_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672//";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let loglevel = argv
        .iter()
        .position(|a| a == "--loglevel" || a == "-l")
        .and_then(|i| argv.get(i + 1))
        .map(String::as_str);
    logging::init("info", loglevel);
    let url = std::env::var("CELERY_BROKER_URL").unwrap_or_else(|_| DEFAULT_BROKER.to_owned());
    let mut queues = Vec::new();
    // The publisher's configuration (EVENTS_CELERY_DEFAULT_QUEUE, _ROUTES, _TASK_PREFIX,
    // _QUEUE_MAX_PRIORITY…), so the worker consumes what `celery_publisher` sends.
    let mut config = WorkerConfig::from_celery(&CeleryConfig::from_env_with_broker(&url)?);
    let mut replay = None;
    let mut args = argv.clone().into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--queue" | "-Q" => queues.push(value()?),
            "--concurrency" | "-c" => config = config.concurrency(value()?.parse()?),
            "--prefetch" => config = config.prefetch(value()?.parse()?),
            "--visibility-timeout" => {
                config = config.visibility_timeout(Duration::from_secs(value()?.parse()?));
            }
            "--grace-period" => {
                config = config.grace_period(Duration::from_secs(value()?.parse()?))
            }
            "--replay-dead-letters" => replay = Some(value()?.parse::<usize>()?),
            "--loglevel" | "-l" => drop(value()?),
            other => {
                return Err(format!("unknown argument `{other}`; see the file's header").into());
            }
        }
    }
    if !queues.is_empty() {
        config = config.queues(queues);
    }
    if let Some(limit) = replay {
        for queue in config.queue_names() {
            let moved = replay_dead_letters(&url, queue, limit).await?;
            println!("replayed {moved} dead letter(s) onto `{queue}`");
        }
        return Ok(());
    }
    let stats = Worker::new(config)?.run().await?;
    println!("stopped: {:?}", stats.snapshot());
    Ok(())
}
