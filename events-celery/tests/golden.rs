//! Golden tests against the messages Python Celery 5.7 wrote (`tests/fixtures/`): every case
//! decodes from both brokers, re-encodes byte for byte, and a typed event encodes to what
//! Python sent apart from ids, `origin`, `reply_to` and the delivery tag.

mod support;

use std::time::Duration;

use events_celery::codec::{
    DecodeOptions, EncodeOptions, Json, ProtocolVersion, Routing, TaskMessage,
};
use serde_json::{Value, json};
use support::{
    CASES, amqp_header_types, amqp_json, amqp_message, redis_envelope, redis_json, redis_key,
    type_signature,
};

#[events_core::domain_event(name = "products.product_created")]
#[derive(Debug, Clone, PartialEq)]
struct ProductCreated {
    product_id: String,
    name: String,
    stock: u32,
}

fn seed() -> ProductCreated {
    ProductCreated {
        product_id: "abc-123".into(),
        name: "Brake pad".into(),
        stock: 4,
    }
}

/// In Python's key order (`json!` would sort the keys).
fn seed_json() -> Json {
    Json::parse(r#"{"product_id": "abc-123", "name": "Brake pad", "stock": 4}"#).unwrap()
}

fn decode_redis(case: &str) -> TaskMessage {
    TaskMessage::decode_redis(&redis_envelope(case), &DecodeOptions::new())
        .unwrap_or_else(|e| panic!("{case}: {e}"))
}

fn decode_amqp(case: &str) -> TaskMessage {
    TaskMessage::decode_amqp(&amqp_message(case), &DecodeOptions::new())
        .unwrap_or_else(|e| panic!("{case}: {e}"))
}

/// The headers as the Redis envelope writes them.
fn headers_json(message: &TaskMessage) -> Value {
    let envelope: Value = serde_json::from_str(&message.to_redis().unwrap().envelope).unwrap();
    envelope["headers"].clone()
}

fn keys(value: &Value) -> Vec<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

fn task_name(case: &str) -> &'static str {
    match case {
        "chain" => "domain_events.fixtures.step_one",
        "retried" | "retried_original" => "domain_events.fixtures.flaky",
        _ => "domain_events.products.product_created",
    }
}

/// kwargs with kombu's tags turned into plain JSON.
fn expected_kwargs(case: &str) -> Json {
    match case {
        "kombu_types" => Json::from(json!({"payload": {
            "datetime_utc": "2024-05-17T12:30:45.123456+00:00",
            "datetime_naive": "2024-05-17T12:30:45",
            "datetime_plus2": "2024-05-17T14:30:45+02:00",
            "date": "2024-05-17",
            "time": "12:30:45.000500",
            "decimal": "9.99",
            "uuid": "6f1c2b8e-3f4a-4c2d-9e1b-7a5d0c3e2f10",
            "bytes_utf8": b"brake pad".to_vec(),
            "bytes_binary": [0, 255, 254, 128],
        }})),
        "unicode_bigint" => Json::parse(
            r#"{"payload": {"text": "Łódź — 東京 — emoji 🚗", "big": 1180591620717411303424,
                "negative_big": -18446744073709551617, "i64_max": 9223372036854775807,
                "float": 3.14159, "float_small": 1e-07, "float_large": 1e+300,
                "float_whole": 2.0,
                "nested": [1, [2, [3, {"k": [null, true, false]}]], {"empty_list": [], "empty_obj": {}}],
                "null": null, "control": "tab\tnewline\nquote\"backslash\\"}}"#,
        )
        .unwrap(),
        _ => {
            let mut kwargs = Json::Null;
            kwargs["payload"] = seed_json();
            kwargs
        }
    }
}

