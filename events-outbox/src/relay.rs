//! [`Relay`]: delivers committed outbox rows to an [`events_core::Backend`], marking each
//! delivered only after the backend confirmed it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use events_core::{Backend, EventBus, EventRef, PublishOptions, Registry};
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, join_all};
use futures_util::stream::FuturesUnordered;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use tokio::sync::{Notify, watch};
use tracing::Instrument;
use uuid::Uuid;

use crate::error::OutboxError;
use crate::outbox::Outbox;

/// Delivers an outbox's committed events to a backend, in batches, until told to stop.
///
/// - **Wakes** on the table's `NOTIFY` (sent at the commit of every transaction that wrote
///   events) within milliseconds, and polls every [`poll_interval`](Self::poll_interval) in
///   case a notification was missed (a dropped `LISTEN` connection).
/// - **Claims** due rows with `FOR UPDATE SKIP LOCKED` in a transaction and hands each to the
///   backend at once (a Celery backend pipelines them). Claiming never waits for the broker's
///   confirmations: while earlier rows wait for theirs, the transaction goes on claiming newly
///   committed rows, up to [`batch_size`](Self::batch_size) rows; then the next transaction
///   (of [`concurrency`](Self::concurrency)) takes over the claiming, and the full one, once
///   the broker confirmed or refused all its rows, deletes the confirmed ones (or marks them
///   delivered, with a [`retention`](Self::retention)) and commits. A row is marked only
///   after the broker confirmed it. Several relays — tasks, processes, machines — share one
///   table: a row is claimed by one relay at a time. If a relay dies or loses its connection
///   mid-batch, its transaction rolls back and the rows are delivered again (same task id):
///   delivery is at least once.
/// - **Retries** a failed delivery after a backoff (doubling from
///   [`backoff`](Self::backoff)'s base to its cap); after [`max_attempts`](Self::max_attempts)
///   the row is parked as failed with its error ([`Outbox::failed`],
///   [`Outbox::replay_failed`]).
/// - **Orders** events of one [ordering key](crate::OutboxOptions::key): only the oldest
///   pending row of a key is claimable, so they are delivered one after the other, in commit
///   order, even with several relays. The next event of a key is claimed once the previous
///   one is confirmed (by the transaction that delivered it), so a single hot key is delivered
///   at one event per broker round trip. (A parked row no longer holds its key back.)
/// - The **task id** of every delivery of an event is its row id.
///
/// On the [`MemoryBackend`](events_core::MemoryBackend) (through [`Relay::for_bus`]) the same
/// relay runs the handlers in process after the commit.
///
/// ```no_run
/// use events_celery::{CeleryBackend, CeleryConfig};
/// use events_outbox::{Outbox, Relay};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
/// let outbox = Outbox::default();
/// outbox.migrate(&pool).await?;
/// let backend = CeleryBackend::new(CeleryConfig::from_env()?)?;
/// let relay = Relay::new(outbox, pool, backend).batch_size(500);
/// let report = relay.run_until(tokio::signal::ctrl_c()).await;
/// println!("delivered {}", report.delivered);
/// # Ok(()) }
/// ```
pub struct Relay {
    outbox: Outbox,
    pool: PgPool,
    backend: Target,
    config: RelayConfig,
    counters: Arc<Counters>,
}

#[derive(Clone)]
enum Target {
    Backend(Arc<dyn Backend>),
    Bus(Arc<EventBus>),
    StaticBus(&'static EventBus),
}

impl Target {
    fn get(&self) -> &dyn Backend {
        match self {
            Target::Backend(backend) => &**backend,
            Target::Bus(bus) => bus.backend(),
            Target::StaticBus(bus) => bus.backend(),
        }
    }
}

#[derive(Debug, Clone)]
struct RelayConfig {
    batch_size: usize,
    concurrency: usize,
    poll_interval: Duration,
    listen: bool,
    max_attempts: i32,
    backoff_base: Duration,
    backoff_max: Duration,
    retention: Option<Duration>,
    publish_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 512,
            concurrency: 2,
            poll_interval: Duration::from_millis(500),
            listen: true,
            max_attempts: 10,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            retention: None,
            publish_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
    parked: AtomicU64,
    batches: AtomicU64,
    database_errors: AtomicU64,
    purged: AtomicU64,
}

/// What a relay did so far ([`Relay::stats`], and [`Relay::run_until`]'s result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RelayReport {
    /// Events the backend confirmed and the relay marked delivered.
    pub delivered: u64,
    /// Deliveries that failed (each retried later, or parked).
    pub failed_attempts: u64,
    /// Events parked as failed after their last attempt.
    pub parked: u64,
    /// Claims that found rows (a batch's transaction claims once, or again at each commit
    /// notified while its rows wait for the broker).
    pub batches: u64,
    /// Database errors the relay recovered from (a batch rolled back, then retried).
    pub database_errors: u64,
    /// Delivered rows deleted after the retention period.
    pub purged: u64,
}

