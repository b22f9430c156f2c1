//! Task events written straight to JSON text, byte for byte as [`task_event_body`] and
//! [`task_multi_message`] write them, without building a [`Json`](super::Json) value per event:
//! how a worker sends thousands of monitoring events a second.

use super::celery_events::{
    EVENT_EXCHANGE, EventSource, EventStamp, TASK_MULTI_ROUTING_KEY, TaskEvent, event_routing_key,
};
use super::error::EncodeError;
use super::json::JsonMap;
use super::kombu_message::PreparedMessage;
use super::message::push_integer;
use super::python_json::{push_json_str, push_python_float};

#[cfg(doc)]
use super::celery_events::{task_event_body, task_multi_message};

/// Appends the body of `event` ([`task_event_body`]) as Python's `json.dumps` writes it:
/// `hostname, utcoffset, pid, clock, uuid, <fields>, timestamp, type`.
pub fn push_task_event_body(
    out: &mut String,
    source: &EventSource,
    event: &TaskEvent,
    stamp: EventStamp,
) -> Result<(), EncodeError> {
    push_body(out, source, event, stamp).map_err(EncodeError::Body)
}

fn push_body(
    out: &mut String,
    source: &EventSource,
    event: &TaskEvent,
    stamp: EventStamp,
) -> Result<(), serde_json::Error> {
    push_head(out, source)?;
    push_rest(out, event, stamp)
}

/// `{"hostname": …, "utcoffset": …, "pid": …, "clock": `: the same for every event of
/// `source`.
fn push_head(out: &mut String, source: &EventSource) -> Result<(), serde_json::Error> {
    out.push_str("{\"hostname\": ");
    push_json_str(out, &source.hostname)?;
    out.push_str(", \"utcoffset\": ");
    push_python_float(source.utcoffset, out);
    out.push_str(", \"pid\": ");
    push_integer(out, u64::from(source.pid));
    out.push_str(", \"clock\": ");
    Ok(())
}

/// The rest of a body after [`push_head`]: the clock, the event's fields, `timestamp`, `type`.
fn push_rest(
    out: &mut String,
    event: &TaskEvent,
    stamp: EventStamp,
) -> Result<(), serde_json::Error> {
    // `, "name": ` then the value, as `json.dumps` writes each kind.
    let key = |out: &mut String, name: &str| {
        out.push_str(", \"");
        out.push_str(name);
        out.push_str("\": ");
    };
    let text = |out: &mut String, name: &str, value: &str| {
        key(out, name);
        push_json_str(out, value)
    };
    let optional = |out: &mut String, name: &str, value: &Option<String>| {
        key(out, name);
        match value {
            Some(value) => push_json_str(out, value),
            None => {
                out.push_str("null");
                Ok(())
            }
        }
    };
    let boolean = |out: &mut String, name: &str, value: bool| {
        key(out, name);
        out.push_str(if value { "true" } else { "false" });
    };
    push_integer(out, stamp.clock);
    text(out, "uuid", event.uuid())?;
    match event {
        TaskEvent::Received {
            name,
            args,
            kwargs,
            root_id,
            parent_id,
            retries,
            eta,
            expires,
            ..
        } => {
            text(out, "name", name)?;
            text(out, "args", args)?;
            text(out, "kwargs", kwargs)?;
            optional(out, "root_id", root_id)?;
            optional(out, "parent_id", parent_id)?;
            key(out, "retries");
            push_integer(out, *retries);
            optional(out, "eta", eta)?;
            optional(out, "expires", expires)?;
        }
        TaskEvent::Started { .. } => {}
        TaskEvent::Succeeded {
            result, runtime, ..
        } => {
            text(out, "result", result)?;
            key(out, "runtime");
            push_python_float(*runtime, out);
        }
        TaskEvent::Failed {
            exception,
            traceback,
            ..
        }
        | TaskEvent::Retried {
            exception,
            traceback,
            ..
        } => {
            text(out, "exception", exception)?;
            text(out, "traceback", traceback)?;
        }
        TaskEvent::Rejected { requeue, .. } => boolean(out, "requeue", *requeue),
        TaskEvent::Revoked {
            terminated,
            signum,
            expired,
            ..
        } => {
            boolean(out, "terminated", *terminated);
            key(out, "signum");
            match signum {
                Some(signum) => {
                    if *signum < 0 {
                        out.push('-');
                    }
                    push_integer(out, u64::from(signum.unsigned_abs()));
                }
                None => out.push_str("null"),
            }
            boolean(out, "expired", *expired);
        }
    }
    key(out, "timestamp");
    push_python_float(stamp.timestamp, out);
    text(out, "type", event.event_type())?;
    out.push('}');
    Ok(())
}

