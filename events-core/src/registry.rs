//! The registry of every event and handler collected at link time.

use std::any::TypeId;
use std::collections::BTreeSet;
use std::sync::OnceLock;

use rustc_hash::FxHashMap;

use crate::error::Error;
use crate::event::EventDescriptor;
use crate::handler::HandlerDescriptor;

/// Every `#[domain_event]` and `#[handler]` linked into the program, checked and indexed.
///
/// Built once, on first use, from the two link-time slices. Events are listed by name; the
/// handlers of an event run in a **deterministic order: by handler name** (the function's full
/// path, `crate::module::function`, or the `name` given to `#[handler]`), then by source
/// location. Closures subscribed at run time run after them, in the order they were subscribed.
///
/// ```rust,standalone_crate
/// use events_core::{Registry, domain_event, handler};
///
/// #[domain_event(name = "doc.registry_example")]
/// struct Example;
///
/// #[handler]
/// fn on_example(_: &Example) {}
///
/// let registry = Registry::collected()?;
/// let event = registry.event("doc.registry_example").unwrap();
/// assert_eq!(registry.handlers_of(event.name()).len(), 1);
/// # Ok::<(), events_core::Error>(())
/// ```
#[derive(Debug)]
pub struct Registry {
    events: Vec<&'static EventDescriptor>,
    by_name: FxHashMap<&'static str, usize>,
    by_type: FxHashMap<TypeId, usize>,
    handlers: Vec<Vec<&'static HandlerDescriptor>>,
}

