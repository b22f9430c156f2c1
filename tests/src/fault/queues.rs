//! Broker inspection and cleanup: the dead letters a queue holds, and deleting what a queue left
//! on a Redis broker.

/// Deletes what a queue left on the Redis at `url` (lists, priority lists, bindings, its
/// dead letters and postponed messages).
pub async fn cleanup_redis_queue_at(url: &str, queue: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut keys: Vec<String> = vec![
        queue.to_owned(),
        format!("{queue}.dead_letter"),
        format!("_kombu.binding.{queue}"),
        format!("_kombu.binding_permanent.{queue}"),
        format!("_events.delayed.{queue}"),
    ];
    for step in ["3", "6", "9"] {
        keys.push(format!("{queue}\x06\x16{step}"));
        keys.push(format!("_events.delayed.{queue}\x06\x16{step}"));
    }
    let _: redis::RedisResult<()> = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut connection)
        .await;
}

/// The reasons of the dead letters of `queue` on the broker at `url`, oldest first, left in
/// place (on RabbitMQ they are peeked and returned to the queue).
pub async fn dead_letter_reasons(url: &str, queue: &str) -> Option<Vec<String>> {
    let dead = format!("{queue}.dead_letter");
    if url.starts_with("redis") {
        let client = redis::Client::open(url).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(&dead)
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await
            .ok()?;
        return Some(
            raw.iter()
                .map(|r| {
                    serde_json::from_str::<serde_json::Value>(r).unwrap()["reason"].to_string()
                })
                .collect(),
        );
    }
    let (connection, channel) = crate::amqp_channel().await;
    let mut reasons = Vec::new();
    while let Ok(Some(m)) = channel
        .basic_get(
            dead.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: false },
        )
        .await
    {
        let headers = m.delivery.properties.headers().clone().unwrap_or_default();
        reasons.push(match headers.inner().get("x-dead-letter-reason") {
            Some(lapin::types::AMQPValue::LongString(s)) => {
                String::from_utf8_lossy(s.as_bytes()).into_owned()
            }
            other => format!("{other:?}"),
        });
    }
    // Closing without acknowledging returns them: the next look sees them all.
    let _ = connection.close(200, "peeked".into()).await;
    Some(reasons)
}
