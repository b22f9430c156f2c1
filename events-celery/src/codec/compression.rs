//! kombu's message compression (`compression=` on `send_task` / `apply_async`, the
//! `compression` header): the methods, their names, and bounded (de)compression of the body.
//!
//! The methods and their names are documented on [`Compression`].

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use super::error::{DecodeError, EncodeError};

/// The message header kombu names the compression method in.
pub const COMPRESSION_HEADER: &str = "compression";

/// A compression method kombu registers.
///
/// kombu compresses the serialised body and names the method in the `compression` header by
/// its content type; the content type and encoding stay `application/json` / `utf-8`. On Redis
/// the compressed bytes are then base64'd like any body; on AMQP they are the body as they are.
///
/// | [`Compression`] | header (kombu's content type) | names kombu also reads | body | cargo feature |
/// |---|---|---|---|---|
/// | [`Zlib`](Compression::Zlib) | `application/x-gzip` | `zlib`, `gzip` | a **zlib** stream (not gzip) | `zlib` (default) |
/// | [`Bzip2`](Compression::Bzip2) | `application/x-bz2` | `bzip2`, `bzip` | bzip2 stream(s) | `bzip2` (default) |
/// | [`Lzma`](Compression::Lzma) | `application/x-lzma` | `lzma`, `xz` | an **xz** stream (or legacy `.lzma`) | `lzma` (default) |
/// | [`Zstd`](Compression::Zstd) | `application/zstd` | `zstd`, `zstandard` | zstd frame(s) | `zstd` (default) |
/// | [`Brotli`](Compression::Brotli) | `application/x-brotli` | `brotli` | a brotli stream | `brotli` |
///
/// Decompression never produces more than the decoder's size limit
/// ([`DecodeOptions::max_message_bytes`](crate::codec::DecodeOptions::max_message_bytes)): a
/// body that would grow past it is refused while it is being decompressed, so a bomb costs
/// the limit plus the decoder's window (a 1 GiB bomb peaked at 16.1–20.0 MiB of heap at the
/// default 16 MiB limit, by method).
///
/// Compressing uses the settings of kombu's encoders (zlib level 6, bzip2 9, xz preset 6 with
/// a CRC64 check, brotli quality 11 / window 22; zstd the pure-Rust encoder's fastest level).
/// bzip2 bodies are byte for byte Python's, and so are brotli bodies of the usual sizes
/// (checked at 0.9 and 26 KB; at 431 KB the encoders part ways); zlib, xz and zstd bodies are
/// other, equally valid streams of the same bytes (different encoders), which Python reads.
///
/// ```
/// use events_celery::codec::Compression;
///
/// let zlib: Compression = "gzip".parse().unwrap();
/// assert_eq!(zlib, Compression::Zlib);
/// assert_eq!(zlib.content_type(), "application/x-gzip");
/// assert!("snappy".parse::<Compression>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// `application/x-gzip` (kombu's `zlib` / `gzip`): Python's `zlib.compress`, a zlib
    /// stream.
    Zlib,
    /// `application/x-bz2` (`bzip2` / `bzip`): Python's `bz2.compress`.
    Bzip2,
    /// `application/x-lzma` (`lzma` / `xz`): Python's `lzma.compress`, an xz stream.
    Lzma,
    /// `application/zstd` (`zstd` / `zstandard`): Python's `compression.zstd` (3.14) or
    /// `backports.zstd`.
    Zstd,
    /// `application/x-brotli` (`brotli`): the `brotli` Python package.
    Brotli,
}

impl Compression {
    /// Every method kombu registers, in its order.
    pub const ALL: [Compression; 5] = [
        Compression::Zlib,
        Compression::Bzip2,
        Compression::Brotli,
        Compression::Lzma,
        Compression::Zstd,
    ];

