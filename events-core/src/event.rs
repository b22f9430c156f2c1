//! Domain events: the [`DomainEvent`] trait and the descriptors `#[domain_event]` collects.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A typed domain event: a serde-serialisable value with a stable name.
///
/// Implemented by [`#[domain_event]`](crate::domain_event) only (an impl written by hand is a
/// compile error): the attribute also derives serde's traits and records the event in the
/// link-time [`Registry`](crate::Registry).
///
/// ```rust,standalone_crate
/// use events_core::{DomainEvent, domain_event};
///
/// #[domain_event(name = "products.product_created")]
/// struct ProductCreated {
///     product_id: String,
///     stock: u32,
/// }
///
/// assert_eq!(ProductCreated::NAME, "products.product_created");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a domain event",
    label = "not a domain event",
    note = "add `#[domain_event]` to the definition of `{Self}`, or take a type that has it"
)]
pub trait DomainEvent:
    DeclaredEvent + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The event's stable name, as it appears on the wire (`domain_events.<NAME>` for Celery).
    const NAME: &'static str;

    /// The descriptor `#[domain_event]` registered for this type.
    fn descriptor() -> &'static EventDescriptor;
}

/// Implemented by `#[domain_event]` alone, and required by [`DomainEvent`]: an event
/// implemented by hand would compile but be missing from the registry (its handlers refused at
/// start-up, its messages unknown to workers), so it is refused at compile time instead.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`DomainEvent` is implemented by `#[domain_event]`, not by hand",
    label = "`{Self}` implements `DomainEvent` by hand",
    note = "remove this impl and put `#[domain_event]` on `{Self}`: it implements `DomainEvent`, \
            derives serde's traits and registers the event, which an impl written by hand cannot"
)]
pub trait DeclaredEvent {}

/// A type that can be a field of a domain event: one that serde can serialise and deserialise
/// into an owned value (`Serialize + DeserializeOwned`). Implemented for every such type;
/// `#[domain_event]` checks each field against it, so that a field serde cannot handle is
/// reported at the field, with what to derive.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is a field of a domain event, so it must implement serde's `Serialize` \
               and `Deserialize`",
    label = "not (de)serialisable",
    note = "derive both on `{Self}` through `events_core`, which needs no `serde` dependency: \
            `#[derive(events_core::serde::Serialize, events_core::serde::Deserialize)]` with \
            `#[serde(crate = \"events_core::serde\")]`",
    note = "for a type of another crate, enable that crate's `serde` feature, or give the \
            field `#[serde(with = \"...\")]`"
)]
pub trait EventField {
    /// Serialises the field (what serde's derive would call).
    #[doc(hidden)]
    fn __serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;

    /// Deserialises the field (what serde's derive would call).
    #[doc(hidden)]
    fn __deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>
    where
        Self: Sized;
}

// `do_not_recommend`: one error naming the field's type and what to derive, rather than one per
// missing serde trait with serde's own advice.
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned> EventField for T {
    #[inline]
    fn __serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.serialize(serializer)
    }

    #[inline]
    fn __deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer)
    }
}

/// `#[domain_event]`'s `serialize_with` for each field: serde's own serialisation, through
/// [`EventField`], so that a field serde cannot handle is reported once, in our words.
#[doc(hidden)]
#[inline]
pub fn serialize_field<T: EventField + ?Sized, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    value.__serialize(serializer)
}

/// `#[domain_event]`'s `deserialize_with` for each field: serde's own deserialisation, through
/// [`EventField`] (see [`serialize_field`]).
#[doc(hidden)]
#[inline]
pub fn deserialize_field<'de, T: EventField, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    T::__deserialize(deserializer)
}

/// Where an event or handler was declared in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceLocation {
    /// The source file, as `file!()` gives it.
    pub file: &'static str,
    /// The line, as `line!()` gives it.
    pub line: u32,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// How deep arrays and objects may nest in an event's JSON payload: a Celery message's body is
