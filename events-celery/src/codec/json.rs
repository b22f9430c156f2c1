//! The codec's own JSON value, [`Json`]: numbers kept exactly as Python wrote them (integers
//! of any size, floats, `NaN` / `Infinity`), object keys in Python's order. It replaces
//! serde_json's `arbitrary_precision` and `preserve_order` features, which Cargo would have
//! switched on for every crate of a program that depends on this one (and which break
//! `#[serde(tag)]`, `untagged` and `flatten` types with floats there).
//!
//! - [`Json::parse`] reads JSON text as Python's `json.loads` does (it also accepts `NaN`,
//!   `Infinity` and `-Infinity`, which `json.dumps` writes), without rounding anything.
//! - `&Json` is a serde [`Deserializer`](serde::Deserializer): typed events read from it as
//!   they would from `serde_json::from_str`, and a `u128` / `i128` field gets an integer of
//!   any size exactly.
//! - [`Json::from_serialize`] turns a Rust value into a `Json`, refusing non-finite floats
//!   (which JSON cannot carry) instead of turning them into `null` as serde_json does.

use std::fmt;

use indexmap::IndexMap;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};
use serde::forward_to_deserialize_any;

use super::python_json::{push_json_value, push_python_float, push_python_float_text};

/// How deep arrays and objects may nest (serde_json's own limit; the publish paths refuse a
/// deeper value).
pub(crate) const MAX_DEPTH: usize = 128;

/// A JSON value as the codec holds it: exact numbers, ordered objects.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Json {
    /// `null` (Python's `None`).
    #[default]
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, exactly as written (in Python's spelling).
    Number(JsonNumber),
    /// A string.
    String(String),
    /// An array (a Python list or tuple).
    Array(Vec<Json>),
    /// An object, keys in the order they came (a Python dict).
    Object(JsonMap),
}

/// A JSON number kept as text, spelled as Python's `json.dumps` spells it: integers of any
/// size as they are (`1180591620717411303424`), floats as Python's `repr` (`1e-07`, `2.0`),
/// and Python's `NaN`, `Infinity`, `-Infinity`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonNumber(String);

/// A JSON object: keys in insertion order, as a Python dict keeps them. Inserting a key that
/// is there already replaces its value in place, as a dict does (and as `json.loads` does for
/// a repeated key: the last value wins).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JsonMap(IndexMap<String, Json>);

static NULL: Json = Json::Null;

impl JsonNumber {
    /// The number as it is written on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it is an integer (no fraction, no exponent).
    pub fn is_integer(&self) -> bool {
        is_integer_literal(&self.0)
    }

    /// The integer, if it is one and fits.
    pub fn as_u64(&self) -> Option<u64> {
        self.is_integer().then(|| self.0.parse().ok()).flatten()
    }

    /// The integer, if it is one and fits.
    pub fn as_i64(&self) -> Option<i64> {
        self.is_integer().then(|| self.0.parse().ok()).flatten()
    }

    /// The integer, if it is one and fits.
    pub fn as_u128(&self) -> Option<u128> {
        self.is_integer().then(|| self.0.parse().ok()).flatten()
    }

    /// The integer, if it is one and fits.
    pub fn as_i128(&self) -> Option<i128> {
        self.is_integer().then(|| self.0.parse().ok()).flatten()
    }

    /// The nearest `f64` (`NaN` and the infinities included, as Python reads them).
    pub fn as_f64(&self) -> f64 {
        match self.0.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            text => text.parse().unwrap_or(f64::NAN),
        }
    }

    /// Whether it is `NaN`, `Infinity` or `-Infinity`.
    pub fn is_non_finite(&self) -> bool {
        matches!(self.0.as_str(), "NaN" | "Infinity" | "-Infinity")
    }

    /// A float, spelled as Python's `repr` (non-finite ones as `json.dumps` writes them).
    pub fn from_f64(value: f64) -> Self {
        let mut text = String::with_capacity(24);
        push_python_float(value, &mut text);
        Self(text)
    }

    /// Any JSON number text (`1e-7`, `-0`, `1180591620717411303424`), re-spelled as Python
    /// writes the same number; `None` if `text` is not a JSON number.
    pub fn from_json_text(text: &str) -> Option<Self> {
        let mut parser = Parser::new(text);
        match parser.number() {
            Ok(number) if parser.at == text.len() => Some(number),
            _ => None,
        }
    }

    fn integer(text: String) -> Self {
        if text == "-0" {
            Self("0".to_owned())
        } else {
            Self(text)
        }
    }
}

