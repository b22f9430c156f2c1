//! kombu's tagged JSON values, turned into plain JSON that typed events deserialise.
//!
//! kombu writes the Python types JSON lacks as `{"__type__": T, "__value__": V}`. A dict with
//! exactly those two keys is always a tag (as in kombu's `object_hook`), so an unknown `T` is an
//! error. Each tag becomes:
//!
//! | `__type__` | `__value__` | becomes | reads into |
//! |---|---|---|---|
//! | `datetime` | `"2024-05-17T12:30:45.123456+00:00"` (naive: no offset) | the string, unchanged | `chrono::DateTime<Utc>` / `DateTime<FixedOffset>` (with offset), `NaiveDateTime` (naive), `String` |
//! | `date` | `"2024-05-17"` | the string | `chrono::NaiveDate`, `String` |
//! | `time` | `"12:30:45.000500"` | the string | `chrono::NaiveTime`, `String` |
//! | `decimal` | `"9.99"` | the string (exact; never a float) | `rust_decimal::Decimal`, `String` |
//! | `uuid` | `{"hex": "6f1c…2f10"}` | the hyphenated string `"6f1c2b8e-3f4a-…"` | `uuid::Uuid`, `String` |
//! | `bytes` | the text (valid UTF-8 bytes) | an array of the byte values | `Vec<u8>` |
//! | `base64` | standard base64 (other bytes) | an array of the byte values | `Vec<u8>` |
//!
//! Both byte forms become the same array, so one `Vec<u8>` field reads whichever kombu chose.
//! Values are checked as they are converted (a `datetime` must parse, a `uuid` must be 32 hex
//! digits…), so a bad one is reported with its path rather than as a puzzling serde error.
//! The encoder never writes tags: a Rust event serialises to plain JSON.

use super::json::Json;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::error::DecodeError;

const TYPE_KEY: &str = "__type__";
const VALUE_KEY: &str = "__value__";

/// Replaces every kombu tag inside `value`, bottom-up as kombu's `object_hook` does. `root`
/// names `value` in errors (`kwargs.payload`); it is called only on error.
pub(crate) fn untag(value: &mut Json, root: impl FnOnce() -> String) -> Result<(), DecodeError> {
    match value {
        Json::Array(_) | Json::Object(_) => {
            walk(value).map_err(|failure| failure.into_error(&root()))
        }
        _ => Ok(()),
    }
}

struct Failure {
    type_name: String,
    reason: Option<String>,
    /// Path segments, innermost first.
    path: Vec<String>,
}

impl Failure {
    fn into_error(self, root: &str) -> DecodeError {
        let mut path = root.to_owned();
        for segment in self.path.iter().rev() {
            path.push_str(segment);
        }
        match self.reason {
            None => DecodeError::UnknownKombuType {
                type_name: self.type_name,
                path,
            },
            Some(reason) => DecodeError::InvalidKombuValue {
                type_name: self.type_name,
                path,
                reason,
            },
        }
    }
}

