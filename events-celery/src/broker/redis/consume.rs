//! Consuming from Redis for the worker, with kombu's bookkeeping: each queue's priority lists read in Celery's
//! order, every message taken recorded — atomically, in the same step — in kombu's `unacked`
//! hash and `unacked_index` sorted set, and messages left unacknowledged past the visibility
//! timeout restored — ours or a Python worker's.
//!
//! Every message is taken by one script ([`TAKE`]), which never hands the worker an envelope
//! over the size limit (it dead-letters it in Redis) and gives each message taken an `unacked`
//! entry of its own. No blocking pop waits for messages (it would return the envelope it woke
//! up for, whatever its size): while every list is empty, one fetcher polls — after a pause of
//! 1 ms growing to [`WorkerConfig::redis_idle_poll`](crate::WorkerConfig::redis_idle_poll)
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
//!
//! Settling: [`settle`] is the one place a worker's [`Verdict`] becomes Redis commands — the
//! acknowledgement, the postponement, the retry and the dead letters in one transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use redis::aio::MultiplexedConnection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::dead_letter::{PUSH_CAPPED, RedisRecord};
use super::restore::{move_due_loop, restore, restore_loop};
use super::topology::{
    REDIS_PRIORITY_STEPS, UNACKED, UNACKED_INDEX, consumed_binding, dead_letter_queue, delayed_key,
    delayed_member, redis_queue_key,
};
use super::{Link, connect_with_timeout, is_connection_error};
use crate::backoff::{Backoff, Jitter};
use crate::broker::consume::{BrokerEvent, Consumer, Verdict};
use crate::broker::queues::{ConsumedQueue, QueueSet, QueueWatch};
use crate::codec::{Routing, TaskMessage};
use crate::error::CeleryError;
use crate::quiet::Loudness;
use crate::stopping::{pause, stopped};

/// How long a connection waits for a reply to a take: the script never blocks.
const TAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after the first take that found every list empty; it doubles while they stay
/// empty, up to [`WorkerConfig::redis_idle_poll`](crate::WorkerConfig::redis_idle_poll) (with up
/// to 25 % jitter, the most a message pushed to an idle worker waits).
const IDLE_POLL_MIN: Duration = Duration::from_millis(1);

/// A message held by this worker.
struct Held {
    list: String,
    envelope: Vec<u8>,
}

type HeldMap = Arc<Mutex<HashMap<String, Held>>>;

/// Consumes until the worker stops: the fetchers, the restore and postponement loops, then
/// the grace period and the return of what is still held.
pub(crate) async fn run<C: Consumer>(
    consumer: Arc<C>,
    stopping: watch::Receiver<bool>,
) -> Result<(), CeleryError> {
    let settings = consumer.settings();
    let link = Arc::new(Link::new(settings.broker.clone()));
    // Messages fetched ahead of the handlers (each recorded in `unacked`), and messages running.
    let window = Arc::new(Semaphore::new(usize::from(settings.prefetch)));
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let held: HeldMap = Arc::new(Mutex::new(HashMap::new()));
    let mut watch = settings.queues.watch();
    let rotation = Rotation::new(&names(&watch.borrow_and_update()));
    // Every list consumed since the start: their postponed messages go back when due, those of
    // a queue cancelled since included.
    let postponed = Arc::new(Mutex::new(rotation.lists_in_order(&rotation.order())));
    let shared = Arc::new(Fetchers {
        rotation: RwLock::new(Arc::new(rotation)),
        idle_turn: Arc::new(tokio::sync::Mutex::new(())),
        gate: Gate {
            state: tokio::sync::Mutex::new(GateState {
                backoff: Backoff::reconnect(settings.reconnect_max_delay),
                healthy: true,
            }),
        },
    });
    let mut background = tokio::task::JoinSet::new();
    background.spawn(restore_loop(
        Arc::clone(&link),
        settings.restore_interval,
        settings.visibility_timeout,
        stopping.clone(),
    ));
    background.spawn(follow(
        Arc::clone(&shared),
        Arc::clone(&link),
        Arc::clone(&postponed),
        watch,
    ));
    background.spawn(move_due_loop(
        Arc::clone(&postponed),
        Arc::clone(&link),
        settings.reconnect_max_delay,
        stopping.clone(),
    ));
    let mut fetchers = tokio::task::JoinSet::new();
    for _ in 0..settings.redis_fetchers {
        let fetcher = Fetcher {
            consumer: Arc::clone(&consumer),
            link: Arc::clone(&link),
            window: Arc::clone(&window),
            permits: Arc::clone(&permits),
            held: Arc::clone(&held),
            shared: Arc::clone(&shared),
        };
        fetchers.spawn(fetcher.run(stopping.clone()));
    }
    tracing::info!(broker = %settings.broker, queues = ?settings.queues, "consuming from Redis");
    consumer.report(BrokerEvent::Consuming);
    while fetchers.join_next().await.is_some() {}
    let all = u32::from(settings.prefetch);
    if tokio::time::timeout(settings.grace_period, window.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?settings.grace_period,
            "grace period over: unfinished messages go back to the queue"
        );
    }
    return_held(&*consumer, &link, &held).await;
    background.shutdown().await;
    Ok(())
}

