//! [`Outbox`]: one outbox table (its names and statements), its migration, and the write side:
//! `publish_in` and friends, inside the caller's own transaction.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use events_core::{DomainEvent, EventRef, PublishOptions, Registry};
use sqlx::{Acquire, PgConnection, Postgres, Row};
use uuid::Uuid;

use crate::error::OutboxError;

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: [(&str, &str); 1] = [(
    "the outbox table, its indexes and its NOTIFY trigger",
    include_str!("../migrations/0001_outbox.sql"),
)];

/// The schema version this crate writes and relays.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Where an outbox lives: the schema and table. Defaults: `public.events_outbox`.
///
/// ```
/// use events_outbox::{Outbox, OutboxConfig};
///
/// let outbox = Outbox::new(OutboxConfig::new().schema("shop").table("outbox"))?;
/// assert_eq!(outbox.table_name(), "shop.outbox");
/// assert!(Outbox::new(OutboxConfig::new().table("outbox; DROP TABLE users")).is_err());
/// # Ok::<(), events_outbox::OutboxError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    schema: String,
    table: String,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl OutboxConfig {
    /// `public.events_outbox`.
    pub fn new() -> Self {
        Self {
            schema: "public".to_owned(),
            table: "events_outbox".to_owned(),
        }
    }

    /// The schema (created by [`Outbox::migrate`] if missing).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The table.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }
}

/// The longest table name: index names append up to 12 bytes to it, and PostgreSQL's names
/// hold 63.
const MAX_TABLE_LEN: usize = 48;

fn validate(what: &'static str, name: &str, max: usize) -> Result<(), OutboxError> {
    let invalid = |reason| {
        Err(OutboxError::InvalidName {
            what,
            name: name.to_owned(),
            reason,
        })
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return invalid("it is empty"),
        Some(c) if !(c.is_ascii_lowercase() || c == '_') => {
            return invalid("it must start with a lower-case letter or `_`");
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return invalid("it holds a character other than a-z, 0-9 and `_`");
    }
    if name.len() > max {
        return invalid(if what == "table" {
            "it is longer than 48 bytes (index names add up to 12 to it, PostgreSQL keeps 63)"
        } else {
            "it is longer than 63 bytes (PostgreSQL's limit)"
        });
    }
    Ok(())
}

/// An outbox table: its names and statements. Cheap to clone (shared).
///
/// Write events with [`publish_in`](Self::publish_in) inside your own transaction; they are
/// delivered by a [`Relay`](crate::Relay) once the transaction commits, and never if it rolls
/// back.
///
/// ```no_run
/// use events_core::domain_event;
/// use events_outbox::Outbox;
///
/// #[domain_event(name = "orders.order_placed")]
/// struct OrderPlaced {
///     order_id: i64,
/// }
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = Outbox::default(); // public.events_outbox
/// outbox.migrate(&pool).await?; // once, at start-up (or run `outbox.migration_sql()`)
///
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(7_i64).execute(&mut *tx).await?;
/// outbox.publish_in(&mut tx, &OrderPlaced { order_id: 7 }).await?;
/// tx.commit().await?; // the order and its event, or neither
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) schema: String,
    pub(crate) table: String,
    /// `schema.table`, for messages.
    pub(crate) name: String,
    /// The LISTEN/NOTIFY channel.
    pub(crate) channel: String,
    pub(crate) sql: Sql,
}

/// Every statement, with the names written in.
pub(crate) struct Sql {
    insert_one: String,
    insert_one_keyed: String,
    insert_many: String,
    pub(crate) claim: String,
    pub(crate) delete_delivered: String,
    pub(crate) mark_delivered: String,
    pub(crate) mark_failed: String,
    purge: String,
    failed: String,
    replay_all: String,
    replay_ids: String,
    stats: String,
    pub(crate) notify: String,
}