impl fmt::Display for JsonNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! number_from_integer {
    ($($t:ty),*) => {$(
        impl From<$t> for JsonNumber {
            fn from(value: $t) -> Self {
                Self(value.to_string())
            }
        }
        impl From<$t> for Json {
            fn from(value: $t) -> Self {
                Json::Number(value.into())
            }
        }
    )*};
}
number_from_integer!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

impl From<bool> for Json {
    fn from(value: bool) -> Self {
        Json::Bool(value)
    }
}

impl From<&str> for Json {
    fn from(value: &str) -> Self {
        Json::String(value.to_owned())
    }
}

impl From<String> for Json {
    fn from(value: String) -> Self {
        Json::String(value)
    }
}

impl From<f64> for Json {
    fn from(value: f64) -> Self {
        Json::Number(JsonNumber::from_f64(value))
    }
}

impl From<serde_json::Number> for JsonNumber {
    fn from(number: serde_json::Number) -> Self {
        if let Some(value) = number.as_u64() {
            value.into()
        } else if let Some(value) = number.as_i64() {
            value.into()
        } else {
            // serde_json's text for a float or a wide integer (under its own
            // `arbitrary_precision`, if the program has it).
            let text = number.to_string();
            Self::from_json_text(&text)
                .unwrap_or_else(|| Self::from_f64(number.as_f64().unwrap_or(f64::NAN)))
        }
    }
}

impl From<serde_json::Value> for Json {
    /// Converts without recursion, so a value of any depth converts (a publish path then
    /// refuses one deeper than a worker reads, see [`Json::nests_deeper_than`]).
    fn from(value: serde_json::Value) -> Self {
        use serde_json::Value;
        /// An array or object being converted: what is done, what is left.
        enum Frame {
            Array(Vec<Json>, std::vec::IntoIter<Value>),
            Object(JsonMap, serde_json::map::IntoIter, String),
        }
        let mut stack: Vec<Frame> = Vec::new();
        let mut next = value;
        loop {
            let mut done = match next {
                Value::Null => Some(Json::Null),
                Value::Bool(b) => Some(Json::Bool(b)),
                Value::Number(n) => Some(Json::Number(n.into())),
                Value::String(s) => Some(Json::String(s)),
                Value::Array(items) => {
                    let converted = Vec::with_capacity(items.len());
                    stack.push(Frame::Array(converted, items.into_iter()));
                    None
                }
                Value::Object(map) => {
                    let converted = JsonMap::with_capacity(map.len());
                    stack.push(Frame::Object(converted, map.into_iter(), String::new()));
                    None
                }
            };
            // Hand what is done to its container, and find the next value to convert.
            next = loop {
                let Some(top) = stack.last_mut() else {
                    // The stack empties only after the outermost value is done.
                    return done.unwrap_or_default();
                };
                let child = match top {
                    Frame::Array(converted, rest) => {
                        converted.extend(done.take());
                        rest.next()
                    }
                    Frame::Object(converted, rest, key) => {
                        if let Some(value) = done.take() {
                            converted.insert(std::mem::take(key), value);
                        }
                        rest.next().map(|(k, v)| {
                            *key = k;
                            v
                        })
                    }
                };
                match child {
                    Some(child) => break child,
                    None => {
                        done = Some(match stack.pop() {
                            Some(Frame::Array(converted, _)) => Json::Array(converted),
                            Some(Frame::Object(converted, ..)) => Json::Object(converted),
                            None => unreachable!("`top` was on the stack"),
                        });
                    }
                }
            };
        }
    }
}

