//! PostgreSQL for events-core: domain events committed with the data they describe (the
//! outbox), and handled once per handler (the inbox).
//!
//! This crate holds, behind the `inbox` feature, [`inbox::PgInbox`]: the Celery worker's inbox
//! on PostgreSQL, with which a handler records its completion in its own transaction.

#![doc(html_root_url = "https://docs.rs/events-outbox/0.1.0")]

#[cfg(feature = "inbox")]
pub mod inbox;
