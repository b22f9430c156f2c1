//! The header reader: task name, id and headers from an AMQP header table, a Redis envelope's
//! `headers` object (read while it is parsed) or the fields of a protocol 1 body, each value
//! checked against what Celery writes there.

use std::borrow::Cow;

use chrono::{DateTime, FixedOffset};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use super::super::error::{DecodeError, json_type};
use super::super::json::{Json, JsonMap};
use super::super::kombu_json::untag;
use super::super::timestamp::parse_iso8601;
use super::headers::Header;
use super::{TaskHeaders, TimeLimit};

/// Task name, id and headers read from a header table (protocol 2) or from the fields of a
/// protocol 1 body.
#[derive(Debug, Default)]
pub(crate) struct ParsedHeaders {
    pub(crate) task: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) headers: TaskHeaders,
}

impl ParsedHeaders {
    /// Reads headers in order; unknown names are kept as custom headers unless `keep_custom`
    /// is false (protocol 1 bodies, whose other fields are not headers).
    pub(crate) fn read<K: AsRef<str> + Into<String>>(
        pairs: impl IntoIterator<Item = (K, Json)>,
        keep_custom: bool,
    ) -> Result<Self, DecodeError> {
        let mut parsed = Self::default();
        for (key, value) in pairs {
            match Header::from_name(key.as_ref()) {
                Some(header) => parsed.apply_value(header, value)?,
                None => parsed.apply_custom(key, value, keep_custom),
            }
        }
        Ok(parsed)
    }

    /// Applies one header, as [`read`](Self::read) does, taking the common kinds (strings
    /// and nulls of the string headers, counters) without building a JSON value.
    pub(crate) fn apply<K: AsRef<str> + Into<String>>(
        &mut self,
        key: K,
        value: HeaderValue,
        keep_custom: bool,
    ) -> Result<(), DecodeError> {
        match Header::from_name(key.as_ref()) {
            Some(header) => self.apply_known(header, value),
            None => {
                self.apply_custom(key, value.into_value(), keep_custom);
                Ok(())
            }
        }
    }

    /// Applies one of Celery's headers: the fast path of [`apply`](Self::apply).
    fn apply_known(&mut self, header: Header, value: HeaderValue) -> Result<(), DecodeError> {
        let h = &mut self.headers;
        let slot = match header {
            Header::Task => &mut self.task,
            Header::Id => &mut self.id,
            Header::Lang => &mut h.lang,
            Header::Shadow => &mut h.shadow,
            Header::Group => &mut h.group,
            Header::RootId => &mut h.root_id,
            Header::ParentId => &mut h.parent_id,
            Header::ArgsRepr => &mut h.argsrepr,
            Header::KwargsRepr => &mut h.kwargsrepr,
            Header::Origin => &mut h.origin,
            // What `null` means for these (the slow path agrees).
            Header::Eta
            | Header::Expires
            | Header::TimeLimit
            | Header::IgnoreResult
            | Header::StampedHeaders
            | Header::Stamps
                if matches!(value, HeaderValue::Null) =>
            {
                match header {
                    Header::Eta => h.eta = None,
                    Header::Expires => h.expires = None,
                    Header::TimeLimit => h.timelimit = TimeLimit::default(),
                    Header::IgnoreResult => h.ignore_result = None,
                    Header::StampedHeaders => h.stamped_headers = None,
                    _ => h.stamps = JsonMap::new(),
                }
                return Ok(());
            }
            Header::Retries | Header::ReplacedTaskNesting | Header::GroupIndex => {
                if let HeaderValue::Count(count) = value {
                    match header {
                        Header::GroupIndex => h.group_index = Some(count),
                        _ => match u32::try_from(count) {
                            Ok(count) if header == Header::Retries => h.retries = count,
                            Ok(count) => h.replaced_task_nesting = count,
                            Err(_) => return self.apply_value(header, Json::from(count)),
                        },
                    }
                    return Ok(());
                }
                return self.apply_value(header, value.into_value());
            }
            _ => return self.apply_value(header, value.into_value()),
        };
        match value {
            HeaderValue::Str(text) => *slot = Some(text),
            // `task` and `id` must be strings: the slow path says so.
            HeaderValue::Null if !matches!(header, Header::Task | Header::Id) => *slot = None,
            other => return self.apply_value(header, other.into_value()),
        }
        Ok(())
    }

