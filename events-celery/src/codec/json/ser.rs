//! Rust values into [`Json`], as serde_json would write them — except that integers of any
//! width stay exact, floats are spelled as Python's `repr`, and a float JSON cannot carry
//! (`NaN`, `±inf`) is an error rather than `null`, and a value nesting deeper than a worker
//! can read is an error rather than a stack overflow.

use serde::Serialize;
use serde::ser::{self, Impossible};

use events_core::MAX_PAYLOAD_DEPTH as MAX_DEPTH;

use super::{Json, JsonError, JsonMap, JsonNumber};

/// How many serde calls may nest, counting those that write no bracket (`Option`, newtypes):
/// a recursive type (`enum Tree { Leaf, Node(Box<Tree>) }`) recurses through them, and each
/// level costs stack.
const MAX_LEVELS: u32 = 4 * MAX_DEPTH as u32;

/// The start of a depth error's message (`from_serialize` does not trace its path: it is as
/// long as the value is deep).
pub(super) const TOO_DEEP: &str = "the value nests deeper than";

/// Serialises into a [`Json`], counting how deep it is: `brackets` arrays and objects around the
/// value being written, `levels` serde calls (brackets, `Some` and newtypes).
#[derive(Clone, Copy, Default)]
pub(super) struct ToJson {
    brackets: u32,
    levels: u32,
}

impl ToJson {
    /// One level further in, writing `brackets` more arrays or objects (0, 1, or 2 for a
    /// tuple or struct variant's `{"Variant": [...]}`).
    fn deeper(self, brackets: u32) -> Result<Self, JsonError> {
        let inner = Self {
            brackets: self.brackets + brackets,
            levels: self.levels + 1,
        };
        if inner.brackets > MAX_DEPTH as u32 {
            Err(JsonError(format!(
                "{TOO_DEEP} {MAX_DEPTH} arrays and objects, the most a worker reads (serde_json's \
                 and this codec's parse limit): a recursive type (a tree, a linked list) this \
                 deep is refused rather than sent as a message no worker can read; flatten it \
                 (a list of nodes with parent indices) or send a shallower value"
            )))
        } else if inner.levels > MAX_LEVELS {
            Err(JsonError(format!(
                "{TOO_DEEP} {MAX_LEVELS} levels of Options, newtypes, arrays and objects: a \
                 recursive type this deep is refused rather than overflowing the stack; flatten \
                 it or send a shallower value"
            )))
        } else {
            Ok(inner)
        }
    }
}

fn float(value: f64) -> Result<Json, JsonError> {
    if value.is_finite() {
        Ok(Json::Number(JsonNumber::from_f64(value)))
    } else {
        Err(JsonError(format!(
            "the float {value} cannot be sent: JSON has no NaN or infinity (serde_json would \
             write null, Python would read `{}`); send a finite number, or make the field an \
             Option and send None",
            JsonNumber::from_f64(value)
        )))
    }
}

impl ser::Serializer for ToJson {
    type Ok = Json;
    type Error = JsonError;
    type SerializeSeq = Seq;
    type SerializeTuple = Seq;
    type SerializeTupleStruct = Seq;
    type SerializeTupleVariant = Variant<Seq>;
    type SerializeMap = Map;
    type SerializeStruct = Map;
    type SerializeStructVariant = Variant<Map>;

