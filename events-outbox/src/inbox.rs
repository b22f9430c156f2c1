//! [`PgInbox`]: the worker's inbox on PostgreSQL, and recording a handler's completion in the
//! handler's own transaction ([`PgInbox::complete_in`]) — its writes and the record commit
//! together, so a redelivery after a crash between that commit and the broker's
//! acknowledgement skips the handler: effectively once.
//!
//! # The schema
//!
//! One table (default `public.events_inbox`; schema and table configurable with
//! [`InboxTable`]), created by [`PgInbox::migrate`] or by running [`InboxTable::migration_sql`]
//! yourself (version 1):
//!
//! ```sql
//! CREATE SCHEMA IF NOT EXISTS public;
//! CREATE TABLE IF NOT EXISTS public.events_inbox (
//!     task_id      text        NOT NULL,
//!     handler      text        NOT NULL,
//!     completed_at timestamptz NOT NULL DEFAULT now(),
//!     PRIMARY KEY (task_id, handler)
//! );
//! CREATE INDEX IF NOT EXISTS events_inbox_completed_at ON public.events_inbox (completed_at);
//! ```
//!
//! The primary key answers "did these handlers complete task X" with one index lookup; the
//! `completed_at` index keeps purging rows past the retention cheap.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use events_core::inbox::Inbox;
use events_core::task::{self, TaskContext};
use events_core::{BoxError, BoxFuture};
use sqlx::PgConnection;
use sqlx::postgres::PgPool;

/// What went wrong with the PostgreSQL inbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// A schema or table name that is not a plain SQL identifier.
    #[error(
        "`{0}` is not a valid schema or table name: use 1 to 63 ASCII letters, digits and \
         underscores, not starting with a digit"
    )]
    InvalidName(String),
    /// [`PgInbox::complete_in`] was called outside a handler the worker runs.
    #[error(
        "no current task: `complete_in` records the handler the worker is running, so call it \
         inside a handler (or use `record_in` with the task and handler named)"
    )]
    NoCurrentTask,
    /// The database refused or failed a statement.
    #[error("PostgreSQL inbox: {what}: {source}")]
    Database {
        /// What was being done.
        what: &'static str,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
}

fn database(what: &'static str) -> impl FnOnce(sqlx::Error) -> InboxError {
    move |source| InboxError::Database { what, source }
}

/// Where the inbox rows live: a schema and a table, checked to be plain identifiers (they are
/// written into SQL, never quoted from user input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxTable {
    schema: String,
    table: String,
}

impl Default for InboxTable {
    /// `public.events_inbox`.
    fn default() -> Self {
        Self {
            schema: "public".to_owned(),
            table: "events_inbox".to_owned(),
        }
    }
}

fn identifier(name: &str) -> Result<String, InboxError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if valid {
        Ok(name.to_owned())
    } else {
        Err(InboxError::InvalidName(name.chars().take(80).collect()))
    }
}

impl InboxTable {
    /// Table `table` in schema `schema`; each 1 to 63 ASCII letters, digits and underscores,
    /// not starting with a digit.
    pub fn new(schema: &str, table: &str) -> Result<Self, InboxError> {
        Ok(Self {
            schema: identifier(schema)?,
            table: identifier(table)?,
        })
    }

    /// `schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The migration creating the schema, table and index (idempotent; version 1), to run
    /// yourself or through [`PgInbox::migrate`].
    pub fn migration_sql(&self) -> String {
        let (schema, table) = (&self.schema, &self.table);
        format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};\n\
             CREATE TABLE IF NOT EXISTS {schema}.{table} (\n    \
                 task_id      text        NOT NULL,\n    \
                 handler      text        NOT NULL,\n    \
                 completed_at timestamptz NOT NULL DEFAULT now(),\n    \
                 PRIMARY KEY (task_id, handler)\n\
             );\n\
             CREATE INDEX IF NOT EXISTS {table}_completed_at ON {schema}.{table} (completed_at);\n"
        )
    }
}

/// The default retention of a [`PgInbox`]: 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often [`PgInbox`] purges expired rows, at most (on a record).
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// An [`Inbox`] on PostgreSQL, for the Celery worker's `WorkerConfig::inbox`; its handlers can
/// record their completion inside their own transaction with [`complete_in`](Self::complete_in).
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use events_outbox::inbox::{InboxTable, PgInbox};
///
/// let pool = sqlx::postgres::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
/// let inbox = PgInbox::new(pool).table(InboxTable::new("shop", "inbox")?);
/// inbox.migrate().await?;
/// // WorkerConfig::new(broker)?.inbox(inbox.clone())
/// # Ok(()) }
/// ```
///
/// Completed rows older than [`retention`](Self::retention) are deleted at most once a minute,
/// as completions are recorded, or when you call [`purge_expired`](Self::purge_expired).
#[derive(Debug, Clone)]
pub struct PgInbox {
    pool: PgPool,
    table: InboxTable,
    retention: Duration,
    statements: Statements,
    last_purge: std::sync::Arc<Mutex<Option<Instant>>>,
}

#[derive(Debug, Clone)]
struct Statements {
    completed: String,
    record: String,
    purge: String,
}

