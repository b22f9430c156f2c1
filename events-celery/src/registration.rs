//! The Celery backend's entry in the public backend registry (`events_core::backends`): kind
//! `celery`, selected by `init_from("celery")` or a broker URL (`amqp://`, `amqps://`,
//! `redis://`, `rediss://`).

use events_core::{Backend, BackendKind, Error};

use crate::{CeleryBackend, CeleryConfig};

impl CeleryBackend {
    /// The Celery backend's kind, `celery` ([`Backend::kind`]).
    pub const KIND: BackendKind = BackendKind::new("celery");
}

/// Builds the backend from `celery` (the broker URL from `CELERY_BROKER_URL`) or a broker URL.
fn build_from_config(text: &str) -> Result<Box<dyn Backend>, Error> {
    let config = if text.eq_ignore_ascii_case("celery") {
        CeleryConfig::from_env()?
    } else {
        CeleryConfig::from_env_with_broker(text)?
    };
    Ok(Box::new(CeleryBackend::new(config)?))
}

events_core::register_backend! {
    name: "celery",
    schemes: ["amqp", "amqps", "redis", "rediss"],
    description: "Celery task messages on RabbitMQ or Redis (`CeleryBackend`)",
    build: build_from_config,
}