    /// The content type kombu writes into the `compression` header.
    pub fn content_type(self) -> &'static str {
        match self {
            Compression::Zlib => "application/x-gzip",
            Compression::Bzip2 => "application/x-bz2",
            Compression::Lzma => "application/x-lzma",
            Compression::Zstd => "application/zstd",
            Compression::Brotli => "application/x-brotli",
        }
    }

    /// kombu's aliases for the method.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Compression::Zlib => &["zlib", "gzip"],
            Compression::Bzip2 => &["bzip2", "bzip"],
            Compression::Lzma => &["lzma", "xz"],
            Compression::Zstd => &["zstd", "zstandard"],
            Compression::Brotli => &["brotli"],
        }
    }

    /// The cargo feature of `events-celery` that brings the codec in.
    pub fn feature(self) -> &'static str {
        match self {
            Compression::Zlib => "zlib",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Zstd => "zstd",
            Compression::Brotli => "brotli",
        }
    }

    /// Whether this build can compress and decompress the method (its feature is on).
    pub fn is_enabled(self) -> bool {
        match self {
            Compression::Zlib => cfg!(feature = "zlib"),
            Compression::Bzip2 => cfg!(feature = "bzip2"),
            Compression::Lzma => cfg!(feature = "lzma"),
            Compression::Zstd => cfg!(feature = "zstd"),
            Compression::Brotli => cfg!(feature = "brotli"),
        }
    }

    /// The method a `compression` header names, as kombu's `get_decoder` looks it up: the
    /// content type or an alias, exactly (kombu's lookup is case-sensitive).
    pub fn from_header(value: &str) -> Option<Compression> {
        Compression::ALL
            .into_iter()
            .find(|c| c.content_type() == value || c.aliases().contains(&value))
    }

    /// `Ok` if this build has the method's codec, else the error naming the feature to enable.
    pub fn ensure_enabled(self) -> Result<(), EncodeError> {
        if self.is_enabled() {
            Ok(())
        } else {
            Err(EncodeError::CompressionNotEnabled {
                compression: self.content_type(),
                feature: self.feature(),
            })
        }
    }
}

impl fmt::Display for Compression {
    /// The content type (`application/x-gzip`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.content_type())
    }
}

impl FromStr for Compression {
    type Err = String;

    /// A kombu alias (`zlib`, `gzip`, `bzip2`, `bzip`, `lzma`, `xz`, `zstd`, `zstandard`,
    /// `brotli`) or content type, in any case.
    fn from_str(s: &str) -> Result<Self, String> {
        let name = s.trim().to_ascii_lowercase();
        Compression::from_header(&name).ok_or_else(|| {
            format!(
                "`{}` is not a compression method kombu knows: write one of {}",
                s.trim(),
                known_names()
            )
        })
    }
}

