//! Consuming from Redis with kombu's bookkeeping: each queue's priority lists read in Celery's
//! order, every message taken recorded — atomically, in the same step — in kombu's `unacked`
//! hash and `unacked_index` sorted set, and messages left unacknowledged past the visibility
//! timeout restored — ours or a Python worker's.
//!
//! Every message is taken by one script ([`TAKE`]), which never hands the worker an envelope
//! over the size limit (it dead-letters it in Redis) and gives each message taken an `unacked`
//! entry of its own. No blocking pop waits for messages (it would return the envelope it woke
//! up for, whatever its size): while every list is empty, one fetcher polls — after a pause of
//! 1 ms growing to [`WorkerConfig::redis_idle_poll`](super::WorkerConfig::redis_idle_poll)
//! (50 ms by default) — and the others wait for their turn, which comes as soon as the poller
//! finds work (each then takes at once). An idle worker sends one take per interval, whatever
//! its number of fetchers.
//!
//! Fairness: each take asks the queues in kombu's order — every queue at priority 0, then at 3,
//! 6, 9 — with the queues rotated as kombu's `_queue_cycle` rotates them: the queue that
//! delivered goes last. A queue flooded with messages (good or bad) takes one turn in
//! [number of queues], never all of them.
//!
//! Reconnecting: the fetchers reconnect through one gate ([`Gate`]), one attempt at a time,
//! with backoff and jitter; each failed attempt is logged once. The bookkeeping connection
//! ([`Link`]) is reconnected by its users, which back off likewise.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use redis::aio::MultiplexedConnection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::amqp::stopped;
use super::core::{Core, Verdict};
use super::dead_letter::{PUSH_CAPPED, RedisRecord, dead_letter_queue, envelope_task_id};
use super::quiet::Loudness;
use super::{Backoff, pause};
use crate::broker::{is_connection_error, redis_connect, redis_connect_with_timeout};
use crate::codec::{DecodeError, REDIS_PRIORITY_STEPS, Routing, TaskMessage, redis_queue_key};
use crate::error::CeleryError;

/// kombu's key names (`unacked_key`, `unacked_index_key`, `unacked_mutex_key`).
const UNACKED: &str = "unacked";
const UNACKED_INDEX: &str = "unacked_index";
const UNACKED_MUTEX: &str = "unacked_mutex";
/// How long this worker may hold kombu's `unacked_mutex` (kombu's own is 300 s). Each restore
/// moves one message atomically, so the mutex only saves duplicate scans: a short hold means a
/// worker killed mid-scan delays the others' restores by seconds, not five minutes.
const MUTEX_EXPIRE: Duration = Duration::from_secs(5);
/// How long a connection waits for a reply to a take: the script never blocks.
const TAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after the first take that found every list empty; it doubles while they stay
/// empty, up to [`WorkerConfig::redis_idle_poll`](super::WorkerConfig::redis_idle_poll) (with up
/// to 25 % jitter, the most a message pushed to an idle worker waits).
const IDLE_POLL_MIN: Duration = Duration::from_millis(1);

/// Messages this worker postponed: a sorted set per list key, scored by eta (ms).
fn delayed_key(list: &str) -> String {
    format!("_events.delayed.{list}")
}

/// What starts a member of the postponed set: [`DELAYED_MARK`], a unique id, `:`, then the
/// envelope. A sorted set holds each member once, so identical envelopes with the same eta
/// (an envelope pushed twice) would collapse into one and run once; the id keeps each
/// postponed message its own member. (An envelope is a JSON object, so it never starts with
/// the mark: members written before the mark existed are moved back as they are.)
const DELAYED_MARK: &str = "events-delayed:";

/// The member of the postponed set for `envelope`: see [`DELAYED_MARK`].
fn delayed_member(envelope: &[u8]) -> Vec<u8> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut member = Vec::with_capacity(DELAYED_MARK.len() + id.len() + 1 + envelope.len());
    member.extend_from_slice(DELAYED_MARK.as_bytes());
    member.extend_from_slice(id.as_bytes());
    member.push(b':');
    member.extend_from_slice(envelope);
    member
}

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

