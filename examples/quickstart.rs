//! Quickstart: two events, several handlers (one async, one that fails), on the in-memory
//! backend.
//!
//! Run with `cargo run -p examples --example quickstart`.

use events_core::{Error, MemoryBackend, domain_event, handler};

/// A product was added to the catalogue.
#[domain_event(name = "products.product_created")]
#[derive(Debug, Clone)]
struct ProductCreated {
    product_id: String,
    name: String,
    stock: u32,
}

/// An order was placed.
#[domain_event(name = "orders.order_placed")]
#[derive(Debug, Clone)]
struct OrderPlaced {
    order_id: u64,
    product_id: String,
    quantity: u32,
}

#[handler]
fn index_for_search(event: &ProductCreated) {
    println!(
        "  [search]    indexed {} ({})",
        event.name, event.product_id
    );
}

#[handler]
async fn notify_merchandising(event: &ProductCreated) {
    // An async handler: awaited by `publish(..).await`, never fire-and-forget.
    println!(
        "  [merch]     {} arrives with {} in stock",
        event.name, event.stock
    );
}

#[derive(Debug, thiserror::Error)]
#[error("payment provider rejected order {0}")]
struct PaymentRejected(u64);

#[handler]
fn charge_customer(event: &OrderPlaced) -> Result<(), PaymentRejected> {
    if event.quantity > 10 {
        println!("  [payments]  refusing order {}", event.order_id);
        return Err(PaymentRejected(event.order_id));
    }
    println!("  [payments]  charged order {}", event.order_id);
    Ok(())
}

#[handler]
fn reserve_stock(event: &OrderPlaced) {
    println!(
        "  [warehouse] reserved {} x {} for order {}",
        event.quantity, event.product_id, event.order_id
    );
}

// The examples' logging set-up, included rather than linked: linking the examples library
// would also link its shop events, whose names this file declares too.
#[path = "src/logging.rs"]
#[allow(unreachable_pub)]
mod logging;

fn main() -> Result<(), Error> {
    // `RUST_LOG` chooses what is logged (default: warnings); colour only on a terminal.
    logging::init("warn", None);

    events_core::init(MemoryBackend::new())?;

    let registry = events_core::bus()?.registry();
    println!("collected at link time:");
    for event in registry.events() {
        println!("  event {:<26} {}", event.name(), event.type_name());
        for handler in registry.handlers_of(event.name()) {
            let kind = if handler.is_async() { "async" } else { "sync" };
            println!(
                "    -> {:<34} {kind:<5} {}",
                handler.name(),
                handler.location()
            );
        }
    }

    println!("\npublish ProductCreated (async handler awaited):");
    let product = ProductCreated {
        product_id: "abc-123".into(),
        name: "Brake pad".into(),
        stock: 4,
    };
    let receipt = pollster::block_on(events_core::publish(&product))?;
    println!("  => {receipt:?}");

    println!("\npublish OrderPlaced without an async runtime:");
    let order = OrderPlaced {
        order_id: 1,
        product_id: "abc-123".into(),
        quantity: 2,
    };
    println!("  => {:?}", events_core::publish_blocking(&order)?);

    println!("\npublish an order that a handler refuses (the other handler still runs):");
    let big_order = OrderPlaced {
        order_id: 2,
        quantity: 50,
        ..order
    };
    match events_core::publish_blocking(&big_order) {
        Err(Error::Handlers(failures)) => {
            println!(
                "  => {} of {} handler(s) failed:",
                failures.failures().len(),
                failures.ran()
            );
            for failure in failures.failures() {
                println!("     {}: {}", failure.handler(), failure.chain());
            }
        }
        other => println!("  => unexpected: {other:?}"),
    }

    println!("\npublish by name with a JSON payload, as the seed's publish_event():");
    let payload = serde_json::json!({"order_id": 3, "product_id": "abc-123", "quantity": 1});
    println!(
        "  => {:?}",
        pollster::block_on(events_core::publish_json("orders.order_placed", payload))?
    );
    let typo = pollster::block_on(events_core::publish_json(
        "orders.order_place",
        serde_json::json!({}),
    ));
    println!("  a typo in the name: {}", typo.unwrap_err());
    Ok(())
}