impl Sql {
    fn new(q: &str, channel: &str, lock_space: i32) -> Self {
        const COLUMNS: &str =
            "id, event, payload, ordering_key, eta, expires, priority, queue, available_at";
        Self {
            insert_one: format!(
                "INSERT INTO {q} ({COLUMNS}) VALUES ($1, $2, $3::json, $4, $5, $6, $7, $8, \
                 COALESCE($5, now()))"
            ),
            // The key's lock makes transactions publishing one key commit in `seq` order.
            insert_one_keyed: format!(
                "WITH lock AS MATERIALIZED (SELECT pg_advisory_xact_lock({lock_space}, \
                 hashtext($4::text))) \
                 INSERT INTO {q} ({COLUMNS}) SELECT $1::uuid, $2::text, $3::text::json, \
                 $4::text, $5::timestamptz, $6::timestamptz, $7::int2, $8::text, \
                 COALESCE($5::timestamptz, now()) FROM lock"
            ),
            // Keys are locked in one order (by hash), so two transactions cannot deadlock here.
            insert_many: format!(
                "WITH rows AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], \
                 $4::text[], $5::timestamptz[], $6::timestamptz[], $7::int2[], $8::text[]) \
                 WITH ORDINALITY AS r(id, event, payload, ordering_key, eta, expires, priority, \
                 queue, n)), \
                 lock AS MATERIALIZED (SELECT pg_advisory_xact_lock({lock_space}, h) FROM \
                 (SELECT DISTINCT hashtext(ordering_key) AS h FROM rows \
                 WHERE ordering_key IS NOT NULL) k ORDER BY h) \
                 INSERT INTO {q} ({COLUMNS}) SELECT id, event, payload::json, ordering_key, eta, \
                 expires, priority, queue, COALESCE(eta, now()) FROM rows \
                 WHERE (SELECT count(*) FROM lock) >= 0 ORDER BY n"
            ),
            // The oldest due rows; of a key, only its oldest pending row, and only when no
            // other relay holds it (SKIP LOCKED skips it, the NOT EXISTS the rows after it).
            // Looked for among the rows whose `seq` is less than `$2` past the oldest due row's
            // only, so that a backlog of keyed rows behind their keys' heads costs a bounded
            // scan, not one of the whole backlog. One walk of the pending index in `seq`
            // order that stops at the `$1`th row it locks (a window of the oldest `$2` due
            // rows, materialised and sorted, cost a thousand times more: ~0.5 s for 2,000 of
            // 20,000). `$3`: rows this transaction already holds (a transaction does not skip
            // its own locks). Due by the statement's clock, not `now()`: a relay's transaction
            // claims again and again, and `now()` stays at its start, before the rows committed
            // since.
            claim: format!(
                "SELECT id, event, payload::text AS payload, eta, expires, priority, queue, \
                 attempts, ordering_key IS NOT NULL AS keyed FROM {q} AS r \
                 WHERE r.state = 0 AND r.available_at <= statement_timestamp() \
                 AND r.seq < (SELECT w.seq FROM {q} AS w WHERE w.state = 0 \
                 AND w.available_at <= statement_timestamp() ORDER BY w.seq LIMIT 1) + $2 \
                 AND r.id <> ALL($3::uuid[]) \
                 AND (r.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM {q} AS o \
                 WHERE o.state = 0 AND o.ordering_key = r.ordering_key AND o.seq < r.seq)) \
                 ORDER BY r.seq LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            delete_delivered: format!("DELETE FROM {q} WHERE id = ANY($1)"),
            mark_delivered: format!(
                "UPDATE {q} SET state = 1, delivered_at = now(), attempts = attempts + 1, \
                 last_error = NULL WHERE id = ANY($1)"
            ),
            mark_failed: format!(
                "UPDATE {q} AS t SET attempts = t.attempts + 1, last_error = f.error, \
                 state = CASE WHEN t.attempts + 1 >= $4 THEN 2 ELSE 0 END, \
                 available_at = now() + f.delay_ms::float8 * interval '1 millisecond' \
                 FROM unnest($1::uuid[], $2::text[], $3::int8[]) AS f(id, error, delay_ms) \
                 WHERE t.id = f.id RETURNING t.state"
            ),
            purge: format!(
                "DELETE FROM {q} WHERE id IN (SELECT id FROM {q} WHERE state = 1 AND \
                 delivered_at < now() - $1::float8 * interval '1 second' LIMIT $2)"
            ),
            failed: format!(
                "SELECT id, event, payload::text AS payload, ordering_key, attempts, last_error, \
                 created_at FROM {q} WHERE state = 2 ORDER BY seq LIMIT $1"
            ),
            replay_all: format!(
                "UPDATE {q} SET state = 0, attempts = 0, available_at = now(), last_error = NULL \
                 WHERE state = 2"
            ),
            replay_ids: format!(
                "UPDATE {q} SET state = 0, attempts = 0, available_at = now(), last_error = NULL \
                 WHERE state = 2 AND id = ANY($1)"
            ),
            stats: format!(
                "SELECT (SELECT count(*) FROM {q} WHERE state = 0) AS pending, \
                 (SELECT count(*) FROM {q} WHERE state = 0 AND available_at <= now()) AS due, \
                 (SELECT count(*) FROM {q} WHERE state = 2) AS failed, \
                 (SELECT count(*) FROM {q} WHERE state = 1) AS delivered, \
                 (SELECT min(created_at) FROM {q} WHERE state = 0 AND available_at <= now()) \
                 AS oldest_due, now() AS now"
            ),
            notify: format!("SELECT pg_notify('{channel}', '')"),
        }
    }
}

impl Default for Outbox {
    /// `public.events_outbox`.
    fn default() -> Self {
        Self::new(OutboxConfig::new()).expect("the default names are valid")
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("table", &self.inner.name)
            .finish()
    }
}

/// A 32-bit FNV-1a hash: the advisory-lock space of a table's ordering keys.
fn lock_space(name: &str) -> i32 {
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    i32::from_ne_bytes(hash.to_ne_bytes())
}

impl Outbox {
    /// The outbox at `config`'s schema and table. Fails if a name is not a plain lower-case
    /// identifier (so no name can inject SQL), or if `schema.table` is longer than 63 bytes
    /// (it is the LISTEN/NOTIFY channel).
    pub fn new(config: OutboxConfig) -> Result<Self, OutboxError> {
        validate("schema", &config.schema, 63)?;
        validate("table", &config.table, MAX_TABLE_LEN)?;
        let name = format!("{}.{}", config.schema, config.table);
        if name.len() > 63 {
            return Err(OutboxError::InvalidName {
                what: "table",
                name,
                reason: "`schema.table` is longer than 63 bytes (it names the NOTIFY channel)",
            });
        }
        let quoted = format!("\"{}\".\"{}\"", config.schema, config.table);
        let sql = Sql::new(&quoted, &name, lock_space(&name));
        Ok(Self {
            inner: Arc::new(Inner {
                schema: config.schema,
                table: config.table,
                channel: name.clone(),
                name,
                sql,
            }),
        })
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// `schema.table`.
    pub fn table_name(&self) -> &str {
        &self.inner.name
    }

    /// The LISTEN/NOTIFY channel relays listen on (`schema.table`).
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    fn db(&self, operation: &'static str) -> impl FnOnce(sqlx::Error) -> OutboxError + '_ {
        move |e| OutboxError::database(operation, &self.inner.name, e)
    }

    /// The SQL of every migration with this outbox's names, to run yourself (with `psql`, or
    /// your own migration tool) instead of [`migrate`](Self::migrate). It creates the schema
    /// if needed, the table, its indexes and its trigger, and records the version.
    pub fn migration_sql(&self) -> String {
        let Inner { schema, table, .. } = &*self.inner;
        let mut sql = format!(
            "-- events-outbox schema version {SCHEMA_VERSION} for {schema}.{table}\n\
             CREATE SCHEMA IF NOT EXISTS \"{schema}\";\n{}\n",
            self.version_table_sql()
        );
        for (i, (description, _)) in MIGRATIONS.iter().enumerate() {
            sql.push_str(&self.migration(i));
            sql.push_str(&format!(
                "\nINSERT INTO {} (version, description) VALUES ({}, '{}') ON CONFLICT DO NOTHING;\n",
                self.version_table(),
                i + 1,
                description
            ));
        }
        sql
    }

    fn version_table(&self) -> String {
        format!("\"{}\".\"{}_version\"", self.inner.schema, self.inner.table)
    }

    fn version_table_sql(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, description text NOT \
             NULL, applied_at timestamptz NOT NULL DEFAULT now());",
            self.version_table()
        )
    }