/// A live view of a running relay's counts; cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayStats(Arc<Counters>);

impl RelayStats {
    /// The counts now.
    pub fn snapshot(&self) -> RelayReport {
        let c = &self.0;
        RelayReport {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed_attempts: c.failed_attempts.load(Ordering::Relaxed),
            parked: c.parked.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            database_errors: c.database_errors.load(Ordering::Relaxed),
            purged: c.purged.load(Ordering::Relaxed),
        }
    }
}

/// A claim looks for its rows among those whose `seq` is at most this many times
/// `batch_size` past the oldest due row's.
const CLAIM_WINDOW: i64 = 8;

/// One claimed row.
struct Claimed {
    id: Uuid,
    event: String,
    payload: String,
    eta: Option<DateTime<Utc>>,
    expires: Option<DateTime<Utc>>,
    priority: Option<i16>,
    queue: Option<String>,
    attempts: i32,
    /// It has an ordering key: its key's next row waits for it.
    keyed: bool,
}

/// What became of one delivery: the row, and the backend's answer (the error text is what the
/// row keeps).
type Outcome = (Claimed, Result<(), String>);

/// What the claiming transactions of one relay share.
struct Shared {
    /// Held by the one transaction that claims; the others wait for their confirmations.
    claimer: tokio::sync::Mutex<()>,
    /// Set at every notification, cleared just before a claim: a commit notified while no
    /// transaction listened (between two claimers) is not missed.
    due: AtomicBool,
    /// Wakes a claimer waiting for commits.
    wake: Notify,
}

/// One transaction of a relay: the rows it claimed, each handed to the backend at once, held
/// (locked) until the broker confirmed or refused it, then marked, and committed.
struct Batch<'r> {
    relay: &'r Relay,
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    /// Rows claimed and not yet marked: excluded from this transaction's further claims (a
    /// transaction does not skip the rows it locked itself).
    held: Vec<Uuid>,
    /// Rows claimed in all.
    claimed: usize,
    in_flight: FuturesUnordered<BoxFuture<'r, Outcome>>,
    /// Confirmed, to mark.
    delivered: Vec<Uuid>,
    /// Refused or timed out, to mark for a retry: id, error, retry delay (ms).
    failed: (Vec<Uuid>, Vec<String>, Vec<i64>),
    /// Marked in this transaction, counted at its commit: delivered, failed, parked.
    marked: (u64, u64, u64),
}

impl<'r> Batch<'r> {
    async fn begin(relay: &'r Relay) -> Result<Self, sqlx::Error> {
        Ok(Self {
            relay,
            tx: relay.pool.begin().await?,
            held: Vec::new(),
            claimed: 0,
            in_flight: FuturesUnordered::new(),
            delivered: Vec::new(),
            failed: Default::default(),
            marked: (0, 0, 0),
        })
    }

