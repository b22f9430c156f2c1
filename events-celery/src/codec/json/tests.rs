//! The codec's `Json`: parsing exactly, reading typed values as serde_json does, writing
//! Rust values without silent changes.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::*;

/// Every float spelling Python's `json.dumps` writes (`repr`), and JSON's others.
const FLOAT_SPELLINGS: &[&str] = &[
    "1e-07",
    "1e-7",
    "1E-7",
    "1e+300",
    "1E300",
    "2.0",
    "0.0",
    "-0.0",
    "0.1",
    "3.14159",
    "5e-324",
    "1.7976931348623157e+308",
    "123456789.125",
    "-1.5e-300",
    "1e+16",
    "1000000000000000.0",
];

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
enum Internally {
    Point { x: f64, y: f64 },
    Count { n: u64 },
    Unit,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", content = "c")]
enum Adjacently {
    Ratio(f64),
    Pair(f64, i64),
    Named { x: f64 },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Untagged {
    Float(f64),
    Text(String),
    Both { x: f64, label: String },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum External {
    Unit,
    Newtype(f64),
    Tuple(f64, u8),
    Struct { x: f64 },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Inner {
    ratio: f64,
    count: i64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Flattened {
    name: String,
    #[serde(flatten)]
    inner: Inner,
    #[serde(flatten)]
    rest: BTreeMap<String, f64>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Everything {
    internally: Vec<Internally>,
    adjacently: Vec<Adjacently>,
    untagged: Vec<Untagged>,
    external: Vec<External>,
    flattened: Flattened,
    wide: u128,
    negative_wide: i128,
    by_number: HashMap<u32, f32>,
    maybe: Option<f64>,
    nothing: Option<f64>,
}

fn everything_json(float: &str) -> String {
    format!(
        r#"{{"internally": [{{"type": "Point", "x": {float}, "y": -2.5}}, {{"type": "Count", "n": 7}}, {{"type": "Unit"}}],
  "adjacently": [{{"t": "Ratio", "c": {float}}}, {{"t": "Pair", "c": [{float}, -3]}}, {{"t": "Named", "c": {{"x": {float}}}}}],
  "untagged": [{float}, "text", {{"x": {float}, "label": "l"}}],
  "external": ["Unit", {{"Newtype": {float}}}, {{"Tuple": [{float}, 255]}}, {{"Struct": {{"x": {float}}}}}],
  "flattened": {{"name": "n", "ratio": {float}, "count": -1, "extra": {float}}},
  "wide": 1180591620717411303424, "negative_wide": -170141183460469231731687303715884105728,
  "by_number": {{"1": {float}, "42": 0.5}}, "maybe": {float}, "nothing": null}}"#
    )
}

#[test]
fn every_serde_shape_reads_as_serde_json_reads_it() {
    for float in FLOAT_SPELLINGS {
        let text = everything_json(float);
        let json = Json::parse(&text).unwrap();
        let ours: Everything = json
            .deserialize_into()
            .unwrap_or_else(|e| panic!("{float}: {e}"));
        let expected: Everything = serde_json::from_str(&text).unwrap();
        // serde_json's default float parsing is sometimes a unit in the last place off
        // (`-1.5e-300`); where it is exact, both read the same.
        if serde_json::from_str::<f64>(float).unwrap() == float.parse::<f64>().unwrap() {
            assert_eq!(ours, expected, "{float}");
        }
        assert_eq!(ours.wide, 1 << 70);
        assert_eq!(ours.negative_wide, i128::MIN);
        // Read correctly rounded, as Python reads it.
        assert_eq!(ours.maybe, Some(float.parse::<f64>().unwrap()), "{float}");
    }
}

#[test]
fn python_nan_and_infinity_read_into_float_fields() {
    for (spelling, check) in [
        ("NaN", f64::is_nan as fn(f64) -> bool),
        ("Infinity", |v: f64| v == f64::INFINITY),
        ("-Infinity", |v: f64| v == f64::NEG_INFINITY),
    ] {
        let json = Json::parse(&everything_json(spelling)).unwrap();
        let ours: Everything = json.deserialize_into().unwrap();
        assert!(check(ours.maybe.unwrap()), "{spelling}");
        let Internally::Point { x, .. } = ours.internally[0] else {
            panic!("a point")
        };
        assert!(check(x), "{spelling} through an internally tagged enum");
        assert!(
            check(ours.flattened.inner.ratio),
            "{spelling} through flatten"
        );
        // Written back as Python wrote it.
        assert_eq!(Json::parse(spelling).unwrap().to_string(), spelling);
    }
    // Any other type names the float.
    let error = Json::parse(r#"{"n": NaN}"#)
        .unwrap()
        .deserialize_into::<BTreeMap<String, u32>>()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid type: floating point `NaN`, expected u32"
    );
}

#[test]
fn numbers_keep_every_digit_and_pythons_spelling() {
    for (text, written) in [
        ("1180591620717411303424", "1180591620717411303424"),
        ("-0", "0"),
        ("1e-7", "1e-07"),
        ("1E300", "1e+300"),
        ("2.50", "2.5"),
        ("3.141592653589793238462643", "3.141592653589793238462643"),
        (
            "123456789012345678901234567890123456789012",
            "123456789012345678901234567890123456789012",
        ),
    ] {
        assert_eq!(Json::parse(text).unwrap().to_string(), written, "{text}");
    }
}

#[test]
fn keys_keep_pythons_order_and_the_last_repeat_wins() {
    let json = Json::parse(r#"{"z": 1, "a": 2, "m": 3, "a": 4}"#).unwrap();
    assert_eq!(json.to_string(), r#"{"z": 1, "a": 4, "m": 3}"#);
}

#[test]
fn invalid_json_gets_serde_jsons_error() {
    for (text, expected) in [
        ("[1, 2", "EOF while parsing a list at line 1 column 5"),
        ("{\"a\" 1}", "expected `:` at line 1 column 6"),
        ("[01]", "invalid number at line 1 column 3"),
        (
            "\"\\ud800\"",
            "unexpected end of hex escape at line 1 column 8",
        ),
        ("[nan]", "expected value at line 1 column 2"),
        (
            "\"a\u{1}\"",
            "control character (\\u0000-\\u001F) found while parsing a string at line 1 column 3",
        ),
        ("1 2", "trailing characters at line 1 column 3"),
    ] {
        assert_eq!(
            Json::parse(text).unwrap_err().to_string(),
            expected,
            "{text}"
        );
    }
    let deep = "[".repeat(129) + &"]".repeat(129);
    assert!(
        Json::parse(&deep)
            .unwrap_err()
            .to_string()
            .contains("recursion limit")
    );
    let ok = "[".repeat(128) + &"]".repeat(128);
    assert!(Json::parse(&ok).is_ok());
}

#[test]
fn a_number_too_wide_for_its_field_is_named() {
    let json = Json::parse("1180591620717411303424").unwrap();
    assert_eq!(
        json.deserialize_into::<u64>().unwrap_err().to_string(),
        "invalid value: integer `1180591620717411303424`, expected u64"
    );
    assert_eq!(
        json.deserialize_into::<u128>().unwrap(),
        1_180_591_620_717_411_303_424
    );
    assert_eq!(
        Json::parse("300")
            .unwrap()
            .deserialize_into::<u8>()
            .unwrap_err()
            .to_string(),
        "invalid value: integer `300`, expected u8"
    );
}

#[test]
fn rust_values_become_json_as_serde_json_writes_them() {
    let value = Everything {
        internally: vec![Internally::Point { x: 1e-7, y: 2.0 }, Internally::Unit],
        adjacently: vec![Adjacently::Pair(0.1, -3), Adjacently::Named { x: 1e300 }],
        untagged: vec![Untagged::Float(2.0), Untagged::Text("t".into())],
        external: vec![
            External::Unit,
            External::Newtype(-0.0),
            External::Tuple(1.5, 7),
            External::Struct { x: 5e-324 },
        ],
        flattened: Flattened {
            name: "n".into(),
            inner: Inner {
                ratio: 0.5,
                count: i64::MIN,
            },
            rest: BTreeMap::from([("extra".to_owned(), 3.0)]),
        },
        wide: u128::MAX,
        negative_wide: i128::MIN,
        by_number: HashMap::from([(7, 0.1)]),
        maybe: Some(1e16),
        nothing: None,
    };
    let json = Json::from_serialize(&value).unwrap();
    // The same text serde_json gives, spelled as Python writes it.
    let python = crate::codec::to_python_json(&value).unwrap();
    assert_eq!(json.to_string(), python);
    assert_eq!(json.deserialize_into::<Everything>().unwrap(), value);
}

#[test]
fn non_finite_floats_are_refused_with_their_path() {
    #[derive(Serialize)]
    struct Line {
        price: f64,
    }
    #[derive(Serialize)]
    struct Order {
        lines: Vec<Line>,
        ratio: f32,
    }
    for (order, path, shown) in [
        (
            Order {
                lines: vec![Line { price: 1.0 }, Line { price: f64::NAN }],
                ratio: 0.5,
            },
            "lines[1].price",
            "NaN",
        ),
        (
            Order {
                lines: Vec::new(),
                ratio: f32::NEG_INFINITY,
            },
            "ratio",
            "-Infinity",
        ),
    ] {
        let error = Json::from_serialize(&order).unwrap_err().to_string();
        assert!(error.starts_with(&format!("at `{path}`: ")), "{error}");
        assert!(error.contains(&format!("`{shown}`")), "{error}");
        assert!(error.contains("JSON has no NaN or infinity"), "{error}");
    }
    let error = Json::from_serialize(&f64::INFINITY)
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("the float inf cannot be sent"), "{error}");
}