impl PartialEq<serde_json::Value> for Json {
    /// Equal when `value` converts to this (numbers compare as Python spells them).
    fn eq(&self, value: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (self, value) {
            (Json::Null, Value::Null) => true,
            (Json::Bool(a), Value::Bool(b)) => a == b,
            (Json::Number(a), Value::Number(b)) => {
                let b: JsonNumber = b.clone().into();
                *a == b
            }
            (Json::String(a), Value::String(b)) => a == b,
            (Json::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a == b)
            }
            (Json::Object(a), Value::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v == w))
            }
            _ => false,
        }
    }
}

impl Json {
    /// Parses JSON text as Python's `json.loads` does: numbers kept exactly, keys in order (a
    /// repeated key's last value wins, in the first one's place), `NaN` / `Infinity` /
    /// `-Infinity` accepted. Errors are serde_json's (with line and column).
    pub fn parse(text: &str) -> Result<Json, serde_json::Error> {
        let mut parser = Parser::new(text);
        match parser.document() {
            Ok(value) => Ok(value),
            Err(message) => Err(parser.error(message)),
        }
    }

    /// The Rust value as a `Json`. Floats that JSON cannot carry (`NaN`, `±inf`) are refused,
    /// naming where they are (`ratio`, `lines[2].price`), where serde_json would write `null`.
    pub fn from_serialize<T: serde::Serialize + ?Sized>(value: &T) -> Result<Json, JsonError> {
        match value.serialize(ser::ToJson::default()) {
            Ok(json) => Ok(json),
            // Its path is as long as the value is deep.
            Err(error) if error.0.starts_with(ser::TOO_DEEP) => Err(error),
            Err(error) => {
                // Again, tracking the path, to say where.
                let mut track = serde_path_to_error::Track::new();
                let traced = value.serialize(serde_path_to_error::Serializer::new(
                    ser::ToJson::default(),
                    &mut track,
                ));
                let path = track.path().to_string();
                Err(match traced {
                    Err(traced) if path != "." => JsonError(format!("at `{path}`: {traced}")),
                    _ => error,
                })
            }
        }
    }

    /// Whether arrays and objects nest more than `limit` deep (`[[1]]` nests 2 deep, `1` 0).
    /// Walks the value without recursion, so it answers for a value of any depth; the publish
    /// paths refuse a payload deeper than [`events_core::MAX_PAYLOAD_DEPTH`].
    pub fn nests_deeper_than(&self, limit: usize) -> bool {
        let mut stack = vec![(self, 0)];
        while let Some((value, depth)) = stack.pop() {
            let children: &mut dyn Iterator<Item = &Json> = match value {
                Json::Array(items) => &mut items.iter(),
                Json::Object(map) => &mut map.0.values(),
                _ => continue,
            };
            if depth == limit {
                return true;
            }
            stack.extend(children.map(|child| (child, depth + 1)));
        }
        false
    }

    /// Drops the value without recursion (the derived drop recurses once per level, and a
    /// value built in code can be deeper than the stack).
    pub fn drop_iteratively(self) {
        let mut stack = vec![self];
        while let Some(mut value) = stack.pop() {
            match &mut value {
                Json::Array(items) => stack.append(items),
                Json::Object(map) => stack.extend(std::mem::take(map).into_iter().map(|(_, v)| v)),
                _ => {}
            }
        }
    }