    /// Claims up to `limit` more due rows and hands each to the backend; returns how many.
    async fn claim(&mut self, limit: usize) -> Result<usize, sqlx::Error> {
        let relay = self.relay;
        let sql = &relay.outbox.inner().sql;
        let window = i64::try_from(relay.config.batch_size)
            .unwrap_or(i64::MAX / CLAIM_WINDOW)
            .saturating_mul(CLAIM_WINDOW);
        let rows = sqlx::query(&sql.claim)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(window)
            .bind(&self.held)
            .fetch_all(&mut *self.tx)
            .await?;
        for row in &rows {
            let claimed = Claimed {
                id: row.try_get("id")?,
                event: row.try_get("event")?,
                payload: row.try_get("payload")?,
                eta: row.try_get("eta")?,
                expires: row.try_get("expires")?,
                priority: row.try_get("priority")?,
                queue: row.try_get("queue")?,
                attempts: row.try_get("attempts")?,
                keyed: row.try_get("keyed")?,
            };
            self.held.push(claimed.id);
            self.in_flight.push(Box::pin(async move {
                let result = relay.deliver(&claimed).await;
                (claimed, result)
            }));
        }
        if !rows.is_empty() {
            relay.counters.batches.fetch_add(1, Ordering::Relaxed);
        }
        self.claimed += rows.len();
        Ok(rows.len())
    }

    /// Takes one delivery's outcome in (marked at the next [`mark`](Self::mark)).
    fn settle(&mut self, (row, result): Outcome) {
        match result {
            Ok(()) => self.delivered.push(row.id),
            Err(error) => {
                tracing::warn!(
                    id = %row.id,
                    event = %row.event,
                    attempt = row.attempts + 1,
                    %error,
                    "outbox relay: delivery failed"
                );
                self.failed.0.push(row.id);
                self.failed.1.push(error);
                self.failed.2.push(self.relay.backoff_ms(row.attempts));
            }
        }
    }

    /// Marks the settled rows in this transaction: confirmed ones deleted (or kept as
    /// delivered), failed ones due again after their backoff, or parked.
    async fn mark(&mut self) -> Result<(), sqlx::Error> {
        let relay = self.relay;
        let sql = &relay.outbox.inner().sql;
        if !self.delivered.is_empty() {
            let mark = match relay.config.retention {
                None => &sql.delete_delivered,
                Some(_) => &sql.mark_delivered,
            };
            sqlx::query(mark)
                .bind(&self.delivered)
                .execute(&mut *self.tx)
                .await?;
        }
        if !self.failed.0.is_empty() {
            let states: Vec<i16> = sqlx::query_scalar(&sql.mark_failed)
                .bind(&self.failed.0)
                .bind(&self.failed.1)
                .bind(&self.failed.2)
                .bind(relay.config.max_attempts)
                .fetch_all(&mut *self.tx)
                .await?;
            self.marked.2 += states.iter().filter(|&&s| s == 2).count() as u64;
        }
        self.marked.0 += self.delivered.len() as u64;
        self.marked.1 += self.failed.0.len() as u64;
        let marked: std::collections::HashSet<Uuid> = self
            .delivered
            .drain(..)
            .chain(self.failed.0.drain(..))
            .collect();
        self.failed.1.clear();
        self.failed.2.clear();
        if !marked.is_empty() {
            self.held.retain(|id| !marked.contains(id));
        }
        Ok(())
    }

    /// Waits for every delivery still in flight, marks all rows and commits.
    async fn finish(mut self) -> Result<(), sqlx::Error> {
        while let Some(outcome) = self.in_flight.next().await {
            self.settle(outcome);
        }
        self.mark().await?;
        let Self {
            relay, tx, marked, ..
        } = self;
        tx.commit().await?;
        let (delivered, failed, parked) = marked;
        let c = &relay.counters;
        c.delivered.fetch_add(delivered, Ordering::Relaxed);
        c.failed_attempts.fetch_add(failed, Ordering::Relaxed);
        if parked > 0 {
            c.parked.fetch_add(parked, Ordering::Relaxed);
            tracing::error!(
                table = %relay.outbox.table_name(),
                parked,
                "outbox relay: events parked as failed after their last attempt; list them \
                 with `Outbox::failed`, replay them with `Outbox::replay_failed`"
            );
        }
        tracing::debug!(delivered, failed, "outbox batch done");
        Ok(())
    }
}

impl Relay {
    /// A relay of `outbox`, reading through `pool`, delivering to `backend`.
    pub fn new(outbox: Outbox, pool: PgPool, backend: impl Backend) -> Self {
        Self::from_shared(outbox, pool, Arc::new(backend))
    }

