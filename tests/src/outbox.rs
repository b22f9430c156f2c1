//! What the outbox tests (`tests/tests/outbox*.rs`) and the `outbox_relay` process share: the
//! PostgreSQL they use, a fresh outbox schema per test, the test event, and a collector that
//! reads what the relays delivered to a Redis queue.

use std::collections::HashMap;
use std::time::Duration;

use events_celery::{DecodeOptions, TaskMessage};
use events_core::domain_event;
use events_outbox::{Outbox, OutboxConfig};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The event every outbox test writes: a run (one per test), a sequence number, and the
/// ordering key it was written with (if any).
#[domain_event(name = "outbox_test.tick")]
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxTick {
    /// The test run.
    pub run: String,
    /// 0, 1, 2, … in the order the test wrote them.
    pub seq: u64,
    /// The ordering key it was written with.
    pub key: Option<String>,
}

/// The PostgreSQL the tests use (`EVENTS_TEST_PG_URL`, default the local one, database
/// `test`, user `postgres`, trust auth).
pub fn pg_url() -> String {
    std::env::var("EVENTS_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Connect options for [`pg_url`] with this application name (so a test can find and
/// terminate the connections of one relay).
pub fn pg_options(application_name: &str) -> PgConnectOptions {
    pg_url()
        .parse::<PgConnectOptions>()
        .expect("a valid PostgreSQL URL")
        .application_name(application_name)
}

/// A pool on [`pg_url`] named `application_name`.
pub async fn pool(application_name: &str, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(pg_options(application_name))
        .await
        .expect("PostgreSQL is running on 127.0.0.1:5432 (scripts/services.sh starts it)")
}

/// A schema name no other test (or earlier run) uses.
pub fn unique_schema(what: &str) -> String {
    format!(
        "t_{what}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A migrated outbox in a schema of its own (`<schema>.outbox`).
pub async fn fresh_outbox(pool: &PgPool, what: &str) -> Outbox {
    let outbox = Outbox::new(
        OutboxConfig::new()
            .schema(unique_schema(what))
            .table("outbox"),
    )
    .unwrap();
    outbox.migrate(pool).await.unwrap();
    outbox
}

/// Drops the outbox's schema (tests clean up after themselves).
pub async fn drop_outbox(pool: &PgPool, outbox: &Outbox) {
    let schema = outbox.table_name().split('.').next().unwrap().to_owned();
    let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(pool)
        .await;
}

/// How many rows the outbox table holds, whatever their state.
pub async fn rows(pool: &PgPool, outbox: &Outbox) -> i64 {
    let (schema, table) = outbox.table_name().split_once('.').unwrap();
    sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".\"{table}\""))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Writes the ticks `range` of `run` in transactions of `per_tx`, with `keys` ordering keys
/// (0: none): tick `i` keyed `<key_prefix>k<i % keys>`.
pub async fn write_ticks(
    pool: &PgPool,
    outbox: &Outbox,
    run: &str,
    range: std::ops::Range<u64>,
    per_tx: usize,
    keys: u64,
    key_prefix: &str,
) {
    let ticks: Vec<u64> = range.collect();
    for chunk in ticks.chunks(per_tx.max(1)) {
        let mut tx = pool.begin().await.unwrap();
        let entries = chunk
            .iter()
            .map(|&seq| {
                let key = (keys > 0).then(|| format!("{key_prefix}k{}", seq % keys));
                let tick = OutboxTick {
                    run: run.to_owned(),
                    seq,
                    key: key.clone(),
                };
                let entry = events_outbox::Entry::new(&tick).unwrap();
                match key {
                    Some(key) => entry.with(events_outbox::OutboxOptions::new().key(key)),
                    None => entry,
                }
            })
            .collect();
        outbox.insert_in(&mut tx, entries).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// What reached a Redis queue: every delivery of every tick, in queue order.
#[derive(Debug, Default)]
pub struct Delivered {
    /// (task id, tick) per message, oldest first.
    pub messages: Vec<(String, OutboxTick)>,
}

impl Delivered {
    /// Messages per seq.
    pub fn counts(&self) -> HashMap<u64, usize> {
        let mut counts = HashMap::new();
        for (_, tick) in &self.messages {
            *counts.entry(tick.seq).or_default() += 1;
        }
        counts
    }

    /// Seqs in `0..n` never delivered.
    pub fn lost(&self, n: u64) -> Vec<u64> {
        let counts = self.counts();
        (0..n).filter(|seq| !counts.contains_key(seq)).collect()
    }

    /// Deliveries beyond the first of each event.
    pub fn duplicates(&self) -> usize {
        self.counts().values().map(|c| c - 1).sum()
    }

    /// Whether every message of a seq carried the same task id (stable across deliveries).
    pub fn task_ids_stable(&self) -> bool {
        let mut ids: HashMap<u64, &str> = HashMap::new();
        self.messages
            .iter()
            .all(|(id, tick)| *ids.entry(tick.seq).or_insert(id) == id.as_str())
    }

    /// Keys whose events came out of order: a tick delivered after a later tick of its key had
    /// been delivered (a redelivery of the tick just delivered is not out of order).
    pub fn order_violations(&self) -> Vec<String> {
        let mut last: HashMap<&str, u64> = HashMap::new();
        let mut violations = Vec::new();
        for (_, tick) in &self.messages {
            let Some(key) = tick.key.as_deref() else {
                continue;
            };
            if let Some(&previous) = last.get(key)
                && tick.seq < previous
            {
                violations.push(format!("{key}: {} after {previous}", tick.seq));
            }
            last.insert(key, tick.seq);
        }
        violations
    }
}

/// Pops everything on the Redis list `queue` (oldest first) into `into`; returns how many.
pub async fn collect_redis(
    redis: &mut redis::aio::MultiplexedConnection,
    queue: &str,
    into: &mut Delivered,
) -> usize {
    let mut total = 0;
    loop {
        let envelopes: Option<Vec<String>> = redis::cmd("RPOP")
            .arg(queue)
            .arg(1000)
            .query_async(redis)
            .await
            .unwrap();
        let Some(envelopes) = envelopes else {
            return total;
        };
        total += envelopes.len();
        for envelope in envelopes {
            let message = TaskMessage::decode_redis(envelope.as_bytes(), &DecodeOptions::new())
                .expect("a Celery message");
            let tick: OutboxTick = message.payload().expect("an outbox_test.tick payload");
            into.messages.push((message.id, tick));
        }
    }
}

/// Collects from `queue` on the Redis at `redis_url` (after what `delivered` holds) until `n`
/// distinct ticks arrived and the outbox is empty, for at most `limit`; panics naming what is
/// missing otherwise.
pub async fn collect_until_all(
    pool: &PgPool,
    outbox: &Outbox,
    redis_url: &str,
    queue: &str,
    n: u64,
    limit: Duration,
    mut delivered: Delivered,
) -> Delivered {
    let mut redis = redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    loop {
        collect_redis(&mut redis, queue, &mut delivered).await;
        if delivered.counts().len() as u64 >= n && rows(pool, outbox).await == 0 {
            // Whatever a relay sent last is on the list by now (a row goes only after its
            // confirm).
            collect_redis(&mut redis, queue, &mut delivered).await;
            return delivered;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every event was delivered within {limit:?}: {} of {n} distinct, {} rows left, \
             first lost: {:?}",
            delivered.counts().len(),
            rows(pool, outbox).await,
            delivered.lost(n).iter().take(10).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How to start an `outbox_relay` process.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    /// The outbox's `schema.table`.
    pub table: String,
    /// The broker URL.
    pub broker_url: String,
    /// The queue it publishes to.
    pub queue: String,
    /// Rows per batch.
    pub batch: usize,
}

/// An `outbox_relay` process (its log kept when the test fails), killed when dropped.
#[derive(Debug)]
pub struct RelayProcess {
    process: crate::LoggedChild,
}

impl RelayProcess {
    /// Starts `exe` (the test's `env!("CARGO_BIN_EXE_outbox_relay")`).
    pub fn start(exe: &str, spec: &RelaySpec, n: usize) -> Self {
        let log = std::env::temp_dir().join(format!("{}.{n}.outbox-relay.log", spec.table));
        let mut command = std::process::Command::new(exe);
        command
            .env("OUTBOX_PG_URL", pg_url())
            .env("OUTBOX_TABLE", &spec.table)
            .env("OUTBOX_BROKER_URL", &spec.broker_url)
            .env("OUTBOX_QUEUE", &spec.queue)
            .env("OUTBOX_BATCH", spec.batch.to_string());
        Self {
            process: crate::LoggedChild::spawn("outbox_relay", &mut command, log),
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM, then SIGKILL after `grace`; whether it exited by itself, successfully.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        self.process.terminate(grace)
    }

    /// Panics with its output if it exited.
    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}
