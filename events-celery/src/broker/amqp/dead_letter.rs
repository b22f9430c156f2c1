//! Dead letters on RabbitMQ: the durable queue `<queue>.dead_letter` holding the message with
//! its original properties plus `x-dead-letter-*` headers, and replaying them.

use chrono::Utc;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::{AmqpOutgoing, AmqpPublisher};
use crate::broker::BrokerUrl;
use crate::broker::consume::DeadLetter;
use crate::broker::topology::{QueueArguments, dead_letter_queue};
use crate::error::CeleryError;

/// Adds the `x-dead-letter-*` headers and routes the message to `queue`'s dead-letter queue.
pub(crate) fn amqp_dead_letter(
    mut outgoing: AmqpOutgoing,
    dead: &DeadLetter,
    queue: &str,
    hostname: &str,
) -> AmqpOutgoing {
    let mut headers = outgoing.properties.headers().clone().unwrap_or_default();
    let text = |s: String| AMQPValue::LongString(s.into());
    headers.insert(
        ShortString::from("x-dead-letter-reason"),
        text(dead.reason.clone()),
    );
    headers.insert(
        ShortString::from("x-dead-letter-handler"),
        dead.handler.clone().map_or(AMQPValue::Void, text),
    );
    headers.insert(
        ShortString::from("x-dead-letter-queue"),
        text(queue.to_owned()),
    );
    headers.insert(
        ShortString::from("x-dead-letter-at"),
        text(Utc::now().to_rfc3339()),
    );
    headers.insert(
        ShortString::from("x-dead-letter-worker"),
        text(hostname.to_owned()),
    );
    let dlq = dead_letter_queue(queue);
    outgoing.properties = outgoing.properties.with_headers(headers);
    outgoing.exchange = String::new();
    outgoing.routing_key = dlq.clone();
    outgoing.declare_queue = Some(dlq);
    outgoing
}

/// How long one replayed message's publish may take.
const REPLAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Moves up to `limit` dead letters of `queue` back onto `queue`, each confirmed before the
/// dead letter is acknowledged.
pub(crate) async fn replay(
    url: &BrokerUrl,
    queue: &str,
    limit: usize,
) -> Result<usize, CeleryError> {
    let publisher =
        AmqpPublisher::with_arguments(url.clone(), QueueArguments::default(), REPLAY_TIMEOUT);
    let channel = publisher.consumer_channel().await?;
    let broker_error = |operation, e: lapin::Error| CeleryError::broker(url, operation, &e);
    let mut moved = 0;
    while moved < limit {
        let Some(message) = channel
            .basic_get(
                dead_letter_queue(queue).into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(|e| broker_error("basic.get", e))?
        else {
            break;
        };
        let delivery = message.delivery;
        let mut headers: FieldTable = delivery.properties.headers().clone().unwrap_or_default();
        let kept: Vec<(ShortString, AMQPValue)> = headers
            .inner()
            .iter()
            .filter(|(k, _)| !k.as_str().starts_with("x-dead-letter-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        headers = FieldTable::default();
        for (k, v) in kept {
            headers.insert(k, v);
        }
        let outgoing = AmqpOutgoing {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            declare_queue: Some(queue.to_owned()),
            properties: delivery.properties.clone().with_headers(headers),
            body: delivery.data.clone(),
        };
        publisher.publish(outgoing).await?;
        channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await
            .map_err(|e| broker_error("basic.ack", e))?;
        moved += 1;
    }
    Ok(moved)
}