    /// Applies one of Celery's headers given as JSON.
    fn apply_value(&mut self, header: Header, value: Json) -> Result<(), DecodeError> {
        let h = &mut self.headers;
        let name = header.name();
        match header {
            Header::Task => self.task = Some(required_string(name, value)?),
            Header::Id => self.id = Some(required_string(name, value)?),
            Header::Lang => h.lang = optional_string(name, value)?,
            Header::Shadow => h.shadow = optional_string(name, value)?,
            Header::Eta => h.eta = optional_timestamp(name, value)?,
            Header::Expires => h.expires = optional_timestamp(name, value)?,
            Header::Group => h.group = optional_string(name, value)?,
            Header::GroupIndex => h.group_index = optional_integer(name, value)?,
            Header::Retries => h.retries = counter(name, value)?,
            Header::TimeLimit => h.timelimit = time_limit(name, value)?,
            Header::RootId => h.root_id = optional_string(name, value)?,
            Header::ParentId => h.parent_id = optional_string(name, value)?,
            Header::ArgsRepr => h.argsrepr = optional_string(name, value)?,
            Header::KwargsRepr => h.kwargsrepr = optional_string(name, value)?,
            Header::Origin => h.origin = optional_string(name, value)?,
            Header::IgnoreResult => {
                h.ignore_result = match value {
                    Json::Null => None,
                    Json::Bool(b) => Some(b),
                    other => return Err(invalid(name, "a boolean or null", &other)),
                }
            }
            Header::ReplacedTaskNesting => h.replaced_task_nesting = counter(name, value)?,
            Header::StampedHeaders => {
                h.stamped_headers = match value {
                    Json::Null => None,
                    Json::Array(items) => Some(
                        items
                            .into_iter()
                            .map(|item| match item {
                                Json::String(s) => Ok(s),
                                other => Err(invalid(name, "a list of strings or null", &other)),
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                    other => return Err(invalid(name, "a list of strings or null", &other)),
                }
            }
            Header::Stamps => {
                h.stamps = match value {
                    Json::Null => JsonMap::new(),
                    Json::Object(map) => map,
                    other => return Err(invalid(name, "an object or null", &other)),
                }
            }
        }
        Ok(())
    }

    /// Keeps a header that is not Celery's (when `keep_custom`); a repeated name: the last one
    /// wins, as in a Python dict.
    fn apply_custom<K: AsRef<str> + Into<String>>(
        &mut self,
        key: K,
        value: Json,
        keep_custom: bool,
    ) {
        if !keep_custom {
            return;
        }
        let custom = &mut self.headers.custom;
        match custom
            .iter_mut()
            .find(|(existing, _)| existing == key.as_ref())
        {
            Some((_, existing)) => *existing = value,
            None => custom.push((key.into(), value)),
        }
    }
}

/// A header value: strings, nulls and counters as they are, anything else as JSON.
#[derive(Debug)]
pub(crate) enum HeaderValue {
    /// `null` / void.
    Null,
    /// A string.
    Str(String),
    /// A non-negative integer (AMQP headers only; JSON numbers are [`Other`](Self::Other)).
    Count(u64),
    /// Anything else.
    Other(Json),
}

impl HeaderValue {
    pub(crate) fn into_value(self) -> Json {
        match self {
            Self::Null => Json::Null,
            Self::Str(text) => Json::String(text),
            Self::Count(count) => Json::from(count),
            Self::Other(value) => value,
        }
    }
}

impl<'de> Deserialize<'de> for HeaderValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HeaderValueVisitor)
    }
}

/// Reads strings and nulls directly and everything else exactly as [`Json`] reads it.
struct HeaderValueVisitor;