/// kombu's `restore_at_shutdown`: what the worker still holds goes back to its list now.
async fn return_held<C: Consumer>(consumer: &C, link: &Link, held: &HeldMap) {
    let unfinished: Vec<(String, Held)> = held.lock().expect("not poisoned").drain().collect();
    for (tag, message) in unfinished {
        match restore(link, &tag, &message.list, "RPUSH", &message.envelope).await {
            Ok(_) => consumer.report(BrokerEvent::Requeued { count: 1 }),
            Err(error) => tracing::error!(
                error = %events_core::text::OneLine(&error),
                tag,
                "could not return a message to its queue; it stays in `unacked` and will be \
                 restored after the visibility timeout"
            ),
        }
    }
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
type Taken = Option<Batch>;

/// One take's messages: see [`Taken`].
type Batch = (String, Vec<Vec<u8>>, Vec<String>, Vec<u64>, Vec<u64>);

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

    /// The rotation for the queues `names` (the set changed): the queues kept stay in their
    /// turn, the new ones come last.
    fn following(&self, names: &[String]) -> Self {
        let mut queues: Vec<String> = self
            .order()
            .into_iter()
            .map(|q| &self.queues[q])
            .filter(|q| names.contains(q))
            .cloned()
            .collect();
        for name in names {
            if !queues.contains(name) {
                queues.push(name.clone());
            }
        }
        Self::new(&queues)
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
    /// The queues taken from now, replaced when the set changes.
    rotation: RwLock<Arc<Rotation>>,
    /// Held by the one fetcher that polls while every list is empty; the others wait for it.
    idle_turn: Arc<tokio::sync::Mutex<()>>,
    gate: Gate,
}

impl Fetchers {
    fn rotation(&self) -> Arc<Rotation> {
        Arc::clone(&self.rotation.read().unwrap_or_else(|e| e.into_inner()))
    }
}

fn names(queues: &[ConsumedQueue]) -> Vec<String> {
    queues.iter().map(|q| q.name.clone()).collect()
}

/// Follows the queue set (`add_consumer` / `cancel_consumer`): the fetchers take from the
/// queues of the set from their next take on; an added queue gets kombu's binding entries, and
/// its lists join those whose postponed messages are moved back when due.
async fn follow(
    shared: Arc<Fetchers>,
    link: Arc<Link>,
    postponed: Arc<Mutex<Vec<String>>>,
    mut watch: QueueWatch,
) {
    while watch.changed().await.is_ok() {
        let wanted = Arc::clone(&watch.borrow_and_update());
        let before = shared.rotation();
        let rotation = Arc::new(before.following(&names(&wanted)));
        // From the fetchers' next take on.
        *shared.rotation.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&rotation);
        for queue in &before.queues {
            if !rotation.queues.contains(queue) {
                tracing::info!(%queue, "no longer consuming from this queue");
            }
        }
        for queue in wanted.iter().filter(|q| !before.queues.contains(&q.name)) {
            if let Some(entries) = consumed_binding(queue) {
                let mut pipe = redis::pipe();
                for (set, member) in entries {
                    pipe.sadd(set, member).ignore();
                }
                if let Err(error) = link.run::<()>("declaring a queue", &pipe).await {
                    // The list is consumed all the same; only routing through the exchange
                    // waits for a publisher to write the binding.
                    tracing::warn!(
                        queue = %queue.name,
                        error = %events_core::text::OneLine(&error),
                        "cannot write the queue's binding"
                    );
                }
            }
            let mut lists = postponed.lock().expect("not poisoned");
            for step in REDIS_PRIORITY_STEPS {
                let list = redis_queue_key(&queue.name, step);
                if !lists.contains(&list) {
                    lists.push(list);
                }
            }
            tracing::info!(queue = %queue.name, "started consuming from this queue");
        }
    }
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
    async fn connect<C: Consumer>(
        &self,
        consumer: &C,
        stopping: &mut watch::Receiver<bool>,
    ) -> Option<MultiplexedConnection> {
        let broker = &consumer.settings().broker;
        let mut state = tokio::select! {
            biased;
            () = stopped(stopping) => return None,
            state = self.state.lock() => state,
        };
        loop {
            let connecting = connect_with_timeout(broker, TAKE_TIMEOUT);
            let connected = tokio::select! {
                biased;
                () = stopped(stopping) => return None,
                connected = connecting => connected,
            };
            match connected {
                Ok(connection) => {
                    if !state.healthy {
                        tracing::info!(broker = %broker, "reconnected to Redis");
                        state.healthy = true;
                        consumer.report(BrokerEvent::Consuming);
                    }
                    state.backoff.reset();
                    return Some(connection);
                }
                Err(error) => {
                    state.healthy = false;
                    let delay = state.backoff.step();
                    let error = events_core::text::OneLine(&error).to_string();
                    tracing::error!(error = %error, retry_in = ?delay, "cannot reach Redis");
                    consumer.report(BrokerEvent::ConnectionLost { error: &error });
                    if pause(stopping, delay).await {
                        return None;
                    }
                }
            }
        }
    }

    /// A fetcher's connection broke: logged by the first fetcher to see it, once per outage.
    fn lost<C: Consumer>(&self, consumer: &C, error: &redis::RedisError) {
        if let Ok(mut state) = self.state.try_lock()
            && state.healthy
        {
            state.healthy = false;
            let error = events_core::text::OneLine(error).to_string();
            tracing::warn!(error = %error, "lost the connection to Redis; reconnecting");
            consumer.report(BrokerEvent::ConnectionLost { error: &error });
        }
    }
}

