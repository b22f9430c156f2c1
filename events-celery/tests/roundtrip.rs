//! Property tests: encode → decode gives back the original, through both envelopes; Python
//! JSON reads back as what was written; arbitrary bytes never panic the decoder.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use events_celery::codec::{
    DecodeOptions, EncodeOptions, Json, KwargsRepr, TaskMessage, to_python_json,
};
use proptest::prelude::*;
use serde_json::{Number, Value};

#[events_core::domain_event(name = "roundtrip.everything_changed")]
#[derive(Debug, Clone, PartialEq)]
struct EverythingChanged {
    text: String,
    count: u64,
    delta: i64,
    wide: i128,
    ratio: f64,
    maybe: Option<String>,
    flags: Vec<bool>,
    tags: BTreeMap<String, i32>,
    raw: Value,
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter_map("finite", Number::from_f64)
            .prop_map(Value::Number),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn event() -> impl Strategy<Value = EverythingChanged> {
    (
        any::<String>(),
        any::<u64>(),
        any::<i64>(),
        any::<i128>(),
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        any::<Option<String>>(),
        prop::collection::vec(any::<bool>(), 0..4),
        prop::collection::btree_map(any::<String>(), any::<i32>(), 0..4),
        json_value(),
    )
        .prop_map(
            |(text, count, delta, wide, ratio, maybe, flags, tags, raw)| EverythingChanged {
                text,
                count,
                delta,
                wide,
                ratio,
                maybe,
                flags,
                tags,
                raw,
            },
        )
}

fn options() -> impl Strategy<Value = EncodeOptions> {
    (
        "[a-z_]{1,12}",
        prop::option::of(0u8..=9),
        any::<u32>(),
        prop::option::of(0u64..1_000_000),
        prop::option::of(1u64..1_000_000),
        prop::option::of("[0-9a-f-]{1,36}"),
        prop::collection::vec(("x-[a-z-]{1,10}", json_value()), 0..3),
        0..3u8,
    )
        .prop_map(
            |(queue, priority, retries, countdown, expires, parent, headers, repr)| {
                let mut options = EncodeOptions::new().queue(queue).retries(retries);
                if let Some(priority) = priority {
                    options = options.priority(priority);
                }
                if let Some(seconds) = countdown {
                    options = options.countdown(Duration::from_millis(seconds * 7));
                }
                if let Some(seconds) = expires {
                    options = options.expires_in(Duration::from_secs(seconds));
                }
                if let Some(parent) = parent {
                    options = options.parent_id(parent.clone()).root_id(parent);
                }
                for (name, value) in headers {
                    options = options.header(name, value);
                }
                options.kwargs_repr(match repr {
                    0 => KwargsRepr::Python,
                    1 => KwargsRepr::Redacted,
                    _ => KwargsRepr::Custom("{'payload': ...}".into()),
                })
            },
        )
}

/// The decoded message, minus what only decoding adds.
fn comparable(mut decoded: TaskMessage) -> TaskMessage {
    decoded.raw_envelope = None;
    decoded.properties.delivery_tag = None;
    decoded
}

/// Custom headers that the AMQP table cannot carry (integers beyond 64 bits) are refused.
fn amqp_can_carry(value: &Json) -> bool {
    match value {
        Json::Number(n) => n.as_i64().is_some() || !n.is_integer(),
        Json::Array(items) => items.iter().all(amqp_can_carry),
        Json::Object(map) => map.iter().all(|(_, value)| amqp_can_carry(value)),
        _ => true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn redis_round_trip(event in event(), options in options()) {
        let message = TaskMessage::from_event(&event, &options).unwrap();
        let redis = message.to_redis().unwrap();
        prop_assert!(redis.envelope.is_ascii());
        let decoded = TaskMessage::decode_redis(redis.envelope.as_bytes(), &DecodeOptions::new()).unwrap();
        prop_assert_eq!(decoded.raw_envelope.as_deref(), Some(redis.envelope.as_str()));
        prop_assert_eq!(decoded.properties.delivery_tag.as_deref(), Some(redis.delivery_tag.as_str()));
        prop_assert_eq!(decoded.payload::<EverythingChanged>().unwrap(), event);
        prop_assert_eq!(comparable(decoded), message);
    }

    #[test]
    fn amqp_round_trip(event in event(), options in options()) {
        let message = TaskMessage::from_event(&event, &options).unwrap();
        let carriable = message.headers.custom.iter().all(|(_, value)| amqp_can_carry(value));
        match message.to_amqp() {
            Ok(amqp) => {
                let decoded = TaskMessage::decode_amqp(&amqp, &DecodeOptions::new()).unwrap();
                prop_assert_eq!(decoded.payload::<EverythingChanged>().unwrap(), event);
                prop_assert_eq!(comparable(decoded), message);
            }
            Err(error) => prop_assert!(!carriable, "{}", error),
        }
    }

    #[test]
    fn python_json_reads_back_as_written(value in json_value()) {
        let text = to_python_json(&value).unwrap();
        prop_assert!(text.is_ascii());
        // The codec's own value reads it exactly (serde_json's default float parsing can be
        // one unit in the last place off) and writes it back byte for byte.
        let back = Json::parse(&text).unwrap();
        prop_assert_eq!(&back, &Json::from(value.clone()));
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn floats_read_back_exactly(value in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let text = to_python_json(&value).unwrap();
        prop_assert_eq!(text.parse::<f64>().unwrap().to_bits(), value.to_bits());
        prop_assert!(text.contains(['.', 'e']), "{}", text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = TaskMessage::decode_redis(&bytes, &DecodeOptions::new());
        let mut amqp = support::amqp_message("seed_event");
        amqp.body = bytes;
        let _ = TaskMessage::decode_amqp(&amqp, &DecodeOptions::new());
    }

    #[test]
    fn mutated_fixtures_never_panic(
        case in prop::sample::select(support::CASES.as_slice()),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut envelope = support::redis_envelope(case);
        for (at, byte) in edits {
            let at = at.index(envelope.len());
            envelope[at] = byte;
        }
        let _ = TaskMessage::decode_redis(&envelope, &DecodeOptions::new());
    }
}
