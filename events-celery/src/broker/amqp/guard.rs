//! A guard between the RabbitMQ socket and lapin's frame parser: content-header frames whose
//! header table nests deeper than [`MAX_HEADER_DEPTH`] are rewritten before lapin sees them.
//!
//! lapin parses field tables recursively on its own I/O thread, with that thread's default
//! stack (2 MiB). A header nested ~2,000 levels deep — a few KB, well inside any frame size a
//! broker accepts — overflows it and aborts the process; the message goes back to the queue and
//! kills every worker that takes it next. The guard reads the decrypted byte stream frame by
//! frame (without recursion: an explicit stack of container ends), lets every frame through
//! untouched except a content header whose `headers` table is too deep, and replaces that table
//! with one entry, [`REFUSED_HEADER`], saying why. The worker's decoder refuses such a message
//! with that reason, so it is dead-lettered like any other bad input, and the rest of the
//! queue flows.
//!
//! Everything else passes byte for byte: other frame types, other properties, the body, and
//! anything the guard cannot read as AMQP (a protocol-version reply, a malformed table) — lapin
//! reports those as it always did.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use async_rs::Tokio;
use async_rs::traits::Reactor;
use futures_io::{AsyncRead, AsyncWrite};
use lapin::tcp::AsyncTcpStream;

use crate::codec::REFUSED_HEADER;

/// The deepest nesting of tables and arrays a message's `headers` may have (the table itself
/// is level 1). Celery's own headers nest 3 levels at most; lapin's parser needs about 1 KB of
/// stack per level. The codec refuses to write deeper headers.
pub(crate) use crate::codec::MAX_HEADER_DEPTH;

/// AMQP frame type of a content header.
const FRAME_HEADER: u8 = 2;
/// Frame type, channel and payload size.
const FRAME_PREFIX: usize = 7;
/// The `frame-end` octet.
const FRAME_END: u8 = 0xCE;
/// The class id of `basic`, the only class with content.
const CLASS_BASIC: u16 = 60;
/// How much is asked of the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// A byte stream from RabbitMQ with too-deep header tables rewritten (see the module docs).
/// Writes pass through.
#[derive(Debug)]
pub(crate) struct FrameGuard<S> {
    inner: S,
    /// Bytes read from `inner` are in `buf[..end]`: `[start, checked)` may be handed out,
    /// `[checked, end)` still has to be looked at. `buf` beyond `end` is room to read into
    /// (kept initialised, so a read never has to zero it first).
    buf: Vec<u8>,
    start: usize,
    checked: usize,
    end: usize,
    /// Bytes of the current frame (not a content header) that pass without a look.
    passing: usize,
    /// The peer did not speak AMQP frames (it answered with a protocol header): pass all.
    transparent: bool,
    /// Whether the first bytes have been looked at.
    began: bool,
    eof: bool,
}

impl<S> FrameGuard<S> {
    pub(crate) fn new(inner: S) -> Self {
        FrameGuard {
            inner,
            buf: Vec::new(),
            start: 0,
            checked: 0,
            end: 0,
            passing: 0,
            transparent: false,
            began: false,
            eof: false,
        }
    }

