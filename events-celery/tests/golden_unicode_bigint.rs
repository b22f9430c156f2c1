//! The `unicode_bigint` fixture with a typed event: non-ASCII text, integers beyond 64 bits,
//! Python float spellings, deep nesting, null and control characters, both ways.

mod support;

use events_celery::codec::{DecodeOptions, EncodeOptions, TaskMessage};
use serde_json::{Value, json};
use support::{amqp_message, redis_envelope};

#[events_core::domain_event(name = "products.product_created")]
#[derive(Debug, Clone, PartialEq)]
struct ProductCreated {
    text: String,
    big: u128,
    negative_big: i128,
    i64_max: i64,
    float: f64,
    float_small: f64,
    float_large: f64,
    float_whole: f64,
    nested: Value,
    null: Option<()>,
    control: String,
}

#[allow(clippy::approx_constant, reason = "the fixture's float, not π")]
fn event() -> ProductCreated {
    ProductCreated {
        text: "Łódź — 東京 — emoji 🚗".into(),
        big: 1 << 70,
        negative_big: -(1 << 64) - 1,
        i64_max: i64::MAX,
        float: 3.14159,
        float_small: 1e-7,
        float_large: 1e300,
        float_whole: 2.0,
        nested: json!([1, [2, [3, {"k": [null, true, false]}]], {"empty_list": [], "empty_obj": {}}]),
        null: None,
        control: "tab\tnewline\nquote\"backslash\\".into(),
    }
}

fn aligned(fixture: &TaskMessage) -> TaskMessage {
    let options = EncodeOptions::new()
        .queue(fixture.routing.routing_key.clone())
        .task_id(fixture.id.clone())
        .reply_to(fixture.properties.reply_to.clone().unwrap())
        .origin(fixture.headers.origin.clone().unwrap());
    let mut message = TaskMessage::from_event(&event(), &options).unwrap();
    message
        .properties
        .delivery_tag
        .clone_from(&fixture.properties.delivery_tag);
    message
}

#[test]
fn decodes_exactly_into_wide_integer_fields() {
    let message =
        TaskMessage::decode_redis(&redis_envelope("unicode_bigint"), &DecodeOptions::new())
            .unwrap();
    assert_eq!(message.payload::<ProductCreated>().unwrap(), event());
    assert_eq!(
        message.kwargs["payload"]["big"].to_string(),
        "1180591620717411303424"
    );
    let amqp =
        TaskMessage::decode_amqp(&amqp_message("unicode_bigint"), &DecodeOptions::new()).unwrap();
    assert_eq!(amqp.payload::<ProductCreated>().unwrap(), event());
}

#[test]
fn too_wide_for_the_field_is_a_named_error() {
    #[events_core::domain_event(name = "fixtures.narrow")]
    #[derive(Debug)]
    struct Narrow {
        #[allow(dead_code, reason = "only deserialised")]
        big: u64,
    }
    let message =
        TaskMessage::decode_redis(&redis_envelope("unicode_bigint"), &DecodeOptions::new())
            .unwrap();
    let error = message.payload::<Narrow>().unwrap_err();
    assert_eq!(error.field(), Some("big"));
    assert!(error.reason().contains("1180591620717411303424"), "{error}");
}

#[test]
fn encodes_byte_for_byte_as_python() {
    let fixture =
        TaskMessage::decode_redis(&redis_envelope("unicode_bigint"), &DecodeOptions::new())
            .unwrap();
    let redis = aligned(&fixture).to_redis().unwrap();
    assert_eq!(
        redis.envelope,
        String::from_utf8(redis_envelope("unicode_bigint")).unwrap()
    );

    let fixture =
        TaskMessage::decode_amqp(&amqp_message("unicode_bigint"), &DecodeOptions::new()).unwrap();
    let mut expected = amqp_message("unicode_bigint");
    expected.exchange.clear();
    assert_eq!(aligned(&fixture).to_amqp().unwrap(), expected);
}
