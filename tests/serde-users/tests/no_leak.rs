//! serde_json behaves in a crate that depends on events-celery exactly as it does without it:
//! events-celery turns on no serde_json feature that Cargo would unify into this crate's build
//! (`arbitrary_precision` broke tagged, untagged and flattened types with floats;
//! `preserve_order` changed every `serde_json::Map`). Each test fails if either comes back.

use std::collections::BTreeMap;

use events_core::{DomainEvent, EventDescriptor};
use serde::Deserialize;
use serde_json::Value;
use serde_users::{Measure, Position, Reading, SensorRead, ShapeDrawn};

/// Every way Python's `json.dumps` (float `repr`) or another JSON writer spells a float.
const FLOATS: &[(&str, f64)] = &[
    ("1e-07", 1e-7),
    ("1e-7", 1e-7),
    ("1E-7", 1e-7),
    ("1e+300", 1e300),
    ("2.0", 2.0),
    ("2", 2.0),
    ("-0.0", -0.0),
    ("0.1", 0.1),
    ("5e-324", 5e-324),
    ("1.7976931348623157e+308", f64::MAX),
];

#[test]
fn a_users_internally_tagged_enum_with_floats_parses() {
    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(tag = "type")]
    enum M {
        Point { x: f64 },
    }
    for &(text, value) in FLOATS {
        let parsed: M = serde_json::from_str(&format!(r#"{{"type": "Point", "x": {text}}}"#))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed, M::Point { x: value }, "{text}");
    }
}

#[test]
fn a_users_untagged_and_flattened_types_with_floats_parse() {
    #[derive(Debug, PartialEq, Deserialize)]
    struct Outer {
        name: String,
        #[serde(flatten)]
        at: Position,
    }
    for &(text, value) in FLOATS {
        let reading: Reading = serde_json::from_str(text).unwrap();
        assert_eq!(reading, Reading::Plain(value), "{text}");
        let outer: Outer =
            serde_json::from_str(&format!(r#"{{"name": "n", "lat": {text}, "lon": 1.5}}"#))
                .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(outer.at.lat, value, "{text}");
        let measure: Measure =
            serde_json::from_str(&format!(r#"{{"kind": "Ratio", "value": {text}}}"#)).unwrap();
        assert_eq!(measure, Measure::Ratio(value), "{text}");
    }
}

#[test]
fn serde_json_values_have_no_arbitrary_precision_and_sorted_keys() {
    // Without `arbitrary_precision`, an integer beyond 64 bits is read as the nearest f64.
    let wide: Value = serde_json::from_str("1180591620717411303424").unwrap();
    assert!(wide.is_f64(), "{wide:?}");
    assert_eq!(wide.to_string(), "1.1805916207174113e+21");
    // Without `preserve_order`, a `Map` is ordered by key.
    let map: serde_json::Map<String, Value> = serde_json::from_str(r#"{"b": 1, "a": 2}"#).unwrap();
    assert_eq!(map.keys().collect::<Vec<_>>(), ["a", "b"]);
    // Integers beyond 64 bits still read exactly into 128-bit fields, as serde_json reads them.
    let big: u128 = serde_json::from_str("1180591620717411303424").unwrap();
    assert_eq!(big, 1 << 70);
}

fn sensor(lat: f64) -> SensorRead {
    SensorRead {
        sensor: "s-1".into(),
        measure: Measure::Range {
            low: 1e-7,
            high: 1e300,
        },
        readings: vec![
            Reading::Plain(2.0),
            Reading::Labelled {
                value: -0.5,
                unit: "°C".into(),
            },
        ],
        position: Position { lat, lon: 0.1 },
        serial: 1 << 70,
        offset: -(1 << 64) - 1,
        extra: BTreeMap::from([("humidity".to_owned(), 5e-324)]),
    }
}

/// What Python's `json.dumps` writes for the event (Python's float spellings).
fn sensor_json(lat: &str) -> String {
    format!(
        r#"{{"sensor": "s-1", "measure": {{"kind": "Range", "value": {{"low": 1e-07, "high": 1e+300}}}}, "readings": [2.0, {{"value": -0.5, "unit": "\u00b0C"}}], "lat": {lat}, "lon": 0.1, "serial": 1180591620717411303424, "offset": -18446744073709551617, "humidity": 5e-324}}"#
    )
}

#[test]
fn event_descriptors_decode_every_shape_from_text() {
    let descriptor: &EventDescriptor = SensorRead::descriptor();
    for &(text, value) in FLOATS {
        let event = descriptor
            .decode_json(&sensor_json(text))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(*event.downcast::<SensorRead>().unwrap(), sensor(value));
        let shape = ShapeDrawn::descriptor()
            .decode_json(&format!(r#"{{"type": "Circle", "r": {text}}}"#))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            *shape.downcast::<ShapeDrawn>().unwrap(),
            ShapeDrawn::Circle { r: value }
        );
    }
}

mod codec {
    //! Every shape through the Celery codec: Python's text in, the typed event out, and the
    //! typed event written back as Python writes it.

    use events_celery::codec::{DecodeOptions, EncodeOptions, Json, TaskMessage};

    use super::*;

    fn through_redis(payload: Json) -> TaskMessage {
        let message = TaskMessage::from_payload(
            SensorRead::NAME,
            payload,
            &EncodeOptions::new().queue("serde_users"),
        )
        .unwrap();
        let redis = message.to_redis().unwrap();
        TaskMessage::decode_redis(redis.envelope.as_bytes(), &DecodeOptions::new()).unwrap()
    }

    #[test]
    fn every_shape_survives_python_text_to_the_typed_event() {
        for &(text, value) in FLOATS {
            let message = through_redis(Json::parse(&sensor_json(text)).unwrap());
            assert_eq!(
                message.payload::<SensorRead>().unwrap(),
                sensor(value),
                "{text}"
            );
            let any = message.decode_payload(SensorRead::descriptor()).unwrap();
            assert_eq!(*any.downcast::<SensorRead>().unwrap(), sensor(value));
        }
        // Python's NaN and infinities, into an f64 inside a flattened struct.
        for (text, check) in [
            ("NaN", f64::is_nan as fn(f64) -> bool),
            ("Infinity", |v: f64| v == f64::INFINITY),
            ("-Infinity", |v: f64| v == f64::NEG_INFINITY),
        ] {
            let message = through_redis(Json::parse(&sensor_json(text)).unwrap());
            let event = message.payload::<SensorRead>().unwrap();
            assert!(check(event.position.lat), "{text}");
        }
        let shape = Json::parse(r#"{"type": "Point", "x": 1e-07, "y": 2.0}"#).unwrap();
        let message = TaskMessage::from_payload(ShapeDrawn::NAME, shape, &EncodeOptions::new())
            .unwrap()
            .to_redis()
            .unwrap();
        let decoded =
            TaskMessage::decode_redis(message.envelope.as_bytes(), &DecodeOptions::new()).unwrap();
        assert_eq!(
            decoded.payload::<ShapeDrawn>().unwrap(),
            ShapeDrawn::Point { x: 1e-7, y: 2.0 }
        );
    }

    #[test]
    fn typed_events_are_written_as_python_writes_them() {
        let message = TaskMessage::from_event(&sensor(0.1), &EncodeOptions::new()).unwrap();
        assert_eq!(
            message.payload_value().unwrap().to_string(),
            sensor_json("0.1")
        );
    }

    #[test]
    fn a_non_finite_float_is_refused_at_publish_naming_the_field() {
        let error = TaskMessage::from_event(&sensor(f64::NAN), &EncodeOptions::new()).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("at `lat`"), "{text}");
        assert!(text.contains("JSON has no NaN or infinity"), "{text}");
        let error = TaskMessage::from_event(
            &ShapeDrawn::Circle { r: f64::INFINITY },
            &EncodeOptions::new(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("at `r`"), "{error}");
    }

    #[test]
    fn a_value_that_does_not_fit_names_its_field() {
        // A float where a string belongs, a string where a float belongs, a missing field:
        // never "invalid type: map" (what `arbitrary_precision` made of floats), always a path.
        for (payload, field, reason) in [
            (
                sensor_json("0.1").replace(r#""sensor": "s-1""#, r#""sensor": 1e-07"#),
                "sensor",
                "invalid type: floating point `0.0000001`, expected a string",
            ),
            (
                sensor_json("0.1").replace(r#""lon": 0.1"#, r#""lon": "east""#),
                "lon",
                "invalid type: string \"east\", expected f64",
            ),
            (
                sensor_json("0.1").replace(r#""serial": 1180591620717411303424, "#, ""),
                "serial",
                "missing field `serial`",
            ),
        ] {
            let message = through_redis(Json::parse(&payload).unwrap());
            let error = message.payload::<SensorRead>().unwrap_err();
            assert!(error.reason().starts_with(reason), "{error}");
            if field == "lon" {
                // Inside a flattened struct serde keeps no path: the error says so.
                assert_eq!(error.field(), None, "{error}");
                assert!(
                    error.reason().contains("serde does not say which field"),
                    "{error}"
                );
            } else {
                assert_eq!(error.field(), Some(field), "{error}");
            }
        }
    }
}
