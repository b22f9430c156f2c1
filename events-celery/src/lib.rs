//! Celery backend and worker for `events-core`: typed domain events as Celery task messages
//! (protocol v2, JSON) over RabbitMQ and Redis, byte-compatible with Python Celery 5.
//!
//! Three things to do with it: publish events as Celery tasks, run a Rust worker for them, and
//! share both with Python Celery. One [`CeleryConfig`] (broker, queues, routes, task prefix,
//! priorities) serves the publisher and, through [`WorkerConfig::from_celery`], the worker.
//!
//! # Publish with [`CeleryBackend`]
//!
//! Each event becomes the task `domain_events.<event name>` with
//! `kwargs={"payload": <the event as JSON>}`. A publish resolves once the broker accepted the
//! message (RabbitMQ: the publisher confirm). Any executor, or none (`publish_blocking`).
//!
//! ```rust,no_run,standalone_crate
//! use std::time::Duration;
//!
//! use events_celery::{CeleryBackend, CeleryConfig, Route};
//! use events_core::domain_event;
//!
//! #[domain_event(name = "orders.order_placed")]
//! struct OrderPlaced {
//!     order_id: u64,
//! }
//!
//! #[tokio::main(flavor = "current_thread")] // tokio features `rt`, `macros`; any executor works
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Or `CeleryConfig::from_env()`: CELERY_BROKER_URL and the EVENTS_CELERY_* variables.
//!     let config = CeleryConfig::new("amqp://guest:guest@127.0.0.1:5672//")?
//!         .route("orders.order_placed", Route::queue("orders"));
//!     let backend = CeleryBackend::connect(config).await?; // fails here if unreachable
//!
//!     // Through the bus, as any backend…
//!     events_core::init(backend.clone())?;
//!     events_core::publish(&OrderPlaced { order_id: 1 }).await?;
//!     // …or on the backend, with Celery's per-message options.
//!     backend.publish(&OrderPlaced { order_id: 2 }).await?;
//!     backend
//!         .publish_with(&OrderPlaced { order_id: 3 }, |o| o.countdown(Duration::from_secs(60)))
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! # Run a [`Worker`]
//!
//! The worker runs **every** `#[handler]` of each event it receives (from Rust or from
//! Python's `send_task`), acknowledging after they finished; failures are retried per handler,
//! then dead-lettered. It needs tokio: features `rt-multi-thread` and `macros` for
//! `#[tokio::main]`. Handlers in another crate that nothing else references must be kept by
//! the linker with [`events_core::link!`].
//!
//! ```rust,no_run,standalone_crate
//! use std::time::Duration;
//!
//! use events_celery::{CeleryConfig, Worker, WorkerConfig};
//! use events_core::{domain_event, handler};
//!
//! // events_core::link!(billing_handlers); // a crate holding only handlers
//!
//! #[domain_event(name = "orders.order_placed")]
//! struct OrderPlaced {
//!     order_id: u64,
//! }
//!
//! #[handler]
//! fn send_confirmation(event: &OrderPlaced) {
//!     println!("confirming {}", event.order_id);
//! }
//!
//! #[handler(max_retries = 5, time_limit_ms = 30_000)]
//! async fn charge(event: &OrderPlaced) -> Result<(), std::io::Error> {
//!     let _ = event.order_id;
//!     Ok(())
//! }
//!
//! #[tokio::main] // tokio features `rt-multi-thread`, `macros`
//! async fn main() -> Result<(), events_celery::CeleryError> {
//!     let celery = CeleryConfig::from_env()?; // the publisher's configuration
//!     let config = WorkerConfig::from_celery(&celery).concurrency(8);
//!     let worker = Worker::new(config)?;
//!     // `worker.run()` stops on SIGINT/SIGTERM; `run_until` on any future:
//!     let stats = worker.run_until(tokio::time::sleep(Duration::from_secs(60))).await?;
//!     println!("{:?}", stats.snapshot());
//!     Ok(())
//! }
//! ```
//!
//! # The Python side
//!
//! Python Celery runs what Rust publishes with a task per event, taking one `payload`
//! argument, in an app that speaks JSON (`examples/python/domain_events_app.py`):
//!
//! ```python
//! app = Celery("shop", broker="amqp://guest:guest@127.0.0.1:5672//")
//! app.conf.update(task_serializer="json", accept_content=["json"])
//!
//! @app.task(name="domain_events.orders.order_placed")
//! def order_placed(payload):
//!     print(payload["order_id"])
//!
//! # And Python publishing to the Rust worker:
//! app.send_task("domain_events.orders.order_placed", kwargs={"payload": {"order_id": 7}})
//! ```
//!
//! The message either side writes is the one the other reads; the codec shows it without a
//! broker:
//!
//! ```rust,standalone_crate
//! use events_celery::codec::{DecodeOptions, EncodeOptions, TaskMessage};
//! use events_celery::CeleryConfig;
//! use events_core::domain_event;
//!
//! #[domain_event(name = "orders.order_placed")]
//! #[derive(Debug, PartialEq)]
//! struct OrderPlaced {
//!     order_id: u64,
//! }
//!
//! // What `CeleryBackend::publish` sends: the task Python registers, kwargs={"payload": …}.
//! let config = CeleryConfig::new("redis://127.0.0.1:6379/0")?;
//! let options = config.encode_options("orders.order_placed");
//! let message = TaskMessage::from_event(&OrderPlaced { order_id: 7 }, &options)?;
//! assert_eq!(message.task, "domain_events.orders.order_placed");
//! assert_eq!(message.kwargs["payload"], serde_json::json!({"order_id": 7}));
//!
//! // What the worker does with Python's `send_task` message (here: the same bytes).
//! let redis = message.to_redis()?;
//! let decoded = TaskMessage::decode_redis(redis.envelope.as_bytes(), &DecodeOptions::new())?;
//! assert_eq!(decoded.event_name(config.prefix()), Some("orders.order_placed"));
//! assert_eq!(decoded.payload::<OrderPlaced>()?, OrderPlaced { order_id: 7 });
//! # let _ = EncodeOptions::new();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Run a Python worker with `celery -A domain_events_app worker -Q celery`; see the README's
//! "Publishing to Celery" and "Running a worker" for the commands on both brokers.

pub mod codec;

pub use codec::{
    AmqpMessage, Compression, DecodeError, DecodeOptions, DeliveryMode, EncodeError, EncodeOptions,
    KwargsRepr, PayloadError, RedisMessage, TaskMessage,
};

mod backend;
mod backoff;
mod broker;
mod config;
mod error;
mod quiet;
mod registration;
mod stopping;
mod worker;

pub use backend::CeleryBackend;
pub use broker::{BrokerKind, BrokerUrl};
pub use config::{CeleryConfig, Route, env};
pub use error::CeleryError;
pub use worker::{
    DEAD_LETTER_SUFFIX, DEFAULT_DEAD_LETTER_MAX_LEN, DEFAULT_EVENT_QUEUE_CAPACITY, HEARTBEAT,
    HandlerFailed, PENDING_HANDLERS_HEADER, RetryPolicy, Worker, WorkerConfig, WorkerEvent,
    WorkerObserver, WorkerStats, replay_dead_letters, shutdown_signal,
};
pub use worker::{DEFAULT_INBOX_PREFIX, DEFAULT_INBOX_RETENTION, RedisInbox};