    fn migration(&self, index: usize) -> String {
        MIGRATIONS[index]
            .1
            .replace("{schema}", &self.inner.schema)
            .replace("{table}", &self.inner.table)
            .replace("{prefix}", &self.inner.table)
            .replace("{channel}", &self.inner.channel)
    }

    /// Creates or upgrades the outbox table: in one transaction, under an advisory lock (so
    /// several processes starting at once migrate once), applies the migrations newer than the
    /// version recorded in `<table>_version`. Returns the number applied (0 when up to date).
    ///
    /// Takes a pool, a connection or a transaction. The SQL is
    /// [`migration_sql`](Self::migration_sql).
    pub async fn migrate<'c, A>(&self, conn: A) -> Result<usize, OutboxError>
    where
        A: Acquire<'c, Database = Postgres>,
    {
        let db = self.db("migrate");
        // Ok(Err(version)): the table is newer than this crate.
        let result: Result<Result<usize, i32>, sqlx::Error> = async {
            let mut tx = conn.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('events_outbox.migrate'))")
                .execute(&mut *tx)
                .await?;
            let schema_exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                    .bind(&self.inner.schema)
                    .fetch_one(&mut *tx)
                    .await?;
            if !schema_exists {
                sqlx::raw_sql(&format!("CREATE SCHEMA \"{}\"", self.inner.schema))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::raw_sql(&self.version_table_sql())
                .execute(&mut *tx)
                .await?;
            let current: i32 = sqlx::query_scalar(&format!(
                "SELECT COALESCE(max(version), 0) FROM {}",
                self.version_table()
            ))
            .fetch_one(&mut *tx)
            .await?;
            if current > SCHEMA_VERSION {
                return Ok(Err(current));
            }
            let mut applied = 0;
            let done = usize::try_from(current).unwrap_or(0);
            for (index, (description, _)) in MIGRATIONS.iter().enumerate().skip(done) {
                sqlx::raw_sql(&self.migration(index))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&format!(
                    "INSERT INTO {} (version, description) VALUES ($1, $2)",
                    self.version_table()
                ))
                .bind(index as i32 + 1)
                .bind(*description)
                .execute(&mut *tx)
                .await?;
                applied += 1;
            }
            tx.commit().await?;
            Ok(Ok(applied))
        }
        .await;
        match result.map_err(db)? {
            Err(found) => Err(OutboxError::NewerSchema {
                table: self.inner.name.clone(),
                found,
                known: SCHEMA_VERSION,
            }),
            Ok(applied) => {
                if applied > 0 {
                    tracing::info!(table = %self.inner.name, applied, "outbox migrated");
                }
                Ok(applied)
            }
        }
    }