#[test]
fn every_redis_fixture_decodes() {
    for case in CASES {
        let fixture = redis_json(case);
        let message = decode_redis(case);
        assert_eq!(message.task, task_name(case), "{case}");
        assert_eq!(
            Json::Object(message.kwargs.clone()),
            expected_kwargs(case),
            "{case}"
        );
        assert!(message.args.is_empty(), "{case}");
        let properties = &fixture["properties"];
        assert_eq!(
            message.properties.correlation_id.as_deref(),
            properties["correlation_id"].as_str()
        );
        assert_eq!(
            message.properties.reply_to.as_deref(),
            properties["reply_to"].as_str()
        );
        assert_eq!(
            message.properties.delivery_tag.as_deref(),
            properties["delivery_tag"].as_str()
        );
        assert_eq!(
            message.properties.priority,
            Some(u8::try_from(properties["priority"].as_u64().unwrap()).unwrap())
        );
        assert_eq!(
            message.routing,
            Routing::queue(properties["delivery_info"]["routing_key"].as_str().unwrap())
        );
        assert_eq!(
            message.raw_envelope.as_deref().map(str::as_bytes),
            Some(redis_envelope(case).as_slice())
        );
        if case == "protocol_v1" {
            assert_eq!(message.protocol, ProtocolVersion::V1);
            assert_eq!(message.id, fixture["body_json"]["id"].as_str().unwrap());
            assert_eq!(message.headers.retries, 0);
            assert_eq!(message.headers.timelimit, Default::default());
        } else {
            assert_eq!(message.protocol, ProtocolVersion::V2);
            assert_eq!(message.id, fixture["headers"]["id"].as_str().unwrap());
            // Every header, its value and its JSON type, in Celery's order.
            assert_eq!(headers_json(&message), fixture["headers"], "{case}");
            assert_eq!(
                keys(&headers_json(&message)),
                keys(&fixture["headers"]),
                "{case}"
            );
        }
    }
}

#[test]
fn fixture_details_survive_decoding() {
    let countdown = decode_redis("countdown");
    let eta = countdown.headers.eta.unwrap();
    let expires = countdown.headers.expires.unwrap();
    assert_eq!(expires - eta, chrono::Duration::seconds(3570));
    assert_eq!(countdown.properties.expiration.as_deref(), Some("3600000"));

    let custom = decode_redis("custom_headers");
    assert_eq!(
        custom.headers.custom,
        vec![("x-trace-id".to_owned(), Json::from("abc"))]
    );

    let linked = decode_redis("linked");
    assert_eq!(
        linked.embed.callbacks[0]["task"],
        "domain_events.fixtures.on_success"
    );
    assert_eq!(linked.embed.errbacks[0]["args"], json!(["e"]));

    let chain = decode_redis("chain");
    let steps: Vec<&str> = chain
        .embed
        .chain
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["task"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "domain_events.fixtures.step_three",
            "domain_events.fixtures.step_two"
        ]
    );

    let original = decode_redis("retried_original");
    let retried = decode_redis("retried");
    assert_eq!(retried.id, original.id);
    assert_eq!(retried.headers.root_id, original.headers.root_id);
    assert_eq!(
        retried.headers.parent_id.as_deref(),
        Some(original.id.as_str())
    );
    assert_eq!(retried.headers.retries, 1);
    assert_eq!(retried.headers.ignore_result, Some(false));
    assert_eq!(retried.properties.origin, original.headers.origin);
    assert!(retried.headers.eta.is_some());

    let priority = decode_redis("priority");
    assert_eq!(priority.properties.priority, Some(5));
    assert_eq!(priority.to_redis().unwrap().key, redis_key("priority"));
}

#[test]
fn redis_fixtures_reencode_byte_for_byte() {
    for case in CASES {
        // kombu tags are converted on decode, and protocol 1 is upgraded: those two differ.
        if matches!(case, "kombu_types" | "protocol_v1") {
            continue;
        }
        let message = decode_redis(case);
        let redis = message.to_redis().unwrap();
        assert_eq!(
            redis.envelope.as_bytes(),
            redis_envelope(case).as_slice(),
            "{case}"
        );
        assert_eq!(redis.key, redis_key(case), "{case}");
    }
}

#[test]
fn every_amqp_fixture_decodes_with_wire_types() {
    for case in CASES {
        let capture = amqp_json(case);
        let wire = amqp_message(case);
        let message = decode_amqp(case);
        assert_eq!(message.task, task_name(case), "{case}");
        assert_eq!(
            Json::Object(message.kwargs.clone()),
            expected_kwargs(case),
            "{case}"
        );
        assert_eq!(
            message.routing.routing_key,
            capture["routing_key"].as_str().unwrap()
        );
        assert_eq!(
            message.properties.correlation_id,
            wire.properties.correlation_id
        );
        if case == "protocol_v1" {
            assert_eq!(message.protocol, ProtocolVersion::V1);
            assert!(wire.headers.is_empty());
            assert_eq!(
                message.id,
                capture["properties"]["correlation_id"].as_str().unwrap()
            );
            continue;
        }
        assert_eq!(message.id, capture["headers"]["id"].as_str().unwrap());
        assert_eq!(headers_json(&message), capture["headers"], "{case}");

        // Encoding the decoded message gives RabbitMQ's bytes back: same header table (values
        // and field types), properties, and (tags aside) body.
        let encoded = message.to_amqp().unwrap();
        assert_eq!(encoded.headers, wire.headers, "{case}");
        assert_eq!(encoded.properties, wire.properties, "{case}");
        assert_eq!(
            (encoded.exchange.as_str(), encoded.routing_key.as_str()),
            ("", capture["routing_key"].as_str().unwrap())
        );
        if case != "kombu_types" {
            assert_eq!(encoded.body, wire.body, "{case}");
        }
        let types: Vec<(String, String)> = encoded
            .headers
            .iter()
            .map(|(name, value)| (name.to_owned(), type_signature(value)))
            .collect();
        assert_eq!(types, amqp_header_types(case), "{case}");
    }
}

