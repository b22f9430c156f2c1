//! Bad input is refused with an error that names the problem, and never panics.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use events_celery::codec::{
    AmqpMessage, AmqpProperties, AmqpTable, AmqpValue, DecodeError, DecodeOptions, TaskMessage,
};
use serde_json::{Value, json};
use support::{CASES, amqp_message, redis_envelope};

fn decode(envelope: &[u8]) -> Result<TaskMessage, DecodeError> {
    TaskMessage::decode_redis(envelope, &DecodeOptions::new())
}

/// A seed envelope with its body replaced by `body` (raw bytes) and its headers by `headers`.
fn envelope_with(body: &[u8], headers: Value) -> Vec<u8> {
    let mut envelope: Value = serde_json::from_slice(&redis_envelope("seed_event")).unwrap();
    envelope["body"] = Value::String(STANDARD.encode(body));
    envelope["headers"] = headers;
    serde_json::to_vec(&envelope).unwrap()
}

fn seed_headers() -> Value {
    let envelope: Value = serde_json::from_slice(&redis_envelope("seed_event")).unwrap();
    envelope["headers"].clone()
}

#[test]
fn every_truncation_of_every_fixture_is_refused() {
    for case in CASES {
        let envelope = redis_envelope(case);
        for len in 0..envelope.len() {
            let error = decode(&envelope[..len]).err();
            assert!(error.is_some(), "{case} cut at {len} decoded");
        }
        let amqp = amqp_message(case);
        for len in 0..amqp.body.len() {
            let mut cut = amqp.clone();
            cut.body.truncate(len);
            assert!(
                TaskMessage::decode_amqp(&cut, &DecodeOptions::new()).is_err(),
                "{case} body cut at {len} decoded"
            );
        }
    }
}

#[test]
fn not_json_and_not_utf8() {
    assert!(matches!(
        decode(b"hello"),
        Err(DecodeError::InvalidJson {
            part: "redis envelope",
            ..
        })
    ));
    assert!(matches!(decode(b""), Err(DecodeError::InvalidJson { .. })));
    assert!(matches!(
        decode(b"\xff\xfe{}"),
        Err(DecodeError::NotUtf8 { offset: 0, .. })
    ));
    let error = decode(&envelope_with(
        b"[[], {\"payload\": \"\xff\"}, {}]",
        seed_headers(),
    ))
    .unwrap_err();
    assert!(
        matches!(&error, DecodeError::NotUtf8 { part, offset: 18 } if part == "body"),
        "{error}"
    );
    let error = decode(&envelope_with(b"[[], {", seed_headers())).unwrap_err();
    assert!(
        matches!(error, DecodeError::InvalidJson { part: "body", .. }),
        "{error}"
    );
}

#[test]
fn missing_or_non_string_task() {
    let body = br#"[[], {"payload": {}}, {}]"#;
    let mut headers = seed_headers();
    headers.as_object_mut().unwrap().remove("task");
    assert!(matches!(
        decode(&envelope_with(body, headers)),
        Err(DecodeError::MissingTask)
    ));
    for bad in [json!(null), json!(7), json!(["t"]), json!({"t": 1})] {
        let mut headers = seed_headers();
        headers["task"] = bad.clone();
        let error = decode(&envelope_with(body, headers)).unwrap_err();
        assert!(
            matches!(&error, DecodeError::InvalidHeader { name, .. } if name == "task"),
            "{bad}: {error}"
        );
    }
    let mut headers = seed_headers();
    headers.as_object_mut().unwrap().remove("id");
    assert!(matches!(
        decode(&envelope_with(body, headers)),
        Err(DecodeError::MissingId)
    ));
}