    /// `null`?
    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(text) => Some(text),
            _ => None,
        }
    }

    /// The items, if it is an array.
    pub fn as_array(&self) -> Option<&Vec<Json>> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The map, to change, if it is an object.
    pub fn as_object_mut(&mut self) -> Option<&mut JsonMap> {
        match self {
            Json::Object(map) => Some(map),
            _ => None,
        }
    }

    /// The items, to change, if it is an array.
    pub fn as_array_mut(&mut self) -> Option<&mut Vec<Json>> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The map, if it is an object.
    pub fn as_object(&self) -> Option<&JsonMap> {
        match self {
            Json::Object(map) => Some(map),
            _ => None,
        }
    }

    /// The number, if it is one.
    pub fn as_number(&self) -> Option<&JsonNumber> {
        match self {
            Json::Number(number) => Some(number),
            _ => None,
        }
    }

    /// The integer, if it is one and fits.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_number().and_then(JsonNumber::as_u64)
    }

    /// The integer, if it is one and fits.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_number().and_then(JsonNumber::as_i64)
    }

    /// The number as the nearest `f64`, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        self.as_number().map(JsonNumber::as_f64)
    }

    /// The value under `key` of an object, if there is one.
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.as_object().and_then(|map| map.get(key))
    }

    /// Reads the value into `T` exactly as `serde_json::from_str` would read its text.
    pub fn deserialize_into<T: de::DeserializeOwned>(&self) -> Result<T, JsonError> {
        T::deserialize(self)
    }
}

impl std::ops::Index<&str> for Json {
    type Output = Json;

    /// The value under `key`, or `null` (as `serde_json::Value` indexes).
    fn index(&self, key: &str) -> &Json {
        self.get(key).unwrap_or(&NULL)
    }
}

impl std::ops::IndexMut<&str> for Json {
    /// The value under `key`, inserted as `null` if missing; `null` itself becomes an empty
    /// object first (as `serde_json::Value` does).
    ///
    /// # Panics
    ///
    /// If the value is neither an object nor `null`.
    fn index_mut(&mut self, key: &str) -> &mut Json {
        if self.is_null() {
            *self = Json::Object(JsonMap::new());
        }
        match self {
            Json::Object(map) => map.0.entry(key.to_owned()).or_insert(Json::Null),
            other => panic!("cannot index {} with a key", super::error::json_type(other)),
        }
    }
}

impl PartialEq<str> for Json {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == Some(other)
    }
}

impl PartialEq<String> for Json {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == Some(other.as_str())
    }
}

impl PartialEq<&str> for Json {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}

impl std::ops::Index<usize> for Json {
    type Output = Json;

    /// The item at `index`, or `null`.
    fn index(&self, index: usize) -> &Json {
        self.as_array()
            .and_then(|items| items.get(index))
            .unwrap_or(&NULL)
    }
}

impl fmt::Display for Json {
    /// As Python's `json.dumps` writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        push_json_value(&mut out, self).map_err(|_| fmt::Error)?;
        f.write_str(&out)
    }
}

impl JsonMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty map with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Self(IndexMap::with_capacity(capacity))
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.0.get(key)
    }

    /// The value under `key`, to change.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        self.0.get_mut(key)
    }

    /// Whether `key` is there.
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// Sets `key` (in place if it is there, else at the end); returns the old value.
    pub fn insert(&mut self, key: String, value: Json) -> Option<Json> {
        self.0.insert(key, value)
    }

    /// Removes `key`, keeping the others in order.
    pub fn remove(&mut self, key: &str) -> Option<Json> {
        self.0.shift_remove(key)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &Json)> {
        self.0.iter()
    }

    /// The entries, in order, values mutable.
    pub fn iter_mut(&mut self) -> impl ExactSizeIterator<Item = (&String, &mut Json)> {
        self.0.iter_mut()
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &String> {
        self.0.keys()
    }

    /// The values, in order, mutable.
    pub fn values_mut(&mut self) -> impl ExactSizeIterator<Item = &mut Json> {
        self.0.values_mut()
    }
}

impl std::ops::Index<&str> for JsonMap {
    type Output = Json;

    /// The value under `key`, or `null`.
    fn index(&self, key: &str) -> &Json {
        self.get(key).unwrap_or(&NULL)
    }
}

impl std::ops::IndexMut<&str> for JsonMap {
    /// The value under `key`, inserted as `null` if missing.
    fn index_mut(&mut self, key: &str) -> &mut Json {
        self.0.entry(key.to_owned()).or_insert(Json::Null)
    }
}