/// parsed to 128 levels (serde_json's limit) and holds the payload inside two of them (the
/// body array and the kwargs object). [`EventBus::publish_json`](crate::EventBus::publish_json)
/// refuses a deeper payload ([`Error::PayloadTooDeep`](crate::Error::PayloadTooDeep)), as the
/// Celery backend refuses to serialise a deeper event.
pub const MAX_PAYLOAD_DEPTH: usize = 126;

/// Whether arrays and objects in `value` nest more than `limit` deep, found without recursion
/// (a value built in code can be deeper than the stack).
pub(crate) fn value_nests_deeper_than(value: &serde_json::Value, limit: usize) -> bool {
    use serde_json::Value;
    let mut stack = vec![(value, 0)];
    while let Some((value, depth)) = stack.pop() {
        let children: &mut dyn Iterator<Item = &Value> = match value {
            Value::Array(items) => &mut items.iter(),
            Value::Object(map) => &mut map.values(),
            _ => continue,
        };
        if depth == limit {
            return true;
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    false
}

/// Drops `value` without recursion (serde_json's drop recurses once per level).
pub(crate) fn drop_value_iteratively(value: serde_json::Value) {
    use serde_json::Value;
    let mut stack = vec![value];
    while let Some(mut value) = stack.pop() {
        match &mut value {
            Value::Array(items) => stack.append(items),
            Value::Object(map) => stack.extend(std::mem::take(map).into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

/// A decoded event whose type is known only at run time (see [`EventDescriptor::decode_json`]).
pub type AnyEvent = Box<dyn Any + Send + Sync>;

/// What the registry knows of one event type: its name, Rust type, source location, and how to
/// serialise and deserialise it without naming the type.
///
/// Created by `#[domain_event]`; read it through [`Registry`](crate::Registry).
pub struct EventDescriptor {
    name: &'static str,
    type_name: fn() -> &'static str,
    type_id: fn() -> TypeId,
    location: SourceLocation,
    crate_name: &'static str,
    from_value: fn(serde_json::Value) -> Result<AnyEvent, serde_json::Error>,
    from_str: fn(&str) -> Result<AnyEvent, serde_json::Error>,
    from_value_traced: fn(&serde_json::Value) -> Result<AnyEvent, PayloadMismatch>,
    from_deserializer: DecodeFrom,
    as_serialize: fn(&(dyn Any + Send + Sync)) -> Option<&dyn erased_serde::Serialize>,
    /// Its position in the program's event slice, once something looked it up
    /// ([`slot`](Self::slot)); `u32::MAX` until then.
    slot: AtomicU32,
}

impl EventDescriptor {
    #[doc(hidden)]
    pub const fn new<E: DomainEvent>(location: SourceLocation, crate_name: &'static str) -> Self {
        Self {
            name: E::NAME,
            type_name: std::any::type_name::<E>,
            type_id: TypeId::of::<E>,
            location,
            crate_name,
            from_value: from_value::<E>,
            from_str: from_str::<E>,
            from_value_traced: from_value_traced::<E>,
            from_deserializer: from_deserializer::<E>,
            as_serialize: as_serialize::<E>,
            slot: AtomicU32::new(u32::MAX),
        }
    }

    /// Checks, where `#[domain_event]` calls it, that a field's type is an [`EventField`].
    #[doc(hidden)]
    #[inline]
    pub fn assert_field<T: EventField>() {}

    /// A dense index for this event type, fixed for the life of the program: its position in
    /// the link-time slice of every `#[domain_event]`. Backends index tables by it instead of
    /// hashing a `TypeId`. Found once per descriptor (a scan of the slice), then one load.
    /// `None` for a descriptor outside the slice (one not made by `#[domain_event]`).
    #[inline]
    pub fn slot(&'static self) -> Option<usize> {
        match self.slot.load(Ordering::Relaxed) {
            u32::MAX => self.find_slot(),
            slot => Some(slot as usize),
        }
    }

    #[cold]
    fn find_slot(&'static self) -> Option<usize> {
        let slot = crate::__private::EVENTS
            .iter()
            .position(|descriptor| std::ptr::eq(descriptor, self))?;
        // Racing finders store the same value.
        self.slot
            .store(u32::try_from(slot).ok()?, Ordering::Relaxed);
        Some(slot)
    }

    /// The event's stable name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The Rust type's full path, e.g. `shop::events::ProductCreated`.
    pub fn type_name(&self) -> &'static str {
        (self.type_name)()
    }

    /// The Rust type's [`TypeId`].
    pub fn type_id(&self) -> TypeId {
        (self.type_id)()
    }

    /// Where `#[domain_event]` was written.
    pub fn location(&self) -> SourceLocation {
        self.location
    }

    /// The crate that declares the event (`CARGO_CRATE_NAME`).
    pub fn crate_name(&self) -> &'static str {
        self.crate_name
    }

    /// Deserialises a JSON value into the event type.
    pub fn decode_value(&self, value: serde_json::Value) -> Result<AnyEvent, serde_json::Error> {
        (self.from_value)(value)
    }

    /// Deserialises a JSON value into the event type; on failure, says where in the value
    /// (`lines[2].sku`) and why. Slower than [`decode_value`](Self::decode_value): use it to
    /// explain a failure.
    pub fn decode_value_traced(
        &self,
        value: &serde_json::Value,
    ) -> Result<AnyEvent, PayloadMismatch> {
        (self.from_value_traced)(value)
    }

    /// Deserialises JSON text into the event type.
    pub fn decode_json(&self, json: &str) -> Result<AnyEvent, serde_json::Error> {
        (self.from_str)(json)
    }

    /// Deserialises the event type from any serde deserializer (type-erased), for a backend
    /// that reads payloads with its own format or value type.
    pub fn decode_from(
        &self,
        deserializer: &mut dyn erased_serde::Deserializer<'_>,
    ) -> Result<AnyEvent, erased_serde::Error> {
        (self.from_deserializer)(deserializer)
    }

    /// A type-erased serialiser for a value of this event type, or `None` if `value` is of
    /// another type. Serialise it with any serde serializer.
    pub fn serializable<'a>(
        &self,
        value: &'a (dyn Any + Send + Sync),
    ) -> Option<&'a dyn erased_serde::Serialize> {
        (self.as_serialize)(value)
    }

    /// Serialises a value of this event type to a JSON value.
    pub fn encode_value(
        &self,
        value: &(dyn Any + Send + Sync),
    ) -> Option<Result<serde_json::Value, serde_json::Error>> {
        self.serializable(value).map(serde_json::to_value)
    }
}

impl fmt::Debug for EventDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventDescriptor")
            .field("name", &self.name)
            .field("type", &self.type_name())
            .field("location", &format_args!("{}", self.location))
            .finish()
    }
}