/// `zlib (application/x-gzip), …` for error messages.
fn known_names() -> String {
    Compression::ALL
        .iter()
        .map(|c| format!("{} ({})", c.aliases()[0], c.content_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The method named by a message's `compression` header, or the error that refuses it.
pub(crate) fn method_of(value: &str) -> Result<Compression, DecodeError> {
    let method =
        Compression::from_header(value).ok_or_else(|| DecodeError::UnknownCompression {
            name: value.to_owned(),
            known: known_names(),
        })?;
    if !method.is_enabled() {
        return Err(DecodeError::CompressionNotEnabled {
            compression: method.content_type(),
            feature: method.feature(),
        });
    }
    Ok(method)
}

/// Compresses `data` as kombu's encoder for `method` does with its default settings (zlib
/// level 6, bzip2 level 9, xz preset 6 with a CRC64 check, brotli quality 11 / window 22;
/// zstd at the pure-Rust encoder's `Fastest` level).
#[allow(unused_variables)] // with every codec feature off
pub(crate) fn compress(method: Compression, data: &[u8]) -> Result<Vec<u8>, EncodeError> {
    method.ensure_enabled()?;
    #[allow(unused_variables)]
    let error = |e: std::io::Error| EncodeError::Compress {
        compression: method.content_type(),
        reason: e.to_string(),
    };
    match method {
        #[cfg(feature = "zlib")]
        Compression::Zlib => {
            use std::io::Write;
            let mut encoder = flate2::write::ZlibEncoder::new(
                Vec::with_capacity(data.len() / 2 + 64),
                flate2::Compression::new(6),
            );
            encoder.write_all(data).map_err(error)?;
            encoder.finish().map_err(error)
        }
        #[cfg(feature = "bzip2")]
        Compression::Bzip2 => {
            use std::io::Write;
            let mut encoder = bzip2::write::BzEncoder::new(
                Vec::with_capacity(data.len() / 2 + 64),
                bzip2::Compression::best(),
            );
            encoder.write_all(data).map_err(error)?;
            encoder.finish().map_err(error)
        }
        #[cfg(feature = "lzma")]
        Compression::Lzma => {
            use std::io::Write;
            let mut options = lzma_rust2::XzOptions::with_preset(6);
            options.set_check_sum_type(lzma_rust2::CheckType::Crc64);
            let mut encoder =
                lzma_rust2::XzWriter::new(Vec::with_capacity(data.len() / 2 + 64), options)
                    .map_err(error)?;
            encoder.write_all(data).map_err(error)?;
            encoder.finish().map_err(error)
        }
        #[cfg(feature = "zstd")]
        Compression::Zstd => Ok(ruzstd::encoding::compress_to_vec(
            data,
            ruzstd::encoding::CompressionLevel::Fastest,
        )),
        #[cfg(feature = "brotli")]
        Compression::Brotli => {
            // As `brotli.compress` (quality 11, window 22), with the input size known up front
            // as the C library's one-shot call knows it (it picks the window from it).
            let params = brotli::enc::BrotliEncoderParams {
                quality: 11,
                lgwin: 22,
                size_hint: data.len(),
                ..Default::default()
            };
            let mut out = Vec::with_capacity(data.len() / 2 + 64);
            brotli::BrotliCompress(&mut &data[..], &mut out, &params).map_err(error)?;
            Ok(out)
        }
        #[allow(unreachable_patterns)]
        _ => Err(EncodeError::CompressionNotEnabled {
            compression: method.content_type(),
            feature: method.feature(),
        }),
    }
}

/// Decompresses `data` as `method`, refusing (while decompressing) output over `limit` bytes.
pub(crate) fn decompress(
    method: Compression,
    data: &[u8],
    limit: usize,
) -> Result<Vec<u8>, DecodeError> {
    if !method.is_enabled() {
        return Err(DecodeError::CompressionNotEnabled {
            compression: method.content_type(),
            feature: method.feature(),
        });
    }
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit).min(64 << 10));
    match decompress_into(method, data, &mut out, limit) {
        Ok(()) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
            Err(DecodeError::DecompressedTooLarge {
                compression: method.content_type(),
                limit,
            })
        }
        Err(e) => Err(DecodeError::Decompress {
            compression: method.content_type(),
            reason: if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!("the compressed data ends before the stream does (truncated?): {e}")
            } else {
                e.to_string()
            },
        }),
    }
}

/// The codec of an enabled `method`, bounded by [`read_bounded`].
#[allow(unused_variables, clippy::ptr_arg)] // with every codec feature off
fn decompress_into(
    method: Compression,
    data: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<()> {
    match method {
        // A zlib stream; flate2 checks its Adler-32.
        #[cfg(feature = "zlib")]
        Compression::Zlib => read_bounded(flate2::read::ZlibDecoder::new(data), out, limit),
        // `bz2.decompress` reads concatenated streams.
        #[cfg(feature = "bzip2")]
        Compression::Bzip2 => read_bounded(bzip2::read::MultiBzDecoder::new(data), out, limit),
        // `lzma.decompress` (FORMAT_AUTO) reads xz (concatenated streams too) and the legacy
        // `.lzma` format. The decoders' windows grow with the output, not with the dictionary
        // size a header declares.
        #[cfg(feature = "lzma")]
        Compression::Lzma => {
            if data.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
                read_bounded(lzma_rust2::XzReader::new(data, true), out, limit)
            } else {
                lzma_rust2::LzmaReader::new_mem_limit(data, u32::MAX, None)
                    .and_then(|reader| read_bounded(reader, out, limit))
            }
        }
        #[cfg(feature = "zstd")]
        Compression::Zstd => zstd_frames(data, out, limit),
        #[cfg(feature = "brotli")]
        Compression::Brotli => read_bounded(brotli::Decompressor::new(data, 4096), out, limit),
        #[allow(unreachable_patterns)]
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "codec not built",
        )),
    }
}

