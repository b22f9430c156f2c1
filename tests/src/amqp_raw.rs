//! A raw AMQP 0-9-1 publisher over a plain socket, for messages no client library will write:
//! header tables given as bytes (nested tens of thousands of levels deep, which lapin's and
//! py-amqp's recursive serialisers cannot produce). Publishes with confirms, so a returned
//! `Ok` means RabbitMQ stored the message.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One confirmed publish to `queue` through the default exchange: the given properties
/// (content type and encoding, an optional message id) and the header table's *contents* as
/// raw AMQP bytes (entries: short-string name, type octet, value), then `body`.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// `content-type`.
    pub content_type: String,
    /// `content-encoding`.
    pub content_encoding: String,
    /// The bytes inside the `headers` table (without its length prefix).
    pub headers: Vec<u8>,
    /// `message-id`.
    pub message_id: String,
    /// The body.
    pub body: Vec<u8>,
}

/// A connection to RabbitMQ at 127.0.0.1:5672 as guest, with channel 1 in confirm mode.
#[derive(Debug)]
pub struct RawAmqp {
    socket: TcpStream,
    frame_max: u32,
}

fn shortstr(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).expect("short string"));
    out.extend_from_slice(s.as_bytes());
}

fn longstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u32::try_from(s.len()).expect("long string").to_be_bytes());
    out.extend_from_slice(s);
}

fn method(class: u16, method: u16) -> Vec<u8> {
    let mut out = class.to_be_bytes().to_vec();
    out.extend_from_slice(&method.to_be_bytes());
    out
}

impl RawAmqp {
    /// Connects and opens channel 1 in confirm mode. Panics with what went wrong.
    pub fn connect() -> Self {
        let socket = TcpStream::connect("127.0.0.1:5672").expect("connect to RabbitMQ");
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut raw = RawAmqp {
            socket,
            frame_max: 4096,
        };
        raw.socket.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
        raw.expect_method(0, 10, 10); // connection.start
        let mut start_ok = method(10, 11);
        start_ok.extend_from_slice(&0u32.to_be_bytes()); // client properties: {}
        shortstr(&mut start_ok, "PLAIN");
        longstr(&mut start_ok, b"\0guest\0guest");
        shortstr(&mut start_ok, "en_US");
        raw.send(1, 0, &start_ok);
        let tune = raw.expect_method(0, 10, 30);
        let channel_max = u16::from_be_bytes([tune[4], tune[5]]);
        raw.frame_max = u32::from_be_bytes([tune[6], tune[7], tune[8], tune[9]]);
        let mut tune_ok = method(10, 31);
        tune_ok.extend_from_slice(&channel_max.to_be_bytes());
        tune_ok.extend_from_slice(&raw.frame_max.to_be_bytes());
        tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
        raw.send(1, 0, &tune_ok);
        let mut open = method(10, 40);
        shortstr(&mut open, "/");
        shortstr(&mut open, "");
        open.push(0);
        raw.send(1, 0, &open);
        raw.expect_method(0, 10, 41);
        let mut channel_open = method(20, 10);
        shortstr(&mut channel_open, "");
        raw.send(1, 1, &channel_open);
        raw.expect_method(1, 20, 11);
        let mut select = method(85, 10);
        select.push(0);
        raw.send(1, 1, &select);
        raw.expect_method(1, 85, 11);
        raw
    }

    /// The frame size the broker agreed to: the largest header frame it accepts.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// The largest header-table contents [`publish`](Self::publish) can send with `message`'s
    /// other properties, in one header frame of [`frame_max`](Self::frame_max).
    pub fn max_headers_len(&self, message: &RawMessage) -> usize {
        let fixed = 14 // class, weight, body size, flags
            + 1 + message.content_type.len()
            + 1 + message.content_encoding.len()
            + 4 // table length
            + 1 // delivery mode
            + 1 + message.message_id.len();
        self.frame_max as usize - 8 - fixed
    }