    fn serialize_bool(self, v: bool) -> Result<Json, JsonError> {
        Ok(Json::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Json, JsonError> {
        Ok(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<Json, JsonError> {
        Ok(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<Json, JsonError> {
        Ok(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<Json, JsonError> {
        Ok(v.into())
    }
    fn serialize_i128(self, v: i128) -> Result<Json, JsonError> {
        Ok(v.into())
    }
    fn serialize_u8(self, v: u8) -> Result<Json, JsonError> {
        Ok(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<Json, JsonError> {
        Ok(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<Json, JsonError> {
        Ok(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<Json, JsonError> {
        Ok(v.into())
    }
    fn serialize_u128(self, v: u128) -> Result<Json, JsonError> {
        Ok(v.into())
    }
    fn serialize_f32(self, v: f32) -> Result<Json, JsonError> {
        if v.is_finite() {
            // The shortest text that reads back as this f32, as serde_json writes it.
            let text = ryu::Buffer::new().format_finite(v).to_owned();
            Ok(Json::Number(
                JsonNumber::from_json_text(&text).unwrap_or_else(|| JsonNumber::from_f64(v.into())),
            ))
        } else {
            float(v.into())
        }
    }
    fn serialize_f64(self, v: f64) -> Result<Json, JsonError> {
        float(v)
    }
    fn serialize_char(self, v: char) -> Result<Json, JsonError> {
        Ok(Json::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Json, JsonError> {
        Ok(Json::String(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Json, JsonError> {
        Ok(Json::Array(v.iter().map(|&b| b.into()).collect()))
    }
    fn serialize_none(self) -> Result<Json, JsonError> {
        Ok(Json::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Json, JsonError> {
        value.serialize(self.deeper(0)?)
    }
    fn serialize_unit(self) -> Result<Json, JsonError> {
        Ok(Json::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Json, JsonError> {
        Ok(Json::Null)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Json, JsonError> {
        Ok(Json::String(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Json, JsonError> {
        value.serialize(self.deeper(0)?)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Json, JsonError> {
        let mut map = JsonMap::with_capacity(1);
        map.insert(variant.to_owned(), value.serialize(self.deeper(1)?)?);
        Ok(Json::Object(map))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Seq, JsonError> {
        Ok(Seq(Vec::with_capacity(len.unwrap_or(0)), self.deeper(1)?))
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq, JsonError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Seq, JsonError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Variant<Seq>, JsonError> {
        Ok(Variant(
            variant,
            Seq(Vec::with_capacity(len), self.deeper(1)?.deeper(1)?),
        ))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Map, JsonError> {
        Ok(Map {
            map: JsonMap::with_capacity(len.unwrap_or(0)),
            key: None,
            inner: self.deeper(1)?,
        })
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Map, JsonError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Variant<Map>, JsonError> {
        Ok(Variant(variant, self.deeper(1)?.serialize_map(Some(len))?))
    }
}

/// An array being written, and how to write its items.
pub(super) struct Seq(Vec<Json>, ToJson);

impl ser::SerializeSeq for Seq {
    type Ok = Json;
    type Error = JsonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        self.0.push(value.serialize(self.1)?);
        Ok(())
    }
    fn end(self) -> Result<Json, JsonError> {
        Ok(Json::Array(self.0))
    }
}

impl ser::SerializeTuple for Seq {
    type Ok = Json;
    type Error = JsonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Json, JsonError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for Seq {
    type Ok = Json;
    type Error = JsonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Json, JsonError> {
        ser::SerializeSeq::end(self)
    }
}

/// An object being written, and how to write its values.
pub(super) struct Map {
    map: JsonMap,
    key: Option<String>,
    inner: ToJson,
}

impl ser::SerializeMap for Map {
    type Ok = Json;
    type Error = JsonError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), JsonError> {
        self.key = Some(key.serialize(KeyToString)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| JsonError("a map value came without its key".to_owned()))?;
        self.map.insert(key, value.serialize(self.inner)?);
        Ok(())
    }
    fn end(self) -> Result<Json, JsonError> {
        Ok(Json::Object(self.map))
    }
}

impl ser::SerializeStruct for Map {
    type Ok = Json;
    type Error = JsonError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), JsonError> {
        self.map
            .insert(key.to_owned(), value.serialize(self.inner)?);
        Ok(())
    }
    fn end(self) -> Result<Json, JsonError> {
        Ok(Json::Object(self.map))
    }
}

/// `{"Variant": <content>}`, as serde_json writes tuple and struct variants.
pub(super) struct Variant<T>(&'static str, T);

impl<T> Variant<T> {
    fn wrap(name: &'static str, content: Json) -> Json {
        let mut map = JsonMap::with_capacity(1);
        map.insert(name.to_owned(), content);
        Json::Object(map)
    }
}

impl ser::SerializeTupleVariant for Variant<Seq> {
    type Ok = Json;
    type Error = JsonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        ser::SerializeSeq::serialize_element(&mut self.1, value)
    }
    fn end(self) -> Result<Json, JsonError> {
        Ok(Self::wrap(self.0, ser::SerializeSeq::end(self.1)?))
    }
}

impl ser::SerializeStructVariant for Variant<Map> {
    type Ok = Json;
    type Error = JsonError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), JsonError> {
        ser::SerializeStruct::serialize_field(&mut self.1, key, value)
    }
    fn end(self) -> Result<Json, JsonError> {
        Ok(Self::wrap(self.0, ser::SerializeStruct::end(self.1)?))
    }
}

/// Map keys as serde_json writes them: strings, and numbers, booleans and chars as text.
struct KeyToString;

fn key_error() -> JsonError {
    JsonError("a map key must be a string, a number, a boolean or a char".to_owned())
}

macro_rules! key_as_text {
    ($($method:ident: $t:ty),*) => {$(
        fn $method(self, v: $t) -> Result<String, JsonError> {
            Ok(v.to_string())
        }
    )*};
}

impl ser::Serializer for KeyToString {
    type Ok = String;
    type Error = JsonError;
    type SerializeSeq = Impossible<String, JsonError>;
    type SerializeTuple = Impossible<String, JsonError>;
    type SerializeTupleStruct = Impossible<String, JsonError>;
    type SerializeTupleVariant = Impossible<String, JsonError>;
    type SerializeMap = Impossible<String, JsonError>;
    type SerializeStruct = Impossible<String, JsonError>;
    type SerializeStructVariant = Impossible<String, JsonError>;

    key_as_text! {
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
        serialize_u32: u32, serialize_u64: u64, serialize_u128: u128, serialize_char: char,
        serialize_str: &str
    }

    fn serialize_f32(self, v: f32) -> Result<String, JsonError> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<String, JsonError> {
        float(v).map(|json| json.to_string())
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<String, JsonError> {
        Err(key_error())
    }
    fn serialize_none(self) -> Result<String, JsonError> {
        Err(key_error())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<String, JsonError> {
        Err(key_error())
    }
    fn serialize_unit(self) -> Result<String, JsonError> {
        Err(key_error())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<String, JsonError> {
        Err(key_error())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<String, JsonError> {
        Ok(variant.to_owned())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<String, JsonError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<String, JsonError> {
        Err(key_error())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, JsonError> {
        Err(key_error())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, JsonError> {
        Err(key_error())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, JsonError> {
        Err(key_error())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, JsonError> {
        Err(key_error())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, JsonError> {
        Err(key_error())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, JsonError> {
        Err(key_error())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, JsonError> {
        Err(key_error())
    }
}