/// Reads `reader` to its end into `out`, failing with `FileTooLarge` as soon as the output
/// would exceed `limit`. The output is gathered in chunks that never add up to more than
/// `limit` bytes of capacity (a chunk is as large as all before it, so there are few), and
/// joined only once the stream has ended within the limit: a bomb costs at most the limit
/// plus the decoder's own window, never a reallocation's two copies.
#[allow(dead_code)] // unused only when every codec feature is off
fn read_bounded(mut reader: impl Read, out: &mut Vec<u8>, limit: usize) -> std::io::Result<()> {
    const FIRST_CHUNK: usize = 64 << 10;
    let mut full: Vec<Vec<u8>> = Vec::new();
    let mut total = out.len();
    let mut current = std::mem::take(out);
    let mut buffer = [0u8; 16 << 10];
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if total + read > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "decompressed body over the size limit",
            ));
        }
        let mut bytes = &buffer[..read];
        while !bytes.is_empty() {
            if current.len() == current.capacity() {
                let size = total.max(FIRST_CHUNK).min(limit - total).max(bytes.len());
                let next = Vec::with_capacity(size);
                full.push(std::mem::replace(&mut current, next));
            }
            let take = bytes.len().min(current.capacity() - current.len());
            current.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            total += take;
        }
    }
    full.retain(|chunk| !chunk.is_empty());
    if full.is_empty() {
        *out = current;
    } else {
        let mut joined = Vec::with_capacity(total);
        for chunk in full {
            joined.extend_from_slice(&chunk);
        }
        joined.extend_from_slice(&current);
        *out = joined;
    }
    Ok(())
}