/// One of the connections that take messages, with what the fetchers share.
struct Fetcher<C> {
    consumer: Arc<C>,
    link: Arc<Link>,
    window: Arc<Semaphore>,
    permits: Arc<Semaphore>,
    held: HeldMap,
    shared: Arc<Fetchers>,
}

impl<C: Consumer> Fetcher<C> {
    /// Takes messages until the worker stops: connect (through the gate), take, hand them to
    /// tasks of their own; poll in turn while the lists are empty.
    async fn run(self, mut stopping: watch::Receiver<bool>) {
        let settings = self.consumer.settings();
        let take = redis::Script::new(TAKE);
        let mut idle = Backoff::new(
            IDLE_POLL_MIN,
            settings.redis_idle_poll.max(IDLE_POLL_MIN),
            Jitter::Above,
        );
        // Held while this fetcher is the one polling an idle worker's lists.
        let mut idle_turn: Option<tokio::sync::OwnedMutexGuard<()>> = None;
        let mut connection: Option<MultiplexedConnection> = None;
        let mut failures = Backoff::reconnect(settings.reconnect_max_delay);
        loop {
            let mut taken_permits = tokio::select! {
                biased;
                () = stopped(&mut stopping) => return,
                permit = Arc::clone(&self.window).acquire_owned() => permit.expect("never closed"),
            };
            if connection.is_none() {
                // Polling is not this fetcher's job while it has no connection.
                idle_turn = None;
                match self
                    .shared
                    .gate
                    .connect(&*self.consumer, &mut stopping)
                    .await
                {
                    Some(c) => connection = Some(c),
                    None => return,
                }
            }
            let Some(conn) = connection.as_mut() else {
                continue;
            };
            self.widen(&mut taken_permits);
            let rotation = self.shared.rotation();
            match self
                .take(&take, &rotation, conn, taken_permits.num_permits())
                .await
            {
                Ok(Some(taken)) => {
                    idle.reset();
                    failures.reset();
                    // Found work: the next fetcher in line polls (and takes at once if there is
                    // more).
                    idle_turn = None;
                    self.dispatch(&rotation, taken, taken_permits);
                }
                Ok(None) => {
                    drop(taken_permits);
                    failures.reset();
                    // Nothing there. One fetcher polls at a time: wait for the turn (the one
                    // polling gives it up as soon as it finds work), then take at once.
                    if idle_turn.is_none() {
                        let turn = Arc::clone(&self.shared.idle_turn).lock_owned();
                        idle_turn = tokio::select! {
                            biased;
                            () = stopped(&mut stopping) => return,
                            turn = turn => Some(turn),
                        };
                        idle.reset();
                        continue;
                    }
                    // This fetcher's turn: look again after a pause that grows while the lists
                    // stay empty. No blocking command waits here: `BRPOP`/`BLMOVE` return the
                    // message they wake up for, whatever its size, so an oversize envelope
                    // would reach the worker before `TAKE` could refuse it.
                    if pause(&mut stopping, idle.step()).await {
                        return;
                    }
                }
                Err(error) => {
                    // If the script ran before the connection broke, what it took is in
                    // `unacked` and comes back after the visibility timeout.
                    drop(taken_permits);
                    idle_turn = None;
                    if is_connection_error(&error) {
                        // Reconnecting goes through the gate, which logs each failed attempt.
                        self.shared.gate.lost(&*self.consumer, &error);
                        connection = None;
                        continue;
                    }
                    let delay = failures.step();
                    const TAKE_FAILED: &str = "taking messages failed";
                    if self.consumer.quiet().allow(TAKE_FAILED, Loudness::Error) {
                        tracing::error!(error = %events_core::text::OneLine(&error), retry_in = ?delay, "{TAKE_FAILED}");
                    }
                    if pause(&mut stopping, delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// Takes as many as the window has room for: one round trip for many.
    fn widen(&self, taken_permits: &mut OwnedSemaphorePermit) {
        let extra = self.window.available_permits().min(FETCH_BATCH - 1);
        if extra > 0
            && let Ok(more) =
                Arc::clone(&self.window).try_acquire_many_owned(u32::try_from(extra).unwrap_or(1))
        {
            taken_permits.merge(more);
        }
    }

    /// One [`TAKE`] of up to `count` messages, from the queues in their current order (none
    /// when the worker consumes no queue).
    async fn take(
        &self,
        take: &redis::Script,
        rotation: &Rotation,
        connection: &mut MultiplexedConnection,
        count: usize,
    ) -> redis::RedisResult<Taken> {
        if rotation.queues.is_empty() {
            return Ok(None);
        }
        let settings = self.consumer.settings();
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
            .arg(count)
            .arg(uuid::Uuid::new_v4().simple().to_string())
            .arg(settings.decode.limit())
            .arg(now.to_rfc3339())
            .arg(&settings.hostname)
            .arg(settings.dead_letter_max_len);
        for key in &lists {
            invocation.arg(&rotation.queues[rotation.queue_of[key]]);
        }
        invocation.invoke_async(connection).await
    }

    /// Reports what the take refused, and hands each message taken to a task of its own.
    fn dispatch(
        &self,
        rotation: &Rotation,
        (list, envelopes, tags, refused, dropped): Batch,
        mut taken_permits: OwnedSemaphorePermit,
    ) {
        let Some(&queue_index) = rotation.queue_of.get(&list) else {
            unreachable!("the script returns one of the lists it was given")
        };
        rotation.delivered(queue_index);
        let queue = rotation.queues[queue_index].clone();
        for size in refused {
            self.consumer.report(BrokerEvent::Refused {
                queue: &queue,
                size,
                stored: true,
            });
        }
        for size in dropped {
            self.consumer.report(BrokerEvent::Refused {
                queue: &queue,
                size,
                stored: false,
            });
        }
        for (envelope, tag) in envelopes.into_iter().zip(tags) {
            let Some(permit) = taken_permits.split(1) else {
                unreachable!("the script takes at most one message per permit")
            };
            self.held.lock().expect("not poisoned").insert(
                tag.clone(),
                Held {
                    list: list.clone(),
                    envelope: envelope.clone(),
                },
            );
            tokio::spawn(handle(
                Fetched {
                    consumer: Arc::clone(&self.consumer),
                    link: Arc::clone(&self.link),
                    held: Arc::clone(&self.held),
                    permits: Arc::clone(&self.permits),
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

/// Where a fetched message came from, and what handling it needs.
struct Fetched<C> {
    consumer: Arc<C>,
    link: Arc<Link>,
    held: HeldMap,
    permits: Arc<Semaphore>,
    queue: String,
    list: String,
}

async fn handle<C: Consumer>(
    fetched: Fetched<C>,
    tag: String,
    envelope: Vec<u8>,
    window: OwnedSemaphorePermit,
) {
    let Fetched {
        consumer,
        link,
        held,
        permits,
        queue,
        list,
    } = fetched;
    let decoded = TaskMessage::decode_redis(&envelope, &consumer.settings().decode);
    // Not known here: kombu's `redelivered` header (set when a message is restored) says it, and
    // the worker reads it from the message.
    let receipt = consumer.receive(&queue, decoded, false);
    let running = tokio::select! {
        biased;
        () = cancelled(&consumer.settings().queues, &queue) => None,
        permit = permits.acquire_owned() => Some(permit.expect("never closed")),
    };
    let Some(running) = running else {
        // Its queue was cancelled (`cancel_consumer`) before it ran: back onto its list, at
        // the end taken next, for the queue's other consumers.
        drop(receipt);
        match restore(&link, &tag, &list, "RPUSH", &envelope).await {
            Ok(_) => {
                held.lock().expect("not poisoned").remove(&tag);
                consumer.report(BrokerEvent::Requeued { count: 1 });
            }
            Err(error) => tracing::error!(
                error = %events_core::text::OneLine(&error),
                tag,
                "could not return a message of a cancelled queue; it goes back at shutdown, or \
                 after the visibility timeout"
            ),
        }
        drop(window);
        return;
    };
    let verdict = consumer.process(receipt).await;
    drop(running);
    let taken = TakenMessage {
        queue: &queue,
        list: &list,
        tag: &tag,
        envelope: &envelope,
    };
    let settled = settle(&*consumer, &link, &taken, verdict).await;
    held.lock().expect("not poisoned").remove(&tag);
    if let Err(error) = settled {
        tracing::error!(
            error = %events_core::text::OneLine(&error),
            "could not settle the message; returning it to its queue"
        );
        consumer.report(BrokerEvent::Requeued { count: 1 });
        if let Err(error) = restore(&link, &tag, &list, "LPUSH", &envelope).await {
            tracing::error!(
                error = %events_core::text::OneLine(&error),
                "it stays in `unacked` and will be restored after the visibility timeout"
            );
        }
    }
    drop(window);
}

/// Resolves once `queue` is no longer in the set (at once if it is not).
async fn cancelled(queues: &QueueSet, queue: &str) {
    let mut watch = queues.watch();
    if watch
        .wait_for(|current| !current.iter().any(|q| q.name == queue))
        .await
        .is_err()
    {
        // The set outlives the consumer: never here; and if it were, nothing is cancelled.
        std::future::pending::<()>().await;
    }
}

/// A message taken: its queue, its list, the tag of its `unacked` entry and its envelope.
struct TakenMessage<'a> {
    queue: &'a str,
    list: &'a str,
    tag: &'a str,
    envelope: &'a [u8],
}

/// Carries out the worker's verdict on a message in one transaction with its acknowledgement
/// (nothing is lost or doubled in between): postpones it into the postponed set, pushes the
/// retry onto its queue, the dead letters onto the dead-letter list (within its bound).
async fn settle<C: Consumer>(
    consumer: &C,
    link: &Link,
    taken: &TakenMessage<'_>,
    verdict: Verdict,
) -> Result<(), CeleryError> {
    let settings = consumer.settings();
    let TakenMessage {
        queue,
        list,
        tag,
        envelope,
    } = *taken;
    let mut pipe = redis::pipe();
    pipe.atomic();
    // The reasons of the dead letters pushed, in the order of their `PUSH_CAPPED` replies.
    let mut letters = Vec::new();
    match verdict {
        Verdict::Ack => {}
        Verdict::Postpone(eta, ..) => {
            pipe.zadd(
                delayed_key(list),
                delayed_member(envelope),
                eta.timestamp_millis(),
            )
            .ignore();
        }
        Verdict::Forward { retry, dead } => {
            if let Some(mut retry) = retry {
                retry.routing = Routing::queue(queue);
                let message = retry.to_redis()?;
                let priority = retry.properties.priority.unwrap_or(0);
                pipe.lpush(redis_queue_key(queue, priority), message.envelope)
                    .ignore();
            }
            for letter in dead {
                let kept = match &letter.replay {
                    Some(replay) => replay.to_redis()?.envelope.into_bytes(),
                    None => envelope.to_vec(),
                };
                let record = RedisRecord::new(&letter, queue, &settings.hostname, &kept, envelope);
                pipe.cmd("EVAL")
                    .arg(PUSH_CAPPED)
                    .arg(1)
                    .arg(dead_letter_queue(queue))
                    .arg(record.to_json())
                    .arg(settings.dead_letter_max_len);
                letters.push(letter.reason);
            }
        }
    }
    pipe.zrem(UNACKED_INDEX, tag)
        .ignore()
        .hdel(UNACKED, tag)
        .ignore();
    let pushed: Vec<i64> = link.run("acknowledging a message", &pipe).await?;
    for (reason, pushed) in letters.iter().zip(pushed) {
        consumer.report(BrokerEvent::DeadLettered {
            queue,
            reason,
            stored: pushed != 0,
        });
    }
    Ok(())
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
        // The set changes: the kept queues keep their turn, the added one comes last.
        let next = rotation.following(&["c".to_owned(), "b".to_owned(), "d".to_owned()]);
        assert_eq!(next.queues, ["b", "c", "d"]);
        assert_eq!(next.order(), [0, 1, 2]);
        assert_eq!(next.dead[2], "d.dead_letter");
        assert!(!next.queue_of.contains_key("a"));
        let empty = next.following(&[]);
        assert!(empty.queues.is_empty() && empty.lists_in_order(&empty.order()).is_empty());
    }
}