fn from_value<E: DomainEvent>(value: serde_json::Value) -> Result<AnyEvent, serde_json::Error> {
    serde_json::from_value::<E>(value).map(|e| Box::new(e) as AnyEvent)
}

type DecodeFrom =
    for<'de> fn(&mut dyn erased_serde::Deserializer<'de>) -> Result<AnyEvent, erased_serde::Error>;

fn from_deserializer<E: DomainEvent>(
    deserializer: &mut dyn erased_serde::Deserializer<'_>,
) -> Result<AnyEvent, erased_serde::Error> {
    erased_serde::deserialize::<E>(deserializer).map(|e| Box::new(e) as AnyEvent)
}

fn from_value_traced<E: DomainEvent>(
    value: &serde_json::Value,
) -> Result<AnyEvent, PayloadMismatch> {
    serde_path_to_error::deserialize::<_, E>(value)
        .map(|e| Box::new(e) as AnyEvent)
        .map_err(PayloadMismatch)
}

/// Where a payload does not fit its event type, and why (from
/// [`EventDescriptor::decode_value_traced`]).
#[derive(Debug)]
pub struct PayloadMismatch(serde_path_to_error::Error<serde_json::Error>);

impl PayloadMismatch {
    /// The path to the value that did not fit, e.g. `lines[2].sku`; `.` for the whole payload.
    pub fn path(&self) -> String {
        self.0.path().to_string()
    }

