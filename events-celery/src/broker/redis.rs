//! Redis, as kombu's transport uses it: `LPUSH` of the JSON envelope onto the queue's list (or
//! its priority list), with the `_kombu.binding.*` entries kombu writes for the queue.

use std::collections::HashSet;

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use super::BrokerUrl;
use crate::error::CeleryError;

/// Kombu's separator inside binding members and priority list keys.
pub(crate) const KOMBU_SEP: &str = "\x06\x16";

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

/// Publishes to Redis over one multiplexed connection: concurrent publishes are pipelined.
pub(crate) struct RedisPublisher {
    url: BrokerUrl,
    /// How long the client waits for a reply: the publish time limit, which also bounds it.
    response_timeout: std::time::Duration,
    connection: Mutex<Option<MultiplexedConnection>>,
    bound: std::sync::Mutex<HashSet<String>>,
}

impl RedisPublisher {
    pub(crate) fn new(url: BrokerUrl, response_timeout: std::time::Duration) -> Self {
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
    pub(crate) async fn ensure_connected(&self) -> Result<(), CeleryError> {
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
                let member =
                    [message.routing_key.as_str(), "", message.queue.as_str()].join(KOMBU_SEP);
                bind.sadd(format!("_kombu.binding.{}", message.exchange), &member)
                    .ignore()
                    .sadd(
                        format!("_kombu.binding_permanent.{}", message.exchange),
                        &member,
                    )
                    .ignore();
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