#[test]
fn both_brokers_decode_to_the_same_model() {
    for case in CASES {
        let mut redis = decode_redis(case);
        let amqp = decode_amqp(case);
        // What differs between two runs of Python, or between the transports.
        redis.id.clone_from(&amqp.id);
        redis.headers.root_id.clone_from(&amqp.headers.root_id);
        redis.headers.parent_id.clone_from(&amqp.headers.parent_id);
        redis.headers.eta = amqp.headers.eta;
        redis.headers.expires = amqp.headers.expires;
        redis
            .properties
            .correlation_id
            .clone_from(&amqp.properties.correlation_id);
        redis
            .properties
            .reply_to
            .clone_from(&amqp.properties.reply_to);
        redis.properties.delivery_tag = None;
        redis.properties.origin = None;
        redis.raw_envelope = None;
        if case == "chain" {
            redis.embed.chain.clone_from(&amqp.embed.chain);
        }
        assert_eq!(redis, amqp, "{case}");
    }
}

/// Encodes the seed event the way `case` was sent, with the case's ids (which are random per
/// run), and returns it for both brokers.
fn encode_like_python(case: &str, fixture: &TaskMessage, options: EncodeOptions) -> TaskMessage {
    let options = options
        .queue(fixture.routing.routing_key.clone())
        .task_id(fixture.id.clone())
        .reply_to(fixture.properties.reply_to.clone().unwrap())
        .origin(fixture.headers.origin.clone().unwrap());
    let mut message = match case {
        "chain" => TaskMessage::from_payload("fixtures.step_one", seed_json(), &options),
        "retried" | "retried_original" => {
            TaskMessage::from_payload("fixtures.flaky", seed_json(), &options)
        }
        _ => TaskMessage::from_event(&seed(), &options),
    }
    .unwrap();
    // Workflow options are not `EncodeOptions`: the model carries them.
    message.embed = fixture.embed.clone();
    message
        .properties
        .delivery_tag
        .clone_from(&fixture.properties.delivery_tag);
    if case == "countdown" || case == "retried" {
        // Scheduled from "now": the clock differs.
        let eta = message.headers.eta.unwrap();
        let now = chrono::Utc::now();
        let ahead = (eta.with_timezone(&chrono::Utc) - now).num_seconds();
        let countdown = if case == "countdown" { 30 } else { 1 };
        assert!(
            (countdown - 2..=countdown).contains(&ahead),
            "{case}: eta {ahead}s ahead"
        );
        message.headers.eta = fixture.headers.eta;
        message.headers.expires = fixture.headers.expires;
    }
    if case == "retried" {
        // What a worker's retry changes beyond `EncodeOptions`.
        message.headers.ignore_result = Some(false);
        message
            .properties
            .origin
            .clone_from(&fixture.properties.origin);
    }
    message
}

fn options_for(case: &str, fixture: &TaskMessage) -> EncodeOptions {
    let options = EncodeOptions::new();
    match case {
        "priority" => options.priority(5),
        "countdown" => options
            .countdown(Duration::from_secs(30))
            .expires_in(Duration::from_secs(3600)),
        "custom_headers" => options.header("x-trace-id", "abc"),
        "retried" => options
            .retries(1)
            .parent_id(fixture.id.clone())
            .countdown(Duration::from_secs(1)),
        _ => options,
    }
}

const SEED_CASES: [&str; 8] = [
    "seed_event",
    "priority",
    "countdown",
    "custom_headers",
    "linked",
    "chain",
    "retried_original",
    "retried",
];

#[test]
fn typed_event_encodes_like_python_for_redis() {
    for case in SEED_CASES {
        let fixture = decode_redis(case);
        let message = encode_like_python(case, &fixture, options_for(case, &fixture));
        let redis = message.to_redis().unwrap();
        assert_eq!(
            redis.envelope,
            String::from_utf8(redis_envelope(case)).unwrap(),
            "{case}"
        );
        assert_eq!(redis.key, redis_key(case), "{case}");
    }
}

