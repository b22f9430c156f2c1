//! Integration, UI (trybuild) and interop tests for the domain-events workspace, and what they
//! share: broker URLs, unique queue names, raw broker access.

use std::time::Duration;

/// The RabbitMQ the tests use (`EVENTS_TEST_AMQP_URL`, default the local one).
pub fn amqp_url() -> String {
    std::env::var("EVENTS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672//".to_owned())
}

/// The Redis the tests use (`EVENTS_TEST_REDIS_URL`, default the local one).
pub fn redis_url() -> String {
    std::env::var("EVENTS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// A queue name no other test (or earlier run) uses.
pub fn unique_queue(what: &str) -> String {
    format!(
        "test_{what}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Raw Redis access for checking what reached the broker.
pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("valid redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is running on 127.0.0.1:6379 (scripts/services.sh starts it)")
}

/// Raw AMQP access for checking what reached the broker.
pub async fn amqp_channel() -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(
        &amqp_url().replace("5672//", "5672/%2f"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("RabbitMQ is running on 127.0.0.1:5672 (scripts/services.sh starts it)");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// Deletes a RabbitMQ queue (tests clean up after themselves).
pub async fn delete_amqp_queue(channel: &lapin::Channel, queue: &str) {
    let _ = channel
        .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
        .await;
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
