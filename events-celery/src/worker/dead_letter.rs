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
//! past that, new dead letters are dropped and counted (see [`PUSH_CAPPED`]). A dead letter for a handler that exhausted
//! its retries holds a message for that handler alone, with its retry count reset, so replaying
//! it runs just that handler again.

use crate::codec::Json;
use chrono::Utc;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::{Deserialize, Serialize};

use super::core::{DeadLetter, PENDING_HANDLERS_HEADER};
use super::worker_identity;
use crate::broker::{AmqpOutgoing, AmqpPublisher, BrokerKind, BrokerUrl, QueueArguments};
use crate::codec::TaskMessage;
use crate::error::CeleryError;

/// The suffix of dead-letter queues and lists: `<queue>.dead_letter`.
pub const DEAD_LETTER_SUFFIX: &str = ".dead_letter";

/// The dead-letter destination of `queue`.
pub(crate) fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}{DEAD_LETTER_SUFFIX}")
}

/// The message to keep for a handler that exhausted its retries: that handler alone, retry
/// count reset, no eta — ready to replay.
pub(crate) fn replayable(message: &TaskMessage, handler: &str) -> TaskMessage {
    let mut replay = message.clone();
    replay.headers.retries = 0;
    replay.headers.eta = None;
    replay
        .headers
        .custom
        .retain(|(name, _)| name != PENDING_HANDLERS_HEADER);
    replay.headers.custom.push((
        PENDING_HANDLERS_HEADER.to_owned(),
        Json::Array(vec![Json::String(handler.to_owned())]),
    ));
    replay.properties.delivery_tag = None;
    replay.raw_envelope = None;
    replay
}

/// A Redis dead-letter record.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RedisRecord {
    pub(crate) reason: String,
    pub(crate) handler: Option<String>,
    pub(crate) queue: String,
    pub(crate) failed_at: String,
    pub(crate) worker: String,
    pub(crate) task: Option<String>,
    pub(crate) id: Option<String>,
    /// The envelope to push back (the original bytes when they were UTF-8).
    pub(crate) envelope: Option<String>,
    /// The original bytes, base64, when they were not UTF-8.
    pub(crate) envelope_base64: Option<String>,
}

impl RedisRecord {
    pub(crate) fn new(
        dead: &DeadLetter,
        queue: &str,
        message: Option<&TaskMessage>,
        envelope: &[u8],
    ) -> Self {
        let (text, base64) = match std::str::from_utf8(envelope) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => {
                use base64::Engine;
                (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(envelope)),
                )
            }
        };
        Self {
            reason: dead.reason.clone(),
            handler: dead.handler.clone(),
            queue: queue.to_owned(),
            failed_at: Utc::now().to_rfc3339(),
            worker: worker_identity(),
            task: message.map(|m| m.task.clone()),
            id: message.map(|m| m.id.clone()),
            envelope: text,
            envelope_base64: base64,
        }
    }

    /// The record as stored.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"reason\": \"dead letter could not be written: {e}\"}}")
        })
    }
}

/// `headers.task` and `headers.id` of a kombu envelope, when it is JSON and they are strings:
/// what a dead-letter record keeps of a message that could not be decoded (a refused content
/// type or body), so that it can still be found by task and id.
pub(crate) fn envelope_task_id(envelope: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(default)]
        headers: Option<Headers>,
    }
    #[derive(Deserialize)]
    struct Headers {
        #[serde(default)]
        task: Option<serde_json::Value>,
        #[serde(default)]
        id: Option<serde_json::Value>,
    }
    let text = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    };
    match serde_json::from_slice::<Envelope>(envelope) {
        Ok(Envelope {
            headers: Some(headers),
        }) => (text(headers.task), text(headers.id)),
        _ => (None, None),
    }
}

/// Pushes a record (`ARGV[1]`) onto the dead-letter list `KEYS[1]` unless it already holds
/// `ARGV[2]` records; returns 1 when pushed, 0 when dropped. Atomic, so workers sharing the
/// list never push it past the bound together.
pub(crate) const PUSH_CAPPED: &str = r"
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[1])
return 1
";