impl FromIterator<(String, Json)> for JsonMap {
    fn from_iter<I: IntoIterator<Item = (String, Json)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl IntoIterator for JsonMap {
    type Item = (String, Json);
    type IntoIter = indexmap::map::IntoIter<String, Json>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a JsonMap {
    type Item = (&'a String, &'a Json);
    type IntoIter = indexmap::map::Iter<'a, String, Json>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

fn is_integer_literal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

// ----- parsing ----------------------------------------------------------------------------

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    depth: usize,
    /// serde_json's reason for a bad escape (it decodes escaped strings).
    escape_error: Option<String>,
}

type Parsed<T> = Result<T, &'static str>;

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            bytes: text.as_bytes(),
            at: 0,
            depth: 0,
            escape_error: None,
        }
    }

    /// The error, worded as serde_json words it, with the line and column.
    fn error(&self, message: &'static str) -> serde_json::Error {
        let at = self.at.min(self.bytes.len());
        let before = &self.bytes[..at];
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        // The column of the byte that stopped the parse (of the last one, at the end).
        let column = (at + 1)
            .min(self.bytes.len())
            .saturating_sub(line_start)
            .max(1);
        let message = self.escape_error.as_deref().unwrap_or(message);
        <serde_json::Error as de::Error>::custom(format_args!(
            "{message} at line {line} column {column}"
        ))
    }

    fn document(&mut self) -> Parsed<Json> {
        let value = self.value()?;
        self.whitespace();
        if self.at < self.bytes.len() {
            return Err("trailing characters");
        }
        Ok(value)
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &str) -> Parsed<()> {
        if self.text[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err("expected value")
        }
    }

    fn value(&mut self) -> Parsed<Json> {
        self.whitespace();
        match self.bytes.get(self.at) {
            None => Err("EOF while parsing a value"),
            Some(b'n') => self.literal("null").map(|()| Json::Null),
            Some(b't') => self.literal("true").map(|()| Json::Bool(true)),
            Some(b'f') => self.literal("false").map(|()| Json::Bool(false)),
            Some(b'"') => self.string().map(Json::String),
            Some(b'[') => self.array(),
            Some(b'{') => self.object(),
            Some(b'N') => self
                .literal("NaN")
                .map(|()| Json::Number(JsonNumber("NaN".to_owned()))),
            Some(b'I') => self
                .literal("Infinity")
                .map(|()| Json::Number(JsonNumber("Infinity".to_owned()))),
            Some(b'-' | b'0'..=b'9') => self.number().map(Json::Number),
            Some(_) => Err("expected value"),
        }
    }

    fn nest(&mut self) -> Parsed<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err("recursion limit exceeded")
        } else {
            Ok(())
        }
    }

    fn array(&mut self) -> Parsed<Json> {
        self.nest()?;
        self.at += 1;
        let mut items = Vec::new();
        self.whitespace();
        if self.bytes.get(self.at) == Some(&b']') {
            self.at += 1;
        } else {
            loop {
                items.push(self.value()?);
                self.whitespace();
                match self.bytes.get(self.at) {
                    Some(b',') => self.at += 1,
                    Some(b']') => {
                        self.at += 1;
                        break;
                    }
                    None => return Err("EOF while parsing a list"),
                    _ => return Err("expected `,` or `]`"),
                }
            }
        }
        self.depth -= 1;
        Ok(Json::Array(items))
    }

    fn object(&mut self) -> Parsed<Json> {
        self.nest()?;
        self.at += 1;
        let mut map = JsonMap::new();
        self.whitespace();
        if self.bytes.get(self.at) == Some(&b'}') {
            self.at += 1;
        } else {
            loop {
                self.whitespace();
                match self.bytes.get(self.at) {
                    Some(b'"') => {}
                    None => return Err("EOF while parsing an object"),
                    Some(_) => return Err("key must be a string"),
                }
                let key = self.string()?;
                self.whitespace();
                match self.bytes.get(self.at) {
                    Some(b':') => {}
                    None => return Err("EOF while parsing an object"),
                    Some(_) => return Err("expected `:`"),
                }
                self.at += 1;
                let value = self.value()?;
                map.insert(key, value);
                self.whitespace();
                match self.bytes.get(self.at) {
                    Some(b',') => self.at += 1,
                    Some(b'}') => {
                        self.at += 1;
                        break;
                    }
                    None => return Err("EOF while parsing an object"),
                    _ => return Err("expected `,` or `}`"),
                }
            }
        }
        self.depth -= 1;
        Ok(Json::Object(map))
    }

    fn string(&mut self) -> Parsed<String> {
        let start = self.at;
        self.at += 1;
        let mut escaped = false;
        loop {
            match self.bytes.get(self.at) {
                None => return Err("EOF while parsing a string"),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    self.at += 2;
                }
                Some(0..0x20) => {
                    return Err("control character (\\u0000-\\u001F) found while parsing a string");
                }
                Some(_) => self.at += 1,
            }
        }
        self.at += 1;
        let quoted = self.text.get(start..self.at).ok_or("invalid escape")?;
        if escaped {
            // Escapes (and their errors: lone surrogates, bad hex) exactly as serde_json has them.
            serde_json::from_str(quoted).map_err(|error| {
                self.at = start + error.column().saturating_sub(1);
                let message = error.to_string();
                let reason = message.split(" at line ").next().unwrap_or(&message);
                self.escape_error = Some(reason.to_owned());
                "invalid escape"
            })
        } else {
            Ok(quoted[1..quoted.len() - 1].to_owned())
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.bytes.get(self.at) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Parsed<JsonNumber> {
        let start = self.at;
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
            if self.text[self.at..].starts_with("Infinity") {
                self.at += "Infinity".len();
                return Ok(JsonNumber("-Infinity".to_owned()));
            }
        }
        match self.bytes.get(self.at) {
            Some(b'0') => {
                self.at += 1;
                if let Some(b'0'..=b'9') = self.bytes.get(self.at) {
                    return Err("invalid number");
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err("invalid number"),
        }
        let mut integer = true;
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            integer = false;
            if self.digits() == 0 {
                return Err("invalid number");
            }
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err("invalid number");
            }
        }
        let text = &self.text[start..self.at];
        Ok(if integer {
            JsonNumber::integer(text.to_owned())
        } else {
            let mut python = String::with_capacity(text.len() + 4);
            push_python_float_text(text, &mut python);
            JsonNumber(python)
        })
    }
}

