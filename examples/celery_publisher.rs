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
use events_core::domain_event;

/// A product was added to the catalogue.
#[domain_event(name = "products.product_created")]
#[derive(Debug, Clone)]
struct ProductCreated {
    product_id: String,
    name: String,
    stock: u32,
}

/// One line of an order.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct OrderLine {
    product_id: String,
    quantity: u32,
    unit_price_cents: u64,
}

/// An order was placed.
#[domain_event(name = "orders.order_placed")]
#[derive(Debug, Clone)]
struct OrderPlaced {
    order_id: u64,
    customer: String,
    lines: Vec<OrderLine>,
    coupon: Option<String>,
}

/// An order was cancelled.
#[domain_event(name = "orders.order_cancelled")]
#[derive(Debug, Clone)]
enum OrderCancelled {
    ByCustomer { order_id: u64, reason: String },
    OutOfStock(u64),
}

const DEFAULT_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672//";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("CELERY_BROKER_URL").unwrap_or_else(|_| DEFAULT_BROKER.to_owned());
    // The other EVENTS_CELERY_* variables (queue, routes, priority…) apply too.
    let backend = CeleryBackend::connect(CeleryConfig::from_env(Some(&url))?).await?;
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