    /// [`new`](Self::new) with a shared backend.
    pub fn from_shared(outbox: Outbox, pool: PgPool, backend: Arc<dyn Backend>) -> Self {
        Self::with_target(outbox, pool, Target::Backend(backend))
    }

    /// A relay delivering through an [`EventBus`]'s backend (its closures subscribed too):
    /// with a [`MemoryBackend`](events_core::MemoryBackend), in-process delivery after commit.
    pub fn for_bus(outbox: Outbox, pool: PgPool, bus: Arc<EventBus>) -> Self {
        Self::with_target(outbox, pool, Target::Bus(bus))
    }

    /// A relay delivering through the global bus ([`events_core::init`]).
    pub fn for_global_bus(outbox: Outbox, pool: PgPool) -> Result<Self, OutboxError> {
        Ok(Self::with_target(
            outbox,
            pool,
            Target::StaticBus(events_core::bus()?),
        ))
    }

    fn with_target(outbox: Outbox, pool: PgPool, backend: Target) -> Self {
        Self {
            outbox,
            pool,
            backend,
            config: RelayConfig::default(),
            counters: Arc::default(),
        }
    }

    /// How many rows one transaction claims at most, and so holds until the broker confirmed
    /// them (default 512).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.config.batch_size = rows.max(1);
        self
    }

    /// How many transactions (batches) this relay has open at once, each on its own pool
    /// connection (default 2): one claims while the others wait for their last confirmations
    /// and commit. At most `concurrency × batch_size` rows wait for the broker at once.
    pub fn concurrency(mut self, batches: usize) -> Self {
        self.config.concurrency = batches.max(1);
        self
    }

    /// How often an idle relay looks for due rows without a notification (default 500 ms):
    /// the bound on a missed notification's delay, and the precision of etas and retries.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    /// Whether to `LISTEN` for commits (default true); without it, the relay only polls.
    pub fn listen(mut self, yes: bool) -> Self {
        self.config.listen = yes;
        self
    }

    /// Deliveries tried before a row is parked as failed (default 10).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = i32::try_from(attempts.max(1)).unwrap_or(i32::MAX);
        self
    }

    /// The retry delay after the first failure, doubled after each further one up to `max`
    /// (defaults 1 s and 5 min), with ±20% jitter.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config.backoff_base = base;
        self.config.backoff_max = max.max(base);
        self
    }

    /// Keep delivered rows this long (then the relay deletes them, in batches) instead of
    /// deleting them at once (`None`, the default).
    pub fn retention(mut self, keep: Option<Duration>) -> Self {
        self.config.retention = keep;
        self
    }

    /// How long one delivery may take before it counts as failed (default 60 s; a Celery
    /// backend fails sooner, after its own publish timeout).
    pub fn publish_timeout(mut self, limit: Duration) -> Self {
        self.config.publish_timeout = limit;
        self
    }

    /// A live view of what this relay did.
    pub fn stats(&self) -> RelayStats {
        RelayStats(Arc::clone(&self.counters))
    }

    /// Runs until `shutdown` resolves, then finishes the batches in flight (delivered rows are
    /// marked, nothing is left half done) and returns what it did. Database and broker errors
    /// are logged and retried, never returned: a relay outlives a PostgreSQL restart and a
    /// broker outage.
    pub async fn run_until<F: Future>(self, shutdown: F) -> RelayReport {
        let (stop_tx, stop) = watch::channel(false);
        let shared = Arc::new(Shared {
            claimer: tokio::sync::Mutex::new(()),
            // Rows committed before the relay started are due.
            due: AtomicBool::new(true),
            wake: Notify::new(),
        });
        let listener = self.config.listen.then(|| {
            tokio::spawn(listen(
                self.pool.clone(),
                self.outbox.channel().to_owned(),
                Arc::clone(&shared),
                stop.clone(),
            ))
        });
        let loops = join_all((0..self.config.concurrency).map(|n| {
            let span =
                tracing::info_span!("outbox_relay", table = %self.outbox.table_name(), loop_ = n);
            self.claim_loop(n, &shared, stop.clone()).instrument(span)
        }));
        let stopping = async {
            shutdown.await;
            tracing::info!(table = %self.outbox.table_name(), "outbox relay stopping");
            let _ = stop_tx.send(true);
        };
        tokio::join!(loops, stopping);
        if let Some(listener) = listener {
            listener.abort();
        }
        self.stats().snapshot()
    }

    /// Delivers due rows until none is left (or only rows another relay holds); returns how
    /// many this call delivered. For scripts and tests; a service runs
    /// [`run_until`](Self::run_until).
    pub async fn drain(&self) -> Result<u64, OutboxError> {
        let before = self.counters.delivered.load(Ordering::Relaxed);
        let database = |e| OutboxError::database("relay", self.outbox.table_name(), e);
        loop {
            let mut batch = Batch::begin(self).await.map_err(database)?;
            let claimed = batch
                .claim(self.config.batch_size)
                .await
                .map_err(database)?;
            batch.finish().await.map_err(database)?;
            if claimed == 0 {
                break;
            }
        }
        Ok(self.counters.delivered.load(Ordering::Relaxed) - before)
    }

    /// One of the relay's `concurrency` loops: waits to be the claimer, then runs one
    /// transaction (see [`batch`](Self::batch)); again and again until stopped.
    async fn claim_loop(&self, n: usize, shared: &Shared, mut stop: watch::Receiver<bool>) {
        let mut error_delay = Duration::from_millis(100);
        let mut last_purge = std::time::Instant::now();
        loop {
            if *stop.borrow() {
                break;
            }
            // Registered before waiting for the claimer's place: nothing notified meanwhile is
            // lost (and `due` covers what was notified before).
            let notified = shared.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let claimer = tokio::select! {
                claimer = shared.claimer.lock() => claimer,
                _ = stop.changed() => continue,
            };
            if !shared.due.load(Ordering::Acquire) {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                    _ = stop.changed() => continue,
                }
            }
            match self.batch(claimer, shared, &mut stop).await {
                Ok(()) => error_delay = Duration::from_millis(100),
                Err(error) => {
                    self.counters
                        .database_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        table = %self.outbox.table_name(),
                        %error,
                        retry_in_ms = error_delay.as_millis() as u64,
                        "outbox relay: database error, the batch was rolled back; retrying"
                    );
                    // Its rows are due again.
                    shared.due.store(true, Ordering::Release);
                    tokio::select! {
                        _ = tokio::time::sleep(error_delay) => {}
                        _ = stop.changed() => {}
                    }
                    error_delay = (error_delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            if n == 0
                && let Some(retention) = self.config.retention
                && last_purge.elapsed() >= Duration::from_secs(60).min(retention)
            {
                last_purge = std::time::Instant::now();
                self.purge(retention).await;
            }
        }
    }

    /// One transaction: claims rows (as the claimer) and hands them to the backend, claiming
    /// again at every commit notified, without waiting for the broker, until it holds
    /// `batch_size` rows, nothing is due and every row it holds is settled, or a row with an
    /// ordering key was confirmed (its key's next row waits for this commit); then leaves the
    /// claiming to another loop, waits for its last confirmations, marks its rows and commits.
    async fn batch(
        &self,
        claimer: tokio::sync::MutexGuard<'_, ()>,
        shared: &Shared,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), sqlx::Error> {
        let mut batch = Batch::begin(self).await?;
        let mut claimer = Some(claimer);
        let notified = shared.wake.notified();
        tokio::pin!(notified);
        let poll = tokio::time::sleep(self.config.poll_interval);
        tokio::pin!(poll);
        let mut claim = true;
        let mut key_released = false;
        while let Some(_claiming) = &claimer {
            if claim || shared.due.load(Ordering::Acquire) {
                // Armed before claiming: a commit notified during the claim wakes the next one.
                notified.set(shared.wake.notified());
                notified.as_mut().enable();
                shared.due.store(false, Ordering::Release);
                poll.as_mut()
                    .reset(tokio::time::Instant::now() + self.config.poll_interval);
                let limit = self.config.batch_size - batch.claimed;
                let claimed = batch.claim(limit).await?;
                claim = false;
                if claimed == limit {
                    // Full: more rows may be due; the next claimer claims them at once.
                    shared.due.store(true, Ordering::Release);
                    break;
                }
            }
            if batch.in_flight.is_empty() {
                // Nothing due, nothing waiting for the broker: commit what is settled.
                break;
            }
            tokio::select! {
                Some(outcome) = batch.in_flight.next() => {
                    if outcome.0.keyed && outcome.1.is_ok() {
                        // Its key's next row is claimable once this transaction committed (not
                        // before: were it rolled back, the two would go again, out of order).
                        key_released = true;
                        claimer = None;
                    }
                    batch.settle(outcome);
                }
                _ = &mut notified => claim = true,
                _ = &mut poll => claim = true,
                _ = stop.changed() => claimer = None,
            }
        }
        // Another loop claims while this one waits for the broker and commits.
        drop(claimer);
        batch.finish().await?;
        if key_released {
            shared.due.store(true, Ordering::Release);
            shared.wake.notify_waiters();
        }
        Ok(())
    }

    async fn purge(&self, retention: Duration) {
        let Ok(mut conn) = self.pool.acquire().await else {
            return;
        };
        loop {
            match self
                .outbox
                .purge_delivered(&mut conn, retention, 10_000)
                .await
            {
                Ok(0) => break,
                Ok(n) => {
                    self.counters.purged.fetch_add(n, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(%error, "outbox relay: purging delivered rows failed");
                    break;
                }
            }
        }
    }

    fn backoff_ms(&self, attempts_before: i32) -> i64 {
        let doublings = u32::try_from(attempts_before.clamp(0, 30)).unwrap_or(0);
        let delay = self
            .config
            .backoff_base
            .saturating_mul(1 << doublings)
            .min(self.config.backoff_max);
        let jitter = 0.8 + fastrand::f64() * 0.4;
        (delay.as_secs_f64() * jitter * 1000.0) as i64
    }

    /// Publishes one row; the error text is what the row keeps.
    async fn deliver(&self, row: &Claimed) -> Result<(), String> {
        let registry = Registry::collected().map_err(|e| e.to_string())?;
        let descriptor = registry.event(&row.event).ok_or_else(|| {
            format!(
                "event `{}` is not declared in this relay's program: link the crate that \
                 declares it (`#[domain_event(name = \"{}\")]`) into the relay",
                row.event, row.event
            )
        })?;
        let value = descriptor
            .decode_json(&row.payload)
            .map_err(|e| format!("the payload does not fit `{}`: {e}", descriptor.type_name()))?;
        let event = EventRef::from_any(descriptor, &*value)
            .ok_or_else(|| "the decoded event is not of its descriptor's type".to_owned())?;
        let mut options = PublishOptions::new().task_id(row.id.to_string());
        if let Some(eta) = row.eta {
            options = options.eta(SystemTime::from(eta));
        }
        if let Some(expires) = row.expires {
            options = options.expires_at(SystemTime::from(expires));
        }
        if let Some(priority) = row.priority {
            options = options.priority(u8::try_from(priority).unwrap_or(u8::MAX));
        }
        if let Some(queue) = &row.queue {
            options = options.queue(queue.clone());
        }
        let publish = self.backend.get().publish_with(event, &options);
        match tokio::time::timeout(self.config.publish_timeout, publish).await {
            Ok(Ok(_receipt)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!(
                "the backend did not confirm within {:?}",
                self.config.publish_timeout
            )),
        }
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("outbox", &self.outbox)
            .field("backend", &self.backend.get().describe())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Holds a `LISTEN` connection and wakes the claim loops on every notification, and whenever
/// the connection was lost (notifications may have been missed meanwhile).
async fn listen(
    pool: PgPool,
    channel: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let wake = || {
        shared.due.store(true, Ordering::Release);
        shared.wake.notify_waiters();
    };
    loop {
        if *stop.borrow() {
            return;
        }
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, channel, "outbox relay: LISTEN failed; polling meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        wake();
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                _ = stop.changed() => return,
            };
            match received {
                Ok(Some(_)) => wake(),
                // The connection was lost; `try_recv` reconnects on the next call.
                Ok(None) => wake(),
                Err(error) => {
                    tracing::warn!(%error, channel, "outbox relay: LISTEN connection failed");
                    wake();
                    break;
                }
            }
        }
    }
}
