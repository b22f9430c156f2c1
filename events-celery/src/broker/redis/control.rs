//! Redis for the control plane, as kombu's Redis transport does it: events `PUBLISH`ed on
//! `/{db}.celeryev/{routing_key}`, the mailbox read by subscribing to `/{db}.celery.pidbox`
//! (its binding recorded in `_kombu.binding.celery.pidbox`), replies `LPUSH`ed onto the queues
//! `_kombu.binding.reply.celery.pidbox` routes the reply's routing key to — and the results
//! store of Celery's Redis result backend (`SETEX` then `PUBLISH`).

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use super::connect;
use crate::broker::BrokerUrl;
use crate::broker::control::Mailbox;
use crate::codec::{
    KombuMessage, PIDBOX_EXCHANGE, PIDBOX_REPLY_EXCHANGE, PidboxRequest, PreparedMessage,
    REDIS_BINDING_SEPARATOR, RedisResultWrite, pidbox_queue, redis_binding_key,
    redis_direct_queues, redis_fanout_channel,
};
use crate::error::CeleryError;

/// The database number of a Redis URL (`redis://host:6379/3` → 3; 0 when absent), which
/// kombu puts in its fanout channel names.
pub(crate) fn database(url: &BrokerUrl) -> u32 {
    let text = url.expose();
    let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    path.split_once('/')
        .map(|(_, db)| db.trim_matches('/'))
        .and_then(|db| db.parse().ok())
        .unwrap_or(0)
}

/// The control plane's Redis connection.
pub(crate) struct RedisControl {
    url: BrokerUrl,
    db: u32,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl RedisControl {
    pub(crate) fn new(url: BrokerUrl) -> Self {
        Self {
            db: database(&url),
            url,
            connection: Mutex::new(None),
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, CeleryError> {
        let mut guard = self.connection.lock().await;
        if let Some(connection) = guard.as_ref() {
            return Ok(connection.clone());
        }
        let connection = connect(&self.url).await?;
        *guard = Some(connection.clone());
        Ok(connection)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, CeleryError> {
        let mut connection = self.connection().await?;
        match command.query_async(&mut connection).await {
            Ok(value) => Ok(value),
            Err(error) => {
                if super::is_connection_error(&error) {
                    self.connection.lock().await.take();
                }
                Err(CeleryError::broker(&self.url, operation, &error))
            }
        }
    }

    /// A fanout exchange's message is `PUBLISH`ed; a reply goes onto each queue bound to the
    /// direct exchange with its routing key.
    pub(crate) async fn publish(&self, message: &KombuMessage) -> Result<(), CeleryError> {
        let envelope = message
            .to_redis_envelope()
            .map_err(|e| CeleryError::Config(format!("cannot encode a control message: {e}")))?;
        if message.exchange == PIDBOX_REPLY_EXCHANGE {
            let members: Vec<String> = self
                .run(
                    "SMEMBERS",
                    redis::cmd("SMEMBERS").arg(redis_binding_key(&message.exchange)),
                )
                .await?;
            let queues =
                redis_direct_queues(members.iter().map(String::as_str), &message.routing_key);
            for queue in queues {
                self.run::<i64>("LPUSH", redis::cmd("LPUSH").arg(queue).arg(&envelope))
                    .await?;
            }
            return Ok(());
        }
        self.run::<i64>(
            "PUBLISH",
            redis::cmd("PUBLISH")
                .arg(message.redis_channel(self.db))
                .arg(&envelope),
        )
        .await
        .map(drop)
    }

    /// `PUBLISH`es fanout messages (events), in order, in one pipelined round trip.
    pub(crate) async fn publish_many(
        &self,
        messages: &[PreparedMessage],
    ) -> Result<(), CeleryError> {
        let mut pipe = redis::pipe();
        for message in messages {
            let envelope = message.to_redis_envelope().map_err(|e| {
                CeleryError::Config(format!("cannot encode a control message: {e}"))
            })?;
            pipe.cmd("PUBLISH")
                .arg(message.redis_channel(self.db))
                .arg(envelope)
                .ignore();
        }
        let mut connection = self.connection().await?;
        let result: redis::RedisResult<()> = pipe.query_async(&mut connection).await;
        if let Err(error) = result {
            if super::is_connection_error(&error) {
                self.connection.lock().await.take();
            }
            return Err(CeleryError::broker(&self.url, "PUBLISH", &error));
        }
        Ok(())
    }

    /// Records the binding as kombu does, then subscribes to the pidbox channel.
    pub(crate) async fn mailbox(
        &self,
        hostname: &str,
        max_bytes: usize,
    ) -> Result<Mailbox, CeleryError> {
        let member = format!(
            "{REDIS_BINDING_SEPARATOR}{REDIS_BINDING_SEPARATOR}{}",
            pidbox_queue(hostname)
        );
        self.run::<i64>(
            "SADD",
            redis::cmd("SADD")
                .arg(redis_binding_key(PIDBOX_EXCHANGE))
                .arg(member),
        )
        .await?;
        let connect_error = |e: redis::RedisError| CeleryError::connect(&self.url, &e);
        let client = redis::Client::open(self.url.expose()).map_err(connect_error)?;
        let mut pubsub = client.get_async_pubsub().await.map_err(connect_error)?;
        pubsub
            .subscribe(redis_fanout_channel(self.db, PIDBOX_EXCHANGE, ""))
            .await
            .map_err(|e| CeleryError::broker(&self.url, "SUBSCRIBE", &e))?;
        let stream = pubsub.into_on_message().map(move |message| {
            PidboxRequest::from_redis_envelope(message.get_payload_bytes(), max_bytes)
        });
        Ok(Box::pin(stream))
    }

    pub(crate) async fn close(&self) {
        self.connection.lock().await.take();
    }
}

/// Celery's Redis result backend, writing what the worker's results observer decides.
pub(crate) struct RedisResultStore {
    url: BrokerUrl,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl RedisResultStore {
    /// A store at `url` (`redis://…`); connects on first use.
    pub(crate) fn new(url: BrokerUrl) -> Self {
        Self {
            url,
            connection: Mutex::new(None),
        }
    }

    /// For each write, `SETEX key expires value` then `PUBLISH key value`: all in one
    /// pipelined round trip. After a connection error the next call reconnects.
    pub(crate) async fn write_many(&self, writes: &[RedisResultWrite]) -> Result<(), CeleryError> {
        let mut guard = self.connection.lock().await;
        let mut connection = match guard.as_ref() {
            Some(connection) => connection.clone(),
            None => {
                let connection = connect(&self.url).await?;
                *guard = Some(connection.clone());
                connection
            }
        };
        let mut pipe = redis::pipe();
        for write in writes {
            pipe.cmd("SETEX")
                .arg(&write.key)
                .arg(write.expires_secs)
                .arg(&write.value)
                .ignore()
                .cmd("PUBLISH")
                .arg(&write.key)
                .arg(&write.value)
                .ignore();
        }
        let result: redis::RedisResult<()> = pipe.query_async(&mut connection).await;
        result.map_err(|error| {
            if super::is_connection_error(&error) {
                guard.take();
            }
            CeleryError::broker(&self.url, "SETEX", &error)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_numbers() {
        let db = |url: &str| database(&BrokerUrl::parse(url).unwrap());
        assert_eq!(db("redis://127.0.0.1:6379/13"), 13);
        assert_eq!(db("redis://:p@127.0.0.1:6379/2?x=1"), 2);
        assert_eq!(db("redis://127.0.0.1:6379"), 0);
        assert_eq!(db("redis://127.0.0.1:6379/"), 0);
    }
}