    /// Moves `checked` over every complete frame in the buffer, rewriting content headers that
    /// are too deep.
    fn advance(&mut self) {
        if !self.began {
            if self.end < 4 {
                return;
            }
            self.began = true;
            // A server that does not speak 0-9-1 answers with its own protocol header.
            self.transparent = self.buf.starts_with(b"AMQP");
        }
        loop {
            let available = self.end - self.checked;
            if self.transparent || self.eof {
                // Nothing more will complete a frame: hand out what there is, as it is.
                self.checked = self.end;
                return;
            }
            if self.passing > 0 {
                let n = self.passing.min(available);
                self.checked += n;
                self.passing -= n;
                if self.passing > 0 {
                    return;
                }
                continue;
            }
            if available < FRAME_PREFIX {
                return;
            }
            let at = self.checked;
            let kind = self.buf[at];
            let size = u32::from_be_bytes([
                self.buf[at + 3],
                self.buf[at + 4],
                self.buf[at + 5],
                self.buf[at + 6],
            ]) as usize;
            let total = FRAME_PREFIX + size + 1;
            if kind != FRAME_HEADER {
                self.passing = total;
                continue;
            }
            if available < total {
                return;
            }
            let payload = at + FRAME_PREFIX..at + FRAME_PREFIX + size;
            let framed = self.buf[at + total - 1] == FRAME_END;
            match guard_content_header(&self.buf[payload.clone()]).filter(|_| framed) {
                Some(rewritten) => {
                    // Shorter than what it replaces: write it in place, close the gap.
                    let new_size = u32::try_from(rewritten.len()).expect("smaller than before");
                    self.buf[at + 3..at + 7].copy_from_slice(&new_size.to_be_bytes());
                    let new_end = payload.start + rewritten.len();
                    self.buf[payload.start..new_end].copy_from_slice(&rewritten);
                    self.buf.copy_within(payload.end..self.end, new_end);
                    self.end -= payload.end - new_end;
                    self.checked = new_end + 1;
                }
                None => self.checked = at + total,
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            if this.checked > this.start {
                let n = (this.checked - this.start).min(out.len());
                out[..n].copy_from_slice(&this.buf[this.start..this.start + n]);
                this.start += n;
                if this.start == this.end {
                    this.start = 0;
                    this.checked = 0;
                    this.end = 0;
                }
                return Poll::Ready(Ok(n));
            }
            if this.eof || out.is_empty() {
                return Poll::Ready(Ok(0));
            }
            if this.buf.len() - this.end < READ_CHUNK / 4 {
                // Make room: move what is left to the front, grow when that is not enough
                // (a header frame larger than the buffer).
                this.buf.copy_within(this.start..this.end, 0);
                this.end -= this.start;
                this.checked -= this.start;
                this.start = 0;
                if this.buf.len() - this.end < READ_CHUNK / 4 {
                    let grown = (this.buf.len() * 2).max(READ_CHUNK);
                    this.buf.resize(grown, 0);
                }
            }
            let end = this.end;
            let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut this.buf[end..]))?;
            this.end += n;
            if n == 0 {
                this.eof = true;
            }
            this.advance();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// The socket type lapin runs over: tokio's TCP stream, TLS when the URL asks for it, guarded.
pub(crate) type GuardedStream = FrameGuard<AsyncTcpStream<<Tokio as Reactor>::TcpStream>>;

/// tokio's reactor, handing out guarded TCP streams (lapin's runtime for every connection the
/// crate opens).
#[derive(Debug, Clone)]
pub(crate) struct GuardedReactor(pub(crate) Tokio);

impl Reactor for GuardedReactor {
    type TcpStream = GuardedStream;
    type Sleep = <Tokio as Reactor>::Sleep;

    fn register<H: io::Read + io::Write + Send + 'static>(
        &self,
        _socket: H,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static> {
        // lapin opens its sockets through `tcp_connect_addr` or the crate's connector only.
        Err::<GuardedStream, _>(io::Error::new(
            io::ErrorKind::Unsupported,
            "events-celery's AMQP runtime does not register foreign sockets",
        ))
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.0.sleep(dur)
    }

    fn interval(
        &self,
        dur: Duration,
    ) -> impl futures_util::Stream<Item = Instant> + Send + 'static {
        self.0.interval(dur)
    }

    fn tcp_connect_addr(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send + 'static {
        let connect = self.0.tcp_connect_addr(addr);
        async move { Ok(FrameGuard::new(AsyncTcpStream::Plain(connect.await?))) }
    }
}

/// Returns the content-header payload with its `headers` table replaced, when that table nests
/// deeper than [`MAX_HEADER_DEPTH`]; `None` leaves the frame as it is.
fn guard_content_header(payload: &[u8]) -> Option<Vec<u8>> {
    let class = u16::from_be_bytes([*payload.first()?, *payload.get(1)?]);
    if class != CLASS_BASIC {
        return None;
    }
    // class, weight, body size, then property flags (continued while bit 0 is set).
    let mut at = 12;
    let flags = u16::from_be_bytes([*payload.get(at)?, *payload.get(at + 1)?]);
    let mut word = flags;
    at += 2;
    while word & 1 == 1 {
        word = u16::from_be_bytes([*payload.get(at)?, *payload.get(at + 1)?]);
        at += 2;
    }
    for bit in [0x8000, 0x4000] {
        // content-type, content-encoding: short strings.
        if flags & bit != 0 {
            at += 1 + usize::from(*payload.get(at)?);
        }
    }
    if flags & 0x2000 == 0 {
        return None;
    }
    let len = read_u32(payload, at)?;
    let table = payload.get(at + 4..at + 4 + len)?;
    let depth = match nesting(table) {
        Nesting::Within => return None,
        // lapin refuses it as it always did: a connection error, not a crash.
        Nesting::Malformed => return None,
        Nesting::Deeper => MAX_HEADER_DEPTH,
    };
    let reason = format!(
        "the message's AMQP headers nest deeper than {depth} levels of tables and arrays; \
         refused before parsing (the original headers were dropped)"
    );
    let mut entry = Vec::with_capacity(REFUSED_HEADER.len() + reason.len() + 8);
    entry.push(u8::try_from(REFUSED_HEADER.len()).expect("short name"));
    entry.extend_from_slice(REFUSED_HEADER.as_bytes());
    entry.push(b'S');
    entry.extend_from_slice(&u32::try_from(reason.len()).expect("short").to_be_bytes());
    entry.extend_from_slice(reason.as_bytes());
    let mut rewritten = Vec::with_capacity(payload.len());
    rewritten.extend_from_slice(&payload[..at]);
    rewritten.extend_from_slice(&u32::try_from(entry.len()).expect("short").to_be_bytes());
    rewritten.extend_from_slice(&entry);
    rewritten.extend_from_slice(&payload[at + 4 + len..]);
    Some(rewritten)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

#[derive(Debug, PartialEq, Eq)]
enum Nesting {
    Within,
    Deeper,
    Malformed,
}

/// How deep the contents of a field table nest, without recursion: `open` holds where each
/// enclosing container ends and whether it is a table (entries have names) or an array.
fn nesting(table: &[u8]) -> Nesting {
    let mut open: Vec<(usize, bool)> = vec![(table.len(), true)];
    let mut at = 0;
    while let Some(&(end, is_table)) = open.last() {
        if at == end {
            open.pop();
            continue;
        }
        if is_table {
            let Some(&name) = table.get(at) else {
                return Nesting::Malformed;
            };
            at += 1 + usize::from(name);
        }
        let Some(&kind) = table.get(at) else {
            return Nesting::Malformed;
        };
        at += 1;
        let fixed = match kind {
            b'V' => 0,
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'L' | b'l' | b'd' | b'T' => 8,
            b'S' | b'x' => match read_u32(table, at) {
                Some(len) => 4 + len,
                None => return Nesting::Malformed,
            },
            b'A' | b'F' => {
                let Some(len) = read_u32(table, at) else {
                    return Nesting::Malformed;
                };
                at += 4;
                if at + len > end {
                    return Nesting::Malformed;
                }
                if open.len() >= MAX_HEADER_DEPTH {
                    return Nesting::Deeper;
                }
                open.push((at + len, kind == b'F'));
                continue;
            }
            _ => return Nesting::Malformed,
        };
        at += fixed;
        if at > end {
            return Nesting::Malformed;
        }
    }
    Nesting::Within
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contents of a table nesting `depth` levels (the table is level 1): an entry `h`
    /// holding an array (or table) holding the next, down to an empty one. Written front to
    /// back: every container ends where the innermost one does.
    pub(crate) fn deep_table(depth: usize, arrays: bool) -> Vec<u8> {
        let kind = if arrays { b'A' } else { b'F' };
        // A nested container's bytes: its name inside a table, its type, its length.
        let per = if arrays { 5 } else { 7 };
        let mut table = vec![1, b'h'];
        for i in 0..depth.saturating_sub(1) {
            if !arrays && i > 0 {
                table.extend_from_slice(&[1, b'h']);
            }
            table.push(kind);
            let inside = (depth - 2 - i) * per;
            table.extend_from_slice(&(inside as u32).to_be_bytes());
        }
        if depth <= 1 {
            table.clear();
        }
        table
    }

    #[test]
    fn flat_and_shallow_tables_pass() {
        assert_eq!(nesting(&[]), Nesting::Within);
        let mut t = vec![4, b't', b'a', b's', b'k', b'S', 0, 0, 0, 1, b'x'];
        t.extend_from_slice(&[2, b'i', b'd', b'l', 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(nesting(&t), Nesting::Within);
    }

    #[test]
    fn depth_is_counted_for_arrays_and_tables() {
        for arrays in [true, false] {
            assert_eq!(
                nesting(&deep_table(MAX_HEADER_DEPTH, arrays)),
                Nesting::Within,
                "arrays: {arrays}"
            );
            for depth in [MAX_HEADER_DEPTH + 1, 30_000] {
                assert_eq!(
                    nesting(&deep_table(depth, arrays)),
                    Nesting::Deeper,
                    "arrays: {arrays}, depth {depth}"
                );
            }
        }
    }

    #[test]
    fn malformed_tables_are_left_to_lapin() {
        assert_eq!(nesting(&[1, b'k', b'?']), Nesting::Malformed);
        assert_eq!(nesting(&[1, b'k', b'S', 0, 0, 0, 9]), Nesting::Malformed);
        assert_eq!(nesting(&[1, b'k', b'A', 0, 0, 0, 99]), Nesting::Malformed);
        assert_eq!(nesting(&[5, b'k']), Nesting::Malformed);
    }

    /// Hands out `data` in chunks of the given sizes, in turn.
    struct Chunked {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        turn: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            out: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let size = self.sizes[self.turn % self.sizes.len()];
            self.turn += 1;
            let n = size.min(out.len()).min(self.data.len() - self.at);
            let at = self.at;
            out[..n].copy_from_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(n))
        }
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 1];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(FRAME_END);
        f
    }

    /// A basic content header with content type `application/json` and `table` as headers.
    fn content_header(table: &[u8]) -> Vec<u8> {
        let mut p = vec![0, 60, 0, 0];
        p.extend_from_slice(&5u64.to_be_bytes());
        p.extend_from_slice(&0xA000u16.to_be_bytes()); // content-type, headers
        p.push(16);
        p.extend_from_slice(b"application/json");
        p.extend_from_slice(&(table.len() as u32).to_be_bytes());
        p.extend_from_slice(table);
        frame(FRAME_HEADER, &p)
    }

    fn read_all(data: Vec<u8>, sizes: Vec<usize>, out_size: usize) -> Vec<u8> {
        let mut guard = FrameGuard::new(Chunked {
            data,
            at: 0,
            sizes,
            turn: 0,
        });
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut all = Vec::new();
        let mut out = vec![0; out_size];
        loop {
            match Pin::new(&mut guard).poll_read(&mut cx, &mut out) {
                Poll::Ready(Ok(0)) => return all,
                Poll::Ready(Ok(n)) => all.extend_from_slice(&out[..n]),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_stream_passes_frames_unchanged_and_rewrites_only_deep_headers() {
        let method = frame(1, &[0, 60, 0, 60, 1, 2, 3]);
        let shallow = content_header(&deep_table(MAX_HEADER_DEPTH, false));
        let deep = content_header(&deep_table(5_000, true));
        let body = frame(3, b"hello");
        let heartbeat = frame(8, &[]);
        let mut input = Vec::new();
        for part in [&method, &shallow, &body, &heartbeat, &method, &deep, &body] {
            input.extend_from_slice(part);
        }
        let mut expected = Vec::new();
        let reason = guard_content_header(&deep[FRAME_PREFIX..deep.len() - 1]).unwrap();
        for part in [&method, &shallow, &body, &heartbeat, &method] {
            expected.extend_from_slice(part);
        }
        expected.extend_from_slice(&frame(FRAME_HEADER, &reason));
        expected.extend_from_slice(&body);
        let text = String::from_utf8_lossy(&reason);
        assert!(text.contains(REFUSED_HEADER) && text.contains("deeper than 64"));
        assert!(text.contains("application/json"), "other properties stay");
        for (sizes, out) in [
            (vec![1], 1),
            (vec![3, 7, 1], 5),
            (vec![100_000], 4096),
            (vec![7, 13], 100_000),
        ] {
            assert_eq!(
                read_all(input.clone(), sizes.clone(), out),
                expected,
                "{sizes:?}"
            );
        }
    }

    #[test]
    fn a_protocol_header_reply_and_a_truncated_stream_pass_as_they_are() {
        let reply = b"AMQP\x00\x00\x09\x01".to_vec();
        assert_eq!(read_all(reply.clone(), vec![2], 3), reply);
        let mut cut = content_header(&deep_table(5_000, true));
        cut.truncate(200);
        assert_eq!(read_all(cut.clone(), vec![64], 64), cut);
    }
}
