//! The event inside a message: binding the task's arguments to its one parameter, `payload`, as
//! Python binds them, and reading the typed event from it with errors that name the field.

use std::borrow::Cow;

use events_core::{AnyEvent, DomainEvent, EventDescriptor};

use super::super::error::{PayloadError, json_type};
use super::super::json::Json;
use super::{PAYLOAD_KWARG, TaskMessage};

impl TaskMessage {
    /// The event name, if the task name is `prefix` followed by it
    /// (`domain_events.products.product_created` → `products.product_created`).
    pub fn event_name(&self, prefix: &str) -> Option<&str> {
        self.task
            .strip_prefix(prefix)
            .filter(|name| !name.is_empty())
    }

    /// The event payload as JSON, kombu tags already converted: the argument that a task
    /// `def handle(payload)` receives — `kwargs["payload"]`, or a single positional argument
    /// when there are no keyword arguments. `None` when the arguments do not bind to that one
    /// parameter (missing, given twice, or with extra arguments); [`payload`](Self::payload)
    /// says why.
    pub fn payload_value(&self) -> Option<&Json> {
        self.bind_payload().ok()
    }

    /// Binds the message's arguments to one parameter, `payload`, as Python binds them when
    /// calling a task `def handle(payload)`: keyword or (alone) positional. Anything else is a
    /// `TypeError` in Python, so the task fails; here it is an error naming what is missing
    /// or extra, never extra data silently dropped.
    pub(super) fn bind_payload(&self) -> Result<&Json, String> {
        let keyword = self.kwargs.get(PAYLOAD_KWARG);
        match (self.args.as_slice(), keyword) {
            ([], Some(payload)) if self.kwargs.len() == 1 => return Ok(payload),
            ([payload], None) if self.kwargs.is_empty() => return Ok(payload),
            _ => {}
        }
        let mut problems = Vec::new();
        match (self.args.as_slice(), keyword) {
            ([], None) => problems.push(format!("no `{PAYLOAD_KWARG}` keyword argument")),
            ([], Some(_)) => {}
            (args, Some(_)) => problems.push(format!(
                "{} positional argument(s) besides the `{PAYLOAD_KWARG}` keyword argument ({})",
                args.len(),
                describe_args(args)
            )),
            ([_], None) => {}
            ([_, extra @ ..], None) => problems.push(format!(
                "{} positional argument(s) after the payload ({})",
                extra.len(),
                describe_args(extra)
            )),
        }
        let others: Vec<&String> = self.kwargs.keys().filter(|k| *k != PAYLOAD_KWARG).collect();
        if !others.is_empty() {
            problems.push(format!(
                "unexpected keyword argument(s) {}",
                describe_names(&others)
            ));
        }
        Err(format!(
            "the task takes one argument, `{PAYLOAD_KWARG}` (kwargs={{\"{PAYLOAD_KWARG}\": …}}), \
             but the message has {}; refused rather than run with data ignored (Python Celery \
             fails such a call with TypeError too)",
            problems.join(" and ")
        ))
    }

    /// Deserialises the payload into the typed event `E`, exactly as `serde_json::from_str`
    /// would read the payload's text: every serde shape (tagged, adjacent, untagged enums,
    /// `flatten`), and integers of any size into `u128` / `i128` fields.
    ///
    /// The error names the event, the field (`lines[2].sku`) and serde's reason.
    pub fn payload<E: DomainEvent>(&self) -> Result<E, PayloadError> {
        let value = self.payload_or_error(E::NAME, Some(std::any::type_name::<E>()))?;
        // Fast path without tracking; on failure, again with the path for the error.
        match E::deserialize(value) {
            Ok(event) => Ok(event),
            Err(error) => {
                let mut track = serde_path_to_error::Track::new();
                let traced =
                    E::deserialize(serde_path_to_error::Deserializer::new(value, &mut track));
                let reason = match traced {
                    Err(traced) => traced.to_string(),
                    Ok(_) => error.to_string(),
                };
                Err(payload_error(
                    E::NAME,
                    std::any::type_name::<E>(),
                    &track.path().to_string(),
                    reason,
                ))
            }
        }
    }

    /// Deserialises the payload with a descriptor from the registry, when the type is known
    /// only at run time; as [`payload`](Self::payload) reads it.
    pub fn decode_payload(&self, descriptor: &EventDescriptor) -> Result<AnyEvent, PayloadError> {
        let value = self.payload_or_error(descriptor.name(), Some(descriptor.type_name()))?;
        let mut erased = <dyn erased_serde::Deserializer<'_>>::erase(value);
        match descriptor.decode_from(&mut erased) {
            Ok(event) => Ok(event),
            Err(error) => {
                // Again, tracing the path, to say which field does not fit.
                let mut track = serde_path_to_error::Track::new();
                let mut traced = <dyn erased_serde::Deserializer<'_>>::erase(
                    serde_path_to_error::Deserializer::new(value, &mut track),
                );
                let reason = match descriptor.decode_from(&mut traced) {
                    Err(traced) => traced.to_string(),
                    Ok(_) => error.to_string(),
                };
                drop(traced);
                Err(payload_error(
                    descriptor.name(),
                    descriptor.type_name(),
                    &track.path().to_string(),
                    reason,
                ))
            }
        }
    }

    fn payload_or_error(
        &self,
        event: &str,
        type_name: Option<&'static str>,
    ) -> Result<&Json, PayloadError> {
        self.bind_payload().map_err(|reason| PayloadError {
            event: event.to_owned(),
            type_name,
            field: None,
            reason,
        })
    }
}

/// How many names [`describe_names`] and values [`describe_args`] list before "and N more".
const LISTED: usize = 5;

/// Extra keyword argument names for an error: a few, each at most 64 bytes, quoted.
fn describe_names(names: &[&String]) -> String {
    let mut listed: Vec<String> = names
        .iter()
        .take(LISTED)
        .map(|name| format!("`{}`", clip(name, 64)))
        .collect();
    if names.len() > LISTED {
        listed.push(format!("and {} more", names.len() - LISTED));
    }
    listed.join(", ")
}

/// Positional arguments for an error: what each of the first few is.
fn describe_args(args: &[Json]) -> String {
    let mut listed: Vec<String> = args.iter().take(LISTED).map(json_type).collect();
    if args.len() > LISTED {
        listed.push(format!("and {} more", args.len() - LISTED));
    }
    listed.join(", ")
}

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut.
fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// The error for a payload that does not fit its event type: the field's path (a missing
/// field's own path, `customer.vip`), and serde's reason.
fn payload_error(
    event: &str,
    type_name: &'static str,
    path: &str,
    mut reason: String,
) -> PayloadError {
    let field = match (path, missing_field(&reason)) {
        (".", missing) => missing,
        (path, Some(missing)) => Some(format!("{path}.{missing}")),
        (path, None) => Some(path.to_owned()),
    };
    let about_a_value = reason.starts_with("invalid type") || reason.starts_with("invalid value");
    if field.is_none() && about_a_value && !reason.contains(", expected struct ") {
        // A value deep inside, but serde kept no path to it.
        reason.push_str(
            " (serde does not say which field: it reads `#[serde(flatten)]`, internally tagged \
             and untagged parts from a buffer that keeps no path)",
        );
    }
    PayloadError {
        event: event.to_owned(),
        type_name: Some(type_name),
        field,
        reason,
    }
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split_once('`').map(|(field, _)| field.to_owned())
}