#[test]
fn body_that_is_not_the_three_element_array() {
    for body in [
        &b"[]"[..],
        b"[[], {}]",
        b"[[], {}, {}, {}]",
        b"\"text\"",
        b"42",
        b"null",
        b"[{}, {}, {}]",
        b"[[], [], {}]",
        b"[[], {}, []]",
    ] {
        let error = decode(&envelope_with(body, seed_headers())).unwrap_err();
        assert!(
            matches!(error, DecodeError::InvalidBody(_)),
            "{}: {error}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn oversized_messages_are_refused_before_parsing() {
    let envelope = redis_envelope("seed_event");
    let options = DecodeOptions::new().max_message_bytes(envelope.len() - 1);
    assert!(matches!(
        TaskMessage::decode_redis(&envelope, &options),
        Err(DecodeError::TooLarge { .. })
    ));
    // Not even looked at: garbage of the same size gives the same error.
    assert!(matches!(
        TaskMessage::decode_redis(&vec![0xff; envelope.len()], &options),
        Err(DecodeError::TooLarge { .. })
    ));
    assert!(
        TaskMessage::decode_redis(&envelope, &options.max_message_bytes(envelope.len())).is_ok()
    );

    let mut amqp = amqp_message("seed_event");
    let limit = amqp.body.len() - 1;
    amqp.body = vec![0xff; amqp.body.len()];
    let error = TaskMessage::decode_amqp(&amqp, &DecodeOptions::new().max_message_bytes(limit))
        .unwrap_err();
    assert!(matches!(error, DecodeError::TooLarge { .. }), "{error}");
}

#[test]
fn only_json_is_ever_deserialised() {
    for content_type in [
        "application/x-python-serialize",
        "application/x-yaml",
        "application/x-msgpack",
        "application/data",
    ] {
        let mut envelope: Value = serde_json::from_slice(&redis_envelope("seed_event")).unwrap();
        envelope["content-type"] = json!(content_type);
        // A pickle that would run `os.system` if anything unpickled it.
        envelope["body"] = json!(STANDARD.encode(b"cos\nsystem\n(S'echo pwned'\ntR."));
        let error = decode(&serde_json::to_vec(&envelope).unwrap()).unwrap_err();
        assert!(
            matches!(&error, DecodeError::UnsupportedContentType(t) if t == content_type),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("only application/json is accepted")
        );

        let mut amqp = amqp_message("seed_event");
        amqp.properties.content_type = Some(content_type.to_owned());
        amqp.body = b"cos\nsystem\n(S'echo pwned'\ntR.".to_vec();
        assert!(matches!(
            TaskMessage::decode_amqp(&amqp, &DecodeOptions::new()),
            Err(DecodeError::UnsupportedContentType(_))
        ));
    }
    let mut amqp = amqp_message("seed_event");
    amqp.properties.content_type = None;
    assert!(matches!(
        TaskMessage::decode_amqp(&amqp, &DecodeOptions::new()),
        Err(DecodeError::MissingContentType)
    ));
    amqp.properties.content_type = Some("application/json".into());
    amqp.properties.content_encoding = Some("binary".into());
    assert!(matches!(
        TaskMessage::decode_amqp(&amqp, &DecodeOptions::new()),
        Err(DecodeError::UnsupportedContentEncoding(_))
    ));
}

#[test]
fn amqp_headers_of_the_wrong_type() {
    let mut amqp = amqp_message("seed_event");
    amqp.headers.0[1].1 = AmqpValue::LongLongInt(5);
    let error = TaskMessage::decode_amqp(&amqp, &DecodeOptions::new()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "header `task` must be a string, found the number 5"
    );

    let mut amqp = amqp_message("seed_event");
    amqp.headers
        .push("x-bytes", AmqpValue::LongString(vec![0xc3, 0x28]));
    let error = TaskMessage::decode_amqp(&amqp, &DecodeOptions::new()).unwrap_err();
    assert!(matches!(&error, DecodeError::NotUtf8 { part, .. } if part == "header `x-bytes`"));

    let empty = AmqpMessage {
        properties: AmqpProperties {
            content_type: Some("application/json".into()),
            ..AmqpProperties::default()
        },
        headers: AmqpTable::default(),
        body: b"[[], {}, {}]".to_vec(),
        ..AmqpMessage::default()
    };
    assert!(matches!(
        TaskMessage::decode_amqp(&empty, &DecodeOptions::new()),
        Err(DecodeError::MissingTask)
    ));
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(
        decode(deep.as_bytes()),
        Err(DecodeError::InvalidJson { .. } | DecodeError::InvalidEnvelope { .. })
    ));
    let body = format!(
        "[[], {{\"payload\": {}{}}}, {{}}]",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let error = decode(&envelope_with(body.as_bytes(), seed_headers())).unwrap_err();
    assert!(
        matches!(error, DecodeError::InvalidJson { part: "body", .. }),
        "{error}"
    );
}
