//! A transactional outbox for `events-core` on PostgreSQL: domain events written in the same
//! transaction as the data they describe, and relayed to any [`events_core::Backend`] (Celery
//! on RabbitMQ or Redis, or in process) once that transaction committed.
//!
//! `events_core::publish` after a commit loses the event if the process dies, the broker is
//! down or the publish times out between the two; publishing before the commit announces a
//! change that may roll back. With the outbox:
//!
//! 1. [`publish_in`] writes the event into the outbox table **inside your transaction**: it
//!    commits with your rows, or rolls back with them.
//! 2. A [`Relay`] (in the same process or another) wakes at the commit (`LISTEN/NOTIFY`),
//!    publishes the event through the backend, and deletes the row once the broker confirmed
//!    it. A crash, a lost connection or a broker outage only delays it: every committed event
//!    is delivered at least once, with the same Celery task id every time (its row id).
//!
//! # Example
//!
//! ```rust,no_run,standalone_crate
//! use events_core::{MemoryBackend, domain_event, handler};
//! use events_outbox::{Outbox, Relay};
//!
//! #[domain_event(name = "orders.order_placed")]
//! struct OrderPlaced {
//!     order_id: i64,
//! }
//!
//! #[handler]
//! fn confirm(event: &OrderPlaced) {
//!     println!("order {} placed", event.order_id);
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
//!     let outbox = Outbox::default(); // public.events_outbox
//!     outbox.migrate(&pool).await?;
//!
//!     // The business row and its event commit together.
//!     let mut tx = pool.begin().await?;
//!     sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(7_i64).execute(&mut *tx).await?;
//!     events_outbox::publish_in(&mut tx, &OrderPlaced { order_id: 7 }).await?;
//!     tx.commit().await?;
//!
//!     // Delivered after the commit: here in process; with a `CeleryBackend`, to the broker.
//!     events_core::init(MemoryBackend::new())?;
//!     let relay = Relay::for_global_bus(outbox, pool)?;
//!     relay.run_until(tokio::signal::ctrl_c()).await;
//!     Ok(())
//! }
//! ```
//!
//! # The pieces
//!
//! - [`Outbox`]: one outbox table (default `public.events_outbox`, see [`OutboxConfig`]), its
//!   [migration](Outbox::migrate) ([SQL](Outbox::migration_sql)), and the write side:
//!   [`publish_in`](Outbox::publish_in), [`publish_in_with`](Outbox::publish_in_with)
//!   ([`OutboxOptions`]: ordering key, eta, expiry, priority, queue),
//!   [`publish_all_in`](Outbox::publish_all_in), [`publish_json_in`](Outbox::publish_json_in),
//!   [`insert_in`](Outbox::insert_in) ([`Entry`]); and the operations side:
//!   [`stats`](Outbox::stats), [`failed`](Outbox::failed),
//!   [`replay_failed`](Outbox::replay_failed).
//! - The free functions [`publish_in`], [`publish_all_in`] and [`publish_json_in`] write to
//!   the default outbox.
//! - [`Relay`]: delivers committed rows to a backend.
//!
//! - [`inbox::PgInbox`] (feature `inbox`, on by default): the Celery worker's inbox on
//!   PostgreSQL, with which a handler records its completion in its own transaction.
//!
//! All statements are checked at run time: building needs no database.

#![doc(html_root_url = "https://docs.rs/events-outbox/0.1.0")]

mod error;
#[cfg(feature = "inbox")]
pub mod inbox;
mod outbox;
mod relay;

pub use error::OutboxError;
pub use outbox::{
    Entry, FailedEvent, Outbox, OutboxConfig, OutboxOptions, OutboxStats, SCHEMA_VERSION,
};
pub use relay::{Relay, RelayReport, RelayStats};

use events_core::DomainEvent;
use sqlx::PgConnection;
use uuid::Uuid;

fn default_outbox() -> &'static Outbox {
    static DEFAULT: std::sync::OnceLock<Outbox> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(Outbox::default)
}

/// [`Outbox::publish_in`] on the default outbox, `public.events_outbox`.
pub async fn publish_in<E: DomainEvent>(
    conn: &mut PgConnection,
    event: &E,
) -> Result<Uuid, OutboxError> {
    default_outbox().publish_in(conn, event).await
}

/// [`Outbox::publish_all_in`] on the default outbox, `public.events_outbox`.
pub async fn publish_all_in<'e, E: DomainEvent>(
    conn: &mut PgConnection,
    events: impl IntoIterator<Item = &'e E>,
) -> Result<Vec<Uuid>, OutboxError> {
    default_outbox().publish_all_in(conn, events).await
}

/// [`Outbox::publish_json_in`] on the default outbox, `public.events_outbox`.
pub async fn publish_json_in(
    conn: &mut PgConnection,
    name: &str,
    payload: serde_json::Value,
) -> Result<Uuid, OutboxError> {
    default_outbox().publish_json_in(conn, name, payload).await
}
