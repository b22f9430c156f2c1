//! JSON exactly as Python's `json.dumps` writes it with its defaults, which is what Celery and
//! kombu put on the wire: separators `", "` and `": "`, `ensure_ascii=True` (`\u0141`, and
//! characters beyond the BMP as surrogate pairs `\ud83d\ude97`), floats as Python's `repr`
//! (`1e-07`, `1e+300`, `2.0`), integers of any size as bare literals.
//!
//! Key order is whatever the serialised value gives (struct field order, or the order of the
//! map), as Python keeps dict insertion order.

use std::io;

use super::json::{Json, JsonMap, MAX_DEPTH};
use super::scan;
use serde::Serialize;
use serde_json::ser::Formatter;

/// A [`serde_json::ser::Formatter`] that writes JSON byte for byte as Python's `json.dumps`
/// does by default.
///
/// ```
/// use events_celery::codec::to_python_json;
///
/// let json = to_python_json(&serde_json::json!({"name": "Łódź 🚗", "ratio": 1e-7}))?;
/// assert_eq!(json, r#"{"name": "\u0141\u00f3d\u017a \ud83d\ude97", "ratio": 1e-07}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PythonJsonFormatter;

const HEX: &[u8; 16] = b"0123456789abcdef";

impl Formatter for PythonJsonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        // Python has only doubles; the shortest text that reads back as this f32 is what a
        // Python float parsed from it would print too.
        let mut text = String::with_capacity(24);
        push_python_float_text(ryu::Buffer::new().format(value), &mut text);
        writer.write_all(text.as_bytes())
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        let mut text = String::with_capacity(24);
        push_python_float(value, &mut text);
        writer.write_all(text.as_bytes())
    }

    fn write_number_str<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        value: &str,
    ) -> io::Result<()> {
        if is_integer_literal(value) {
            writer.write_all(value.as_bytes())
        } else {
            let mut text = String::with_capacity(value.len() + 8);
            push_number_text(value, &mut text);
            writer.write_all(text.as_bytes())
        }
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // serde_json has already escaped `"`, `\` and the controls below 0x20 (as Python
        // does); `ensure_ascii` also escapes DEL and everything beyond ASCII.
        let bytes = fragment.as_bytes();
        // Fragments never hold controls below 0x20 (serde_json escapes them first), so
        // printable ASCII is: ASCII without DEL. Both checks are word-at-a-time in std.
        if fragment.is_ascii() && !bytes.contains(&0x7f) {
            return writer.write_all(bytes);
        }
        let mut start = 0;
        for (index, ch) in fragment.char_indices() {
            if (' '..'\x7f').contains(&ch) {
                continue;
            }
            writer.write_all(&bytes[start..index])?;
            start = index + ch.len_utf8();
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                let u = *unit;
                writer.write_all(&[
                    b'\\',
                    b'u',
                    HEX[usize::from(u >> 12)],
                    HEX[usize::from((u >> 8) & 0xf)],
                    HEX[usize::from((u >> 4) & 0xf)],
                    HEX[usize::from(u & 0xf)],
                ])?;
            }
        }
        writer.write_all(&bytes[start..])
    }
}

/// Serialises `value` as Python's `json.dumps` would write the same data.
pub fn to_python_json<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    write_python_json(&mut out, value)?;
    // The formatter writes only ASCII (`ensure_ascii`), so this never fails.
    String::from_utf8(out).map_err(|e| {
        serde_json::Error::io(io::Error::new(io::ErrorKind::InvalidData, e.utf8_error()))
    })
}

/// Appends `value`, as Python's `json.dumps` writes it, to `out`.
pub fn write_python_json<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), serde_json::Error> {
    let mut serializer = serde_json::Serializer::with_formatter(out, PythonJsonFormatter);
    value.serialize(&mut serializer)
}

// ----- a direct writer for the codec's own documents --------------------------------------
//
// The envelope, the headers and the body are written by hand into a `String`, with the same
// output as `write_python_json` gives for them (the golden and property tests hold both to
// Python's bytes): serde's serializer machinery costs more than the writing for documents
// this small. Strings that need escaping go through serde_json with the formatter, so every
// escape stays serde_json's and the formatter's.

/// Appends a number kept as text: integers as they are, floats re-spelled the way Python's
/// repr spells them.
pub(crate) fn push_number_text(text: &str, out: &mut String) {
    if is_integer_literal(text) {
        out.push_str(text);
    } else {
        push_python_float_text(text, out);
    }
}

/// Appends `text` as a JSON string, as Python's `json.dumps` writes it.
pub(crate) fn push_json_str(out: &mut String, text: &str) -> Result<(), serde_json::Error> {
    if is_plain_ascii(text.as_bytes()) {
        out.reserve(text.len() + 2);
        out.push('"');
        out.push_str(text);
        out.push('"');
        return Ok(());
    }
    let mut escaped = Vec::with_capacity(text.len() + 16);
    write_python_json(&mut escaped, text)?;
    // The formatter writes only ASCII.
    out.push_str(&String::from_utf8_lossy(&escaped));
    Ok(())
}

