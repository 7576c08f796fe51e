//! OP_COMPRESSED (opCode 2012), both directions: after the standard header,
//! `originalOpcode` (int32), `uncompressedSize` (int32, the original message less its
//! header), `compressorId` (uint8: 0 noop, 1 snappy, 2 zlib, 3 zstd), then the original
//! message body compressed. MongoDB wire protocol, "OP_COMPRESSED", and the "Wire
//! Compression" specification.
//!
//! Decompression is bounded twice: the declared `uncompressedSize` must fit the message
//! limit in force, and a codec producing more (a decompression bomb, or a lie) is stopped
//! after one byte past the declared size. Output memory grows with what the codec
//! actually produced, never with what the header claims.

use std::fmt;
use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::Frame;
use super::header::{Header, OpCode, HEADER_LEN};
use super::WireError;

/// `originalOpcode` + `uncompressedSize` + `compressorId`.
const PREFIX_LEN: usize = 4 + 4 + 1;

/// zlib level for what Sluice compresses (the zlib default: speed and size balanced).
const ZLIB_LEVEL: u32 = 6;

/// zstd level for what Sluice compresses (the library default).
const ZSTD_LEVEL: i32 = 3;

/// Most bytes one byte of raw Snappy data can expand to (64 from a 3-byte copy, rounded
/// up).
const SNAPPY_MAX_RATIO: usize = 32;

/// Bounds of the zstd window accepted (log2): 8 MiB and zstd's default limit, 128 MiB.
const ZSTD_MIN_WINDOW_LOG: u32 = 23;
const ZSTD_MAX_WINDOW_LOG: u32 = 27;

/// The commands whose messages (and replies) are never compressed, by the Wire
/// Compression specification: the handshake and everything carrying credentials.
const NEVER_COMPRESSED: [&str; 12] = [
    "hello",
    "isMaster",
    "ismaster",
    "saslStart",
    "saslContinue",
    "getnonce",
    "authenticate",
    "createUser",
    "updateUser",
    "copydbSaslStart",
    "copydbgetnonce",
    "copydb",
];

/// Whether a command's request and reply may be compressed.
pub fn may_compress(command: &str) -> bool {
    !NEVER_COMPRESSED.contains(&command)
}

/// A compressor of the wire protocol, by its `compressorId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compressor {
    /// 0: the body is stored as is.
    Noop,
    /// 1: Snappy, raw (not framed) format.
    Snappy,
    /// 2: zlib (RFC 1950).
    Zlib,
    /// 3: Zstandard.
    Zstd,
}

impl Compressor {
    /// The compressors Sluice offers and accepts, in its own order of preference.
    pub const SUPPORTED: [Compressor; 3] = [Compressor::Zstd, Compressor::Snappy, Compressor::Zlib];

    /// The compressor with this `compressorId`.
    pub fn from_id(id: u8) -> Option<Compressor> {
        Some(match id {
            0 => Self::Noop,
            1 => Self::Snappy,
            2 => Self::Zlib,
            3 => Self::Zstd,
            _ => return None,
        })
    }

    /// Its `compressorId`.
    pub fn id(self) -> u8 {
        match self {
            Self::Noop => 0,
            Self::Snappy => 1,
            Self::Zlib => 2,
            Self::Zstd => 3,
        }
    }

    /// The compressor a handshake's `compression` list names (`noop` is never negotiated).
    pub fn from_name(name: &str) -> Option<Compressor> {
        Some(match name {
            "snappy" => Self::Snappy,
            "zlib" => Self::Zlib,
            "zstd" => Self::Zstd,
            _ => return None,
        })
    }

    /// Its name in a handshake's `compression` list.
    pub fn name(self) -> &'static str {
        match self {
            Self::Noop => "noop",
            Self::Snappy => "snappy",
            Self::Zlib => "zlib",
            Self::Zstd => "zstd",
        }
    }

    /// The first name of `offered` (the peer's order) that is one of `ours`.
    pub fn choose<'a>(
        offered: impl IntoIterator<Item = &'a str>,
        ours: &[Compressor],
    ) -> Option<Compressor> {
        offered
            .into_iter()
            .filter_map(Compressor::from_name)
            .find(|c| ours.contains(c))
    }

    fn squeeze(self, body: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Self::Noop => Ok(body.to_vec()),
            Self::Snappy => snap::raw::Encoder::new()
                .compress_vec(body)
                .map_err(std::io::Error::other),
            Self::Zlib => {
                let out = Vec::with_capacity(body.len() / 2 + 64);
                let mut z =
                    flate2::write::ZlibEncoder::new(out, flate2::Compression::new(ZLIB_LEVEL));
                z.write_all(body)?;
                z.finish()
            }
            Self::Zstd => zstd::bulk::compress(body, ZSTD_LEVEL),
        }
    }

    /// Decompresses `data` onto the end of `out`, producing at most `size + 1` bytes (so
    /// a longer output is seen as a size mismatch without being produced in full).
    fn expand(self, data: &[u8], size: usize, out: &mut Vec<u8>) -> Result<(), WireError> {
        let failed = |e: &dyn fmt::Display| WireError::Compression {
            compressor: self,
            why: e.to_string(),
        };
        let limit = u64::try_from(size).unwrap_or(u64::MAX).saturating_add(1);
        let start = out.len();
        match self {
            Self::Noop => out.extend_from_slice(data.get(..=size).unwrap_or(data)),
            Self::Snappy => {
                // The raw format states its length first: check it before allocating it,
                // and against what the input can produce at all (a copy element of 3
                // bytes yields at most 64), so a few bytes cannot reserve megabytes.
                let len = snap::raw::decompress_len(data).map_err(|e| failed(&e))?;
                if len != size {
                    return Err(mismatch(self, size, len));
                }
                if len > data.len().saturating_mul(SNAPPY_MAX_RATIO) {
                    return Err(failed(&"declared length beyond what the data can hold"));
                }
                out.resize(start + len, 0);
                let written = snap::raw::Decoder::new()
                    .decompress(data, out.get_mut(start..).unwrap_or_default())
                    .map_err(|e| failed(&e))?;
                out.truncate(start + written);
            }
            Self::Zlib => {
                flate2::read::ZlibDecoder::new(data)
                    .take(limit)
                    .read_to_end(out)
                    .map_err(|e| failed(&e))?;
            }
            Self::Zstd => {
                // The frame header names the window the decoder allocates up front; no
                // honest frame for `size` bytes needs one larger than that, so a bomb
                // declaring 128 MiB with no content size is refused, not served.
                zstd::stream::read::Decoder::with_buffer(data)
                    .and_then(|mut d| {
                        d.window_log_max(zstd_window_log(size))?;
                        d.take(limit).read_to_end(out)
                    })
                    .map_err(|e| failed(&e))?;
            }
        }
        let got = out.len() - start;
        if got != size {
            return Err(mismatch(self, size, got));
        }
        Ok(())
    }
}

