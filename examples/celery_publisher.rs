//! Publishes a few domain events as Celery tasks, for the Python Celery app in
//! `examples/python/domain_events_app.py` (or the Rust worker) to run.
//!
//! ```sh
//! # RabbitMQ (the default broker)
//! cargo run -p examples --example celery_publisher
//! # Redis
//! CELERY_BROKER_URL=redis://127.0.0.1:6379/0 cargo run -p examples --example celery_publisher
//! ```
//!
//! The README's "Publishing to Celery" section has the commands for the Python worker.

use std::time::Duration;

use events_celery::{CeleryBackend, CeleryConfig};
use examples::shop::{OrderCancelled, OrderLine, OrderPlaced, ProductCreated};

const DEFAULT_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672//";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    examples::logging::init("warn", None);
    let url = std::env::var("CELERY_BROKER_URL").unwrap_or_else(|_| DEFAULT_BROKER.to_owned());
    // The other EVENTS_CELERY_* variables (queue, routes, priority…) apply too.
    let backend = CeleryBackend::connect(CeleryConfig::from_env_with_broker(&url)?).await?;
    println!("publishing to {}", backend.config().broker());
    events_core::init(backend.clone())?;

    let receipt = events_core::publish(&ProductCreated {
        product_id: "abc-123".into(),
        name: "Brake pad".into(),
        stock: 4,
    })
    .await?;
    println!("  {receipt:?}");

    let receipt = events_core::publish(&OrderPlaced {
        order_id: 1001,
        customer: "Zoë Ångström 🚗".into(),
        lines: vec![OrderLine {
            product_id: "abc-123".into(),
            quantity: 2,
            unit_price_cents: 1999,
        }],
        coupon: None,
    })
    .await?;
    println!("  {receipt:?}");

    let receipt = events_core::publish(&OrderCancelled::ByCustomer {
        order_id: 1001,
        reason: "changed my mind".into(),
    })
    .await?;
    println!("  {receipt:?}");

    // Per-message Celery options go through the backend itself.
    let receipt = backend
        .publish_with(&OrderCancelled::OutOfStock(1002), |o| {
            o.countdown(Duration::from_secs(5))
                .expires_in(Duration::from_secs(3600))
        })
        .await?;
    println!("  {receipt:?} (runs in 5 s)");
    Ok(())
}
