//! Giving messages back on Redis: restoring what stayed unacknowledged past the visibility
//! timeout (kombu's `restore_visible`, under its mutex), returning what a worker still holds,
//! and moving postponed messages back onto their lists when due.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use super::Link;
use super::topology::{
    DELAYED_MARK, UNACKED, UNACKED_INDEX, UNACKED_MUTEX, delayed_key, redis_queue_key,
};
use crate::backoff::Backoff;
use crate::error::CeleryError;
use crate::stopping::pause;

/// How long this worker may hold kombu's `unacked_mutex` (kombu's own is 300 s). Each restore
/// moves one message atomically, so the mutex only saves duplicate scans: a short hold means a
/// worker killed mid-scan delays the others' restores by seconds, not five minutes.
const MUTEX_EXPIRE: Duration = Duration::from_secs(5);
/// Moves due postponed messages back onto their lists, atomically: at most one worker moves
/// each. `KEYS` are pairs (postponed set, its list), one call for every list of the worker.
/// `ARGV[2]` is [`DELAYED_MARK`]; the mark and id are stripped, the envelope pushed.
const MOVE_DUE: &str = r"
local mark = ARGV[2]
local moved = 0
for k = 1, #KEYS, 2 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', ARGV[1], 'LIMIT', 0, 100)
  for _, member in ipairs(due) do
    if redis.call('ZREM', KEYS[k], member) == 1 then
      local envelope = member
      if string.sub(member, 1, #mark) == mark then
        local colon = string.find(member, ':', #mark + 1, true)
        if colon then envelope = string.sub(member, colon + 1) end
      end
      redis.call('RPUSH', KEYS[k + 1], envelope)
      moved = moved + 1
    end
  end
end
return moved
";

/// Restores one unacknowledged message if it is still there: kombu's `restore_by_tag`.
const RESTORE_ONE: &str = r"
local entry = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
if not entry then return 0 end
redis.call(ARGV[3], ARGV[2], ARGV[4])
return 1
";

/// Pushes `envelope` back onto `list` (with `command`, `LPUSH` or `RPUSH`) if `tag` is still
/// in `unacked`, removing the entry: atomically.
pub(crate) async fn restore(
    link: &Link,
    tag: &str,
    list: &str,
    command: &str,
    envelope: &[u8],
) -> Result<i64, CeleryError> {
    let script = redis::Script::new(RESTORE_ONE);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(UNACKED)
        .key(UNACKED_INDEX)
        .arg(tag)
        .arg(list)
        .arg(command)
        .arg(envelope);
    link.script("restoring a message", &invocation).await
}

/// Periodically restores messages unacknowledged for longer than the visibility timeout,
/// under kombu's mutex so Python and Rust workers never restore the same one twice.
pub(crate) async fn restore_loop(
    link: Arc<Link>,
    interval: Duration,
    visibility_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        if let Err(error) = restore_visible(&link, visibility_timeout).await {
            tracing::warn!(error = %events_core::text::OneLine(&error), "restoring unacknowledged messages failed");
        }
        if pause(&mut stopping, interval).await {
            return;
        }
    }
}

async fn restore_visible(link: &Link, visibility_timeout: Duration) -> Result<(), CeleryError> {
    let token = uuid::Uuid::new_v4().to_string();
    let mut lock = redis::cmd("SET");
    lock.arg(UNACKED_MUTEX)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(MUTEX_EXPIRE.as_millis() as u64);
    let mut pipe = redis::pipe();
    pipe.add_command(lock);
    let (acquired,): (Option<String>,) = link.run("locking unacked_mutex", &pipe).await?;
    if acquired.is_none() {
        return Ok(());
    }
    let ceiling = Utc::now().timestamp_micros() as f64 / 1e6 - visibility_timeout.as_secs_f64();
    let mut pipe = redis::pipe();
    pipe.cmd("ZRANGEBYSCORE")
        .arg(UNACKED_INDEX)
        .arg("-inf")
        .arg(ceiling)
        .arg("LIMIT")
        .arg(0)
        .arg(1000);
    let result: Result<(Vec<String>,), CeleryError> =
        link.run("listing unacked messages", &pipe).await;
    let outcome = match result {
        Ok((tags,)) => {
            let mut restored = 0;
            let mut failed = Ok(());
            for tag in tags {
                match restore_by_tag(link, &tag).await {
                    Ok(n) => restored += n,
                    Err(error) => {
                        failed = Err(error);
                        break;
                    }
                }
            }
            if restored > 0 {
                tracing::warn!(
                    restored,
                    "restored messages unacknowledged past the visibility timeout"
                );
            }
            failed
        }
        Err(error) => Err(error),
    };
    // Release the mutex if it is still ours.
    let release = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    );
    let mut invocation = release.prepare_invoke();
    invocation.key(UNACKED_MUTEX).arg(&token);
    let _ = link.script("unlocking unacked_mutex", &invocation).await;
    outcome
}