/// One or more zstd frames (`zstd.decompress` reads them all; skippable frames are skipped).
#[cfg(feature = "zstd")]
fn zstd_frames(mut data: &[u8], out: &mut Vec<u8>, limit: usize) -> std::io::Result<()> {
    let invalid =
        |e: &dyn fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
    if data.is_empty() {
        return Err(invalid(&"empty input: no zstd frame"));
    }
    while !data.is_empty() {
        let decoder =
            ruzstd::decoding::StreamingDecoder::new(&mut data).map_err(|e| invalid(&e))?;
        read_bounded(decoder, out, limit)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    /// A Celery body with non-ASCII text, and what Python 3.11's compressors (kombu's
    /// encoders, default settings) made of it.
    const BODY: &[u8] = br#"[[], {"payload": {"name": "\u0141\u00f3d\u017a", "n": 1}}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;
    const PY_ZLIB: &str = "eJyLjo7VUahWKkiszMlPTFGyArLzEnNTgQylmFIDQxNDIGmQZpwC4pgnKukoKOUB5Qxra0G6khNzcpISk7OLgUJ5pTk5QNnUoiI0keSMxMw8ZG5+UQqUWxsLAJfIJ1w=";
    const PY_BZ2: &str = "QlpoOTFBWSZTWcqlRq4AABqbgFAEbJAADj9v2iogAHIoACMEwTADFU/1SPKaepo09JtTTJ+lJsBEJKnm26XoShAIfDjesHI5ztmJky0bo8dNRxttX9FaGwa+xh76jmhIDUtXb6QrAYZOnje4uYgAxYZst0XckU4UJDKpUauA";
    const PY_XZ: &str = "/Td6WFoAAATm1rRGAgAhARYAAAB0L+Wj4AB+AFpdAC3hcFggPYziSRgVIMADEXyU+YYbvMQfedqYCh2wfrEOdT5H12wUjtSn1wQRuzMmyZfLVajGIYhLUru84Qvvz/Gs1P07bbYNec0/AtFIhQn5Ou1CP7gTOfsrAAAAABsoxJt7Z+tEAAF2f/YHWZkftvN9AQAAAAAEWVo=";
    /// `lzma.compress(..., format=FORMAT_ALONE)`: the legacy format `lzma.decompress` reads too.
    const PY_LZMA_ALONE: &str = "XQAAgAD//////////wAt4XBYID2M4kkYFSDAAxF8lPmGG7zEH3namAodsH6xDnU+R9dsFI7Up9cEEbszJsmXy1WoxiGIS1K7vOEL78/xrNT9O222DXnNPwLRSIUJ+TrtQj+4EzsiOUe7/z1GAAA=";
    const PY_ZSTD: &str = "KLUv/SB/FQMAosUTGYCpbRZXi98W/xhG435OP4ODD20NqEmagCCq7TYz5FAm5KGMGb+y23x4REFTsJva2jk8/8ozsIqBMZ0O4JhOP7xhSH5y+JXIJvLw5IpCKAUAawiEqE2r2U1W9gHWLAM=";
    const PY_BROTLI: &str = "G34AKBwHuTnyNopC/MkmCNeW+oW0oWAL/x8G0yS+TD7IWLHoBIgbHFFgFFiaUaQZBsOwAafJvA3T/qe1IXntv6c5k+wmfYnu2pfItbnuw8BDrZKU+uMRNs4Iz8kBZrhqAA==";

    fn python(method: Compression) -> Vec<u8> {
        let text = match method {
            Compression::Zlib => PY_ZLIB,
            Compression::Bzip2 => PY_BZ2,
            Compression::Lzma => PY_XZ,
            Compression::Zstd => PY_ZSTD,
            Compression::Brotli => PY_BROTLI,
        };
        STANDARD.decode(text).unwrap()
    }

    fn enabled() -> impl Iterator<Item = Compression> {
        Compression::ALL.into_iter().filter(|c| c.is_enabled())
    }

    #[test]
    fn names_are_kombus() {
        for (name, method) in [
            ("application/x-gzip", Compression::Zlib),
            ("zlib", Compression::Zlib),
            ("gzip", Compression::Zlib),
            ("application/x-bz2", Compression::Bzip2),
            ("bzip2", Compression::Bzip2),
            ("bzip", Compression::Bzip2),
            ("application/x-lzma", Compression::Lzma),
            ("lzma", Compression::Lzma),
            ("xz", Compression::Lzma),
            ("application/zstd", Compression::Zstd),
            ("zstd", Compression::Zstd),
            ("zstandard", Compression::Zstd),
            ("application/x-brotli", Compression::Brotli),
            ("brotli", Compression::Brotli),
        ] {
            assert_eq!(Compression::from_header(name), Some(method), "{name}");
            assert_eq!(name.to_uppercase().parse::<Compression>(), Ok(method));
        }
        // kombu's lookup is exact: a header in another case, or `x-gzip`, is unknown to it.
        for unknown in ["GZIP", "x-gzip", "application/gzip", "snappy", "", " zlib"] {
            assert_eq!(Compression::from_header(unknown), None, "{unknown}");
        }
        let err = "snappy".parse::<Compression>().unwrap_err();
        assert!(
            err.contains("`snappy`") && err.contains("zlib (application/x-gzip)"),
            "{err}"
        );
        let err = method_of("snappy").unwrap_err().to_string();
        assert_eq!(
            err,
            "compression `snappy` is unknown: kombu's methods are zlib (application/x-gzip), \
             bzip2 (application/x-bz2), brotli (application/x-brotli), lzma (application/x-lzma), \
             zstd (application/zstd) (or their content types)"
        );
    }

    #[test]
    fn reads_what_python_compressed() {
        for method in enabled() {
            let out = decompress(method, &python(method), 1 << 20)
                .unwrap_or_else(|e| panic!("{method}: {e}"));
            assert_eq!(out, BODY, "{method}");
        }
        if Compression::Lzma.is_enabled() {
            let alone = STANDARD.decode(PY_LZMA_ALONE).unwrap();
            assert_eq!(
                decompress(Compression::Lzma, &alone, 1 << 20).unwrap(),
                BODY
            );
        }
    }

    #[test]
    fn reads_concatenated_streams_as_python_does() {
        // `bz2`, `lzma` and `zstd.decompress` read every stream of a concatenation.
        for method in [Compression::Bzip2, Compression::Lzma, Compression::Zstd] {
            if !method.is_enabled() {
                continue;
            }
            let twice = [python(method), python(method)].concat();
            assert_eq!(
                decompress(method, &twice, 1 << 20).unwrap(),
                [BODY, BODY].concat(),
                "{method}"
            );
        }
    }

    #[test]
    fn round_trips_and_matches_python_where_the_codec_is_the_same() {
        for method in enabled() {
            let compressed = compress(method, BODY).unwrap();
            assert_eq!(
                decompress(method, &compressed, BODY.len()).unwrap(),
                BODY,
                "{method}"
            );
            // libbz2-rs-sys and rust-brotli are ports of the C libraries Python uses: the same
            // settings give the same bytes (for brotli, at this size).
            if matches!(method, Compression::Bzip2 | Compression::Brotli) {
                assert_eq!(compressed, python(method), "{method}");
            }
        }
        for method in Compression::ALL {
            assert_eq!(
                compress(method, b"").is_ok(),
                method.is_enabled(),
                "{method}"
            );
        }
    }

    #[test]
    fn corrupt_and_truncated_bodies_are_refused_with_the_method_named() {
        for method in enabled() {
            let good = python(method);
            let mut flipped = good.clone();
            let middle = flipped.len() / 2;
            flipped[middle] ^= 0x55;
            for (case, data) in [
                ("empty", &b""[..]),
                ("json", BODY),
                ("truncated", &good[..good.len() - 4]),
                ("flipped", &flipped[..]),
            ] {
                match decompress(method, data, 1 << 20) {
                    Err(DecodeError::Decompress { compression, .. }) => {
                        assert_eq!(compression, method.content_type(), "{method} {case}")
                    }
                    Err(other) => panic!("{method} {case}: {other}"),
                    Ok(out) => assert_ne!(out, BODY, "{method} {case}: corrupt input decoded"),
                }
            }
        }
    }

    #[test]
    fn output_over_the_limit_is_refused_while_decompressing() {
        // 4 MiB of one byte compresses to little; the limit is 64 KiB.
        let big = vec![b'a'; 4 << 20];
        for method in enabled() {
            let bomb = compress(method, &big).unwrap();
            assert!(bomb.len() < 64 << 10, "{method}: {} bytes", bomb.len());
            let err = decompress(method, &bomb, 64 << 10).unwrap_err();
            assert!(
                matches!(err, DecodeError::DecompressedTooLarge { limit, compression }
                    if limit == 64 << 10 && compression == method.content_type()),
                "{method}: {err}"
            );
            // Exactly at the limit is accepted.
            assert_eq!(decompress(method, &bomb, 4 << 20).unwrap().len(), 4 << 20);
        }
    }

    // ----- through the envelopes -------------------------------------------------------------

    use crate::codec::{AmqpValue, DecodeOptions, EncodeOptions, TaskMessage};

    /// `send_task('domain_events.products.product_created', kwargs={'payload': {'name': 'Łódź',
    /// 'stock': 3}}, queue='cmp-fixture', task_id=…, compression='bzip2')` on Redis, as kombu
    /// 5.7 pushed it.
    #[cfg_attr(not(feature = "bzip2"), allow(dead_code))]
    const PY_BZIP2_ENVELOPE: &str = r#"{"body": "QlpoOTFBWSZTWRNVbZcAABqbgFAEbJAADj9v3iogAHIpGmJpgJgAAYqn6SeQ1DTaaT1MnplIMAiElHTbmikIWRQVDnfax9HWkNRAl82aLZT+D9xxKvUol9A5c9YTyGCMANyyuzWfuA6+jvHmtQ7GwvABKAyS/gu5IpwoSAmqtsuA", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "domain_events.products.product_created", "id": "6f1c2b8e-3f4a-4c5d-9e10-2f10aa55cc01", "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "6f1c2b8e-3f4a-4c5d-9e10-2f10aa55cc01", "parent_id": null, "argsrepr": "()", "kwargsrepr": "{'payload': {'name': '\u0141\u00f3d\u017a', 'stock': 3}}", "origin": "gen14202@vm", "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}, "compression": "application/x-bz2"}, "properties": {"correlation_id": "6f1c2b8e-3f4a-4c5d-9e10-2f10aa55cc01", "reply_to": "58c10501-ed1e-360f-9c5e-958cf3cb8d28", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "cmp-fixture"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "9b2cab1e-6378-41fa-9af5-255b8336dfc1"}}"#;
    /// The same with `compression='zlib'` (the header says `application/x-gzip`).
    const PY_ZLIB_ENVELOPE: &str = r#"{"body": "eJyLjo7VUahWKkiszMlPTFGyArLzEnNTgQylmFIDQxNDIGmQZpwC4pgnKukoKBWX5CdnA+WNa2tBOpMTc3KSEpOzi4FCeaU5OUAVqUVFaCLJGYmZecjc/KIUKLc2FgBaCCkU", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "domain_events.products.product_created", "id": "6f1c2b8e-3f4a-4c5d-9e10-2f10aa55cc01", "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "6f1c2b8e-3f4a-4c5d-9e10-2f10aa55cc01", "parent_id": null, "argsrepr": "()", "kwargsrepr": "{'payload': {'name': '\u0141\u00f3d\u017a', 'stock': 3}}", "origin": "gen14075@vm", "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}, "compression": "application/x-gzip"}, "properties": {"correlation_id": "6f1c2b8e-3f4a-4c5d-9e10-2f10aa55cc01", "reply_to": "20b9411b-1c43-34be-a8e7-7b8c91d07a5c", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "cmp-fixture"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "5109a2f7-0816-4d8d-a6f4-119db1121d9e"}}"#;

    fn field<'a>(envelope: &'a str, name: &str) -> &'a str {
        let value: serde_json::Value = serde_json::from_str(envelope).unwrap();
        let text = value.pointer(name).unwrap().as_str().unwrap().to_owned();
        let start = envelope.find(&text).unwrap();
        &envelope[start..start + text.len()]
    }

    /// The message Python sent, built in Rust with the same ids.
    fn rust_message(python_envelope: &str, compression: Compression) -> TaskMessage {
        let options = EncodeOptions::new()
            .queue("cmp-fixture")
            .task_id("6f1c2b8e-3f4a-4c5d-9e10-2f10aa55cc01")
            .origin(field(python_envelope, "/headers/origin"))
            .reply_to(field(python_envelope, "/properties/reply_to"))
            .compression(Some(compression));
        let mut message = TaskMessage::from_payload(
            "products.product_created",
            serde_json::json!({"name": "Łódź", "stock": 3}),
            &options,
        )
        .unwrap();
        message.properties.delivery_tag =
            Some(field(python_envelope, "/properties/delivery_tag").to_owned());
        message
    }

    #[test]
    #[cfg(all(feature = "zlib", feature = "bzip2"))]
    fn python_compressed_envelopes_decode_and_rust_writes_the_same() {
        for (envelope, method) in [
            (PY_BZIP2_ENVELOPE, Compression::Bzip2),
            (PY_ZLIB_ENVELOPE, Compression::Zlib),
        ] {
            let decoded = TaskMessage::decode_redis(envelope.as_bytes(), &DecodeOptions::new())
                .unwrap_or_else(|e| panic!("{method}: {e}"));
            assert_eq!(decoded.properties.compression, Some(method));
            assert!(decoded.headers.custom.is_empty(), "{:?}", decoded.headers);
            assert_eq!(
                decoded.payload_value().unwrap(),
                &serde_json::json!({"name": "Łódź", "stock": 3})
            );

            let rust = rust_message(envelope, method).to_redis().unwrap().envelope;
            if method == Compression::Bzip2 {
                // Same bzip2 code, same settings: the whole envelope is Python's, byte for byte.
                assert_eq!(rust, envelope);
            } else {
                // miniz_oxide and zlib make different (equally valid) streams: all but the
                // body's bytes are Python's, and the body decompresses to Python's.
                let body = |e: &str| field(e, "/body").to_owned();
                assert_eq!(
                    rust.replace(&body(&rust), ""),
                    envelope.replace(&body(envelope), "")
                );
                let again =
                    TaskMessage::decode_redis(rust.as_bytes(), &DecodeOptions::new()).unwrap();
                assert_eq!(again.body_json().unwrap(), decoded.body_json().unwrap());
            }
        }
    }

    #[test]
    fn amqp_messages_carry_the_header_last_and_raw_compressed_bytes() {
        for method in enabled() {
            let message = rust_message(PY_ZLIB_ENVELOPE, method);
            let amqp = message.to_amqp().unwrap();
            let (name, value) = amqp.headers.0.last().unwrap();
            assert_eq!(name, COMPRESSION_HEADER);
            assert_eq!(
                value,
                &AmqpValue::LongString(method.content_type().as_bytes().to_vec())
            );
            assert_eq!(
                decompress(method, &amqp.body, 1 << 20).unwrap(),
                message.body_json().unwrap()
            );
            let back = TaskMessage::decode_amqp(&amqp, &DecodeOptions::new()).unwrap();
            assert_eq!(back.properties.compression, Some(method));
            assert_eq!(back.kwargs, message.kwargs);
            assert!(back.headers.custom.is_empty());
        }
    }

    #[test]
    #[cfg(all(feature = "zlib", feature = "bzip2"))]
    fn bad_compression_headers_are_refused_with_their_reason() {
        let with_header = |value: &str| PY_ZLIB_ENVELOPE.replace(r#""application/x-gzip""#, value);
        let decode = |envelope: String, limit: usize| {
            TaskMessage::decode_redis(
                envelope.as_bytes(),
                &DecodeOptions::new().max_message_bytes(limit),
            )
            .unwrap_err()
            .to_string()
        };
        // kombu's aliases are read too.
        for alias in [r#""zlib""#, r#""gzip""#] {
            assert!(
                TaskMessage::decode_redis(with_header(alias).as_bytes(), &DecodeOptions::new())
                    .is_ok()
            );
        }
        assert!(
            decode(with_header(r#""snappy""#), 1 << 20)
                .starts_with("compression `snappy` is unknown")
        );
        assert_eq!(
            decode(with_header("5"), 1 << 20),
            "header `compression` must be a string naming a compression method, found the number 5"
        );
        assert!(
            decode(with_header(r#""application/x-bz2""#), 1 << 20)
                .starts_with("body does not decompress as `application/x-bz2`: "),
        );
        // The envelope fits the limit; the body it decompresses to does not.
        let bomb = TaskMessage::from_payload(
            "products.product_created",
            serde_json::json!({"name": "a".repeat(1 << 20)}),
            &EncodeOptions::new().compression(Some(Compression::Zlib)),
        )
        .unwrap()
        .to_redis()
        .unwrap()
        .envelope;
        assert!(bomb.len() < 8 << 10, "{}", bomb.len());
        assert_eq!(
            decode(bomb.clone(), 8 << 10),
            "body decompressed with `application/x-gzip` is over the 8192-byte limit (refused while decompressing)"
        );
        assert!(TaskMessage::decode_redis(bomb.as_bytes(), &DecodeOptions::new()).is_ok());
        assert_eq!(
            decode(PY_ZLIB_ENVELOPE.to_owned(), 100),
            format!(
                "message of {} bytes is over the 100-byte limit",
                PY_ZLIB_ENVELOPE.len()
            )
        );
        #[cfg(not(feature = "brotli"))]
        assert_eq!(
            decode(with_header(r#""brotli""#), 1 << 20),
            "compression `application/x-brotli` is not enabled: build events-celery with feature `brotli`"
        );
    }

    #[test]
    #[cfg(not(feature = "zlib"))]
    fn a_method_built_without_its_feature_is_refused_by_name() {
        let err = TaskMessage::decode_redis(PY_ZLIB_ENVELOPE.as_bytes(), &DecodeOptions::new())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "compression `application/x-gzip` is not enabled: build events-celery with feature `zlib`"
        );
    }
}
