//! Any bytes, as a Redis envelope and as an AMQP body: decoding returns an error or a message,
//! never panics; a message that decodes re-encodes, and what it re-encodes to decodes again.

#![no_main]

use events_celery::codec::{
    AmqpMessage, AmqpProperties, AmqpTable, AmqpValue, DecodeOptions, TaskMessage,
};
use libfuzzer_sys::fuzz_target;

fn check(message: TaskMessage, options: &DecodeOptions) {
    let _ = message.payload_value();
    if let Ok(redis) = message.to_redis() {
        let again = TaskMessage::decode_redis(redis.envelope.as_bytes(), options);
        assert!(again.is_ok(), "re-encoded redis message does not decode: {again:?}");
    }
    if let Ok(amqp) = message.to_amqp() {
        let again = TaskMessage::decode_amqp(&amqp, options);
        assert!(again.is_ok(), "re-encoded amqp message does not decode: {again:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let options = DecodeOptions::new().max_message_bytes(1 << 20);
    if let Ok(message) = TaskMessage::decode_redis(data, &options) {
        check(message, &options);
    }
    let mut headers = AmqpTable::default();
    headers.push("task", AmqpValue::string("domain_events.products.product_created"));
    headers.push("id", AmqpValue::string("69542074-9e6a-4268-af17-9fa8ef929daf"));
    let amqp = AmqpMessage {
        properties: AmqpProperties {
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            ..AmqpProperties::default()
        },
        headers,
        body: data.to_vec(),
        ..AmqpMessage::default()
    };
    if let Ok(message) = TaskMessage::decode_amqp(&amqp, &options) {
        check(message, &options);
    }
    // Protocol 1: no headers, everything in the body.
    let v1 = AmqpMessage {
        headers: AmqpTable::default(),
        ..amqp
    };
    if let Ok(message) = TaskMessage::decode_amqp(&v1, &options) {
        check(message, &options);
    }
});