/// The largest zstd window (log2) accepted for `size` bytes of output: enough to cover
/// them, at least 8 MiB (what compressors use when they do not know the size ahead), at
/// most the library's default limit.
fn zstd_window_log(size: usize) -> u32 {
    let cover = usize::BITS - size.saturating_sub(1).leading_zeros();
    cover.clamp(ZSTD_MIN_WINDOW_LOG, ZSTD_MAX_WINDOW_LOG)
}

/// Data that does not expand to the declared `uncompressedSize` (`got` may be cut at
/// `size + 1`).
fn mismatch(compressor: Compressor, size: usize, got: usize) -> WireError {
    let got = if got > size {
        format!("more than {size}")
    } else {
        got.to_string()
    };
    WireError::malformed(
        "OP_COMPRESSED",
        format!("{compressor} data expands to {got} bytes, not uncompressedSize {size}"),
    )
}

impl fmt::Display for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Compresses a whole message into an OP_COMPRESSED with the same ids.
pub fn compress(frame: &Frame, compressor: Compressor) -> Result<BytesMut, WireError> {
    let body = frame.body();
    let failed = |e: std::io::Error| WireError::Compression {
        compressor,
        why: e.to_string(),
    };
    let packed = compressor.squeeze(body).map_err(failed)?;
    let too_long = || WireError::Compression {
        compressor,
        why: "message longer than 2 GiB".into(),
    };
    let len = i32::try_from(HEADER_LEN + PREFIX_LEN + packed.len()).map_err(|_| too_long())?;
    let size = i32::try_from(body.len()).map_err(|_| too_long())?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + PREFIX_LEN + packed.len());
    out.resize(HEADER_LEN, 0);
    out.put_i32_le(frame.header.op_code.as_i32());
    out.put_i32_le(size);
    out.put_u8(compressor.id());
    out.put_slice(&packed);
    let header = Header {
        length: len,
        op_code: OpCode::Compressed,
        ..frame.header
    };
    if let Some(head) = out.get_mut(..HEADER_LEN) {
        header.write(head);
    }
    Ok(out)
}

/// An OP_COMPRESSED taken apart: which compressor, and the original message rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decompressed {
    /// The compressor the sender used (a reply to it must use the same one).
    pub compressor: Compressor,
    /// The original message, its header restored (ids kept, `originalOpcode` back).
    pub frame: Frame,
}

/// Takes an OP_COMPRESSED apart. The original message (header included) may be at most
/// `max_len` bytes, like any message read from the same peer.
pub fn decompress(frame: &Frame, max_len: usize) -> Result<Decompressed, WireError> {
    const OP: &str = "OP_COMPRESSED";
    let body = frame.body();
    let field = |at: usize| -> Option<i32> {
        Some(i32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?))
    };
    let (Some(original), Some(declared), Some(&id)) = (field(0), field(4), body.get(8)) else {
        return Err(WireError::malformed(
            OP,
            "truncated before the compressed data",
        ));
    };
    let op_code = OpCode::from_i32(original);
    if op_code == OpCode::Compressed {
        return Err(WireError::malformed(OP, "originalOpcode is OP_COMPRESSED"));
    }
    let compressor = Compressor::from_id(id).ok_or(WireError::UnknownCompressor(id))?;
    let size = usize::try_from(declared)
        .map_err(|_| WireError::malformed(OP, format!("negative uncompressedSize {declared}")))?;
    let too_large = WireError::UncompressedTooLarge {
        size: declared,
        max: max_len,
    };
    let total = size.checked_add(HEADER_LEN).ok_or(too_large.clone())?;
    let length = i32::try_from(total).map_err(|_| too_large.clone())?;
    if total > max_len {
        return Err(too_large);
    }
    let data = body.get(PREFIX_LEN..).unwrap_or_default();
    let header = Header {
        length,
        op_code,
        ..frame.header
    };
    // The header first, the body decompressed right after it: one buffer, no copy.
    let mut out = vec![0; HEADER_LEN];
    header.write(&mut out);
    compressor.expand(data, size, &mut out)?;
    Ok(Decompressed {
        compressor,
        frame: Frame {
            header,
            data: BytesMut::from(Bytes::from(out)),
        },
    })
}
