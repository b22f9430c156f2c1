//! The dead-letter destinations, what a dead letter records, and replaying them.
//!
//! Each consumed queue `q` has one: on RabbitMQ the durable queue `q.dead_letter`, holding the
//! message with its original properties plus `x-dead-letter-*` headers; on Redis the list
//! `q.dead_letter`, holding JSON records
//! `{"reason", "handler", "queue", "failed_at", "worker", "task", "id", "envelope"}` where
//! `envelope` is the kombu envelope to push back; `task` and `id` come from the decoded
//! message or, when it could not be decoded (a refused content type, a bad body), from the
//! envelope's `headers` when they hold them as strings. A Redis list holds at most
//! [`WorkerConfig::dead_letter_max_len`](super::WorkerConfig::dead_letter_max_len) records:
//! past that, new dead letters are dropped and counted. A dead letter for a handler that exhausted
//! its retries holds a message for that handler alone, with its retry count reset, so replaying
//! it runs just that handler again.

use crate::broker::{AnyTransport, BrokerUrl, Transport};
use crate::error::CeleryError;

pub use crate::broker::topology::DEAD_LETTER_SUFFIX;

/// Moves up to `limit` dead letters of `queue` back onto `queue`, oldest first; returns how
/// many were moved. Each move is atomic (Redis) or confirmed before the dead letter is
/// acknowledged (RabbitMQ), so none is lost on the way.
pub async fn replay_dead_letters(
    broker: &str,
    queue: &str,
    limit: usize,
) -> Result<usize, CeleryError> {
    let url = BrokerUrl::parse(broker)?;
    AnyTransport::replay_dead_letters(&url, queue, limit).await
}