/// Appends `value` as Python's `json.dumps` writes it. A value nesting arrays and objects
/// deeper than a worker parses (128 levels; only a value built in code can) is an error, not a
/// stack overflow.
pub(crate) fn push_json_value(out: &mut String, value: &Json) -> Result<(), serde_json::Error> {
    push_value(out, value, 0)
}

/// `value`, inside `depth` arrays and objects (`depth` counting those of the document it is
/// written into, so that the document as a whole stays within the limit).
pub(crate) fn push_value(
    out: &mut String,
    value: &Json,
    depth: usize,
) -> Result<(), serde_json::Error> {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(true) => out.push_str("true"),
        Json::Bool(false) => out.push_str("false"),
        // Already spelled as Python spells it.
        Json::Number(number) => out.push_str(number.as_str()),
        Json::String(text) => push_json_str(out, text)?,
        Json::Array(items) => {
            let depth = deeper(depth)?;
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                push_value(out, item, depth)?;
            }
            out.push(']');
        }
        Json::Object(map) => push_map(out, map, depth)?,
    }
    Ok(())
}

/// Appends `map` as a JSON object, as Python's `json.dumps` writes a dict, inside `depth`
/// arrays and objects.
pub(crate) fn push_map(
    out: &mut String,
    map: &JsonMap,
    depth: usize,
) -> Result<(), serde_json::Error> {
    let depth = deeper(depth)?;
    out.push('{');
    for (index, (key, item)) in map.iter().enumerate() {
        if index > 0 {
            out.push_str(", ");
        }
        push_json_str(out, key)?;
        out.push_str(": ");
        push_value(out, item, depth)?;
    }
    out.push('}');
    Ok(())
}

/// One array or object further in, if a worker can still parse it.
fn deeper(depth: usize) -> Result<usize, serde_json::Error> {
    if depth < MAX_DEPTH {
        Ok(depth + 1)
    } else {
        Err(serde::ser::Error::custom(format_args!(
            "a value nests arrays and objects deeper than {MAX_DEPTH} levels, the most a worker \
             parses: it is refused rather than sent as a message no worker can read; send a \
             shallower value"
        )))
    }
}

/// Whether every byte is printable ASCII other than `"` and the backslash (written as it is).
/// Eight bytes at a time; a false "no" only sends the text to the exact, slower path.
fn is_plain_ascii(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let x = scan::word(chunk);
        if scan::json_special(x) | scan::non_ascii_or_del(x) != 0 {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

fn is_integer_literal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Appends Python's `repr` of a finite float (`1e-07`, `1e+300`, `2.0`, `0.1`).
///
/// Non-finite values are written as `NaN`, `Infinity`, `-Infinity`, as Python does; serde_json
/// never passes them here (it writes `null` instead).
pub(crate) fn push_python_float(value: f64, out: &mut String) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        // The shortest digits that read back as `value`, and of two equally near, the even one
        // (`24999621772318.312`, exactly ...3125): what Python's repr picks, and ryu (serde_json's
        // float writer); Rust's `{:e}` rounds that tie up.
        push_python_float_text(ryu::Buffer::new().format_finite(value), out);
    }
}