impl Statements {
    fn of(table: &InboxTable) -> Self {
        let t = table.qualified();
        Self {
            completed: format!("SELECT handler FROM {t} WHERE task_id = $1 AND handler = ANY($2)"),
            record: format!(
                "INSERT INTO {t} (task_id, handler) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            ),
            purge: format!(
                "DELETE FROM {t} WHERE completed_at < now() - make_interval(secs => $1)"
            ),
        }
    }
}

impl PgInbox {
    /// An inbox in `public.events_inbox` on `pool`, remembering completions for
    /// [`DEFAULT_RETENTION`]. Create the table with [`migrate`](Self::migrate) (or the SQL of
    /// [`InboxTable::migration_sql`]).
    pub fn new(pool: PgPool) -> Self {
        let table = InboxTable::default();
        Self {
            pool,
            statements: Statements::of(&table),
            table,
            retention: DEFAULT_RETENTION,
            last_purge: std::sync::Arc::default(),
        }
    }

    /// Keeps the rows in `table`.
    pub fn table(mut self, table: InboxTable) -> Self {
        self.statements = Statements::of(&table);
        self.table = table;
        self
    }

    /// How long completions are remembered (default [`DEFAULT_RETENTION`]): longer than any
    /// redelivery can take.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The table.
    pub fn inbox_table(&self) -> &InboxTable {
        &self.table
    }

    /// Runs [`InboxTable::migration_sql`]: creates the schema, table and index if missing.
    pub async fn migrate(&self) -> Result<(), InboxError> {
        sqlx::raw_sql(&self.table.migration_sql())
            .execute(&self.pool)
            .await
            .map_err(database("creating the inbox table"))?;
        Ok(())
    }

    /// Records, on `connection` — inside the handler's own transaction, before its writes —
    /// that the handler running now ([`task::current`]) completed its task, and tells the
    /// worker not to record it again. Returns `true` when recorded now (go on with the
    /// writes, then commit), `false` when an earlier run already committed it (roll back and
    /// return `Ok`: the work is done).
    ///
    /// Committed, the record and the writes are one: after a crash before the broker's
    /// acknowledgement the worker finds it and skips the handler. Two runs of one task at
    /// once serialize on the row: the second waits for the first to commit, then gets
    /// `false`. Rolled back (the handler then fails), nothing is recorded and the retry runs
    /// it again. (A handler that rolls back and still returns `Ok` leaves its completion
    /// unrecorded.)
    ///
    /// ```no_run
    /// # use events_outbox::inbox::PgInbox;
    /// # async fn handler(pool: &sqlx::PgPool, inbox: &PgInbox) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let mut tx = pool.begin().await?;
    /// if !inbox.complete_in(&mut tx).await? {
    ///     return Ok(()); // done by an earlier delivery
    /// }
    /// sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(42_i64).execute(&mut *tx).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn complete_in(&self, connection: &mut PgConnection) -> Result<bool, InboxError> {
        let task = task::current().ok_or(InboxError::NoCurrentTask)?;
        let handler = task.handler().ok_or(InboxError::NoCurrentTask)?.to_owned();
        let recorded = self.record_in(connection, &task, &handler).await?;
        task.mark_completion_recorded();
        Ok(recorded)
    }

    /// [`complete_in`](Self::complete_in) for a task and handler named explicitly (the
    /// worker is not told: use it outside handlers, e.g. to import completions).
    pub async fn record_in(
        &self,
        connection: &mut PgConnection,
        task: &TaskContext,
        handler: &str,
    ) -> Result<bool, InboxError> {
        let done = sqlx::query(&self.statements.record)
            .bind(task.id())
            .bind(handler)
            .execute(connection)
            .await
            .map_err(database("recording a completed handler"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes completions older than the retention; returns how many.
    pub async fn purge_expired(&self) -> Result<u64, InboxError> {
        let done = sqlx::query(&self.statements.purge)
            .bind(self.retention.as_secs_f64())
            .execute(&self.pool)
            .await
            .map_err(database("purging expired completions"))?;
        Ok(done.rows_affected())
    }

    fn purge_due(&self) -> bool {
        let mut last = self.last_purge.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= PURGE_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}

impl Inbox for PgInbox {
    fn completed<'a>(
        &'a self,
        task: &'a TaskContext,
        handlers: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<bool>, BoxError>> {
        Box::pin(async move {
            let names: Vec<String> = handlers.iter().map(|h| (*h).to_owned()).collect();
            let done: Vec<String> = sqlx::query_scalar(&self.statements.completed)
                .bind(task.id())
                .bind(&names)
                .fetch_all(&self.pool)
                .await
                .map_err(database("reading the handlers that completed a task"))?;
            Ok(handlers
                .iter()
                .map(|handler| done.iter().any(|d| d == handler))
                .collect())
        })
    }

    fn record<'a>(
        &'a self,
        task: &'a TaskContext,
        handler: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let mut connection = self
                .pool
                .acquire()
                .await
                .map_err(database("connecting to record a completed handler"))?;
            self.record_in(&mut connection, task, handler).await?;
            if self.purge_due()
                && let Err(error) = self.purge_expired().await
            {
                tracing::warn!(error = %error, "could not purge expired inbox rows");
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_identifiers() {
        assert!(InboxTable::new("shop", "inbox_2").is_ok());
        for bad in [
            "",
            "1abc",
            "a b",
            "a;drop table x",
            "a\"b",
            "ä",
            &"x".repeat(64),
        ] {
            assert!(
                matches!(
                    InboxTable::new("public", bad),
                    Err(InboxError::InvalidName(_))
                ),
                "{bad:?}"
            );
        }
        let sql = InboxTable::new("s", "t").unwrap().migration_sql();
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS s.t ("), "{sql}");
    }
}
