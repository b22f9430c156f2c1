//! [`Relay`]: delivers committed outbox rows to an [`events_core::Backend`], marking each
//! delivered only after the backend confirmed it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use events_core::{Backend, EventBus, EventRef, PublishOptions, Registry};
use futures_util::future::join_all;
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
/// - **Claims** up to [`batch_size`](Self::batch_size) due rows with `FOR UPDATE SKIP LOCKED`
///   in a transaction, publishes them through the backend (concurrently; a Celery backend
///   pipelines them), and in the same transaction deletes the confirmed ones (or marks them
///   delivered, with a [`retention`](Self::retention)). Several relays — tasks, processes,
///   machines — share one table: a row is claimed by one relay at a time. If a relay dies or
///   loses its connection mid-batch, its transaction rolls back and the rows are delivered
///   again (same task id): delivery is at least once.
/// - **Retries** a failed delivery after a backoff (doubling from
///   [`backoff`](Self::backoff)'s base to its cap); after [`max_attempts`](Self::max_attempts)
///   the row is parked as failed with its error ([`Outbox::failed`],
///   [`Outbox::replay_failed`]).
/// - **Orders** events of one [ordering key](crate::OutboxOptions::key): only the oldest
///   pending row of a key is claimable, so they are delivered one after the other, in commit
///   order, even with several relays — one event of a key per batch, so a single hot key is
///   delivered at one event per round trip. (A parked row no longer holds its key back.)
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
            batch_size: 256,
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
    /// Batches claimed (non-empty).
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

/// A claim looks for its batch among this many times `batch_size` of the oldest due rows.
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

    /// How many rows one batch claims (default 256).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.config.batch_size = rows.max(1);
        self
    }

    /// How many batches this relay has in flight at once, each on its own connection
    /// (default 2: one claims while the other waits for the broker).
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
        let wake = Arc::new(Notify::new());
        let listener = self.config.listen.then(|| {
            tokio::spawn(listen(
                self.pool.clone(),
                self.outbox.channel().to_owned(),
                Arc::clone(&wake),
                stop.clone(),
            ))
        });
        let loops = join_all((0..self.config.concurrency).map(|n| {
            let span =
                tracing::info_span!("outbox_relay", table = %self.outbox.table_name(), loop_ = n);
            self.claim_loop(n, Arc::clone(&wake), stop.clone())
                .instrument(span)
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
        loop {
            let claimed = self
                .batch()
                .await
                .map_err(|e| OutboxError::database("relay", self.outbox.table_name(), e))?;
            if claimed == 0 {
                break;
            }
        }
        Ok(self.counters.delivered.load(Ordering::Relaxed) - before)
    }

    async fn claim_loop(&self, n: usize, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        let mut error_delay = Duration::from_millis(100);
        let mut last_purge = std::time::Instant::now();
        loop {
            if *stop.borrow() {
                break;
            }
            // Registered before claiming: a commit notified while the batch runs is not lost.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let claimed = match self.batch().await {
                Ok(claimed) => {
                    error_delay = Duration::from_millis(100);
                    claimed
                }
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
                    tokio::select! {
                        _ = tokio::time::sleep(error_delay) => {}
                        _ = stop.changed() => {}
                    }
                    error_delay = (error_delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if n == 0
                && let Some(retention) = self.config.retention
                && last_purge.elapsed() >= Duration::from_secs(60).min(retention)
            {
                last_purge = std::time::Instant::now();
                self.purge(retention).await;
            }
            if claimed >= self.config.batch_size {
                continue;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = stop.changed() => {}
            }
        }
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

    /// Claims, delivers and marks one batch, in one transaction; returns how many rows it
    /// claimed.
    async fn batch(&self) -> Result<usize, sqlx::Error> {
        let sql = &self.outbox.inner().sql;
        let mut tx = self.pool.begin().await?;
        let batch = i64::try_from(self.config.batch_size).unwrap_or(i64::MAX / 8);
        let rows = sqlx::query(&sql.claim)
            .bind(batch)
            .bind(batch.saturating_mul(CLAIM_WINDOW))
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let claimed = rows
            .iter()
            .map(|row| {
                Ok(Claimed {
                    id: row.try_get("id")?,
                    event: row.try_get("event")?,
                    payload: row.try_get("payload")?,
                    eta: row.try_get("eta")?,
                    expires: row.try_get("expires")?,
                    priority: row.try_get("priority")?,
                    queue: row.try_get("queue")?,
                    attempts: row.try_get("attempts")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let count = claimed.len();
        let span = tracing::debug_span!("outbox_batch", rows = count);
        let results = join_all(claimed.iter().map(|row| self.deliver(row)))
            .instrument(span)
            .await;
        let mut delivered = Vec::with_capacity(count);
        let (mut failed_ids, mut errors, mut delays) = (Vec::new(), Vec::new(), Vec::new());
        for (row, result) in claimed.iter().zip(results) {
            match result {
                Ok(()) => delivered.push(row.id),
                Err(error) => {
                    tracing::warn!(
                        id = %row.id,
                        event = %row.event,
                        attempt = row.attempts + 1,
                        %error,
                        "outbox relay: delivery failed"
                    );
                    failed_ids.push(row.id);
                    errors.push(error);
                    delays.push(self.backoff_ms(row.attempts));
                }
            }
        }
        if !delivered.is_empty() {
            let mark = match self.config.retention {
                None => &sql.delete_delivered,
                Some(_) => &sql.mark_delivered,
            };
            sqlx::query(mark).bind(&delivered).execute(&mut *tx).await?;
        }
        let mut parked = 0;
        if !failed_ids.is_empty() {
            let states: Vec<i16> = sqlx::query_scalar(&sql.mark_failed)
                .bind(&failed_ids)
                .bind(&errors)
                .bind(&delays)
                .bind(self.config.max_attempts)
                .fetch_all(&mut *tx)
                .await?;
            parked = states.iter().filter(|&&s| s == 2).count() as u64;
        }
        tx.commit().await?;
        let c = &self.counters;
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.delivered
            .fetch_add(delivered.len() as u64, Ordering::Relaxed);
        c.failed_attempts
            .fetch_add(failed_ids.len() as u64, Ordering::Relaxed);
        if parked > 0 {
            c.parked.fetch_add(parked, Ordering::Relaxed);
            tracing::error!(
                table = %self.outbox.table_name(),
                parked,
                "outbox relay: events parked as failed after their last attempt; list them \
                 with `Outbox::failed`, replay them with `Outbox::replay_failed`"
            );
        }
        tracing::debug!(
            claimed = count,
            delivered = delivered.len(),
            "outbox batch done"
        );
        Ok(count)
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
async fn listen(pool: PgPool, channel: String, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
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
        wake.notify_waiters();
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                _ = stop.changed() => return,
            };
            match received {
                Ok(Some(_)) => wake.notify_waiters(),
                // The connection was lost; `try_recv` reconnects on the next call.
                Ok(None) => wake.notify_waiters(),
                Err(error) => {
                    tracing::warn!(%error, channel, "outbox relay: LISTEN connection failed");
                    wake.notify_waiters();
                    break;
                }
            }
        }
    }
}