    /// Writes `event` to the outbox on `conn`: inside the transaction when `conn` is one
    /// (`&mut *tx` or `&mut tx`), so it is relayed if and only if the transaction commits.
    /// Returns the event's id, which is also its Celery task id.
    pub async fn publish_in<E: DomainEvent>(
        &self,
        conn: &mut PgConnection,
        event: &E,
    ) -> Result<Uuid, OutboxError> {
        self.insert_one(conn, Entry::new(event)?).await
    }

    /// [`publish_in`](Self::publish_in) with [`OutboxOptions`]: an ordering key, an eta,
    /// an expiry, a priority, a queue.
    ///
    /// ```no_run
    /// # use events_core::domain_event;
    /// # #[domain_event(name = "doc.order_shipped")] struct OrderShipped { order_id: i64 }
    /// # async fn run(outbox: events_outbox::Outbox, mut tx: sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), events_outbox::OutboxError> {
    /// use std::time::Duration;
    /// use events_outbox::OutboxOptions;
    ///
    /// let options = OutboxOptions::new()
    ///     .key("order-7") // delivered after every earlier event of order 7
    ///     .delay(Duration::from_secs(60))
    ///     .priority(5);
    /// outbox.publish_in_with(&mut tx, &OrderShipped { order_id: 7 }, options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_in_with<E: DomainEvent>(
        &self,
        conn: &mut PgConnection,
        event: &E,
        options: OutboxOptions,
    ) -> Result<Uuid, OutboxError> {
        self.insert_one(conn, Entry::new(event)?.with(options))
            .await
    }

    /// Writes an event given by name with a JSON payload, checked as
    /// [`events_core::publish_json`] checks it: an unknown name ([`events_core::Error::UnknownEvent`],
    /// naming the closest) or a payload that does not fit the event's type
    /// ([`events_core::Error::InvalidPayload`], naming the field) is an error and nothing is
    /// written.
    pub async fn publish_json_in(
        &self,
        conn: &mut PgConnection,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<Uuid, OutboxError> {
        self.insert_one(conn, Entry::from_json(name, payload)?)
            .await
    }

    /// Writes several events of one type in one statement; returns their ids, in order.
    pub async fn publish_all_in<'e, E: DomainEvent>(
        &self,
        conn: &mut PgConnection,
        events: impl IntoIterator<Item = &'e E>,
    ) -> Result<Vec<Uuid>, OutboxError> {
        let entries = events
            .into_iter()
            .map(Entry::new)
            .collect::<Result<Vec<_>, _>>()?;
        self.insert_in(conn, entries).await
    }

    /// Writes prepared [`Entry`]s — events of any types, each with its options — in one
    /// statement; returns their ids, in order. Rows of one ordering key keep this order.
    pub async fn insert_in(
        &self,
        conn: &mut PgConnection,
        entries: Vec<Entry>,
    ) -> Result<Vec<Uuid>, OutboxError> {
        match entries.len() {
            0 => return Ok(Vec::new()),
            1 => {
                let entry = entries.into_iter().next().expect("one entry");
                return Ok(vec![self.insert_one(conn, entry).await?]);
            }
            _ => {}
        }
        let n = entries.len();
        let mut ids = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut etas = Vec::with_capacity(n);
        let mut expires = Vec::with_capacity(n);
        let mut priorities = Vec::with_capacity(n);
        let mut queues = Vec::with_capacity(n);
        for entry in entries {
            let (eta, expiry, priority, queue) = entry.options.columns();
            ids.push(entry.id);
            names.push(entry.event);
            payloads.push(entry.payload);
            keys.push(entry.options.key);
            etas.push(eta);
            expires.push(expiry);
            priorities.push(priority);
            queues.push(queue);
        }
        sqlx::query(&self.inner.sql.insert_many)
            .bind(&ids)
            .bind(&names)
            .bind(&payloads)
            .bind(&keys)
            .bind(&etas)
            .bind(&expires)
            .bind(&priorities)
            .bind(&queues)
            .execute(conn)
            .await
            .map_err(self.db("publish_all_in"))?;
        Ok(ids)
    }

    async fn insert_one(&self, conn: &mut PgConnection, entry: Entry) -> Result<Uuid, OutboxError> {
        let (eta, expires, priority, queue) = entry.options.columns();
        let sql = match entry.options.key {
            Some(_) => &self.inner.sql.insert_one_keyed,
            None => &self.inner.sql.insert_one,
        };
        sqlx::query(sql)
            .bind(entry.id)
            .bind(&entry.event)
            .bind(&entry.payload)
            .bind(&entry.options.key)
            .bind(eta)
            .bind(expires)
            .bind(priority)
            .bind(queue)
            .execute(conn)
            .await
            .map_err(self.db("publish_in"))?;
        Ok(entry.id)
    }

    /// The events parked as failed (after the relay's last attempt), oldest first, at most
    /// `limit`.
    pub async fn failed(
        &self,
        conn: &mut PgConnection,
        limit: usize,
    ) -> Result<Vec<FailedEvent>, OutboxError> {
        let rows = sqlx::query(&self.inner.sql.failed)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(conn)
            .await
            .map_err(self.db("list failed"))?;
        rows.into_iter()
            .map(|row| {
                Ok(FailedEvent {
                    id: row.try_get("id")?,
                    event: row.try_get("event")?,
                    payload: row.try_get("payload")?,
                    ordering_key: row.try_get("ordering_key")?,
                    attempts: row.try_get("attempts")?,
                    error: row
                        .try_get::<Option<String>, _>("last_error")?
                        .unwrap_or_default(),
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(self.db("list failed"))
    }

    /// Puts every failed event back to pending, attempts reset, and wakes the relays; returns
    /// how many.
    pub async fn replay_failed(&self, conn: &mut PgConnection) -> Result<u64, OutboxError> {
        let done = sqlx::query(&self.inner.sql.replay_all)
            .execute(&mut *conn)
            .await
            .map_err(self.db("replay"))?;
        self.wake(conn).await?;
        Ok(done.rows_affected())
    }

    /// [`replay_failed`](Self::replay_failed) for the given ids only (ids of events that are
    /// not failed are left alone).
    pub async fn replay(&self, conn: &mut PgConnection, ids: &[Uuid]) -> Result<u64, OutboxError> {
        let done = sqlx::query(&self.inner.sql.replay_ids)
            .bind(ids)
            .execute(&mut *conn)
            .await
            .map_err(self.db("replay"))?;
        self.wake(conn).await?;
        Ok(done.rows_affected())
    }

    async fn wake(&self, conn: &mut PgConnection) -> Result<(), OutboxError> {
        sqlx::query(&self.inner.sql.notify)
            .execute(conn)
            .await
            .map_err(self.db("notify"))?;
        Ok(())
    }

    /// Deletes delivered rows (kept by a relay's [`retention`](crate::Relay::retention))
    /// delivered longer than `older_than` ago, at most `limit`; returns how many.
    pub async fn purge_delivered(
        &self,
        conn: &mut PgConnection,
        older_than: std::time::Duration,
        limit: usize,
    ) -> Result<u64, OutboxError> {
        let done = sqlx::query(&self.inner.sql.purge)
            .bind(older_than.as_secs_f64())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(conn)
            .await
            .map_err(self.db("purge"))?;
        Ok(done.rows_affected())
    }

    /// How many events wait, failed, or are kept as delivered, and how long the oldest due one
    /// has waited.
    pub async fn stats(&self, conn: &mut PgConnection) -> Result<OutboxStats, OutboxError> {
        let row = sqlx::query(&self.inner.sql.stats)
            .fetch_one(conn)
            .await
            .map_err(self.db("stats"))?;
        let read = || -> Result<OutboxStats, sqlx::Error> {
            let oldest: Option<DateTime<Utc>> = row.try_get("oldest_due")?;
            let now: DateTime<Utc> = row.try_get("now")?;
            Ok(OutboxStats {
                pending: row.try_get::<i64, _>("pending")? as u64,
                due: row.try_get::<i64, _>("due")? as u64,
                failed: row.try_get::<i64, _>("failed")? as u64,
                delivered: row.try_get::<i64, _>("delivered")? as u64,
                lag: oldest
                    .map(|oldest| (now - oldest).to_std().unwrap_or_default())
                    .unwrap_or_default(),
            })
        };
        read().map_err(self.db("stats"))
    }
}

/// What an outbox holds ([`Outbox::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Events not delivered yet (due, scheduled or waiting for a retry).
    pub pending: u64,
    /// Of those, the ones due now.
    pub due: u64,
    /// Events parked as failed.
    pub failed: u64,
    /// Delivered events still kept (retention).
    pub delivered: u64,
    /// How long the oldest due event has waited since it was written (zero when none waits).
    pub lag: std::time::Duration,
}

/// An event parked as failed ([`Outbox::failed`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FailedEvent {
    /// Its id (the Celery task id).
    pub id: Uuid,
    /// The event's name.
    pub event: String,
    /// The payload as JSON text.
    pub payload: String,
    /// Its ordering key, if any.
    pub ordering_key: Option<String>,
    /// How many deliveries were tried.
    pub attempts: i32,
    /// The last delivery's error.
    pub error: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// Options of one outbox event: an ordering key, and the [`PublishOptions`] the relay hands to
/// the backend (the task id is always the event's id).
///
/// An event with an eta stays in the table until it is due (the relay claims it then), so a
/// scheduled event survives a broker outage and holds back later events of its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxOptions {
    key: Option<String>,
    publish: PublishOptions,
}

impl OutboxOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ordering key (e.g. the aggregate's id): events with the same key are delivered one
    /// at a time, in the order their transactions committed, however many relays run.
    /// Transactions writing events of one key are serialised on it (a transaction-scoped
    /// advisory lock) until they commit.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Delivered no sooner than `at`.
    pub fn eta(mut self, at: std::time::SystemTime) -> Self {
        self.publish = self.publish.eta(at);
        self
    }

    /// Delivered no sooner than `delay` from now (Celery's `countdown`).
    pub fn delay(mut self, delay: std::time::Duration) -> Self {
        self.publish = self.publish.delay(delay);
        self
    }

    /// Not run after `at` (Celery's `expires`).
    pub fn expires_at(mut self, at: std::time::SystemTime) -> Self {
        self.publish = self.publish.expires_at(at);
        self
    }

    /// Not run later than `after` from now.
    pub fn expires_in(mut self, after: std::time::Duration) -> Self {
        self.publish = self.publish.expires_in(after);
        self
    }

    /// The message priority, 0–9.
    pub fn priority(mut self, priority: u8) -> Self {
        self.publish = self.publish.priority(priority);
        self
    }

    /// Sent to `queue` instead of the event's route.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.publish = self.publish.queue(queue);
        self
    }

    /// eta, expires, priority, queue, as columns.
    #[allow(clippy::type_complexity)]
    fn columns(
        &self,
    ) -> (
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<i16>,
        Option<String>,
    ) {
        (
            self.publish.eta.map(DateTime::<Utc>::from),
            self.publish.expires.map(DateTime::<Utc>::from),
            self.publish.priority.map(i16::from),
            self.publish.queue.clone(),
        )
    }
}

