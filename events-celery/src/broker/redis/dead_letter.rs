//! Dead letters on Redis: the JSON record kept on the list `<queue>.dead_letter` (see
//! [`crate::worker`]'s dead-letter documentation), pushing it within the list's bound, and
//! replaying records back onto their queue.

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::topology::dead_letter_queue;
use crate::broker::BrokerUrl;
use crate::broker::consume::DeadLetter;
use crate::error::CeleryError;

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
    /// The record of `dead` from `queue`, keeping `envelope`; `original` is the envelope as it
    /// came (where the task and id are read from when the message could not be decoded).
    pub(crate) fn new(
        dead: &DeadLetter,
        queue: &str,
        hostname: &str,
        envelope: &[u8],
        original: &[u8],
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
        // Undecodable (a refused content type, a bad body): what the envelope's headers say, so
        // the record can be found by task and id.
        let (task, id) = match (&dead.task, &dead.id) {
            (Some(task), Some(id)) => (Some(task.clone()), Some(id.clone())),
            _ => envelope_task_id(original),
        };
        Self {
            reason: dead.reason.clone(),
            handler: dead.handler.clone(),
            queue: queue.to_owned(),
            failed_at: Utc::now().to_rfc3339(),
            worker: hostname.to_owned(),
            task,
            id,
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

/// Moves up to `limit` records of `queue`'s dead-letter list back onto `queue`, each move
/// atomic.
pub(crate) async fn replay(
    url: &BrokerUrl,
    queue: &str,
    limit: usize,
) -> Result<usize, CeleryError> {
    let mut connection = super::connect(url).await?;
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