impl Registry {
    /// The registry of everything linked into this program, built on first call.
    ///
    /// Fails if two event types declare the same name, or two handlers the same name (naming
    /// both), or if a handler's event type was not declared with `#[domain_event]`.
    pub fn collected() -> Result<&'static Registry, Error> {
        static COLLECTED: OnceLock<Result<Registry, BuildError>> = OnceLock::new();
        let (events, handlers) = (&crate::__private::EVENTS, &crate::__private::HANDLERS);
        match COLLECTED.get_or_init(|| Registry::build(events, handlers)) {
            Ok(registry) => Ok(registry),
            Err(error) => Err(error.to_error(events, handlers)),
        }
    }

    /// Builds a registry from explicit lists (the collected one uses the link-time slices).
    pub fn from_parts(
        events: &'static [EventDescriptor],
        handlers: &'static [HandlerDescriptor],
    ) -> Result<Registry, Error> {
        Registry::build(events, handlers).map_err(|e| e.to_error(events, handlers))
    }

    fn build(
        events: &'static [EventDescriptor],
        handlers: &'static [HandlerDescriptor],
    ) -> Result<Registry, BuildError> {
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by_key(|&i| (events[i].name(), events[i].location()));
        for pair in order.windows(2) {
            if events[pair[0]].name() == events[pair[1]].name() {
                return Err(BuildError::Duplicate(pair[0], pair[1]));
            }
        }
        let sorted: Vec<&'static EventDescriptor> = order.iter().map(|&i| &events[i]).collect();
        let by_name = sorted
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name(), i))
            .collect();
        let by_type: FxHashMap<TypeId, usize> = sorted
            .iter()
            .enumerate()
            .map(|(i, e)| (e.type_id(), i))
            .collect();
        // Failure reports and retries (`x-events-handlers`) name handlers: one name, one handler.
        let mut by_handler_name: Vec<usize> = (0..handlers.len()).collect();
        by_handler_name.sort_by_key(|&i| (handlers[i].name(), handlers[i].location()));
        for pair in by_handler_name.windows(2) {
            if handlers[pair[0]].name() == handlers[pair[1]].name() {
                return Err(BuildError::DuplicateHandler(pair[0], pair[1]));
            }
        }
        let mut per_event: Vec<Vec<&'static HandlerDescriptor>> = vec![Vec::new(); sorted.len()];
        for (i, handler) in handlers.iter().enumerate() {
            match by_type.get(&handler.event_type()) {
                Some(&index) => per_event[index].push(handler),
                None => return Err(BuildError::Unregistered(i)),
            }
        }
        for list in &mut per_event {
            list.sort_by_key(|h| (h.name(), h.location()));
        }
        Ok(Registry {
            events: sorted,
            by_name,
            by_type,
            handlers: per_event,
        })
    }

    /// Every event, sorted by name.
    pub fn events(&self) -> impl ExactSizeIterator<Item = &'static EventDescriptor> + '_ {
        self.events.iter().copied()
    }

    /// The event with this name.
    pub fn event(&self, name: &str) -> Option<&'static EventDescriptor> {
        self.by_name.get(name).map(|&i| self.events[i])
    }

    /// The event with this name, or [`Error::UnknownEvent`] naming the closest known names.
    pub fn lookup(&self, name: &str) -> Result<&'static EventDescriptor, Error> {
        self.event(name).ok_or_else(|| Error::UnknownEvent {
            name: name.to_owned(),
            closest: self.closest_names(name),
        })
    }

    /// Decodes an event given by name with a JSON payload, as
    /// [`publish_json`](crate::EventBus::publish_json) checks it: the name must be a declared
    /// event ([`Error::UnknownEvent`] names the closest ones) and the payload must fit its type
    /// ([`Error::InvalidPayload`] names the field and the reason), nesting at most
    /// [`MAX_PAYLOAD_DEPTH`](crate::MAX_PAYLOAD_DEPTH) deep ([`Error::PayloadTooDeep`]).
    /// Returns the event's descriptor and the decoded value (see
    /// [`EventRef::from_any`](crate::EventRef::from_any)).
    pub fn decode_payload(
        &self,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<(&'static crate::EventDescriptor, crate::AnyEvent), Error> {
        // serde_json decodes (and drops) a `Value` recursively, without its parser's depth
        // limit: a deeper payload built in code would overflow the stack.
        if crate::event::value_nests_deeper_than(&payload, crate::MAX_PAYLOAD_DEPTH) {
            crate::event::drop_value_iteratively(payload);
            return Err(Error::PayloadTooDeep {
                event: self.lookup(name)?.name(),
                limit: crate::MAX_PAYLOAD_DEPTH,
            });
        }
        let descriptor = self.lookup(name)?;
        let value = match descriptor.decode_value_traced(&payload) {
            Ok(value) => value,
            Err(mismatch) => {
                let path = mismatch.field_path();
                // Decoded again without path tracking, for serde_json's own error value.
                let source = match descriptor.decode_value(payload) {
                    Err(source) => source,
                    Ok(value) => return Ok((descriptor, value)),
                };
                return Err(Error::InvalidPayload {
                    event: descriptor.name(),
                    type_name: descriptor.type_name(),
                    path,
                    source,
                });
            }
        };
        Ok((descriptor, value))
    }

    /// The event of this Rust type.
    pub fn event_of_type(&self, type_id: TypeId) -> Option<&'static EventDescriptor> {
        self.by_type.get(&type_id).map(|&i| self.events[i])
    }

    /// The collected handlers of the named event, in the order they run.
    pub fn handlers_of(&self, event: &str) -> &[&'static HandlerDescriptor] {
        match self.by_name.get(event) {
            Some(&i) => &self.handlers[i],
            None => &[],
        }
    }

    /// Every collected handler: events by name, then each event's handlers in run order.
    pub fn handlers(&self) -> impl Iterator<Item = &'static HandlerDescriptor> + '_ {
        self.handlers.iter().flatten().copied()
    }

    /// The events no collected handler subscribes to (on a publisher-only process this is
    /// expected; on a worker it usually means a handler crate was not linked).
    pub fn events_without_handlers(&self) -> impl Iterator<Item = &'static EventDescriptor> + '_ {
        self.events
            .iter()
            .zip(&self.handlers)
            .filter(|(_, hs)| hs.is_empty())
            .map(|(e, _)| *e)
    }

    /// The crates (as `CARGO_CRATE_NAME`) that contributed at least one handler.
    pub fn handler_crates(&self) -> BTreeSet<&'static str> {
        self.handlers().map(|h| h.crate_name()).collect()
    }

    /// Checks that each named crate contributed handlers: the way to detect a handler crate
    /// that the linker dropped because nothing referenced it.
    ///
    /// Crate names are as in `CARGO_CRATE_NAME` (`-` becomes `_`); either spelling is accepted.
    pub fn require_handler_crates<'a>(
        &self,
        crates: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Error> {
        let present = self.handler_crates();
        for krate in crates {
            let normalized = krate.replace('-', "_");
            if !present.contains(normalized.as_str()) {
                return Err(Error::HandlerCrateNotLinked { krate: normalized });
            }
        }
        Ok(())
    }

    /// Up to three known event names close to `name`, best first: the likely typos, never
    /// just the least different of unrelated names. Empty when none is close.
    ///
    /// Names are compared case-insensitively, after dropping the leading dot-separated segments
    /// they share (`orders.`), so a shared namespace does not make two different events look
    /// alike (`orders.shipped` is not suggested for `orders.placed`). What remains must differ
    /// by at most a third of its length in edits (at least one edit allowed), and not in every
    /// character.
    pub fn closest_names(&self, name: &str) -> Vec<&'static str> {
        let mut scored: Vec<(usize, &'static str)> = self
            .events
            .iter()
            .filter_map(|e| Some((edit_distance_if_close(name, e.name())?, e.name())))
            .collect();
        scored.sort();
        scored.into_iter().take(3).map(|(_, n)| n).collect()
    }
}

