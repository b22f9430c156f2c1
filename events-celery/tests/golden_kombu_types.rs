//! The `kombu_types` fixture: kombu's tagged values read into chrono, uuid and byte fields.

mod support;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use events_celery::codec::{DecodeOptions, EncodeOptions, Json, KwargsRepr, TaskMessage};
use support::{amqp_message, redis_envelope, redis_json};

#[events_core::domain_event(name = "products.product_created")]
#[derive(Debug, Clone, PartialEq)]
struct ProductCreated {
    datetime_utc: DateTime<Utc>,
    datetime_naive: NaiveDateTime,
    datetime_plus2: DateTime<FixedOffset>,
    date: NaiveDate,
    time: NaiveTime,
    decimal: String,
    uuid: uuid::Uuid,
    bytes_utf8: Vec<u8>,
    bytes_binary: Vec<u8>,
}

fn expected() -> ProductCreated {
    let date = NaiveDate::from_ymd_opt(2024, 5, 17).unwrap();
    ProductCreated {
        datetime_utc: Utc.from_utc_datetime(&date.and_hms_micro_opt(12, 30, 45, 123_456).unwrap()),
        datetime_naive: date.and_hms_opt(12, 30, 45).unwrap(),
        datetime_plus2: FixedOffset::east_opt(7200)
            .unwrap()
            .from_local_datetime(&date.and_hms_opt(14, 30, 45).unwrap())
            .unwrap(),
        date,
        time: NaiveTime::from_hms_micro_opt(12, 30, 45, 500).unwrap(),
        decimal: "9.99".into(),
        uuid: uuid::Uuid::parse_str("6f1c2b8e-3f4a-4c2d-9e1b-7a5d0c3e2f10").unwrap(),
        bytes_utf8: b"brake pad".to_vec(),
        bytes_binary: vec![0x00, 0xff, 0xfe, 0x80],
    }
}

#[test]
fn tagged_values_read_into_typed_fields() {
    let redis =
        TaskMessage::decode_redis(&redis_envelope("kombu_types"), &DecodeOptions::new()).unwrap();
    assert_eq!(redis.payload::<ProductCreated>().unwrap(), expected());
    let amqp =
        TaskMessage::decode_amqp(&amqp_message("kombu_types"), &DecodeOptions::new()).unwrap();
    assert_eq!(amqp.payload::<ProductCreated>().unwrap(), expected());
}

#[test]
fn the_tagged_body_encodes_byte_for_byte() {
    // A Rust event never writes tags; the same JSON given as a payload is written as Python
    // wrote it (key order, escapes), so only the conversion differs.
    let fixture_json = redis_json("kombu_types");
    let fixture =
        TaskMessage::decode_redis(&redis_envelope("kombu_types"), &DecodeOptions::new()).unwrap();
    // Read from the body's text with the codec's `Json`, which keeps Python's key order.
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD
        .decode(fixture_json["body"].as_str().unwrap())
        .unwrap();
    let payload = Json::parse(std::str::from_utf8(&body).unwrap()).unwrap()[1]["payload"].clone();
    let options = EncodeOptions::new()
        .queue("fixtures_kombu_types")
        .task_id(fixture.id.clone())
        .reply_to(fixture.properties.reply_to.clone().unwrap())
        .origin(fixture.headers.origin.clone().unwrap())
        .kwargs_repr(KwargsRepr::Custom(
            fixture.headers.kwargsrepr.clone().unwrap(),
        ));
    let mut message =
        TaskMessage::from_payload("products.product_created", payload, &options).unwrap();
    message
        .properties
        .delivery_tag
        .clone_from(&fixture.properties.delivery_tag);
    assert_eq!(
        message.to_redis().unwrap().envelope,
        String::from_utf8(redis_envelope("kombu_types")).unwrap()
    );
}