// ----- reading typed values from a Json ---------------------------------------------------

/// Why a value did not read into a type, or could not be made into JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError(String);

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JsonError {}

impl de::Error for JsonError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        JsonError(message.to_string())
    }
}

impl serde::ser::Error for JsonError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        JsonError(message.to_string())
    }
}

impl JsonNumber {
    fn visit<'de, V: Visitor<'de>>(&self, visitor: V) -> Result<V::Value, JsonError> {
        if self.is_integer() {
            if let Some(value) = self.as_u64() {
                return visitor.visit_u64(value);
            }
            if let Some(value) = self.as_i64() {
                return visitor.visit_i64(value);
            }
        }
        // Wider integers too, as serde_json reads them when the type is not known
        // (`deserialize_u128` / `deserialize_i128` read them exactly).
        visitor.visit_f64(self.as_f64())
    }

    fn unexpected(&self) -> Unexpected<'_> {
        if self.is_integer() {
            Unexpected::Other("integer")
        } else {
            Unexpected::Float(self.as_f64())
        }
    }
}

macro_rules! deserialize_integer {
    ($($method:ident: $t:ty => $visit:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsonError> {
            match self {
                Json::Number(number) if number.is_integer() => match number.0.parse::<$t>() {
                    Ok(value) => visitor.$visit(value),
                    // Too wide for the type: say so with the number itself.
                    Err(_) => Err(de::Error::invalid_value(
                        Unexpected::Other(&format!("integer `{number}`")),
                        &visitor,
                    )),
                },
                _ => self.deserialize_any(visitor),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for &'de Json {
    type Error = JsonError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsonError> {
        match self {
            Json::Null => visitor.visit_unit(),
            Json::Bool(b) => visitor.visit_bool(*b),
            Json::Number(number) => number.visit(visitor),
            Json::String(text) => visitor.visit_borrowed_str(text),
            Json::Array(items) => {
                let mut seq = Seq(items.iter());
                let value = visitor.visit_seq(&mut seq)?;
                match seq.0.len() {
                    0 => Ok(value),
                    _ => Err(de::Error::invalid_length(
                        items.len(),
                        &"fewer elements in array",
                    )),
                }
            }
            Json::Object(map) => {
                let mut access = Map {
                    entries: map.0.iter(),
                    value: None,
                };
                let value = visitor.visit_map(&mut access)?;
                match access.entries.len() {
                    0 => Ok(value),
                    _ => Err(de::Error::invalid_length(
                        map.len(),
                        &"fewer elements in map",
                    )),
                }
            }
        }
    }

    deserialize_integer! {
        deserialize_i8: i8 => visit_i8,
        deserialize_i16: i16 => visit_i16,
        deserialize_i32: i32 => visit_i32,
        deserialize_u8: u8 => visit_u8,
        deserialize_u16: u16 => visit_u16,
        deserialize_u32: u32 => visit_u32,
        deserialize_i64: i64 => visit_i64,
        deserialize_u64: u64 => visit_u64,
        deserialize_i128: i128 => visit_i128,
        deserialize_u128: u128 => visit_u128
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsonError> {
        match self {
            Json::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, JsonError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, JsonError> {
        match self {
            Json::String(variant) => visitor.visit_enum(Enum {
                variant,
                value: None,
            }),
            Json::Object(map) if map.len() == 1 => {
                let (variant, value) = map.0.first().ok_or_else(|| {
                    de::Error::invalid_value(Unexpected::Map, &"map with a single key")
                })?;
                visitor.visit_enum(Enum {
                    variant,
                    value: Some(value),
                })
            }
            Json::Object(_) => Err(de::Error::invalid_value(
                Unexpected::Map,
                &"map with a single key",
            )),
            other => Err(de::Error::invalid_type(
                other.unexpected(),
                &"string or map",
            )),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsonError> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool f32 f64 char str string bytes byte_buf unit unit_struct seq tuple tuple_struct map
        struct identifier
    }
}

impl Json {
    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Json::Null => Unexpected::Unit,
            Json::Bool(b) => Unexpected::Bool(*b),
            Json::Number(number) => number.unexpected(),
            Json::String(text) => Unexpected::Str(text),
            Json::Array(_) => Unexpected::Seq,
            Json::Object(_) => Unexpected::Map,
        }
    }
}

impl<'de> IntoDeserializer<'de, JsonError> for &'de Json {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

struct Seq<'de>(std::slice::Iter<'de, Json>);

impl<'de> SeqAccess<'de> for Seq<'de> {
    type Error = JsonError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, JsonError> {
        self.0.next().map(|item| seed.deserialize(item)).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Map<'de> {
    entries: indexmap::map::Iter<'de, String, Json>,
    value: Option<&'de Json>,
}

impl<'de> MapAccess<'de> for Map<'de> {
    type Error = JsonError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, JsonError> {
        match self.entries.next() {
            None => Ok(None),
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(Key(key)).map(Some)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, JsonError> {
        match self.value.take() {
            Some(value) => seed.deserialize(value),
            None => Err(de::Error::custom("value is missing")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// An object key: a string, which also reads into integer and boolean keys as serde_json's
/// keys do (`{"1": …}` into a `HashMap<u32, _>`).
struct Key<'de>(&'de str);

macro_rules! deserialize_key_parsed {
    ($($method:ident => $visit:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsonError> {
            match self.0.parse() {
                Ok(value) => visitor.$visit(value),
                Err(_) => visitor.visit_borrowed_str(self.0),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for Key<'de> {
    type Error = JsonError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsonError> {
        visitor.visit_borrowed_str(self.0)
    }

    deserialize_key_parsed! {
        deserialize_bool => visit_bool,
        deserialize_i8 => visit_i8,
        deserialize_i16 => visit_i16,
        deserialize_i32 => visit_i32,
        deserialize_i64 => visit_i64,
        deserialize_i128 => visit_i128,
        deserialize_u8 => visit_u8,
        deserialize_u16 => visit_u16,
        deserialize_u32 => visit_u32,
        deserialize_u64 => visit_u64,
        deserialize_u128 => visit_u128,
        deserialize_f32 => visit_f32,
        deserialize_f64 => visit_f64
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsonError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, JsonError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, JsonError> {
        visitor.visit_enum(Enum {
            variant: self.0,
            value: None,
        })
    }

    forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

struct Enum<'de> {
    variant: &'de str,
    value: Option<&'de Json>,
}

impl<'de> EnumAccess<'de> for Enum<'de> {
    type Error = JsonError;
    type Variant = VariantValue<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), JsonError> {
        let variant = seed.deserialize(self.variant.into_deserializer())?;
        Ok((variant, VariantValue(self.value)))
    }
}

/// The content of an enum variant (`None` for a unit variant written as a string).
struct VariantValue<'de>(Option<&'de Json>);

impl<'de> VariantAccess<'de> for VariantValue<'de> {
    type Error = JsonError;

    fn unit_variant(self) -> Result<(), JsonError> {
        match self.0 {
            None | Some(Json::Null) => Ok(()),
            Some(other) => Err(de::Error::invalid_type(other.unexpected(), &"unit variant")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, JsonError> {
        match self.0 {
            Some(value) => seed.deserialize(value),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"newtype variant",
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, JsonError> {
        match self.0 {
            Some(value @ Json::Array(_)) => value.deserialize_any(visitor),
            Some(other) => Err(de::Error::invalid_type(
                other.unexpected(),
                &"tuple variant",
            )),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"tuple variant",
            )),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, JsonError> {
        match self.0 {
            Some(value @ (Json::Object(_) | Json::Array(_))) => value.deserialize_any(visitor),
            Some(other) => Err(de::Error::invalid_type(
                other.unexpected(),
                &"struct variant",
            )),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"struct variant",
            )),
        }
    }
}

impl<'de> de::Deserialize<'de> for Json {
    /// From any self-describing format. From serde_json's deserializer, integers beyond 64
    /// bits arrive as floats (read the text with [`Json::parse`] to keep them).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        struct JsonVisitor;
        impl<'de> Visitor<'de> for JsonVisitor {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any valid JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
                Ok(v.into())
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
                Ok(v.into())
            }
            fn visit_i128<E>(self, v: i128) -> Result<Json, E> {
                Ok(v.into())
            }
            fn visit_u128<E>(self, v: u128) -> Result<Json, E> {
                Ok(v.into())
            }
            fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
                Ok(v.into())
            }
            fn visit_str<E>(self, v: &str) -> Result<Json, E> {
                Ok(Json::String(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Json, E> {
                Ok(Json::String(v))
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
                <Json as de::Deserialize>::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut out = JsonMap::new();
                while let Some((key, value)) = map.next_entry::<String, Json>()? {
                    out.insert(key, value);
                }
                Ok(Json::Object(out))
            }
        }
        deserializer.deserialize_any(JsonVisitor)
    }
}

impl serde::Serialize for JsonNumber {
    /// Integers of up to 128 bits exactly, other numbers as `f64`. (The codec writes numbers
    /// from their text; this is for other formats.)
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let Some(v) = self.as_u64() {
            serializer.serialize_u64(v)
        } else if let Some(v) = self.as_i64() {
            serializer.serialize_i64(v)
        } else if let Some(v) = self.as_u128() {
            serializer.serialize_u128(v)
        } else if let Some(v) = self.as_i128() {
            serializer.serialize_i128(v)
        } else {
            serializer.serialize_f64(self.as_f64())
        }
    }
}

impl serde::Serialize for JsonMap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut out = serializer.serialize_map(Some(self.len()))?;
        for (key, value) in self {
            out.serialize_entry(key, value)?;
        }
        out.end()
    }
}

impl serde::Serialize for Json {
    /// As [`JsonNumber`] and [`JsonMap`] serialise.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(map) => map.serialize(serializer),
        }
    }
}

mod ser;

#[cfg(test)]
mod tests;