impl<'de> Visitor<'de> for HeaderValueVisitor {
    type Value = HeaderValue;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("any valid JSON value")
    }

    fn visit_unit<E>(self) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Null)
    }

    fn visit_none<E>(self) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<HeaderValue, D::Error> {
        HeaderValue::deserialize(deserializer)
    }

    fn visit_str<E>(self, text: &str) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Str(text.to_owned()))
    }

    fn visit_string<E>(self, text: String) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Str(text))
    }

    fn visit_bool<E>(self, value: bool) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Other(Json::Bool(value)))
    }

    fn visit_i64<E>(self, value: i64) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Other(Json::from(value)))
    }

    fn visit_u64<E>(self, value: u64) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Other(Json::from(value)))
    }

    fn visit_f64<E>(self, value: f64) -> Result<HeaderValue, E> {
        Ok(HeaderValue::Other(Json::from(value)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<HeaderValue, A::Error> {
        Json::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(HeaderValue::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<HeaderValue, A::Error> {
        Json::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(HeaderValue::Other)
    }
}

/// The header table of a Redis envelope, applied while it is read. Errors are kept for
/// later, so that they come in the order a two-pass read gives: every kombu-tag error before
/// any header error, each the first of its kind, and both after the envelope's own checks.
#[derive(Debug, Default)]
pub(crate) struct HeadersIn {
    pub(crate) parsed: ParsedHeaders,
    pub(crate) untag_error: Option<DecodeError>,
    pub(crate) header_error: Option<DecodeError>,
}

impl HeadersIn {
    /// The headers, or the error a two-pass read would have given first.
    #[inline]
    pub(crate) fn finish(self) -> Result<ParsedHeaders, DecodeError> {
        match (self.untag_error, self.header_error) {
            (Some(error), _) | (None, Some(error)) => Err(error),
            (None, None) => Ok(self.parsed),
        }
    }
}

impl<'de> Deserialize<'de> for HeadersIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(HeadersVisitor)
    }
}

struct HeadersVisitor;

impl<'de> Visitor<'de> for HeadersVisitor {
    type Value = HeadersIn;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeadersIn, A::Error> {
        let mut headers = HeadersIn::default();
        while let Some(MaybeBorrowed(name)) = map.next_key::<MaybeBorrowed<'de>>()? {
            // The value's text, read by the codec's own parser: serde_json would round
            // integers beyond 64 bits (and some floats) on the way.
            let raw = map.next_value::<&'de serde_json::value::RawValue>()?;
            let mut value = match Json::parse(raw.get()).map_err(serde::de::Error::custom)? {
                Json::Null => HeaderValue::Null,
                Json::String(text) => HeaderValue::Str(text),
                other => HeaderValue::Other(other),
            };
            if let HeaderValue::Other(json) = &mut value
                && let Err(error) = untag(json, || format!("headers.{name}"))
            {
                headers.untag_error.get_or_insert(error);
                continue;
            }
            if headers.untag_error.is_none()
                && headers.header_error.is_none()
                && let Err(error) = headers.parsed.apply(name, value, true)
            {
                headers.header_error = Some(error);
            }
        }
        Ok(headers)
    }
}

/// A string borrowed from the input when it has no escapes (serde's own `Cow<str>` always
/// copies).
pub(crate) struct MaybeBorrowed<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeBorrowed<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = MaybeBorrowed<'a>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(StrVisitor(std::marker::PhantomData))
    }
}

fn invalid(name: &str, expected: &'static str, found: &Json) -> DecodeError {
    DecodeError::InvalidHeader {
        name: name.to_owned(),
        expected,
        found: json_type(found),
    }
}

fn required_string(name: &str, value: Json) -> Result<String, DecodeError> {
    match value {
        Json::String(s) => Ok(s),
        other => Err(invalid(name, "a string", &other)),
    }
}

fn optional_string(name: &str, value: Json) -> Result<Option<String>, DecodeError> {
    match value {
        Json::Null => Ok(None),
        Json::String(s) => Ok(Some(s)),
        other => Err(invalid(name, "a string or null", &other)),
    }
}

fn optional_integer(name: &str, value: Json) -> Result<Option<u64>, DecodeError> {
    match &value {
        Json::Null => Ok(None),
        Json::Number(n) => match n.as_u64() {
            Some(n) => Ok(Some(n)),
            None => Err(invalid(name, "a non-negative integer or null", &value)),
        },
        _ => Err(invalid(name, "a non-negative integer or null", &value)),
    }
}

fn counter(name: &str, value: Json) -> Result<u32, DecodeError> {
    match &value {
        Json::Null => Ok(0),
        Json::Number(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Ok(n),
            None => Err(invalid(name, "an integer from 0 to 4294967295", &value)),
        },
        _ => Err(invalid(name, "an integer from 0 to 4294967295", &value)),
    }
}

fn optional_timestamp(
    name: &str,
    value: Json,
) -> Result<Option<DateTime<FixedOffset>>, DecodeError> {
    match &value {
        Json::Null => Ok(None),
        Json::String(text) => match parse_iso8601(text) {
            Some(at) => Ok(Some(at)),
            None => Err(invalid(name, "an ISO-8601 datetime or null", &value)),
        },
        _ => Err(invalid(name, "an ISO-8601 datetime or null", &value)),
    }
}

fn time_limit(name: &str, value: Json) -> Result<TimeLimit, DecodeError> {
    const EXPECTED: &str = "[hard, soft] (numbers or nulls)";
    let limit = |item: &Json| match item {
        Json::Null => Ok(None),
        Json::Number(n) => Ok(Some(n.clone())),
        other => Err(invalid(name, EXPECTED, other)),
    };
    match &value {
        Json::Null => Ok(TimeLimit::default()),
        Json::Array(items) if items.len() == 2 => Ok(TimeLimit {
            hard: limit(&items[0])?,
            soft: limit(&items[1])?,
        }),
        other => Err(invalid(name, EXPECTED, other)),
    }
}
