//! kombu's message compression (`compression=` on `send_task` / `apply_async`, the
//! `compression` header): the methods, their names, and bounded (de)compression of the body.
//!
//! kombu compresses the serialised body and names the method in the `compression` header by
//! its content type; the content type and encoding stay `application/json` / `utf-8`. On Redis
//! the compressed bytes are then base64'd like any body; on AMQP they are the body as they are.
//!
//! | [`Compression`] | header (kombu's content type) | names kombu also reads | body | cargo feature |
//! |---|---|---|---|---|
//! | [`Zlib`](Compression::Zlib) | `application/x-gzip` | `zlib`, `gzip` | a **zlib** stream (not gzip) | `zlib` (default) |
//! | [`Bzip2`](Compression::Bzip2) | `application/x-bz2` | `bzip2`, `bzip` | bzip2 stream(s) | `bzip2` (default) |
//! | [`Lzma`](Compression::Lzma) | `application/x-lzma` | `lzma`, `xz` | an **xz** stream (or legacy `.lzma`) | `lzma` (default) |
//! | [`Zstd`](Compression::Zstd) | `application/zstd` | `zstd`, `zstandard` | zstd frame(s) | `zstd` (default) |
//! | [`Brotli`](Compression::Brotli) | `application/x-brotli` | `brotli` | a brotli stream | `brotli` |
//!
//! Decompression never produces more than the decoder's size limit
//! ([`DecodeOptions::max_message_bytes`](super::DecodeOptions::max_message_bytes)): output is
//! read in bounded steps and a body that would grow past the limit is refused while it is
//! being decompressed, so a zip bomb costs at most the limit in memory.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use super::error::{DecodeError, EncodeError};

/// The message header kombu names the compression method in.
pub const COMPRESSION_HEADER: &str = "compression";

/// A compression method kombu registers (see the [module docs](self) for names and features).
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
pub(crate) fn compress(method: Compression, data: &[u8]) -> Result<Vec<u8>, EncodeError> {
    method.ensure_enabled()?;
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
        _ => unreachable!("ensure_enabled refused {method:?}"),
    }
}

/// Decompresses `data` as `method`, refusing (while decompressing) output over `limit` bytes.
pub(crate) fn decompress(
    method: Compression,
    data: &[u8],
    limit: usize,
) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit).min(1 << 20));
    let result = match method {
        #[cfg(feature = "zlib")]
        Compression::Zlib => {
            read_bounded(flate2::read::ZlibDecoder::new(data), &mut out, limit).map(|()| {
                // kombu's `zlib.decompress` refuses a stream that stops before its end; the
                // reader just stops. A finished stream ends in its Adler-32, which flate2
                // checks, so only a short stream gets here without an error.
            })
        }
        #[cfg(feature = "bzip2")]
        Compression::Bzip2 => {
            // `bz2.decompress` reads concatenated streams.
            read_bounded(bzip2::read::MultiBzDecoder::new(data), &mut out, limit)
        }
        #[cfg(feature = "lzma")]
        Compression::Lzma => {
            // `lzma.decompress` (FORMAT_AUTO) reads xz (concatenated streams too) and the
            // legacy `.lzma` format. The decoders' windows grow with the output, not with the
            // dictionary size a header declares.
            if data.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
                read_bounded(lzma_rust2::XzReader::new(data, true), &mut out, limit)
            } else {
                lzma_rust2::LzmaReader::new_mem_limit(data, u32::MAX, None)
                    .and_then(|reader| read_bounded(reader, &mut out, limit))
            }
        }
        #[cfg(feature = "zstd")]
        Compression::Zstd => zstd_frames(data, &mut out, limit),
        #[cfg(feature = "brotli")]
        Compression::Brotli => read_bounded(brotli::Decompressor::new(data, 4096), &mut out, limit),
        #[allow(unreachable_patterns)]
        _ => {
            return Err(DecodeError::CompressionNotEnabled {
                compression: method.content_type(),
                feature: method.feature(),
            });
        }
    };
    match result {
        Ok(()) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
            Err(DecodeError::DecompressedTooLarge {
                compression: method.content_type(),
                limit,
            })
        }
        Err(e) => Err(DecodeError::Decompress {
            compression: method.content_type(),
            reason: e.to_string(),
        }),
    }
}

/// Reads `reader` to its end into `out`, failing with `FileTooLarge` as soon as the output
/// would exceed `limit` (at most `limit + 1` bytes are ever held).
#[allow(dead_code)] // unused only when every codec feature is off
fn read_bounded(reader: impl Read, out: &mut Vec<u8>, limit: usize) -> std::io::Result<()> {
    let allowed = (limit - out.len().min(limit)) as u64;
    let read = reader.take(allowed + 1).read_to_end(out)?;
    if read as u64 > allowed {
        out.truncate(limit);
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            "decompressed body over the size limit",
        ));
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
            // settings give the same bytes.
            if matches!(method, Compression::Bzip2 | Compression::Brotli) {
                assert_eq!(compressed, python(method), "{method}");
            }
        }
        assert!(compress(Compression::Zlib, b"").is_ok());
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
                ("json", &BODY[..]),
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
}
