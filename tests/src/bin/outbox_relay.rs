//! An outbox relay process for the outbox tests (`tests/tests/outbox*.rs`): relays the
//! `outbox_test.tick` events of one outbox table to a Celery queue. Tests start two of them on
//! one table, `kill -9` them mid-batch, and count what reached the queue.
//!
//! Environment: `OUTBOX_PG_URL`, `OUTBOX_TABLE` (`schema.table`), `OUTBOX_BROKER_URL`,
//! `OUTBOX_QUEUE` (all required), `OUTBOX_BATCH` (rows per batch, default 256). Stops
//! gracefully on SIGTERM.

use events_celery::{CeleryBackend, CeleryConfig};
use events_outbox::{Outbox, OutboxConfig, Relay};
use sqlx::postgres::PgPoolOptions;

// The event type the relay decodes rows into.
#[allow(unused_imports, reason = "links the test event's registration")]
use tests::outbox::OutboxTick;

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("set {name}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let table = var("OUTBOX_TABLE")?;
    let (schema, table) = table
        .split_once('.')
        .ok_or("OUTBOX_TABLE is schema.table")?;
    let outbox = Outbox::new(OutboxConfig::new().schema(schema).table(table))?;
    let options = var("OUTBOX_PG_URL")?
        .parse::<sqlx::postgres::PgConnectOptions>()?
        .application_name(&format!("outbox_relay {schema}"));
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    let config = CeleryConfig::new(&var("OUTBOX_BROKER_URL")?)?.default_queue(var("OUTBOX_QUEUE")?);
    let batch = std::env::var("OUTBOX_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(256);
    let relay = Relay::new(outbox, pool, CeleryBackend::new(config)?).batch_size(batch);
    let stats = relay.stats();
    // Progress for the test's log.
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            eprintln!("outbox_relay: {:?}", stats.snapshot());
        }
    });
    let report = relay.run_until(events_celery::shutdown_signal()).await;
    eprintln!("outbox_relay stopped: {report:?}");
    Ok(())
}