/// Restores one entry of `unacked` as kombu does: marks it redelivered and pushes it on the
/// consuming end of the queue its delivery info names.
async fn restore_by_tag(link: &Link, tag: &str) -> Result<i64, CeleryError> {
    let mut pipe = redis::pipe();
    pipe.hget(UNACKED, tag);
    let (entry,): (Option<Vec<u8>>,) = link.run("reading an unacked message", &pipe).await?;
    let Some(entry) = entry else { return Ok(0) };
    // Read with the codec's JSON: numbers stay exact and keys in their order, so the restored
    // envelope is the one that was taken.
    let parsed = crate::codec::Json::parse(&String::from_utf8_lossy(&entry))
        .ok()
        .and_then(|entry| match entry {
            crate::codec::Json::Array(parts) => <[crate::codec::Json; 3]>::try_from(parts).ok(),
            _ => None,
        })
        .and_then(
            |[envelope, exchange, routing_key]| match (exchange, routing_key) {
                (crate::codec::Json::String(e), crate::codec::Json::String(r)) => {
                    Some((envelope, e, r))
                }
                _ => None,
            },
        );
    let Some((mut envelope, exchange, routing_key)) = parsed else {
        tracing::error!(
            tag,
            "unacked entry is not [envelope, exchange, routing_key]; dropping it"
        );
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zrem(UNACKED_INDEX, tag)
            .ignore()
            .hdel(UNACKED, tag)
            .ignore();
        link.run::<()>("dropping a broken unacked entry", &pipe)
            .await?;
        return Ok(0);
    };
    if let crate::codec::Json::String(raw) = &envelope {
        // Recorded as text because it was not JSON: it goes back as it came (and will be
        // dead-lettered).
        let list = redis_queue_key(&routing_key, 0);
        return restore(link, tag, &list, "RPUSH", raw.as_bytes()).await;
    }
    let redelivered = |object: Option<&mut crate::codec::Json>| {
        if let Some(object) = object.and_then(crate::codec::Json::as_object_mut) {
            object.insert("redelivered".to_owned(), crate::codec::Json::Bool(true));
        }
    };
    redelivered(envelope.as_object_mut().and_then(|e| e.get_mut("headers")));
    // kombu's `_get_message_priority`, as the codec reads it.
    let priority = envelope
        .get("properties")
        .and_then(|p| p.get("priority"))
        .and_then(crate::codec::kombu_priority)
        .unwrap_or(0);
    redelivered(
        envelope
            .as_object_mut()
            .and_then(|e| e.get_mut("properties"))
            .and_then(crate::codec::Json::as_object_mut)
            .and_then(|p| p.get_mut("delivery_info")),
    );
    if !exchange.is_empty() {
        tracing::debug!(
            exchange,
            "restoring through the routing key of a named exchange"
        );
    }
    let list = redis_queue_key(&routing_key, priority);
    let restored =
        crate::codec::to_python_json(&envelope).map_err(crate::codec::EncodeError::Envelope)?;
    restore(link, tag, &list, "RPUSH", restored.as_bytes()).await
}

/// Moves postponed messages whose eta has come back onto their lists.
///
/// Every 250 ms, one script call for all lists; after a failure (Redis unreachable), after a backoff that doubles with jitter
/// up to [`WorkerConfig::reconnect_max_delay`](crate::WorkerConfig::reconnect_max_delay), each
/// failure logged once.
pub(crate) async fn move_due_loop(
    keys: Arc<std::sync::Mutex<Vec<String>>>,
    link: Arc<Link>,
    reconnect_max_delay: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let script = redis::Script::new(MOVE_DUE);
    let mut failures = Backoff::reconnect(reconnect_max_delay);
    loop {
        let now = Utc::now().timestamp_millis();
        let mut delay = None;
        let mut invocation = script.prepare_invoke();
        let lists = keys.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for list in &lists {
            invocation.key(delayed_key(list)).key(list);
        }
        invocation.arg(now).arg(DELAYED_MARK);
        if let Err(error) = link.script("moving due messages", &invocation).await {
            let step = failures.step();
            tracing::warn!(error = %events_core::text::OneLine(&error), retry_in = ?step, "moving due postponed messages failed");
            delay = Some(step);
        }
        let delay = delay.unwrap_or_else(|| {
            failures.reset();
            Duration::from_millis(250)
        });
        if pause(&mut stopping, delay).await {
            return;
        }
    }
}
