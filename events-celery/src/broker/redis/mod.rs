//! The Redis transport, as kombu's uses Redis: `LPUSH` of the JSON envelope onto the queue's
//! list (or its priority list), with the `_kombu.binding.*` entries kombu writes for the queue;
//! the one way to connect.

pub(crate) mod consume;
pub(crate) mod control;
pub(crate) mod dead_letter;
mod restore;
pub(crate) mod topology;

use std::collections::HashSet;
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use super::consume::Consumer;
use super::{BrokerUrl, Publication, PublishSettings, Reply, Transport};
use crate::codec::TaskMessage;
use crate::error::CeleryError;

/// A message ready for `LPUSH`.
#[derive(Debug, Clone)]
pub(crate) struct RedisOutgoing {
    /// The queue (for the binding entries).
    pub(crate) queue: String,
    /// The exchange Celery declares for the queue (its name, for a direct queue).
    pub(crate) exchange: String,
    /// The routing key.
    pub(crate) routing_key: String,
    /// The list key: the queue, or `<queue>\x06\x16<step>` for a priority.
    pub(crate) key: String,
    /// Kombu's JSON envelope.
    pub(crate) envelope: String,
}

/// The Redis transport: publishes over one multiplexed connection (concurrent publishes are
/// pipelined); consumes through [`consume`].
pub(crate) struct RedisPublisher {
    url: BrokerUrl,
    /// How long the client waits for a reply: the publish time limit, which also bounds it.
    response_timeout: std::time::Duration,
    connection: Mutex<Option<MultiplexedConnection>>,
    bound: std::sync::Mutex<HashSet<String>>,
}