/// Task events of one worker gathered into one message: a single event goes as its own
/// message (routing key `task.received`, `task.succeeded`…, as
/// [`task_event_message`](super::task_event_message)), several as one `task.multi` list
/// ([`task_multi_message`]), as a Python worker flushes its buffer. Each event's body is
/// written to text as it is pushed; what every event of the worker shares is written once.
#[derive(Debug)]
pub struct TaskEventBatch {
    /// The start of every body ([`push_head`]).
    head: String,
    /// The `hostname` header.
    hostname: String,
    /// `[` then the bodies, separated by `, `.
    text: String,
    len: usize,
    /// The type of the first event (its routing key if it stays alone).
    first_type: &'static str,
    /// The size of the last list taken: the next is allocated at that size at once.
    last_size: usize,
}

impl TaskEventBatch {
    /// An empty batch for the events of `source`.
    pub fn new(source: &EventSource) -> Result<Self, EncodeError> {
        let mut head = String::with_capacity(source.hostname.len() + 64);
        push_head(&mut head, source).map_err(EncodeError::Body)?;
        Ok(Self {
            head,
            hostname: source.hostname.clone(),
            text: String::new(),
            len: 0,
            first_type: "",
            last_size: 0,
        })
    }

    /// Appends `event`, stamped with `stamp`.
    pub fn push(&mut self, event: &TaskEvent, stamp: EventStamp) -> Result<(), EncodeError> {
        let mark = self.text.len();
        if self.len == 0 {
            self.text.clear();
            self.text.reserve(self.last_size);
            self.text.push('[');
        } else {
            self.text.push_str(", ");
        }
        self.text.push_str(&self.head);
        if let Err(error) = push_rest(&mut self.text, event, stamp) {
            self.text.truncate(mark);
            return Err(EncodeError::Body(error));
        }
        if self.len == 0 {
            self.first_type = event.event_type();
        }
        self.len += 1;
        Ok(())
    }

