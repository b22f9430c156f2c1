//! Every key the crate writes or reads on Redis, as kombu lays them out: a queue's priority
//! lists, the `_kombu.binding.*` sets that declare it, kombu's `unacked` bookkeeping, and this
//! crate's dead-letter lists and postponed sets.
//!
//! kombu's other exchange types land here too when the control plane comes: a fanout exchange
//! (`celery.pidbox`) is a `PUBLISH` on the channel `/{db}.{exchange}`, a direct one
//! (`reply.celery.pidbox`) an `LPUSH` onto the queue its binding names.

use crate::broker::queues::ConsumedQueue;
use crate::broker::topology::ExchangeKind;
pub(crate) use crate::broker::topology::dead_letter_queue;
pub(crate) use crate::codec::{REDIS_PRIORITY_STEPS, redis_queue_key};

/// Kombu's separator inside binding members (the same as in priority list keys).
const KOMBU_SEP: &str = crate::codec::REDIS_PRIORITY_SEPARATOR;

/// kombu's `unacked` hash: tag → `[envelope, exchange, routing_key]`.
pub(crate) const UNACKED: &str = "unacked";
/// kombu's `unacked_index` sorted set: tag scored by the time it was taken.
pub(crate) const UNACKED_INDEX: &str = "unacked_index";
/// kombu's `unacked_mutex`: held while restoring.
pub(crate) const UNACKED_MUTEX: &str = "unacked_mutex";

/// The binding set of `exchange`, and its permanent twin (kombu writes both), with the member
/// that binds `queue` to it by `routing_key`: how kombu declares a queue on Redis.
pub(crate) fn binding(exchange: &str, routing_key: &str, queue: &str) -> [(String, String); 2] {
    binding_with_pattern(exchange, routing_key, "", queue)
}

fn binding_with_pattern(
    exchange: &str,
    routing_key: &str,
    pattern: &str,
    queue: &str,
) -> [(String, String); 2] {
    let member = [routing_key, pattern, queue].join(KOMBU_SEP);
    [
        (format!("_kombu.binding.{exchange}"), member.clone()),
        (format!("_kombu.binding_permanent.{exchange}"), member),
    ]
}

/// The binding entries kombu writes when a worker declares `queue` to consume it
/// (`add_consumer`): none for a queue on the default exchange; a topic exchange's carry the
/// pattern kombu matches routing keys with.
pub(crate) fn consumed_binding(queue: &ConsumedQueue) -> Option<[(String, String); 2]> {
    let binding = queue.binding.as_ref()?;
    let pattern = match binding.kind {
        ExchangeKind::Topic => topic_pattern(&binding.routing_key),
        ExchangeKind::Direct | ExchangeKind::Fanout => String::new(),
    };
    Some(binding_with_pattern(
        &binding.exchange,
        &binding.routing_key,
        &pattern,
        &queue.name,
    ))
}

/// kombu's `TopicExchange.key_to_pattern`: the regular expression a topic binding key stands
/// for (`*` one word, `#` any words), as kombu stores it in the binding.
fn topic_pattern(routing_key: &str) -> String {
    let escaped: String = routing_key
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || ".#*".contains(c) {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect();
    let words: Vec<&str> = escaped
        .split('.')
        .map(|word| match word {
            "*" => r"[^\.]+",
            "#" => ".*?",
            word => word,
        })
        .collect();
    format!("^{}$", words.join(r"\."))
}

/// Messages this worker postponed: a sorted set per list key, scored by eta (ms).
pub(crate) fn delayed_key(list: &str) -> String {
    format!("_events.delayed.{list}")
}

/// What starts a member of the postponed set: [`DELAYED_MARK`], a unique id, `:`, then the
/// envelope. A sorted set holds each member once, so identical envelopes with the same eta
/// (an envelope pushed twice) would collapse into one and run once; the id keeps each
/// postponed message its own member. (An envelope is a JSON object, so it never starts with
/// the mark: members written before the mark existed are moved back as they are.)
pub(crate) const DELAYED_MARK: &str = "events-delayed:";

/// The member of the postponed set for `envelope`: see [`DELAYED_MARK`].
pub(crate) fn delayed_member(envelope: &[u8]) -> Vec<u8> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut member = Vec::with_capacity(DELAYED_MARK.len() + id.len() + 1 + envelope.len());
    member.extend_from_slice(DELAYED_MARK.as_bytes());
    member.extend_from_slice(id.as_bytes());
    member.push(b':');
    member.extend_from_slice(envelope);
    member
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_are_written_as_kombu_writes_them() {
        let [(set, member), (permanent, again)] = binding("celery", "celery", "celery");
        assert_eq!(set, "_kombu.binding.celery");
        assert_eq!(permanent, "_kombu.binding_permanent.celery");
        assert_eq!(member, "celery\x06\x16\x06\x16celery");
        assert_eq!(again, member);
    }

    #[test]
    fn consumed_queues_are_bound_as_kombu_binds_them() {
        use crate::broker::queues::QueueBinding;
        let queue = |kind, routing_key: &str| ConsumedQueue {
            name: "q2".to_owned(),
            binding: Some(QueueBinding {
                exchange: "ex".to_owned(),
                kind,
                routing_key: routing_key.to_owned(),
            }),
        };
        // Celery's `add_consumer q2` on Redis: what the captured Python worker wrote.
        let [(set, member), _] = consumed_binding(&ConsumedQueue {
            name: "ctl_extra".to_owned(),
            binding: Some(QueueBinding {
                exchange: "ctl_extra".to_owned(),
                kind: ExchangeKind::Direct,
                routing_key: "ctl_extra".to_owned(),
            }),
        })
        .unwrap();
        assert_eq!(set, "_kombu.binding.ctl_extra");
        assert_eq!(member, "ctl_extra\x06\x16\x06\x16ctl_extra");
        // kombu's key_to_pattern('a.*.b-c.#') is `^a\.[^\.]+\.b\-c\..*?$`.
        let [(_, member), _] = consumed_binding(&queue(ExchangeKind::Topic, "a.*.b-c.#")).unwrap();
        assert_eq!(
            member,
            "a.*.b-c.#\x06\x16^a\\.[^\\.]+\\.b\\-c\\..*?$\x06\x16q2"
        );
        assert!(consumed_binding(&ConsumedQueue::plain("q")).is_none());
    }
}