/// The edit distance between the parts of `name` and `candidate` after their shared
/// namespace, if they are close (see [`Registry::closest_names`]).
fn edit_distance_if_close(name: &str, candidate: &str) -> Option<usize> {
    let (a, b) = without_shared_namespace(name, candidate);
    let (a_len, b_len) = (a.chars().count(), b.chars().count());
    let limit = (a_len.max(b_len) / 3).max(1);
    // The distance is at least the difference in length: skip the quadratic comparison when
    // that alone rules the candidate out (a hostile 1 MB task name costs one count).
    if a_len.abs_diff(b_len) > limit || a_len.min(b_len) == 0 {
        return None;
    }
    let distance = strsim::levenshtein(&a.to_lowercase(), &b.to_lowercase());
    (distance <= limit && distance < a_len.min(b_len)).then_some(distance)
}

/// `a` and `b` without the leading dot-terminated segments they both start with.
fn without_shared_namespace<'a, 'b>(a: &'a str, b: &'b str) -> (&'a str, &'b str) {
    let shared = a
        .char_indices()
        .zip(b.chars())
        .take_while(|((_, x), y)| x == y)
        .filter(|((_, x), _)| *x == '.')
        .last()
        .map_or(0, |((i, _), _)| i + 1);
    (&a[shared..], &b[shared..])
}

/// Why the slices do not make a registry, by index into them.
#[derive(Debug, Clone, Copy)]
enum BuildError {
    Duplicate(usize, usize),
    DuplicateHandler(usize, usize),
    Unregistered(usize),
}

impl BuildError {
    fn to_error(
        self,
        events: &'static [EventDescriptor],
        handlers: &'static [HandlerDescriptor],
    ) -> Error {
        match self {
            BuildError::Duplicate(a, b) => duplicate(&events[a], &events[b]),
            BuildError::DuplicateHandler(a, b) => duplicate_handler(&handlers[a], &handlers[b]),
            BuildError::Unregistered(h) => unregistered(&handlers[h]),
        }
    }
}

fn duplicate(a: &'static EventDescriptor, b: &'static EventDescriptor) -> Error {
    Error::DuplicateEvent {
        name: a.name(),
        first_type: a.type_name(),
        first_location: a.location(),
        second_type: b.type_name(),
        second_location: b.location(),
    }
}

fn duplicate_handler(a: &'static HandlerDescriptor, b: &'static HandlerDescriptor) -> Error {
    Error::DuplicateHandler {
        name: a.name(),
        first_event: a.event(),
        first_location: a.location(),
        second_event: b.event(),
        second_location: b.location(),
    }
}

fn unregistered(h: &'static HandlerDescriptor) -> Error {
    Error::UnregisteredEvent {
        handler: h.name(),
        location: h.location(),
        event: h.event(),
    }
}

#[cfg(test)]
mod tests {
    use super::edit_distance_if_close;

    fn close(name: &str, candidate: &str) -> bool {
        edit_distance_if_close(name, candidate).is_some()
    }

    #[test]
    fn typos_are_close() {
        assert!(close("memory.invoice_payd", "memory.invoice_paid"));
        assert!(close("ordrs.order_placed", "orders.order_placed"));
        assert!(close("Orders.Order_Placed", "orders.order_placed"));
        assert!(close("orders.order_placd", "orders.order_placed"));
        assert!(close("orders.placed", "order.placed"));
        assert!(close("products.created", "products.craeted"));
    }

    #[test]
    fn unrelated_names_are_not_close() {
        // Same namespace, different event: the namespace does not count as likeness.
        assert!(!close("fault.nope", "fault.tick"));
        assert!(!close("fault.no_such_event", "fault.probe"));
        assert!(!close("orders.placed", "orders.shipped"));
        assert!(!close("orders.x", "orders.y"));
        assert!(!close("a", "b"));
        assert!(!close("ab", "cd"));
        assert!(!close("add", "fault.tick"));
        assert!(!close("tasks.add", "fault.tick"));
        assert!(!close("x", "fault.probe"));
        assert!(!close("", "fault.probe"));
        assert!(!close("orders.", "orders.placed"));
        assert!(!close(
            "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            "orders.order_placed"
        ));
    }

    #[test]
    fn a_huge_name_is_ruled_out_by_its_length() {
        let huge = "orders.order_placed".repeat(50_000);
        assert!(!close(&huge, "orders.order_placed"));
    }
}