#[test]
fn typed_event_encodes_like_python_for_amqp() {
    for case in SEED_CASES {
        let fixture = decode_amqp(case);
        let message = encode_like_python(case, &fixture, options_for(case, &fixture));
        let mut expected = amqp_message(case);
        if case == "retried" {
            // `origin` is a Redis-only property.
            assert_eq!(message.properties.origin, None);
        }
        let encoded = message.to_amqp().unwrap();
        expected.exchange.clear();
        assert_eq!(encoded, expected, "{case}");
    }
}

#[test]
fn typed_encoding_has_pythons_header_set_and_value_types() {
    // Without aligning anything: fresh ids, this process's origin and reply_to.
    for case in SEED_CASES {
        let fixture = redis_json(case);
        let message =
            TaskMessage::from_event(&seed(), &options_for(case, &decode_redis(case))).unwrap();
        let ours = headers_json(&message);
        let theirs = &fixture["headers"];
        let kind = |value: &Value| match value {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(n) if n.is_i64() || n.is_u64() => "int",
            Value::Number(_) => "float",
            Value::String(_) => "str",
            Value::Array(_) => "list",
            Value::Object(_) => "dict",
        };
        let types = |headers: &Value| -> Vec<(String, &'static str)> {
            headers
                .as_object()
                .unwrap()
                .iter()
                // A worker's retry sets these; `send_task` does not.
                .filter(|(name, _)| {
                    !(case == "retried" && matches!(name.as_str(), "parent_id" | "ignore_result"))
                })
                .map(|(name, value)| (name.clone(), kind(value)))
                .collect()
        };
        assert_eq!(types(&ours), types(theirs), "{case}");
        let id = uuid::Uuid::parse_str(&message.id).unwrap();
        assert_eq!(id.get_version_num(), 4);
    }
}

#[test]
fn typed_payload_decodes_from_every_seed_fixture() {
    for case in SEED_CASES.into_iter().chain(["protocol_v1"]) {
        assert_eq!(
            decode_redis(case).payload::<ProductCreated>().unwrap(),
            seed(),
            "{case}"
        );
        assert_eq!(
            decode_amqp(case).payload::<ProductCreated>().unwrap(),
            seed(),
            "{case}"
        );
        let dynamic = decode_redis(case)
            .decode_payload(<ProductCreated as events_core::DomainEvent>::descriptor())
            .unwrap();
        assert_eq!(dynamic.downcast_ref::<ProductCreated>(), Some(&seed()));
    }
}

#[test]
fn payload_errors_name_event_field_and_reason() {
    let mut message = decode_redis("seed_event");
    message.kwargs["payload"]["stock"] = json!("four").into();
    let error = message.payload::<ProductCreated>().unwrap_err();
    assert_eq!(error.event(), "products.product_created");
    assert_eq!(error.field(), Some("stock"));
    assert!(
        error
            .reason()
            .contains("invalid type: string \"four\", expected u32"),
        "{error}"
    );
    assert!(error.to_string().starts_with("cannot decode event `products.product_created` as `golden::ProductCreated`: field `stock`: invalid type"), "{error}");

    message.kwargs["payload"]["stock"] = json!(1u64 << 40).into();
    let error = message.payload::<ProductCreated>().unwrap_err();
    assert_eq!(error.field(), Some("stock"));

    message.kwargs["payload"]["stock"] = json!(4).into();
    message.kwargs["payload"]
        .as_object_mut()
        .unwrap()
        .remove("name");
    let descriptor = <ProductCreated as events_core::DomainEvent>::descriptor();
    let error = message.decode_payload(descriptor).unwrap_err();
    assert_eq!(error.field(), Some("name"));
    assert!(error.reason().contains("missing field `name`"));

    // The dynamic path (the worker's) names a field of the wrong type too.
    message.kwargs["payload"]["stock"] = json!("four").into();
    let error = message.decode_payload(descriptor).unwrap_err();
    assert_eq!(error.field(), Some("stock"));
    assert!(error.reason().contains("expected u32"), "{error}");
    message.kwargs["payload"]["stock"] = json!(4).into();

    message.kwargs.clear();
    let error = message.payload::<ProductCreated>().unwrap_err();
    assert_eq!(error.field(), None);
    assert!(
        error.reason().contains("no `payload` keyword argument"),
        "{error}"
    );
}