/// One event serialised for the outbox, with its id and options: what
/// [`Outbox::insert_in`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    id: Uuid,
    event: String,
    payload: String,
    options: OutboxOptions,
}

impl Entry {
    /// A typed event, with a fresh id.
    pub fn new<E: DomainEvent>(event: &E) -> Result<Self, OutboxError> {
        Self::from_ref(EventRef::new(event))
    }

    /// A type-erased event, with a fresh id.
    pub fn from_ref(event: EventRef<'_>) -> Result<Self, OutboxError> {
        let payload = serde_json::to_string(event.serializable()).map_err(|source| {
            events_core::Error::Serialize {
                event: event.name(),
                source,
            }
        })?;
        Ok(Self {
            id: Uuid::new_v4(),
            event: event.name().to_owned(),
            payload,
            options: OutboxOptions::default(),
        })
    }

    /// An event given by name with a JSON payload, checked against the program's events as
    /// [`events_core::publish_json`] checks it (and written as the typed event serialises).
    pub fn from_json(name: &str, payload: serde_json::Value) -> Result<Self, OutboxError> {
        let registry = Registry::collected()?;
        let (descriptor, value) = registry.decode_payload(name, payload)?;
        let event = EventRef::from_any(descriptor, &*value)
            .expect("the registry decodes into the descriptor's type");
        Self::from_ref(event)
    }

