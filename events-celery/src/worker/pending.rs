//! The pending-handlers header: the one place that reads and writes the names of the handlers a
//! retry (or a replayed dead letter) is for.

use crate::codec::{Json, TaskMessage};

/// The custom header a retry carries: the names of the handlers still to run.
pub const PENDING_HANDLERS_HEADER: &str = "x-events-handlers";

/// The handlers `message` is for: `None` when it does not say (all of its event's), else the
/// names, or what the header holds instead of a list of names.
pub(crate) fn read(message: &TaskMessage) -> Option<Result<Vec<&str>, &Json>> {
    let (_, pending) = message
        .headers
        .custom
        .iter()
        .find(|(name, _)| name == PENDING_HANDLERS_HEADER)?;
    Some(match pending.as_array() {
        Some(names) => Ok(names.iter().filter_map(Json::as_str).collect()),
        None => Err(pending),
    })
}

/// Makes `message` for exactly `handlers` (replacing what it said), as a new message: no
/// delivery tag, no raw envelope.
pub(crate) fn set(message: &mut TaskMessage, handlers: impl IntoIterator<Item = String>) {
    message
        .headers
        .custom
        .retain(|(name, _)| name != PENDING_HANDLERS_HEADER);
    message.headers.custom.push((
        PENDING_HANDLERS_HEADER.to_owned(),
        Json::Array(handlers.into_iter().map(Json::String).collect()),
    ));
    message.properties.delivery_tag = None;
    message.raw_envelope = None;
}

/// The message to keep for a handler that exhausted its retries: that handler alone, retry
/// count reset, no eta — ready to replay.
pub(crate) fn replayable(message: &TaskMessage, handler: &str) -> TaskMessage {
    let mut replay = message.clone();
    replay.headers.retries = 0;
    replay.headers.eta = None;
    set(&mut replay, [handler.to_owned()]);
    replay
}
