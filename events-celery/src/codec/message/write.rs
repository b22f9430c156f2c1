//! The header and body writers of the JSON forms: a message's headers and its protocol 2 body
//! written directly as Python's `json.dumps` spells them, each with a serde reference (tests
//! only) that it must match byte for byte.

use chrono::{DateTime, FixedOffset};
#[cfg(test)]
use serde::Serialize;
#[cfg(test)]
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};

use super::super::compression::COMPRESSION_HEADER;
use super::super::json::JsonNumber;
use super::super::python_json::{push_json_str, push_map, push_value};
use super::super::timestamp::isoformat;
#[cfg(test)]
use super::Embed;
use super::TaskMessage;
use super::headers::Header;

/// All headers of a message as one JSON object, in Celery's order: the serde reference for
/// [`push_headers_json`].
#[cfg(test)]
pub(crate) struct HeadersJson<'a>(pub(crate) &'a TaskMessage);

#[cfg(test)]
impl Serialize for HeadersJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let message = self.0;
        let h = &message.headers;
        let mut map = serializer.serialize_map(Some(Header::ALL.len() + h.custom.len()))?;
        for header in Header::ALL {
            let name = header.name();
            match header {
                Header::Lang => map.serialize_entry(name, &h.lang)?,
                Header::Task => map.serialize_entry(name, &message.task)?,
                Header::Id => map.serialize_entry(name, &message.id)?,
                Header::Shadow => map.serialize_entry(name, &h.shadow)?,
                Header::Eta => map.serialize_entry(name, &h.eta.as_ref().map(isoformat))?,
                Header::Expires => map.serialize_entry(name, &h.expires.as_ref().map(isoformat))?,
                Header::Group => map.serialize_entry(name, &h.group)?,
                Header::GroupIndex => map.serialize_entry(name, &h.group_index)?,
                Header::Retries => map.serialize_entry(name, &h.retries)?,
                Header::TimeLimit => {
                    map.serialize_entry(name, &(&h.timelimit.hard, &h.timelimit.soft))?;
                }
                Header::RootId => map.serialize_entry(name, &h.root_id)?,
                Header::ParentId => map.serialize_entry(name, &h.parent_id)?,
                Header::ArgsRepr => map.serialize_entry(name, &h.argsrepr)?,
                Header::KwargsRepr => map.serialize_entry(name, &h.kwargsrepr)?,
                Header::Origin => map.serialize_entry(name, &h.origin)?,
                Header::IgnoreResult => map.serialize_entry(name, &h.ignore_result)?,
                Header::ReplacedTaskNesting => {
                    map.serialize_entry(name, &h.replaced_task_nesting)?;
                }
                Header::StampedHeaders => map.serialize_entry(name, &h.stamped_headers)?,
                Header::Stamps => map.serialize_entry(name, &h.stamps)?,
            }
        }
        for (name, value) in &h.custom {
            map.serialize_entry(name, value)?;
        }
        if let Some(compression) = message.properties.compression {
            map.serialize_entry(COMPRESSION_HEADER, compression.content_type())?;
        }
        map.end()
    }
}

