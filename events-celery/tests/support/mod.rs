//! Loading the Python Celery fixtures (`tests/fixtures/`, copied from `shared/fixtures/celery`)
//! and reading the raw AMQP content-header frames they hold.

#![allow(dead_code, reason = "each test file uses a different part")]

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use events_celery::codec::{AmqpMessage, AmqpProperties, AmqpTable, AmqpValue};
use serde_json::Value;

/// Every case `generate.py` captured.
pub(crate) const CASES: [&str; 11] = [
    "seed_event",
    "priority",
    "countdown",
    "kombu_types",
    "unicode_bigint",
    "protocol_v1",
    "linked",
    "chain",
    "custom_headers",
    "retried_original",
    "retried",
];

pub(crate) fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The Redis list element, byte for byte.
pub(crate) fn redis_envelope(case: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(format!("redis/{case}.json"))).unwrap()
}

/// The Redis list key, with the `\xNN` escapes of the fixture resolved.
pub(crate) fn redis_key(case: &str) -> String {
    let text = std::fs::read_to_string(fixture_dir().join(format!("redis/{case}.key"))).unwrap();
    let mut key = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("\\x") {
        key.push_str(&rest[..at]);
        let byte = u8::from_str_radix(&rest[at + 2..at + 4], 16).unwrap();
        key.push(char::from(byte));
        rest = &rest[at + 4..];
    }
    key.push_str(rest);
    key
}

/// The Redis envelope as JSON, with its body decoded (`body_json`).
pub(crate) fn redis_json(case: &str) -> Value {
    let mut envelope: Value = serde_json::from_slice(&redis_envelope(case)).unwrap();
    let body = STANDARD.decode(envelope["body"].as_str().unwrap()).unwrap();
    envelope["body_json"] = serde_json::from_slice(&body).unwrap();
    envelope
}

/// The pika capture: exchange, routing key, properties, headers, body.
pub(crate) fn amqp_json(case: &str) -> Value {
    let text = std::fs::read(fixture_dir().join(format!("amqp/{case}.json"))).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// The AMQP message exactly as RabbitMQ delivered it, read from the raw content-header
/// property list (so every header keeps its wire field type).
pub(crate) fn amqp_message(case: &str) -> AmqpMessage {
    let capture = amqp_json(case);
    let raw = STANDARD
        .decode(capture["properties_raw_base64"].as_str().unwrap())
        .unwrap();
    let (properties, headers) = parse_basic_properties(&raw);
    AmqpMessage {
        exchange: capture["exchange"].as_str().unwrap().to_owned(),
        routing_key: capture["routing_key"].as_str().unwrap().to_owned(),
        properties,
        headers,
        body: STANDARD
            .decode(capture["body_base64"].as_str().unwrap())
            .unwrap(),
    }
}

/// `name: TYPE` lines of `amqp/<case>.headers.repr.txt` (`timelimit: A[V, V]`).
pub(crate) fn amqp_header_types(case: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(fixture_dir().join(format!("amqp/{case}.headers.repr.txt")))
        .unwrap();
    let types = text
        .split("# AMQP field type of each header")
        .nth(1)
        .unwrap();
    types
        .lines()
        .filter(|line| !line.starts_with('#') && line.contains(": "))
        .map(|line| {
            let (name, kind) = line.split_once(": ").unwrap();
            (name.to_owned(), kind.to_owned())
        })
        .collect()
}

/// A value's field type in the notation of the `.headers.repr.txt` files (py-amqp's `L` for
/// 64-bit integers).
pub(crate) fn type_signature(value: &AmqpValue) -> String {
    match value {
        AmqpValue::Array(items) => format!(
            "A[{}]",
            items
                .iter()
                .map(type_signature)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AmqpValue::Table(table) => format!(
            "F{{{}}}",
            table
                .iter()
                .map(|(name, value)| format!("{name}: {}", type_signature(value)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AmqpValue::LongLongInt(_) => "L".to_owned(),
        other => other.type_tag().to_string(),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        head
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    fn short_string(&mut self) -> String {
        let len = usize::from(self.u8());
        String::from_utf8(self.take(len).to_vec()).unwrap()
    }
    fn long_bytes(&mut self) -> Vec<u8> {
        let len = self.u32() as usize;
        self.take(len).to_vec()
    }
    fn table(&mut self) -> AmqpTable {
        let len = self.u32() as usize;
        let mut inner = Reader {
            bytes: self.take(len),
        };
        let mut table = AmqpTable::default();
        while !inner.bytes.is_empty() {
            let name = inner.short_string();
            let value = inner.value();
            table.push(name, value);
        }
        table
    }
    fn value(&mut self) -> AmqpValue {
        match self.u8() {
            b't' => AmqpValue::Bool(self.u8() != 0),
            b'b' => AmqpValue::ShortShortInt(self.u8() as i8),
            b'B' => AmqpValue::ShortShortUInt(self.u8()),
            b's' => AmqpValue::ShortInt(self.u16() as i16),
            b'u' => AmqpValue::ShortUInt(self.u16()),
            b'I' => AmqpValue::LongInt(self.u32() as i32),
            b'i' => AmqpValue::LongUInt(self.u32()),
            b'l' | b'L' => AmqpValue::LongLongInt(self.u64() as i64),
            b'f' => AmqpValue::Float(f32::from_bits(self.u32())),
            b'd' => AmqpValue::Double(f64::from_bits(self.u64())),
            b'D' => {
                let scale = self.u8();
                AmqpValue::Decimal {
                    scale,
                    value: self.u32(),
                }
            }
            b'S' => AmqpValue::LongString(self.long_bytes()),
            b'x' => AmqpValue::ByteArray(self.long_bytes()),
            b'A' => {
                let len = self.u32() as usize;
                let mut inner = Reader {
                    bytes: self.take(len),
                };
                let mut items = Vec::new();
                while !inner.bytes.is_empty() {
                    items.push(inner.value());
                }
                AmqpValue::Array(items)
            }
            b'T' => AmqpValue::Timestamp(self.u64()),
            b'F' => AmqpValue::Table(self.table()),
            b'V' => AmqpValue::Void,
            other => panic!("unknown AMQP field type {:?}", char::from(other)),
        }
    }
}

/// AMQP 0-9-1 basic properties: a 16-bit flag word, then the present fields in order.
fn parse_basic_properties(raw: &[u8]) -> (AmqpProperties, AmqpTable) {
    let mut reader = Reader { bytes: raw };
    let flags = reader.u16();
    assert_eq!(flags & 1, 0, "no continuation flags expected");
    let has = |bit: u16| flags & (1 << bit) != 0;
    let mut properties = AmqpProperties::default();
    let mut headers = AmqpTable::default();
    if has(15) {
        properties.content_type = Some(reader.short_string());
    }
    if has(14) {
        properties.content_encoding = Some(reader.short_string());
    }
    if has(13) {
        headers = reader.table();
    }
    if has(12) {
        properties.delivery_mode = Some(reader.u8());
    }
    if has(11) {
        properties.priority = Some(reader.u8());
    }
    if has(10) {
        properties.correlation_id = Some(reader.short_string());
    }
    if has(9) {
        properties.reply_to = Some(reader.short_string());
    }
    if has(8) {
        properties.expiration = Some(reader.short_string());
    }
    for bit in [7, 5, 4, 3, 2] {
        // message_id, type, user_id, app_id, cluster_id: Celery sets none of them.
        assert!(!has(bit), "unexpected property bit {bit}");
    }
    assert!(!has(6), "unexpected timestamp property");
    (properties, headers)
}