/// A message held by this worker.
struct Held {
    list: String,
    envelope: Vec<u8>,
}

type HeldMap = Arc<Mutex<HashMap<String, Held>>>;

/// A shared connection for bookkeeping, reconnected after failures.
struct Link {
    url: crate::broker::BrokerUrl,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Link {
    async fn get(&self) -> Result<MultiplexedConnection, CeleryError> {
        let mut guard = self.connection.lock().await;
        if let Some(connection) = guard.as_ref() {
            return Ok(connection.clone());
        }
        let connection = redis_connect(&self.url).await?;
        *guard = Some(connection.clone());
        Ok(connection)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, CeleryError> {
        let mut connection = self.get().await?;
        let result = pipe.query_async(&mut connection).await;
        self.settle(operation, result).await
    }

    async fn script(
        &self,
        operation: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<i64, CeleryError> {
        let mut connection = self.get().await?;
        let result = invocation.invoke_async(&mut connection).await;
        self.settle(operation, result).await
    }

    /// Forgets a connection that broke, so the next call reconnects; names the operation.
    async fn settle<T>(
        &self,
        operation: &'static str,
        result: redis::RedisResult<T>,
    ) -> Result<T, CeleryError> {
        match result {
            Ok(value) => Ok(value),
            Err(error) => {
                if is_connection_error(&error) {
                    self.connection.lock().await.take();
                }
                Err(CeleryError::broker(&self.url, operation, &error))
            }
        }
    }
}

pub(crate) async fn run(
    core: Arc<Core>,
    stopping: watch::Receiver<bool>,
) -> Result<(), CeleryError> {
    let link = Arc::new(Link {
        url: core.config.broker.clone(),
        connection: tokio::sync::Mutex::new(None),
    });
    // Messages fetched ahead of the handlers (each recorded in `unacked`), and messages running.
    let window = Arc::new(Semaphore::new(usize::from(core.config.prefetch)));
    let permits = Arc::new(Semaphore::new(core.config.concurrency));
    let held: HeldMap = Arc::new(Mutex::new(HashMap::new()));
    let rotation = Arc::new(Rotation::new(&core.config.queues));
    let keys: Arc<Vec<String>> = Arc::new(rotation.lists_in_order(&rotation.order()));
    let shared = Arc::new(Fetchers {
        rotation,
        idle_turn: Arc::new(tokio::sync::Mutex::new(())),
        gate: Gate {
            state: tokio::sync::Mutex::new(GateState {
                backoff: Backoff::new(core.config.reconnect_max_delay),
                healthy: true,
            }),
        },
    });
    let mut background = tokio::task::JoinSet::new();
    background.spawn(restore_loop(
        Arc::clone(&core),
        Arc::clone(&link),
        stopping.clone(),
    ));
    background.spawn(move_due_loop(
        Arc::clone(&core),
        Arc::clone(&keys),
        Arc::clone(&link),
        stopping.clone(),
    ));
    let mut fetchers = tokio::task::JoinSet::new();
    for _ in 0..core.config.redis_fetchers {
        fetchers.spawn(fetch_loop(
            Arc::clone(&core),
            Arc::clone(&link),
            Arc::clone(&window),
            Arc::clone(&permits),
            Arc::clone(&held),
            Arc::clone(&shared),
            stopping.clone(),
        ));
    }
    tracing::info!(broker = %core.config.broker, queues = ?core.config.queues, "consuming from Redis");
    while fetchers.join_next().await.is_some() {}
    let all = u32::from(core.config.prefetch);
    if tokio::time::timeout(core.config.grace_period, window.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?core.config.grace_period,
            "grace period over: unfinished messages go back to the queue"
        );
    }
    // kombu's `restore_at_shutdown`: what we still hold goes back to its list now.
    let unfinished: Vec<(String, Held)> = held.lock().expect("not poisoned").drain().collect();
    for (tag, message) in unfinished {
        match restore(&link, &tag, &message.list, "RPUSH", &message.envelope).await {
            Ok(_) => {
                core.stats.requeued.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => tracing::error!(
                error = %events_core::text::OneLine(&error),
                tag,
                "could not return a message to its queue; it stays in `unacked` and will be \
                 restored after the visibility timeout"
            ),
        }
    }
    background.shutdown().await;
    Ok(())
}

async fn restore(
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

/// Takes up to `ARGV[2]` messages from the first non-empty list of the `n` lists
/// `KEYS[3..2+n]` (kombu's priority order, as `BRPOP` reads them) and records each in kombu's
/// `unacked` hash (`[envelope, exchange, routing_key]`) and `unacked_index` sorted set, in one
/// atomic step: a message is always in its list or in `unacked`, never only in a worker's
/// memory, so a worker killed at any moment loses nothing (a `BRPOP` followed by the
/// bookkeeping, as kombu does it, loses what was popped when the worker dies in between).
///
/// Each message taken is recorded under a tag of its own (`ARGV[3]-<j>`, `ARGV[3]` unique per
/// call), never under the envelope's `delivery_tag`: two messages carrying the same tag (an
/// envelope pushed twice, a publisher re-sending the same bytes) would share one entry, and the
/// first ack would remove the other's backup. kombu's `restore_by_tag` reads whatever tag the
/// index names, so Python workers restore these entries as ours; the envelope itself is
/// recorded unchanged.
///
/// A message over `ARGV[4]` bytes (the worker's size limit) never leaves Redis: it goes, in the
/// same step, to the dead-letter list of its queue (`KEYS[2+n+k]` for the list `KEYS[2+k]`) as
/// the record the worker writes, with the envelope kept byte for byte (as a JSON string:
/// `"`, `\` and control characters escaped, other bytes as they are), and only its size is
/// returned. A stream of oversize messages costs the worker nothing but their sizes. When the
/// dead-letter list already holds `ARGV[7]` records, the record is dropped instead (and its
/// size returned apart), as the worker drops its own dead letters past that bound.
///
/// `KEYS[1]` `unacked`, `KEYS[2]` `unacked_index`; `ARGV[1]` the time (s), `ARGV[2]` how many,
/// `ARGV[3]` the tag prefix, `ARGV[4]` the size limit, `ARGV[5]` the time as RFC 3339 and
/// `ARGV[6]` the worker's name (for dead letters), `ARGV[7]` the most records a dead-letter
/// list holds, `ARGV[7+k]` the queue of list `k`. Returns `[list, envelopes, tags, sizes
/// refused, sizes dropped]`, or nil when every list is empty. Envelopes that
/// are not JSON (or too big to parse here) are recorded as a JSON string, which a restore
/// pushes back unchanged.
const TAKE: &str = r#"
local count = tonumber(ARGV[2])
local limit = tonumber(ARGV[4])
local n = (#KEYS - 2) / 2
for k = 1, n do
  local items = redis.call('RPOP', KEYS[2 + k], count)
  if items then
    local queue = ARGV[7 + k]
    local cap = tonumber(ARGV[7])
    local kept, tags, refused, dropped = {}, {}, {}, {}
    for j, raw in ipairs(items) do
      if #raw > limit and redis.call('LLEN', KEYS[2 + n + k]) >= cap then
        dropped[#dropped + 1] = #raw
      elseif #raw > limit then
        local escapes = {['"'] = '\\"', ['\\'] = '\\\\'}
        for c = 0, 31 do escapes[string.char(c)] = string.format('\\u%04x', c) end
        local reason = 'undecodable message: message of ' .. #raw .. ' bytes is over the '
          .. ARGV[4] .. '-byte limit (refused before it reached the worker)'
        local record = '{"reason":' .. cjson.encode(reason) .. ',"handler":null,"queue":'
          .. cjson.encode(queue) .. ',"failed_at":' .. cjson.encode(ARGV[5]) .. ',"worker":'
          .. cjson.encode(ARGV[6]) .. ',"task":null,"id":null,"envelope":"'
          .. string.gsub(raw, '[%z\1-\31"\\]', escapes) .. '","envelope_base64":null}'
        redis.call('LPUSH', KEYS[2 + n + k], record)
        refused[#refused + 1] = #raw
      else
        local exchange = ''
        local routing_key = queue
        local ok, message = false, nil
        if #raw <= 1048576 then
          ok, message = pcall(cjson.decode, raw)
        end
        local entry
        if ok and type(message) == 'table' then
          local properties = message['properties']
          if type(properties) == 'table' then
            local info = properties['delivery_info']
            if type(info) == 'table' then
              if type(info['exchange']) == 'string' then exchange = info['exchange'] end
              if type(info['routing_key']) == 'string' then routing_key = info['routing_key'] end
            end
          end
          entry = '[' .. raw .. ', ' .. cjson.encode(exchange) .. ', ' .. cjson.encode(routing_key) .. ']'
        else
          entry = cjson.encode({raw, exchange, routing_key})
        end
        local tag = ARGV[3] .. '-' .. j
        redis.call('ZADD', KEYS[2], ARGV[1], tag)
        redis.call('HSET', KEYS[1], tag, entry)
        kept[#kept + 1] = raw
        tags[#tags + 1] = tag
      end
    end
    return {KEYS[2 + k], kept, tags, refused, dropped}
  end
end
return false
"#;

/// Most messages taken at once (`RPOP key count`).
const FETCH_BATCH: usize = 64;

/// What [`TAKE`] returns: the list, the envelopes and the tags they are recorded under, the
/// sizes of the envelopes it dead-lettered as over the size limit, and of those it dropped
/// (their dead-letter list was full).
type Taken = Option<(String, Vec<Vec<u8>>, Vec<String>, Vec<u64>, Vec<u64>)>;

/// The queues a worker consumes, asked in kombu's rotating order.
struct Rotation {
    /// The queues, as configured.
    queues: Vec<String>,
    /// Each queue's dead-letter list.
    dead: Vec<String>,
    /// The order to ask them in: indexes into `queues`; the one that delivered last is last.
    order: Mutex<Vec<usize>>,
    /// Which queue each list belongs to.
    queue_of: HashMap<String, usize>,
}

impl Rotation {
    fn new(queues: &[String]) -> Self {
        let mut queue_of = HashMap::new();
        for (q, queue) in queues.iter().enumerate() {
            for step in REDIS_PRIORITY_STEPS {
                queue_of.insert(redis_queue_key(queue, step), q);
            }
        }
        Self {
            queues: queues.to_vec(),
            dead: queues.iter().map(|q| dead_letter_queue(q)).collect(),
            order: Mutex::new((0..queues.len()).collect()),
            queue_of,
        }
    }

    /// The order to ask the queues in now.
    fn order(&self) -> Vec<usize> {
        self.order.lock().expect("not poisoned").clone()
    }

    /// kombu's `BRPOP` key order for `order`: every queue at priority 0, then at 3, 6, 9.
    fn lists_in_order(&self, order: &[usize]) -> Vec<String> {
        REDIS_PRIORITY_STEPS
            .iter()
            .flat_map(|&step| {
                order
                    .iter()
                    .map(move |&q| redis_queue_key(&self.queues[q], step))
            })
            .collect()
    }

    /// kombu's `_queue_cycle.rotate`: the queue that delivered goes to the back.
    fn delivered(&self, queue: usize) {
        let mut order = self.order.lock().expect("not poisoned");
        if let Some(at) = order.iter().position(|&q| q == queue) {
            order.remove(at);
            order.push(queue);
        }
    }
}

/// What the fetchers share.
struct Fetchers {
    rotation: Arc<Rotation>,
    /// Held by the one fetcher that polls while every list is empty; the others wait for it.
    idle_turn: Arc<tokio::sync::Mutex<()>>,
    gate: Gate,
}

/// The fetchers' way back to Redis: one connection attempt at a time, with backoff and jitter,
/// each failure logged once — not one reconnect loop per fetcher.
struct Gate {
    state: tokio::sync::Mutex<GateState>,
}

struct GateState {
    backoff: Backoff,
    /// Whether the last attempt (or the last connection) worked: a loss is logged once.
    healthy: bool,
}

impl Gate {
    /// A new connection; waits while another fetcher is trying. `None` when stopping.
    async fn connect(
        &self,
        core: &Core,
        stopping: &mut watch::Receiver<bool>,
    ) -> Option<MultiplexedConnection> {
        let mut state = tokio::select! {
            biased;
            () = stopped(stopping) => return None,
            state = self.state.lock() => state,
        };
        loop {
            let connecting = redis_connect_with_timeout(&core.config.broker, TAKE_TIMEOUT);
            let connected = tokio::select! {
                biased;
                () = stopped(stopping) => return None,
                connected = connecting => connected,
            };
            match connected {
                Ok(connection) => {
                    if !state.healthy {
                        tracing::info!(broker = %core.config.broker, "reconnected to Redis");
                        state.healthy = true;
                    }
                    state.backoff.reset();
                    return Some(connection);
                }
                Err(error) => {
                    state.healthy = false;
                    let delay = state.backoff.step();
                    tracing::error!(
                        error = %events_core::text::OneLine(&error),
                        retry_in = ?delay,
                        "cannot reach Redis"
                    );
                    if pause(stopping, delay).await {
                        return None;
                    }
                }
            }
        }
    }

    /// A fetcher's connection broke: logged by the first fetcher to see it, once per outage.
    fn lost(&self, error: &redis::RedisError) {
        if let Ok(mut state) = self.state.try_lock()
            && state.healthy
        {
            state.healthy = false;
            tracing::warn!(
                error = %events_core::text::OneLine(error),
                "lost the connection to Redis; reconnecting"
            );
        }
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "the fetcher's shared state, passed once at start"
)]
async fn fetch_loop(
    core: Arc<Core>,
    link: Arc<Link>,
    window: Arc<Semaphore>,
    permits: Arc<Semaphore>,
    held: HeldMap,
    shared: Arc<Fetchers>,
    mut stopping: watch::Receiver<bool>,
) {
    let take = redis::Script::new(TAKE);
    let rotation = &shared.rotation;
    let identity = super::worker_identity();
    let mut idle = IDLE_POLL_MIN;
    // Held while this fetcher is the one polling an idle worker's lists.
    let mut idle_turn: Option<tokio::sync::OwnedMutexGuard<()>> = None;
    let mut connection: Option<MultiplexedConnection> = None;
    let mut failures = Backoff::new(core.config.reconnect_max_delay);
    loop {
        let mut taken_permits = tokio::select! {
            biased;
            () = stopped(&mut stopping) => return,
            permit = Arc::clone(&window).acquire_owned() => permit.expect("never closed"),
        };
        if connection.is_none() {
            // Polling is not this fetcher's job while it has no connection.
            idle_turn = None;
            match shared.gate.connect(&core, &mut stopping).await {
                Some(c) => connection = Some(c),
                None => return,
            }
        }
        let Some(conn) = connection.as_mut() else {
            continue;
        };
        // Take as many as the window has room for: one round trip for many.
        let extra = window.available_permits().min(FETCH_BATCH - 1);
        if extra > 0
            && let Ok(more) =
                Arc::clone(&window).try_acquire_many_owned(u32::try_from(extra).unwrap_or(1))
        {
            taken_permits.merge(more);
        }
        let now = Utc::now();
        let order = rotation.order();
        let mut invocation = take.prepare_invoke();
        invocation.key(UNACKED).key(UNACKED_INDEX);
        let lists = rotation.lists_in_order(&order);
        for key in &lists {
            invocation.key(key);
        }
        for key in &lists {
            invocation.key(&rotation.dead[rotation.queue_of[key]]);
        }
        invocation
            .arg(now.timestamp_micros() as f64 / 1e6)
            .arg(taken_permits.num_permits())
            .arg(uuid::Uuid::new_v4().simple().to_string())
            .arg(core.config.decode.limit())
            .arg(now.to_rfc3339())
            .arg(&identity)
            .arg(core.config.dead_letter_max_len);
        for key in &lists {
            invocation.arg(&rotation.queues[rotation.queue_of[key]]);
        }
        let taken: redis::RedisResult<Taken> = invocation.invoke_async(conn).await;
        let (list, envelopes, tags, refused, dropped) = match taken {
            Ok(Some(taken)) => {
                idle = IDLE_POLL_MIN;
                failures.reset();
                // Found work: the next fetcher in line polls (and takes at once if there is
                // more).
                idle_turn = None;
                taken
            }
            Ok(None) => {
                drop(taken_permits);
                failures.reset();
                // Nothing there. One fetcher polls at a time: wait for the turn (the one
                // polling gives it up as soon as it finds work), then take at once.
                if idle_turn.is_none() {
                    let turn = Arc::clone(&shared.idle_turn).lock_owned();
                    idle_turn = tokio::select! {
                        biased;
                        () = stopped(&mut stopping) => return,
                        turn = turn => Some(turn),
                    };
                    idle = IDLE_POLL_MIN;
                    continue;
                }
                // This fetcher's turn: look again after a pause that grows while the lists
                // stay empty. No blocking command waits here: `BRPOP`/`BLMOVE` return the
                // message they wake up for, whatever its size, so an oversize envelope would
                // reach the worker before `TAKE` could refuse it.
                let jitter = idle.mul_f64(fastrand::f64() * 0.25);
                if pause(&mut stopping, idle + jitter).await {
                    return;
                }
                idle = (idle * 2).min(core.config.redis_idle_poll.max(IDLE_POLL_MIN));
                continue;
            }
            Err(error) => {
                // If the script ran before the connection broke, what it took is in `unacked`
                // and comes back after the visibility timeout.
                drop(taken_permits);
                idle_turn = None;
                if is_connection_error(&error) {
                    // Reconnecting goes through the gate, which logs each failed attempt.
                    shared.gate.lost(&error);
                    connection = None;
                    continue;
                }
                let delay = failures.step();
                const TAKE_FAILED: &str = "taking messages failed";
                if core.quiet.allow(TAKE_FAILED, Loudness::Error) {
                    tracing::error!(error = %events_core::text::OneLine(&error), retry_in = ?delay, "{TAKE_FAILED}");
                }
                if pause(&mut stopping, delay).await {
                    return;
                }
                continue;
            }
        };
        let Some(&queue_index) = rotation.queue_of.get(&list) else {
            unreachable!("the script returns one of the lists it was given")
        };
        rotation.delivered(queue_index);
        let queue = rotation.queues[queue_index].clone();
        for size in refused {
            core.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            const REFUSED: &str = "message dead-lettered without being read: raise \
                `WorkerConfig::max_message_bytes` and replay it if it should run";
            if core.quiet.allow(REFUSED, Loudness::Error) {
                tracing::error!(
                    reason = %DecodeError::TooLarge { size: usize::try_from(size).unwrap_or(usize::MAX), limit: core.config.decode.limit() },
                    queue,
                    "{REFUSED}"
                );
            }
        }
        for size in dropped {
            core.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            dead_letter_dropped(
                &core,
                &queue,
                &format!("message of {size} bytes over the size limit"),
            );
        }
        for (envelope, tag) in envelopes.into_iter().zip(tags) {
            let Some(permit) = taken_permits.split(1) else {
                unreachable!("the script takes at most one message per permit")
            };
            held.lock().expect("not poisoned").insert(
                tag.clone(),
                Held {
                    list: list.clone(),
                    envelope: envelope.clone(),
                },
            );
            tokio::spawn(handle(
                Fetched {
                    core: Arc::clone(&core),
                    link: Arc::clone(&link),
                    held: Arc::clone(&held),
                    permits: Arc::clone(&permits),
                    queue: queue.clone(),
                    list: list.clone(),
                },
                tag,
                envelope,
                permit,
            ));
        }
    }
}

/// A dead letter dropped because its list is full: counted, and logged (rate-limited, with a
/// count of the lines left out).
fn dead_letter_dropped(core: &Core, queue: &str, reason: &str) {
    core.stats
        .dead_letters_dropped
        .fetch_add(1, Ordering::Relaxed);
    const DROPPED: &str = "dead-letter list full: message dropped without a record (replay or \
        trim `<queue>.dead_letter`, or raise `WorkerConfig::dead_letter_max_len`)";
    if core.quiet.allow(DROPPED, Loudness::Error) {
        tracing::error!(
            queue,
            dead_letter_list = %dead_letter_queue(queue),
            max_len = core.config.dead_letter_max_len,
            reason = %events_core::text::OneLine(reason),
            "{DROPPED}"
        );
    }
}

/// Where a fetched message came from, and what handling it needs.
struct Fetched {
    core: Arc<Core>,
    link: Arc<Link>,
    held: HeldMap,
    permits: Arc<Semaphore>,
    queue: String,
    list: String,
}

async fn handle(fetched: Fetched, tag: String, envelope: Vec<u8>, window: OwnedSemaphorePermit) {
    let Fetched {
        core,
        link,
        held,
        permits,
        queue,
        list,
    } = fetched;
    let running = permits.acquire_owned().await.expect("never closed");
    let decoded = TaskMessage::decode_redis(&envelope, &core.config.decode);
    let decoded_copy = match &decoded {
        Ok(m) => (Some(m.task.clone()), Some(m.id.clone())),
        Err(_) => (None, None),
    };
    let delivered = super::inbox::Delivery {
        queue: queue.clone(),
        redelivered: false,
    };
    let verdict = core.process(decoded, delivered).await;
    drop(running);
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut follow_up = Ok(());
    // The reasons of the dead letters pushed, in the order of their `PUSH_CAPPED` replies.
    let mut letters = Vec::new();
    match verdict {
        Verdict::Ack => {}
        Verdict::Postpone(eta) => {
            core.stats.postponed.fetch_add(1, Ordering::Relaxed);
            pipe.zadd(
                delayed_key(&list),
                delayed_member(&envelope),
                eta.timestamp_millis(),
            )
            .ignore();
        }
        Verdict::Forward { retry, dead } => {
            if let Some(mut retry) = retry {
                retry.routing = Routing::queue(&queue);
                match retry.to_redis() {
                    Ok(message) => {
                        let priority = retry.properties.priority.unwrap_or(0);
                        pipe.lpush(redis_queue_key(&queue, priority), message.envelope)
                            .ignore();
                    }
                    Err(error) => follow_up = Err(CeleryError::from(error)),
                }
            }
            for letter in &dead {
                let kept = match &letter.replay {
                    Some(replay) => replay.to_redis().map(|m| m.envelope.into_bytes()),
                    None => Ok(envelope.clone()),
                };
                match kept {
                    Ok(kept) => {
                        let mut record = RedisRecord::new(letter, &queue, None, &kept);
                        // Undecodable (a refused content type, a bad body): what the
                        // envelope's headers say, so the record can be found by task and id.
                        let (task, id) = match &decoded_copy {
                            (Some(task), Some(id)) => (Some(task.clone()), Some(id.clone())),
                            _ => envelope_task_id(&envelope),
                        };
                        record.task = task;
                        record.id = id;
                        pipe.cmd("EVAL")
                            .arg(PUSH_CAPPED)
                            .arg(1)
                            .arg(dead_letter_queue(&queue))
                            .arg(record.to_json())
                            .arg(core.config.dead_letter_max_len);
                        letters.push(letter.reason.clone());
                    }
                    Err(error) => follow_up = Err(CeleryError::from(error)),
                }
            }
        }
    }
    // Settling and acknowledging in one transaction: nothing is lost or doubled in between.
    pipe.zrem(UNACKED_INDEX, &tag)
        .ignore()
        .hdel(UNACKED, &tag)
        .ignore();
    let settled = match follow_up {
        Ok(()) => link
            .run::<Vec<i64>>("acknowledging a message", &pipe)
            .await
            .map(|pushed| {
                for (reason, pushed) in letters.iter().zip(pushed) {
                    if pushed == 0 {
                        dead_letter_dropped(&core, &queue, reason);
                        continue;
                    }
                    const DEAD: &str = "message dead-lettered";
                    if core.quiet.allow(DEAD, Loudness::Error) {
                        tracing::error!(reason = reason.as_str(), queue, "{DEAD}");
                    }
                }
            }),
        Err(error) => Err(error),
    };
    held.lock().expect("not poisoned").remove(&tag);
    if let Err(error) = settled {
        tracing::error!(
            error = %events_core::text::OneLine(&error),
            "could not settle the message; returning it to its queue"
        );
        core.stats.requeued.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = restore(&link, &tag, &list, "LPUSH", &envelope).await {
            tracing::error!(
                error = %events_core::text::OneLine(&error),
                "it stays in `unacked` and will be restored after the visibility timeout"
            );
        }
    }
    drop(window);
}

/// Periodically restores messages unacknowledged for longer than the visibility timeout,
/// under kombu's mutex so Python and Rust workers never restore the same one twice.
async fn restore_loop(core: Arc<Core>, link: Arc<Link>, mut stopping: watch::Receiver<bool>) {
    loop {
        if let Err(error) = restore_visible(&core, &link).await {
            tracing::warn!(error = %events_core::text::OneLine(&error), "restoring unacknowledged messages failed");
        }
        if pause(&mut stopping, core.config.restore_interval).await {
            return;
        }
    }
}

async fn restore_visible(core: &Core, link: &Link) -> Result<(), CeleryError> {
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
    let ceiling =
        Utc::now().timestamp_micros() as f64 / 1e6 - core.config.visibility_timeout.as_secs_f64();
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
        crate::codec::to_python_json(&envelope).map_err(|e| CeleryError::Config(e.to_string()))?;
    restore(link, tag, &list, "RPUSH", restored.as_bytes()).await
}

/// Moves postponed messages whose eta has come back onto their lists.
///
/// Every 250 ms, one script call for all lists; after a failure (Redis unreachable), after a backoff that doubles with jitter
/// up to [`WorkerConfig::reconnect_max_delay`](super::WorkerConfig::reconnect_max_delay), each
/// failure logged once.
async fn move_due_loop(
    core: Arc<Core>,
    keys: Arc<Vec<String>>,
    link: Arc<Link>,
    mut stopping: watch::Receiver<bool>,
) {
    let script = redis::Script::new(MOVE_DUE);
    let mut failures = Backoff::new(core.config.reconnect_max_delay);
    loop {
        let now = Utc::now().timestamp_millis();
        let mut delay = None;
        let mut invocation = script.prepare_invoke();
        for list in keys.iter() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_rotate_as_kombu_rotates_them() {
        let rotation = Rotation::new(&["a".to_owned(), "b".to_owned(), "c".to_owned()]);
        let sep = crate::codec::REDIS_PRIORITY_SEPARATOR;
        // Priority first, then queue: kombu's BRPOP key order.
        assert_eq!(
            rotation.lists_in_order(&rotation.order())[..4],
            [
                "a".to_owned(),
                "b".to_owned(),
                "c".to_owned(),
                format!("a{sep}3")
            ]
        );
        // The queue that delivered goes last; the others keep their order.
        rotation.delivered(rotation.queue_of[&format!("a{sep}6")]);
        assert_eq!(rotation.order(), [1, 2, 0]);
        rotation.delivered(2);
        assert_eq!(rotation.order(), [1, 0, 2]);
    }
}