/// Appends the headers as [`HeadersJson`] serialises them, written directly.
pub(crate) fn push_headers_json(
    out: &mut String,
    message: &TaskMessage,
) -> Result<(), serde_json::Error> {
    fn string(out: &mut String, text: Option<&str>) -> Result<(), serde_json::Error> {
        match text {
            None => out.push_str("null"),
            Some(text) => push_json_str(out, text)?,
        }
        Ok(())
    }
    fn timestamp(out: &mut String, at: Option<&DateTime<FixedOffset>>) {
        match at {
            None => out.push_str("null"),
            Some(at) => {
                out.push('"');
                // ASCII digits, `-`, `:`, `.`, `+`, `T` only.
                out.push_str(&isoformat(at));
                out.push('"');
            }
        }
    }
    fn limit(out: &mut String, limit: Option<&JsonNumber>) {
        match limit {
            None => out.push_str("null"),
            Some(number) => out.push_str(number.as_str()),
        }
    }
    let h = &message.headers;
    out.push('{');
    for header in Header::ALL {
        if header != Header::ALL[0] {
            out.push_str(", ");
        }
        // Header names are ASCII identifiers: nothing to escape.
        out.push('"');
        out.push_str(header.name());
        out.push_str("\": ");
        match header {
            Header::Lang => string(out, h.lang.as_deref())?,
            Header::Task => push_json_str(out, &message.task)?,
            Header::Id => push_json_str(out, &message.id)?,
            Header::Shadow => string(out, h.shadow.as_deref())?,
            Header::Eta => timestamp(out, h.eta.as_ref()),
            Header::Expires => timestamp(out, h.expires.as_ref()),
            Header::Group => string(out, h.group.as_deref())?,
            Header::GroupIndex => match h.group_index {
                None => out.push_str("null"),
                Some(index) => push_integer(out, index),
            },
            Header::Retries => push_integer(out, u64::from(h.retries)),
            Header::TimeLimit => {
                out.push('[');
                limit(out, h.timelimit.hard.as_ref());
                out.push_str(", ");
                limit(out, h.timelimit.soft.as_ref());
                out.push(']');
            }
            Header::RootId => string(out, h.root_id.as_deref())?,
            Header::ParentId => string(out, h.parent_id.as_deref())?,
            Header::ArgsRepr => string(out, h.argsrepr.as_deref())?,
            Header::KwargsRepr => string(out, h.kwargsrepr.as_deref())?,
            Header::Origin => string(out, h.origin.as_deref())?,
            Header::IgnoreResult => out.push_str(match h.ignore_result {
                None => "null",
                Some(true) => "true",
                Some(false) => "false",
            }),
            Header::ReplacedTaskNesting => push_integer(out, u64::from(h.replaced_task_nesting)),
            Header::StampedHeaders => match &h.stamped_headers {
                None => out.push_str("null"),
                Some(names) => {
                    out.push('[');
                    for (index, name) in names.iter().enumerate() {
                        if index > 0 {
                            out.push_str(", ");
                        }
                        push_json_str(out, name)?;
                    }
                    out.push(']');
                }
            },
            // Inside kombu's envelope and the headers object: 2 levels.
            Header::Stamps => push_map(out, &h.stamps, 2)?,
        }
    }
    for (name, value) in &h.custom {
        out.push_str(", ");
        push_json_str(out, name)?;
        out.push_str(": ");
        push_value(out, value, 2)?;
    }
    if let Some(compression) = message.properties.compression {
        // kombu adds it to the headers last, after compressing the body.
        out.push_str(", \"");
        out.push_str(COMPRESSION_HEADER);
        out.push_str("\": ");
        push_json_str(out, compression.content_type())?;
    }
    out.push('}');
    Ok(())
}

/// Appends the protocol 2 body as [`BodyJson`] serialises it, written directly.
pub(crate) fn push_body_json(
    out: &mut String,
    message: &TaskMessage,
) -> Result<(), serde_json::Error> {
    // The worker parses the body as one document: args' items and embed's values are inside
    // 2 levels, kwargs inside 1, so a payload may nest 126 deep (`MAX_PAYLOAD_DEPTH`).
    out.push('[');
    out.push('[');
    for (index, arg) in message.args.iter().enumerate() {
        if index > 0 {
            out.push_str(", ");
        }
        push_value(out, arg, 2)?;
    }
    out.push_str("], ");
    push_map(out, &message.kwargs, 1)?;
    let embed = &message.embed;
    out.push_str(", {\"callbacks\": ");
    push_value(out, &embed.callbacks, 2)?;
    out.push_str(", \"errbacks\": ");
    push_value(out, &embed.errbacks, 2)?;
    out.push_str(", \"chain\": ");
    push_value(out, &embed.chain, 2)?;
    out.push_str(", \"chord\": ");
    push_value(out, &embed.chord, 2)?;
    out.push_str("}]");
    Ok(())
}

/// Appends a non-negative integer in decimal.
pub(crate) fn push_integer(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // `value % 10` is below 10.
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        out.push(char::from(digit));
    }
}

/// The protocol 2 body: `[args, kwargs, embed]`: the serde reference for [`push_body_json`].
#[cfg(test)]
pub(crate) struct BodyJson<'a>(pub(crate) &'a TaskMessage);

#[cfg(test)]
impl Serialize for BodyJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(3))?;
        seq.serialize_element(&self.0.args)?;
        seq.serialize_element(&self.0.kwargs)?;
        seq.serialize_element(&self.0.embed)?;
        seq.end()
    }
}

#[cfg(test)]
impl Serialize for Embed {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut embed = serializer.serialize_struct("Embed", 4)?;
        embed.serialize_field("callbacks", &self.callbacks)?;
        embed.serialize_field("errbacks", &self.errbacks)?;
        embed.serialize_field("chain", &self.chain)?;
        embed.serialize_field("chord", &self.chord)?;
        embed.end()
    }
}