/// Re-spells the decimal number `text` (any JSON number, or Rust's `{:e}`) as Python's float
/// repr would, keeping every digit: `1e-7` → `1e-07`, `1E300` → `1e+300`, `2` → `2.0`.
pub(crate) fn push_python_float_text(text: &str, out: &mut String) {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], &unsigned[at + 1..]),
        None => (unsigned, "0"),
    };
    let exponent: i64 = match exponent.strip_prefix('+').unwrap_or(exponent).parse() {
        Ok(e) => e,
        Err(_) => {
            // Not a number we understand (cannot come from serde_json): keep it as it is.
            out.push_str(text);
            return;
        }
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // digits d1 d2 … with the value = 0.d1d2… × 10^point.
    let mut digits: String = String::with_capacity(int_part.len() + frac_part.len());
    digits.push_str(int_part);
    digits.push_str(frac_part);
    let leading_zeros = digits.bytes().take_while(|&b| b == b'0').count();
    let int_len = i64::try_from(int_part.len()).unwrap_or(i64::MAX);
    let skipped = i64::try_from(leading_zeros).unwrap_or(i64::MAX);
    let digits = digits[leading_zeros..].trim_end_matches('0');
    if negative {
        out.push('-');
    }
    if digits.is_empty() {
        out.push_str("0.0");
        return;
    }
    let point = int_len.saturating_sub(skipped).saturating_add(exponent);
    let count = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    // Python's repr: positional when -4 <= exponent < 16, i.e. -3 <= point <= 16.
    if (-3..=16).contains(&point) {
        if point <= 0 {
            out.push_str("0.");
            for _ in 0..-point {
                out.push('0');
            }
            out.push_str(digits);
        } else if point >= count {
            out.push_str(digits);
            for _ in 0..point - count {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            let split = usize::try_from(point).unwrap_or(0);
            out.push_str(&digits[..split]);
            out.push('.');
            out.push_str(&digits[split..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let exp = point - 1;
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let magnitude = exp.unsigned_abs();
        if magnitude < 10 {
            out.push('0');
        }
        out.push_str(&magnitude.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn float(value: f64) -> String {
        let mut out = String::new();
        push_python_float(value, &mut out);
        out
    }

    #[test]
    #[allow(clippy::approx_constant, reason = "the fixture's float, not π")]
    fn floats_are_spelled_as_python_repr() {
        let cases: &[(f64, &str)] = &[
            (3.14159, "3.14159"),
            (1e-07, "1e-07"),
            (1e300, "1e+300"),
            (2.0, "2.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (123456789.125, "123456789.125"),
            (-1.5e-300, "-1.5e-300"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (1.2345678901234567e16, "1.2345678901234568e+16"),
            (24999621772318.312, "24999621772318.312"),
        ];
        for &(value, expected) in cases {
            assert_eq!(float(value), expected, "{value:e}");
        }
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn number_text_is_respelled_exactly() {
        let respell = |text: &str| {
            let mut out = String::new();
            push_python_float_text(text, &mut out);
            out
        };
        assert_eq!(respell("1e-7"), "1e-07");
        assert_eq!(respell("1E300"), "1e+300");
        assert_eq!(respell("1e+300"), "1e+300");
        assert_eq!(respell("0.000"), "0.0");
        assert_eq!(respell("-0.0"), "-0.0");
        assert_eq!(respell("00012.50"), "12.5");
        assert_eq!(
            respell("3.141592653589793238462643"),
            "3.141592653589793238462643"
        );
        assert_eq!(respell("0.001e-2"), "1e-05");
    }

    #[test]
    fn writes_python_separators_and_ascii_escapes() {
        let value = json!({
            "text": "Łódź — 東京 — emoji 🚗",
            "control": "tab\tnewline\nquote\"backslash\\ del\u{7f} nul\u{0} bell\u{7}",
            "nested": [1, [2, {"k": [null, true, false]}], {}],
            "float": 1e-7,
        });
        let json = to_python_json(&value).unwrap();
        assert!(json.contains(
            r#""text": "\u0141\u00f3d\u017a \u2014 \u6771\u4eac \u2014 emoji \ud83d\ude97""#
        ));
        assert!(json.contains(
            r#""control": "tab\tnewline\nquote\"backslash\\ del\u007f nul\u0000 bell\u0007""#
        ));
        assert!(json.contains(r#""nested": [1, [2, {"k": [null, true, false]}], {}]"#));
        assert!(json.contains(r#""float": 1e-07"#));
        assert!(json.is_ascii());
    }

    #[test]
    fn the_direct_writer_matches_the_formatter() {
        let values = [
            json!({
                "text": "Łódź — 東京 — emoji 🚗",
                "control": "tab\tnewline\nquote\"backslash\\ del\u{7f} nul\u{0} bell\u{7}",
                "nested": [1, [2, {"k": [null, true, false]}], {}, []],
                "floats": [1e-7, 2.0, 1e300, -0.0, 0.1],
                "plain": "abcdefghijklmnopqrstuvwxyz 0123456789 ~!@#$%^&*()_+",
                "": "",
            }),
            json!([]),
            json!({}),
            json!("x"),
            json!(-5),
        ];
        for value in values {
            let mut direct = String::new();
            push_json_value(&mut direct, &Json::from(value.clone())).unwrap();
            assert_eq!(direct, to_python_json(&value).unwrap());
        }
    }

    #[test]
    fn plain_ascii_is_recognised_at_every_position() {
        for byte in 0..=255u8 {
            for len in 1..20 {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    let expected = (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\';
                    assert_eq!(is_plain_ascii(&bytes), expected, "{byte} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn parsed_values_are_written_back_exactly() {
        let text = r#"{"big": 1180591620717411303424, "neg": -18446744073709551617, "floats": [1e-07, 2.0, 1e+300, -0.0, NaN, Infinity, -Infinity], "pi": 3.141592653589793238462643}"#;
        let mut out = String::new();
        push_json_value(&mut out, &Json::parse(text).unwrap()).unwrap();
        assert_eq!(out, text);
    }

    #[test]
    fn typed_floats_and_wide_integers() {
        #[derive(Serialize)]
        struct Sample {
            small: f32,
            wide: u128,
            negative: i128,
            whole: f64,
        }
        let json = to_python_json(&Sample {
            small: 0.1,
            wide: 1 << 70,
            negative: -(1i128 << 64) - 1,
            whole: 2.0,
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"small": 0.1, "wide": 1180591620717411303424, "negative": -18446744073709551617, "whole": 2.0}"#
        );
    }
}