fn walk(value: &mut Json) -> Result<(), Failure> {
    match value {
        Json::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                walk(item).map_err(|mut failure| {
                    failure.path.push(format!("[{index}]"));
                    failure
                })?;
            }
            Ok(())
        }
        Json::Object(map) => {
            for (key, item) in map.iter_mut() {
                walk(item).map_err(|mut failure| {
                    failure.path.push(format!(".{key}"));
                    failure
                })?;
            }
            if map.len() == 2 && map.contains_key(TYPE_KEY) && map.contains_key(VALUE_KEY) {
                let type_name = map.get(TYPE_KEY).cloned().unwrap_or(Json::Null);
                let tagged = map.remove(VALUE_KEY).unwrap_or(Json::Null);
                *value = convert(type_name, tagged)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn convert(type_name: Json, tagged: Json) -> Result<Json, Failure> {
    let Json::String(type_name) = type_name else {
        return Err(Failure {
            type_name: type_name.to_string(),
            reason: None,
            path: Vec::new(),
        });
    };
    let invalid = |type_name: &str, reason: String| Failure {
        type_name: type_name.to_owned(),
        reason: Some(reason),
        path: Vec::new(),
    };
    let text = |tagged: Json| match tagged {
        Json::String(text) => Ok(text),
        other => Err(invalid(
            &type_name,
            format!(
                "expected a string, found {}",
                super::error::json_type(&other)
            ),
        )),
    };
    match type_name.as_str() {
        "datetime" => {
            let text = text(tagged)?;
            let valid = chrono::DateTime::parse_from_rfc3339(&text).is_ok()
                || chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f").is_ok();
            if valid {
                Ok(Json::String(text))
            } else {
                Err(invalid(
                    &type_name,
                    format!("{text:?} is not an ISO-8601 datetime"),
                ))
            }
        }
        "date" => {
            let text = text(tagged)?;
            match chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
                Ok(_) => Ok(Json::String(text)),
                Err(e) => Err(invalid(&type_name, format!("{text:?}: {e}"))),
            }
        }
        "time" => {
            let text = text(tagged)?;
            match chrono::NaiveTime::parse_from_str(&text, "%H:%M:%S%.f") {
                Ok(_) => Ok(Json::String(text)),
                Err(e) => Err(invalid(&type_name, format!("{text:?}: {e}"))),
            }
        }
        "decimal" => {
            let text = text(tagged)?;
            if is_decimal(&text) {
                Ok(Json::String(text))
            } else {
                Err(invalid(
                    &type_name,
                    format!("{text:?} is not a decimal number"),
                ))
            }
        }
        "uuid" => {
            let hex = match tagged {
                Json::Object(mut fields) => match fields.remove("hex") {
                    Some(Json::String(hex)) if fields.is_empty() => hex,
                    _ => {
                        return Err(invalid(
                            &type_name,
                            "expected {\"hex\": \"<32 hex digits>\"}".to_owned(),
                        ));
                    }
                },
                other => {
                    return Err(invalid(
                        &type_name,
                        format!(
                            "expected {{\"hex\": …}}, found {}",
                            super::error::json_type(&other)
                        ),
                    ));
                }
            };
            match uuid::Uuid::try_parse(&hex) {
                Ok(uuid) => Ok(Json::String(uuid.hyphenated().to_string())),
                Err(e) => Err(invalid(&type_name, format!("{hex:?}: {e}"))),
            }
        }
        "bytes" => Ok(byte_array(text(tagged)?.as_bytes())),
        "base64" => {
            let encoded = text(tagged)?;
            match STANDARD.decode(encoded.as_bytes()) {
                Ok(bytes) => Ok(byte_array(&bytes)),
                Err(e) => Err(invalid(&type_name, e.to_string())),
            }
        }
        _ => Err(Failure {
            type_name,
            reason: None,
            path: Vec::new(),
        }),
    }
}

fn byte_array(bytes: &[u8]) -> Json {
    Json::Array(bytes.iter().map(|&b| Json::from(b)).collect())
}

/// Python's `str(Decimal)`: a decimal literal, or `NaN` / `sNaN` / `Infinity` with a sign.
fn is_decimal(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if matches!(unsigned, "NaN" | "sNaN" | "Infinity" | "Inf") {
        return true;
    }
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (unsigned, None),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = !(int_part.is_empty() && frac_part.is_empty())
        && digits_ok(int_part)
        && digits_ok(frac_part);
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits_ok(e)
    });
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn untagged(value: serde_json::Value) -> Result<Json, DecodeError> {
        let mut value = Json::from(value);
        untag(&mut value, || "kwargs".to_owned())?;
        Ok(value)
    }

    #[test]
    fn every_observed_tag_becomes_plain_json() {
        let value = json!({
            "utc": {"__type__": "datetime", "__value__": "2024-05-17T12:30:45.123456+00:00"},
            "naive": {"__type__": "datetime", "__value__": "2024-05-17T12:30:45"},
            "date": {"__type__": "date", "__value__": "2024-05-17"},
            "time": {"__type__": "time", "__value__": "12:30:45.000500"},
            "decimal": {"__type__": "decimal", "__value__": "9.99"},
            "uuid": {"__type__": "uuid", "__value__": {"hex": "6f1c2b8e3f4a4c2d9e1b7a5d0c3e2f10"}},
            "bytes": {"__type__": "bytes", "__value__": "ab"},
            "base64": {"__type__": "base64", "__value__": "AP/+gA=="},
            "list": [{"__type__": "date", "__value__": "2024-05-17"}],
            "not_a_tag": {"__type__": "datetime", "__value__": "x", "other": 1},
        });
        assert_eq!(
            untagged(value).unwrap(),
            json!({
                "utc": "2024-05-17T12:30:45.123456+00:00",
                "naive": "2024-05-17T12:30:45",
                "date": "2024-05-17",
                "time": "12:30:45.000500",
                "decimal": "9.99",
                "uuid": "6f1c2b8e-3f4a-4c2d-9e1b-7a5d0c3e2f10",
                "bytes": [97, 98],
                "base64": [0, 255, 254, 128],
                "list": ["2024-05-17"],
                "not_a_tag": {"__type__": "datetime", "__value__": "x", "other": 1},
            })
        );
    }

    #[test]
    fn unknown_and_invalid_tags_name_the_path() {
        let error = untagged(json!({"payload": {"at": [0, {"__type__": "set", "__value__": []}]}}))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown kombu JSON type `set` at kwargs.payload.at[1]"
        );
        for (tag, value) in [
            ("datetime", json!("yesterday")),
            ("date", json!(20240517)),
            ("time", json!("25:00:00")),
            ("decimal", json!("9,99")),
            ("uuid", json!("6f1c2b8e3f4a4c2d9e1b7a5d0c3e2f10")),
            ("uuid", json!({"hex": "xyz"})),
            ("base64", json!("***")),
        ] {
            let error = untagged(json!({"v": {"__type__": tag, "__value__": value}})).unwrap_err();
            assert!(
                matches!(&error, DecodeError::InvalidKombuValue { type_name, path, .. }
                    if type_name == tag && path == "kwargs.v"),
                "{tag}: {error}"
            );
        }
    }

    #[test]
    fn decimal_literals() {
        for ok in ["9.99", "-1", "1E+3", ".5", "5.", "NaN", "-Infinity", "1e-7"] {
            assert!(is_decimal(ok), "{ok}");
        }
        for bad in ["", ".", "1e", "9,99", "0x10", "one"] {
            assert!(!is_decimal(bad), "{bad}");
        }
    }
}
