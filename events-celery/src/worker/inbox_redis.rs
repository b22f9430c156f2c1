//! [`RedisInbox`]: the worker's inbox on Redis — one set of completed handler names per task
//! id, expiring after the retention period.

use std::time::Duration;

use events_core::inbox::Inbox;
use events_core::task::TaskContext;
use events_core::{BoxError, BoxFuture};
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use crate::broker::{BrokerKind, BrokerUrl};
use crate::error::CeleryError;

/// The default key prefix of a [`RedisInbox`].
pub const DEFAULT_INBOX_PREFIX: &str = "events.inbox";

/// The default retention of a [`RedisInbox`]: 7 days.
pub const DEFAULT_INBOX_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// An [`Inbox`] on Redis, for [`WorkerConfig::inbox`](crate::WorkerConfig::inbox): the handlers
/// that completed task `<id>` are the members of the set `<prefix>:<id>`, which expires
/// [`retention`](Self::retention) after the last handler completed.
///
/// One round trip per message to ask (`SMEMBERS`), one per completed handler to record
/// (`SADD` and `PEXPIRE`, pipelined). It may share the broker's Redis (keys under its own
/// prefix) or use another. Storage: about 100 bytes plus the handlers' names per task, for the
/// retention period; keep it longer than any redelivery can take (the visibility timeout,
/// retries' backoff, how long a duplicate may follow).
///
/// ```no_run
/// use std::time::Duration;
/// use events_celery::{RedisInbox, WorkerConfig};
///
/// let inbox = RedisInbox::new("redis://127.0.0.1:6379/0")?
///     .prefix("shop.inbox")
///     .retention(Duration::from_secs(24 * 3600));
/// let config = WorkerConfig::new("amqp://guest:guest@127.0.0.1:5672//")?.inbox(inbox);
/// # let _ = config;
/// # Ok::<(), events_celery::CeleryError>(())
/// ```
pub struct RedisInbox {
    url: BrokerUrl,
    prefix: String,
    retention: Duration,
    /// Opened on first use; dropped after a connection error and opened again on the next call.
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl std::fmt::Debug for RedisInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisInbox")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl RedisInbox {
    /// An inbox on the Redis at `url` (`redis://` or `rediss://`, as for the broker), with
    /// keys under [`DEFAULT_INBOX_PREFIX`] kept for [`DEFAULT_INBOX_RETENTION`]. Connects on
    /// first use.
    pub fn new(url: &str) -> Result<Self, CeleryError> {
        let url = BrokerUrl::parse(url)?;
        if url.kind() != BrokerKind::Redis {
            return Err(CeleryError::Config(format!(
                "the Redis inbox needs a redis:// or rediss:// URL, got {url}; a RabbitMQ worker \
                 can keep its inbox on any Redis"
            )));
        }
        Ok(Self {
            url,
            prefix: DEFAULT_INBOX_PREFIX.to_owned(),
            retention: DEFAULT_INBOX_RETENTION,
            connection: Mutex::new(None),
        })
    }

    /// The key prefix: a task's set is `<prefix>:<task id>` (default
    /// [`DEFAULT_INBOX_PREFIX`]).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a task's completions are remembered after its last handler completed
    /// (default [`DEFAULT_INBOX_RETENTION`]; at least 1 ms).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention.max(Duration::from_millis(1));
        self
    }

    /// The key of `task_id`'s set.
    pub fn key(&self, task_id: &str) -> String {
        format!("{}:{task_id}", self.prefix)
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T, BoxError> {
        let mut slot = self.connection.lock().await;
        let mut connection = match &*slot {
            Some(connection) => connection.clone(),
            None => {
                let connection = crate::broker::redis_connect(&self.url).await?;
                *slot = Some(connection.clone());
                connection
            }
        };
        drop(slot);
        match pipe.query_async(&mut connection).await {
            Ok(value) => Ok(value),
            Err(error) => {
                if crate::broker::is_connection_error(&error) {
                    *self.connection.lock().await = None;
                }
                Err(format!("Redis inbox at {}: {what}: {error}", self.url).into())
            }
        }
    }
}

impl Inbox for RedisInbox {
    fn completed<'a>(
        &'a self,
        task: &'a TaskContext,
        handlers: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<bool>, BoxError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.smembers(self.key(task.id()));
            let (done,): (Vec<String>,) = self
                .query("reading the handlers that completed a task", &pipe)
                .await?;
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
            let key = self.key(task.id());
            let ttl = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
            let mut pipe = redis::pipe();
            pipe.sadd(&key, handler)
                .ignore()
                .pexpire(&key, ttl)
                .ignore();
            self.query::<()>("recording a completed handler", &pipe)
                .await
        })
    }
}