/// Adds the `x-dead-letter-*` headers and routes the message to `queue`'s dead-letter queue.
pub(crate) fn amqp_dead_letter(
    mut outgoing: AmqpOutgoing,
    dead: &DeadLetter,
    queue: &str,
) -> AmqpOutgoing {
    let mut headers = outgoing.properties.headers().clone().unwrap_or_default();
    let text = |s: String| AMQPValue::LongString(s.into());
    headers.insert(
        ShortString::from("x-dead-letter-reason"),
        text(dead.reason.clone()),
    );
    headers.insert(
        ShortString::from("x-dead-letter-handler"),
        dead.handler.clone().map_or(AMQPValue::Void, text),
    );
    headers.insert(
        ShortString::from("x-dead-letter-queue"),
        text(queue.to_owned()),
    );
    headers.insert(
        ShortString::from("x-dead-letter-at"),
        text(Utc::now().to_rfc3339()),
    );
    headers.insert(
        ShortString::from("x-dead-letter-worker"),
        text(worker_identity()),
    );
    let dlq = dead_letter_queue(queue);
    outgoing.properties = outgoing.properties.with_headers(headers);
    outgoing.exchange = String::new();
    outgoing.routing_key = dlq.clone();
    outgoing.declare_queue = Some(dlq);
    outgoing
}

/// Moves up to `limit` dead letters of `queue` back onto `queue`, oldest first; returns how
/// many were moved. Each move is atomic (Redis) or confirmed before the dead letter is
/// acknowledged (RabbitMQ), so none is lost on the way.
pub async fn replay_dead_letters(
    broker: &str,
    queue: &str,
    limit: usize,
) -> Result<usize, CeleryError> {
    let url = BrokerUrl::parse(broker)?;
    match url.kind() {
        BrokerKind::Redis => replay_redis(&url, queue, limit).await,
        BrokerKind::Amqp => replay_amqp(&url, queue, limit).await,
    }
}

/// Pops the oldest record and pushes its envelope onto the queue, atomically.
const REPLAY_ONE: &str = r"
local raw = redis.call('RPOP', KEYS[1])
if not raw then return 0 end
local ok, record = pcall(cjson.decode, raw)
if not ok or type(record['envelope']) ~= 'string' then
  redis.call('RPUSH', KEYS[1], raw)
  return -1
end
redis.call('LPUSH', KEYS[2], record['envelope'])
return 1
";

async fn replay_redis(url: &BrokerUrl, queue: &str, limit: usize) -> Result<usize, CeleryError> {
    let mut connection = crate::broker::redis_connect(url).await?;
    let script = redis::Script::new(REPLAY_ONE);
    let mut moved = 0;
    while moved < limit {
        let result: i64 = script
            .key(dead_letter_queue(queue))
            .key(queue)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| CeleryError::broker(url, "replaying dead letters", &e))?;
        match result {
            1 => moved += 1,
            0 => break,
            _ => {
                return Err(CeleryError::Replay {
                    queue: queue.to_owned(),
                    reason: format!(
                        "the oldest dead letter has no text envelope to replay (it was not \
                         UTF-8); inspect it with `LRANGE {} 0 0` and remove it by hand",
                        dead_letter_queue(queue)
                    ),
                });
            }
        }
    }
    Ok(moved)
}

async fn replay_amqp(url: &BrokerUrl, queue: &str, limit: usize) -> Result<usize, CeleryError> {
    let publisher = AmqpPublisher::new(url.clone(), QueueArguments::default());
    let channel = publisher.consumer_channel().await?;
    let broker_error = |operation, e: lapin::Error| CeleryError::broker(url, operation, &e);
    let mut moved = 0;
    while moved < limit {
        let Some(message) = channel
            .basic_get(
                dead_letter_queue(queue).into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(|e| broker_error("basic.get", e))?
        else {
            break;
        };
        let delivery = message.delivery;
        let mut headers: FieldTable = delivery.properties.headers().clone().unwrap_or_default();
        let kept: Vec<(ShortString, AMQPValue)> = headers
            .inner()
            .iter()
            .filter(|(k, _)| !k.as_str().starts_with("x-dead-letter-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        headers = FieldTable::default();
        for (k, v) in kept {
            headers.insert(k, v);
        }
        let outgoing = AmqpOutgoing {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            declare_queue: Some(queue.to_owned()),
            properties: delivery.properties.clone().with_headers(headers),
            body: delivery.data.clone(),
        };
        publisher.publish(outgoing).await?;
        channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await
            .map_err(|e| broker_error("basic.ack", e))?;
        moved += 1;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_and_id_are_read_from_headers_of_undecodable_envelopes() {
        let envelope = br#"{"body": "x", "content-type": "application/x-python-serialize",
            "headers": {"task": "domain_events.order.placed", "id": "abc", "x": [1, {"y": 2}]}}"#;
        assert_eq!(
            envelope_task_id(envelope),
            (
                Some("domain_events.order.placed".to_owned()),
                Some("abc".to_owned())
            )
        );
        assert_eq!(
            envelope_task_id(br#"{"headers": {"task": 5, "id": "abc"}}"#),
            (None, Some("abc".to_owned()))
        );
        assert_eq!(envelope_task_id(b"garbage"), (None, None));
        assert_eq!(envelope_task_id(br#"{"headers": []}"#), (None, None));
    }
}
