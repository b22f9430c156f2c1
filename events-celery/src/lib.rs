//! Celery backend and worker for `events-core`: typed domain events as Celery task messages
//! (protocol v2, JSON) over RabbitMQ and Redis, byte-compatible with Python Celery 5.
//!
//! # Example
//!
//! ```
//! use events_celery::codec::{DecodeOptions, EncodeOptions, TaskMessage};
//! use serde_json::json;
//!
//! // What the backend does with an event (here given as its name and JSON payload)…
//! let payload = json!({"product_id": "abc-123", "name": "Brake pad", "stock": 4});
//! let options = EncodeOptions::new().queue("default").priority(5);
//! let message = TaskMessage::from_payload("products.product_created", payload, &options)?;
//! let redis = message.to_redis()?;
//! assert_eq!(redis.key, "default\x06\x163");
//!
//! // …and what a worker does with what it pops.
//! let decoded = TaskMessage::decode_redis(redis.envelope.as_bytes(), &DecodeOptions::new())?;
//! assert_eq!(decoded.task, "domain_events.products.product_created");
//! assert_eq!(decoded.event_name("domain_events."), Some("products.product_created"));
//! assert_eq!(decoded.payload_value(), message.payload_value());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod codec;

pub use codec::{
    AmqpMessage, Compression, DecodeError, DecodeOptions, DeliveryMode, EncodeError, EncodeOptions,
    KwargsRepr, PayloadError, RedisMessage, TaskMessage,
};

mod backend;
mod broker;
mod config;
mod error;
mod worker;

pub use backend::CeleryBackend;
pub use broker::{BrokerKind, BrokerUrl};
pub use config::{CeleryConfig, Route, env};
pub use error::CeleryError;
pub use worker::{
    DEAD_LETTER_SUFFIX, DEFAULT_DEAD_LETTER_MAX_LEN, PENDING_HANDLERS_HEADER, RetryPolicy, Worker,
    WorkerConfig, WorkerStats, replay_dead_letters, shutdown_signal,
};