impl RedisPublisher {
    fn with_timeout(url: BrokerUrl, response_timeout: std::time::Duration) -> Self {
        Self {
            url,
            response_timeout,
            connection: Mutex::new(None),
            bound: std::sync::Mutex::new(HashSet::new()),
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, CeleryError> {
        let mut guard = self.connection.lock().await;
        if let Some(connection) = guard.as_ref() {
            return Ok(connection.clone());
        }
        let connection = connect_with_timeout(&self.url, self.response_timeout).await?;
        tracing::info!(broker = %self.url, "connected to Redis");
        *guard = Some(connection.clone());
        Ok(connection)
    }

    /// Connects now if not connected.
    async fn connect_now(&self) -> Result<(), CeleryError> {
        let mut connection = self.connection().await?;
        let pong: redis::RedisResult<()> = redis::cmd("PING").exec_async(&mut connection).await;
        if let Err(error) = pong {
            self.reset().await;
            return Err(CeleryError::connect(&self.url, &error));
        }
        Ok(())
    }

    /// Forgets a connection that failed, so the next call reconnects.
    async fn reset(&self) {
        if self.connection.lock().await.take().is_some() {
            tracing::warn!(broker = %self.url, "Redis connection lost; reconnecting on next use");
        }
    }

    /// `LPUSH`es several messages in one pipeline (one round trip), writing new queues'
    /// binding entries first; one result per message, in order. `Err` when the whole batch
    /// failed (no connection, or the connection broke).
    pub(crate) async fn publish_many(
        &self,
        messages: &[&RedisOutgoing],
    ) -> Result<Vec<Result<(), CeleryError>>, CeleryError> {
        let mut connection = self.connection().await?;
        let result = self.push_many(&mut connection, messages).await;
        if let Err(error) = &result
            && is_connection_error(error)
        {
            self.reset().await;
        }
        let results = result.map_err(|source| CeleryError::broker(&self.url, "LPUSH", &source))?;
        Ok(results
            .into_iter()
            .map(|r| {
                r.map(drop)
                    .map_err(|source| CeleryError::broker(&self.url, "LPUSH", &source))
            })
            .collect())
    }

    async fn push_many(
        &self,
        connection: &mut MultiplexedConnection,
        messages: &[&RedisOutgoing],
    ) -> redis::RedisResult<Vec<redis::RedisResult<i64>>> {
        let unbound: Vec<&RedisOutgoing> = {
            let bound = self.bound.lock().expect("not poisoned");
            let mut unbound: Vec<&RedisOutgoing> = Vec::new();
            for message in messages {
                if !bound.contains(&message.queue)
                    && !unbound.iter().any(|m| m.queue == message.queue)
                {
                    unbound.push(message);
                }
            }
            unbound
        };
        if !unbound.is_empty() {
            let mut bind = redis::pipe();
            for message in &unbound {
                let entries =
                    topology::binding(&message.exchange, &message.routing_key, &message.queue);
                for (set, member) in entries {
                    bind.sadd(set, member).ignore();
                }
            }
            bind.exec_async(connection).await?;
            let mut bound = self.bound.lock().expect("not poisoned");
            bound.extend(unbound.iter().map(|m| m.queue.clone()));
        }
        let mut pipe = redis::pipe();
        for message in messages {
            pipe.cmd("LPUSH").arg(&message.key).arg(&message.envelope);
        }
        pipe.ignore_errors().query_async(connection).await
    }
}

impl Transport for RedisPublisher {
    type Outgoing = RedisOutgoing;

    fn new(url: BrokerUrl, settings: PublishSettings) -> Self {
        Self::with_timeout(url, settings.timeout)
    }

    async fn ensure_connected(&self) -> Result<(), CeleryError> {
        self.connect_now().await
    }

    fn prepare(&self, message: TaskMessage, queue: &str) -> Result<RedisOutgoing, CeleryError> {
        let redis = message.to_redis()?;
        let priority = message.properties.priority.unwrap_or(0);
        Ok(RedisOutgoing {
            queue: queue.to_owned(),
            exchange: queue.to_owned(),
            routing_key: queue.to_owned(),
            key: topology::redis_queue_key(queue, priority),
            envelope: redis.envelope,
        })
    }

    async fn publish_batch<R: Reply>(&self, batch: Vec<Publication<RedisOutgoing, R>>) {
        let Some(deadline) = batch.iter().map(|p| p.deadline).min() else {
            return;
        };
        let messages: Vec<&RedisOutgoing> = batch.iter().map(|p| &p.outgoing).collect();
        let delivered = tokio::time::timeout_at(
            tokio::time::Instant::from_std(deadline),
            self.publish_many(&messages),
        )
        .await;
        match delivered {
            Ok(Ok(results)) => {
                for (publication, result) in batch.into_iter().zip(results) {
                    publication.reply.send(result);
                }
            }
            Ok(Err(error)) => {
                for publication in batch {
                    publication.reply.send(Err(error.duplicate()));
                }
            }
            Err(_) => {
                for publication in batch {
                    publication.reply.send(Err(CeleryError::Timeout {
                        broker: self.url.clone(),
                        operation: "publishing",
                        after: self.response_timeout,
                    }));
                }
            }
        }
    }

    async fn consume<C: Consumer>(
        consumer: Arc<C>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), CeleryError> {
        consume::run(consumer, stopping).await
    }

    async fn replay_dead_letters(
        url: &BrokerUrl,
        queue: &str,
        limit: usize,
    ) -> Result<usize, CeleryError> {
        dead_letter::replay(url, queue, limit).await
    }
}

/// A shared connection for bookkeeping, reconnected after failures.
pub(crate) struct Link {
    url: BrokerUrl,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Link {
    /// A link to `url`, connecting on first use.
    pub(crate) fn new(url: BrokerUrl) -> Self {
        Self {
            url,
            connection: tokio::sync::Mutex::new(None),
        }
    }

    async fn get(&self) -> Result<MultiplexedConnection, CeleryError> {
        let mut guard = self.connection.lock().await;
        if let Some(connection) = guard.as_ref() {
            return Ok(connection.clone());
        }
        let connection = connect(&self.url).await?;
        *guard = Some(connection.clone());
        Ok(connection)
    }

    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, CeleryError> {
        let mut connection = self.get().await?;
        let result = pipe.query_async(&mut connection).await;
        self.settle(operation, result).await
    }

    pub(crate) async fn script(
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

/// Opens a multiplexed connection to the broker.
pub(crate) async fn connect(url: &BrokerUrl) -> Result<MultiplexedConnection, CeleryError> {
    connect_with_timeout(url, std::time::Duration::from_secs(5)).await
}

/// Opens a multiplexed connection whose replies may take up to `response_timeout` (longer than
/// any blocking command sent on it).
pub(crate) async fn connect_with_timeout(
    url: &BrokerUrl,
    response_timeout: std::time::Duration,
) -> Result<MultiplexedConnection, CeleryError> {
    let connect_error = |source: redis::RedisError| CeleryError::connect(url, &source);
    url.check_tls_files()
        .map_err(|problem| CeleryError::connect(url, &problem))?;
    let client = redis::Client::open(url.expose()).map_err(connect_error)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(connect_error)
}

/// Whether an error means the connection itself is gone.
pub(crate) fn is_connection_error(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
}