    /// Declares `queue` durable (as the worker declares it).
    pub fn declare(&mut self, queue: &str) {
        let mut declare = method(50, 10);
        declare.extend_from_slice(&0u16.to_be_bytes());
        shortstr(&mut declare, queue);
        declare.push(0b0000_0010); // durable
        declare.extend_from_slice(&0u32.to_be_bytes()); // no arguments
        self.send(1, 1, &declare);
        self.expect_method(1, 50, 11);
    }

    /// Publishes `message` to `queue` and waits for the broker's confirm.
    pub fn publish(&mut self, queue: &str, message: &RawMessage) {
        let mut publish = method(60, 40);
        publish.extend_from_slice(&0u16.to_be_bytes());
        shortstr(&mut publish, "");
        shortstr(&mut publish, queue);
        publish.push(0);
        self.send(1, 1, &publish);
        let mut header = method(60, 0); // class 60, weight 0
        header.extend_from_slice(&(message.body.len() as u64).to_be_bytes());
        // content-type, content-encoding, headers, delivery-mode, message-id
        header.extend_from_slice(&0b1111_0000_1000_0000u16.to_be_bytes());
        shortstr(&mut header, &message.content_type);
        shortstr(&mut header, &message.content_encoding);
        longstr(&mut header, &message.headers);
        header.push(2);
        shortstr(&mut header, &message.message_id);
        assert!(
            header.len() + 8 <= self.frame_max as usize,
            "a header frame of {} bytes is over the broker's frame_max {}",
            header.len() + 8,
            self.frame_max
        );
        self.send(2, 1, &header);
        for chunk in message.body.chunks(self.frame_max as usize - 8) {
            self.send(3, 1, chunk);
        }
        self.expect_method(1, 60, 80); // basic.ack
    }

    fn send(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        let mut frame = vec![kind];
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(0xCE);
        self.socket.write_all(&frame).expect("write to RabbitMQ");
    }

    /// Reads one frame; panics unless it is method `class.method` on `channel`. Returns the
    /// method payload.
    fn expect_method(&mut self, channel: u16, class: u16, id: u16) -> Vec<u8> {
        let mut prefix = [0u8; 7];
        self.socket.read_exact(&mut prefix).expect("read a frame");
        let size = u32::from_be_bytes([prefix[3], prefix[4], prefix[5], prefix[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        self.socket.read_exact(&mut payload).expect("read a frame");
        payload.pop();
        let got = (
            u16::from_be_bytes([prefix[1], prefix[2]]),
            u16::from_be_bytes([payload[0], payload[1]]),
            u16::from_be_bytes([payload[2], payload[3]]),
        );
        assert_eq!(
            (prefix[0], got),
            (1, (channel, class, id)),
            "unexpected frame from RabbitMQ: {:?}",
            String::from_utf8_lossy(&payload)
        );
        payload
    }
}

/// Header-table contents (see [`RawMessage::headers`]) of one entry `name` holding arrays
/// (`arrays`) or tables nested so that the whole table is `depth` levels deep, written front
/// to back (every container ends where the innermost one does).
pub fn nested_entry(name: &str, depth: usize, arrays: bool) -> Vec<u8> {
    let kind = if arrays { b'A' } else { b'F' };
    let per = if arrays { 5 } else { 7 }; // [name "h",] type, length
    let mut table = Vec::new();
    shortstr(&mut table, name);
    if depth <= 1 {
        table.push(b'V');
        return table;
    }
    for i in 0..depth - 1 {
        if !arrays && i > 0 {
            shortstr(&mut table, "h");
        }
        table.push(kind);
        let inside = (depth - 2 - i) * per;
        table.extend_from_slice(&u32::try_from(inside).unwrap().to_be_bytes());
    }
    table
}

/// A long-string header entry.
pub fn string_entry(name: &str, value: &str) -> Vec<u8> {
    let mut entry = Vec::new();
    shortstr(&mut entry, name);
    entry.push(b'S');
    longstr(&mut entry, value.as_bytes());
    entry
}
