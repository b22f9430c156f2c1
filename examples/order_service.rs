//! An order service with a transactional outbox: each order row and its `orders.order_placed`
//! event commit in one PostgreSQL transaction; a relay delivers the events once committed.
//!
//! ```sh
//! # In one process, on the memory backend: place orders (one rolled back), relay them to the
//! # in-process handlers, exit.
//! cargo run -p examples --example order_service -- demo
//!
//! # With Celery (CELERY_BROKER_URL, default RabbitMQ on 127.0.0.1), in three terminals:
//! cargo run -p examples --example order_service -- worker   # the Rust worker runs the handler
//! cargo run -p examples --example order_service -- relay    # outbox → broker, until Ctrl-C
//! cargo run -p examples --example order_service -- place 10 # ten orders, ten events
//! # (or Python's worker: `celery -A domain_events_app worker -Q celery` in examples/python)
//!
//! # Operations: what waits and what failed, and replaying the failed events.
//! cargo run -p examples --example order_service -- stats
//! cargo run -p examples --example order_service -- failed
//! cargo run -p examples --example order_service -- replay-failed
//!
//! # The schema, to run with psql instead of letting the service migrate.
//! cargo run -p examples --example order_service -- sql
//! ```
//!
//! PostgreSQL: `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`). The orders
//! live in the schema `order_service`, the outbox in `order_service.outbox`.

use std::sync::Arc;
use std::time::Duration;

use events_celery::{CeleryBackend, CeleryConfig, Worker, WorkerConfig};
use events_core::{EventBus, MemoryBackend, handler};
use events_outbox::{Outbox, OutboxConfig, Relay};
use examples::logging;
use examples::shop::{OrderLine, OrderPlaced};
use sqlx::PgPool;

#[handler]
fn confirm_order(event: &OrderPlaced) {
    println!(
        "order {} placed by {} ({} line(s)): sending the confirmation",
        event.order_id,
        event.customer,
        event.lines.len()
    );
}

fn outbox() -> Outbox {
    Outbox::new(OutboxConfig::new().schema("order_service").table("outbox")).expect("valid names")
}

async fn connect() -> Result<PgPool, Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = PgPool::connect(&url).await?;
    // The outbox's migration creates the schema; the orders table is the service's own.
    outbox().migrate(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS order_service.orders (id bigserial PRIMARY KEY, \
         customer text NOT NULL, total_cents bigint NOT NULL, \
         placed_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    Ok(pool)
}

/// Places an order: the order row and its event in one transaction. Nothing is published
/// here: if the transaction rolls back, no event exists; once it commits, the relay delivers.
async fn place_order(
    pool: &PgPool,
    customer: &str,
    lines: Vec<OrderLine>,
    commit: bool,
) -> Result<u64, Box<dyn std::error::Error>> {
    let total: u64 = lines
        .iter()
        .map(|l| l.unit_price_cents * u64::from(l.quantity))
        .sum();
    let mut tx = pool.begin().await?;
    let order_id: i64 = sqlx::query_scalar(
        "INSERT INTO order_service.orders (customer, total_cents) VALUES ($1, $2) RETURNING id",
    )
    .bind(customer)
    .bind(i64::try_from(total)?)
    .fetch_one(&mut *tx)
    .await?;
    let event = OrderPlaced {
        order_id: u64::try_from(order_id)?,
        customer: customer.to_owned(),
        lines,
        coupon: None,
    };
    outbox().publish_in(&mut tx, &event).await?;
    if commit {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(event.order_id)
}

fn lines(n: u32) -> Vec<OrderLine> {
    vec![OrderLine {
        product_id: format!("sku-{n}"),
        quantity: n % 3 + 1,
        unit_price_cents: 1250,
    }]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    logging::init("info", None);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map_or("demo", String::as_str);
    match command {
        "demo" => {
            let pool = connect().await?;
            let committed = place_order(&pool, "ada", lines(1), true).await?;
            let rolled_back = place_order(&pool, "bob", lines(2), false).await?;
            println!("placed order {committed}; order {rolled_back} rolled back (no event)");
            // The same relay, in process: the #[handler]s run after the commit.
            let bus = EventBus::new(MemoryBackend::new())?;
            let relay = Relay::for_bus(outbox(), pool, Arc::new(bus));
            let delivered = relay.drain().await?;
            println!("relayed {delivered} event(s)");
        }
        "place" => {
            let pool = connect().await?;
            let n: u32 = args.get(1).map_or(Ok(1), |n| n.parse())?;
            for i in 0..n {
                let id = place_order(&pool, &format!("customer-{i}"), lines(i), true).await?;
                println!("placed order {id}");
            }
        }
        "relay" => {
            let pool = connect().await?;
            let backend = CeleryBackend::new(CeleryConfig::from_env()?)?;
            let relay = Relay::new(outbox(), pool, backend);
            let report = relay.run_until(events_celery::shutdown_signal()).await;
            println!("relay stopped: {report:?}");
        }
        "worker" => {
            let config = WorkerConfig::from_celery(&CeleryConfig::from_env()?);
            let stats = Worker::new(config)?.run().await?;
            println!("worker stopped: {:?}", stats.snapshot());
        }
        "stats" => {
            let pool = connect().await?;
            let stats = outbox().stats(&mut *pool.acquire().await?).await?;
            println!("{stats:?}");
        }
        "failed" => {
            let pool = connect().await?;
            for failed in outbox().failed(&mut *pool.acquire().await?, 100).await? {
                println!(
                    "{} {} after {} attempt(s): {}",
                    failed.id, failed.event, failed.attempts, failed.error
                );
            }
        }
        "replay-failed" => {
            let pool = connect().await?;
            let n = outbox().replay_failed(&mut *pool.acquire().await?).await?;
            println!("{n} failed event(s) back to pending");
        }
        "sql" => print!("{}", outbox().migration_sql()),
        other => {
            return Err(format!(
                "unknown command `{other}`: demo, place N, relay, worker, stats, failed, \
                 replay-failed, sql"
            )
            .into());
        }
    }
    // Give the Celery backend's I/O thread a moment to log its last lines.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