    /// How many events it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The message of the events pushed so far (`None` if there are none); the batch is
    /// empty again.
    pub fn take_message(&mut self) -> Option<PreparedMessage> {
        let (routing_key, body_json) = match self.len {
            0 => return None,
            1 => (
                event_routing_key(self.first_type),
                self.text[1..].to_owned(),
            ),
            _ => {
                self.text.push(']');
                self.last_size = self.text.len();
                (
                    TASK_MULTI_ROUTING_KEY.to_owned(),
                    std::mem::take(&mut self.text),
                )
            }
        };
        self.len = 0;
        let mut headers = JsonMap::with_capacity(1);
        headers.insert("hostname".into(), self.hostname.clone().into());
        Some(PreparedMessage {
            exchange: EVENT_EXCHANGE.to_owned(),
            routing_key,
            headers,
            delivery_mode: 1,
            body_json,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::{task_event_body, task_event_message, task_multi_message};

    fn source(hostname: &str, utcoffset: f64) -> EventSource {
        EventSource {
            hostname: hostname.to_owned(),
            pid: 4242,
            utcoffset,
        }
    }

    fn every_kind(text: &str) -> Vec<TaskEvent> {
        let opt = |s: &str| Some(s.to_owned());
        vec![
            TaskEvent::Received {
                uuid: format!("id-{text}"),
                name: format!("domain_events.{text}"),
                args: format!("({text:?},)"),
                kwargs: String::new(),
                root_id: opt(text),
                parent_id: None,
                retries: 3,
                eta: opt("2026-12-01T10:00:00.123456+00:00"),
                expires: None,
            },
            TaskEvent::Started {
                uuid: text.to_owned(),
            },
            TaskEvent::Succeeded {
                uuid: "u".into(),
                result: "None".into(),
                runtime: 1.5e-7,
            },
            TaskEvent::Failed {
                uuid: "u".into(),
                exception: format!("HandlerFailed('{text}')"),
                traceback: format!("h: {text}\nnext line\t\"quoted\" \\ é 日本 🎉"),
            },
            TaskEvent::Retried {
                uuid: "u".into(),
                exception: "Retry('x')".into(),
                traceback: text.to_owned(),
            },
            TaskEvent::Rejected {
                uuid: "u".into(),
                requeue: false,
            },
            TaskEvent::Revoked {
                uuid: "u".into(),
                terminated: true,
                signum: Some(-15),
                expired: false,
            },
            TaskEvent::Revoked {
                uuid: "u".into(),
                terminated: false,
                signum: None,
                expired: true,
            },
        ]
    }

    fn through_json(source: &EventSource, event: &TaskEvent, stamp: EventStamp) -> String {
        task_event_message(source, event, stamp)
            .body_json()
            .unwrap()
    }

    #[test]
    fn bodies_are_the_json_builders_bytes() {
        for (text, offset) in [("plain", 0.0), ("é \u{1} \"q\" \\ 日本", -5.5)] {
            let source = source(&format!("w-{text}@h"), offset);
            for (n, event) in every_kind(text).iter().enumerate() {
                let stamp = EventStamp {
                    clock: n as u64 * 1_000_003,
                    timestamp: 1_764_583_200.123_456_7 + n as f64,
                };
                let mut out = String::new();
                push_task_event_body(&mut out, &source, event, stamp).unwrap();
                assert_eq!(out, through_json(&source, event, stamp), "{event:?}");
            }
        }
    }

    #[test]
    fn a_batch_is_task_multi_or_the_one_event_message() {
        let source = source("w@h", 0.0);
        let events = every_kind("x");
        let stamp = |n: usize| EventStamp {
            clock: n as u64,
            timestamp: 10.0 + n as f64,
        };
        let mut batch = TaskEventBatch::new(&source).unwrap();
        assert!(batch.take_message().is_none());
        let several = |batch: &mut TaskEventBatch, events: &[TaskEvent]| {
            for (n, event) in events.iter().enumerate() {
                batch.push(event, stamp(n)).unwrap();
            }
            assert_eq!(batch.len(), events.len());
            let bodies = events
                .iter()
                .enumerate()
                .map(|(n, e)| task_event_body(&source, e, stamp(n)))
                .collect();
            let expected = task_multi_message(&source, bodies).prepare().unwrap();
            assert_eq!(batch.take_message().unwrap(), expected);
            assert!(batch.is_empty());
        };
        several(&mut batch, &events);
        // One event alone: its own message, as before, and the batch is reusable.
        batch.push(&events[2], stamp(2)).unwrap();
        let alone = batch.take_message().unwrap();
        let expected = task_event_message(&source, &events[2], stamp(2));
        assert_eq!(alone.routing_key, "task.succeeded");
        assert_eq!(alone, expected.clone().prepare().unwrap());
        let tag = "0d6c1f1e-0000-4000-8000-000000000000";
        assert_eq!(
            alone.redis_envelope(tag).unwrap(),
            expected.redis_envelope(tag).unwrap()
        );
        assert_eq!(alone.into_amqp().unwrap(), expected.to_amqp().unwrap());
        // Again several, after one alone.
        several(&mut batch, &events[..3]);
    }

    proptest! {
        #[test]
        fn any_text_and_numbers_match_the_json_builders(
            text in any::<String>(),
            clock in any::<u64>(),
            timestamp in any::<f64>(),
            offset in any::<f64>(),
            runtime in any::<f64>(),
            retries in any::<u64>(),
            signum in any::<Option<i32>>(),
        ) {
            let source = source(&text, offset);
            let stamp = EventStamp { clock, timestamp };
            let mut events = every_kind(&text);
            events.push(TaskEvent::Succeeded { uuid: text.clone(), result: text.clone(), runtime });
            events.push(TaskEvent::Revoked { uuid: text.clone(), terminated: false, signum, expired: true });
            if let TaskEvent::Received { retries: r, .. } = &mut events[0] {
                *r = retries;
            }
            let mut batch = TaskEventBatch::new(&source).unwrap();
            for event in &events {
                let mut out = String::new();
                push_task_event_body(&mut out, &source, event, stamp).unwrap();
                let expected = through_json(&source, event, stamp);
                batch.push(event, stamp).unwrap();
                prop_assert_eq!(&batch.take_message().unwrap().body_json, &expected);
                prop_assert_eq!(out, expected);
            }
        }
    }
}