    /// The path of the field at fault: [`path`](Self::path), and for a missing field the
    /// field itself (`customer`, `customer.email` — never `.` for a missing field).
    pub fn field_path(&self) -> String {
        let path = self.path();
        let message = self.0.inner().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(field, _)| field);
        match (path.as_str(), missing) {
            (".", Some(field)) => field.to_owned(),
            (_, Some(field)) => format!("{path}.{field}"),
            (_, None) => path,
        }
    }

    /// The JSON value at the failing path, if there is one.
    pub fn value_in<'v>(&self, payload: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        use serde_path_to_error::Segment;
        self.0
            .path()
            .iter()
            .try_fold(payload, |value, segment| match segment {
                Segment::Seq { index } => value.get(*index),
                Segment::Map { key } => value.get(key.as_str()),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
    }

    /// serde's reason.
    pub fn error(&self) -> &serde_json::Error {
        self.0.inner()
    }
}

impl fmt::Display for PayloadMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at `{}`: {}", self.0.path(), self.0.inner())
    }
}

impl std::error::Error for PayloadMismatch {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.inner())
    }
}

fn from_str<E: DomainEvent>(json: &str) -> Result<AnyEvent, serde_json::Error> {
    serde_json::from_str::<E>(json).map(|e| Box::new(e) as AnyEvent)
}

fn as_serialize<E: DomainEvent>(
    value: &(dyn Any + Send + Sync),
) -> Option<&dyn erased_serde::Serialize> {
    value
        .downcast_ref::<E>()
        .map(|e| e as &dyn erased_serde::Serialize)
}

/// A borrowed event of any type, with its descriptor: what backends receive.
#[derive(Clone, Copy)]
pub struct EventRef<'a> {
    descriptor: &'static EventDescriptor,
    type_id: TypeId,
    value: &'a (dyn Any + Send + Sync),
}

impl<'a> EventRef<'a> {
    /// Borrows a typed event.
    pub fn new<E: DomainEvent>(event: &'a E) -> Self {
        Self {
            descriptor: E::descriptor(),
            type_id: TypeId::of::<E>(),
            value: event,
        }
    }

    /// Pairs a type-erased value with its descriptor; `None` if the value is not of the
    /// descriptor's type.
    pub fn from_any(
        descriptor: &'static EventDescriptor,
        value: &'a (dyn Any + Send + Sync),
    ) -> Option<Self> {
        let type_id = descriptor.type_id();
        ((*value).type_id() == type_id).then_some(Self {
            descriptor,
            type_id,
            value,
        })
    }

    /// The event's descriptor.
    pub fn descriptor(&self) -> &'static EventDescriptor {
        self.descriptor
    }

    /// The event's name.
    pub fn name(&self) -> &'static str {
        self.descriptor.name
    }

    /// The event's Rust [`TypeId`].
    pub fn type_id(&self) -> TypeId {
        self.type_id
    }

    /// The event value, to hand to handlers.
    pub fn value(&self) -> &'a (dyn Any + Send + Sync) {
        self.value
    }

    /// The event value as something any serde serializer can write.
    pub fn serializable(&self) -> &'a dyn erased_serde::Serialize {
        match self.descriptor.serializable(self.value) {
            Some(s) => s,
            // `new` and `from_any` check the type, so this cannot be reached.
            None => unreachable!("EventRef holds a value of its descriptor's type"),
        }
    }

    /// The event as a JSON value.
    pub fn to_json_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self.serializable())
    }
}

impl fmt::Debug for EventRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRef")
            .field("event", &self.descriptor.name)
            .finish_non_exhaustive()
    }
}