    /// With these options.
    pub fn with(mut self, options: OutboxOptions) -> Self {
        self.options = options;
        self
    }

    /// The event's id (its Celery task id).
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The event's name.
    pub fn event(&self) -> &str {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_identifiers() {
        for good in ["outbox", "_x", "a1_b2", &"t".repeat(48)] {
            Outbox::new(OutboxConfig::new().table(good)).unwrap();
        }
        for bad in [
            "",
            "Outbox",
            "1x",
            "a-b",
            "a b",
            "x\"; DROP TABLE t; --",
            "é",
            &"t".repeat(49),
        ] {
            let err = Outbox::new(OutboxConfig::new().table(bad)).unwrap_err();
            assert!(
                matches!(err, OutboxError::InvalidName { .. }),
                "{bad}: {err}"
            );
        }
        let err = Outbox::new(OutboxConfig::new().schema("s'x")).unwrap_err();
        assert!(err.to_string().contains("schema"), "{err}");
        let long = Outbox::new(
            OutboxConfig::new()
                .schema("s".repeat(30))
                .table("t".repeat(40)),
        );
        assert!(long.is_err());
    }

    #[test]
    fn migration_sql_names_the_table_and_nothing_else() {
        let outbox = Outbox::new(OutboxConfig::new().schema("shop").table("outbox")).unwrap();
        let sql = outbox.migration_sql();
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"shop\".\"outbox\""));
        assert!(sql.contains("pg_notify('shop.outbox', '')"));
        assert!(sql.contains("\"outbox_pending\""));
        assert!(!sql.contains('{'), "a placeholder was left: {sql}");
    }
}
