//! The MongoDB wire protocol, sans-IO: message framing, OP_MSG, legacy OP_QUERY (for
//! `hello`/`isMaster` only), OP_REPLY (the answer to it), OP_COMPRESSED and error
//! documents.
//!
//! Nothing here touches a socket or a clock. Decoders take a `BytesMut` and return
//! `Ok(None)` until a whole message is buffered; lengths are checked against the limit
//! before anything is reserved.

mod compressed;
mod error_doc;
mod frame;
mod header;
mod op_msg;
mod op_query;

pub use compressed::{compress, decompress, may_compress, Compressor, Decompressed};
pub use error_doc::{error_doc, ErrorCode};
pub use frame::{Frame, FrameDecoder};
pub use header::{Header, OpCode, HEADER_LEN};
pub use op_msg::{encode_op_msg, flags, peek_command_name, DocSequence, OpMsg};
pub use op_query::{encode_op_reply, OpQuery};

use thiserror::Error;

/// A message that breaks the wire protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The header's length is below the 16-byte header itself.
    #[error("message length {0} is shorter than the 16-byte header")]
    TooShort(i32),
    /// The header's length exceeds `maxMessageSizeBytes`.
    #[error("message length {len} exceeds maxMessageSizeBytes {max}")]
    TooLarge {
        /// The claimed length.
        len: i32,
        /// The limit.
        max: usize,
    },
    /// The body does not match its declared structure; the text says where.
    #[error("malformed {op} message: {why}")]
    Malformed {
        /// Which kind of message.
        op: &'static str,
        /// What was wrong.
        why: String,
    },
    /// An opcode Sluice does not handle.
    #[error("unsupported opCode {0}")]
    UnsupportedOpCode(i32),
    /// An OP_COMPRESSED whose `compressorId` is none of noop, snappy, zlib, zstd.
    #[error("unknown compressorId {0}")]
    UnknownCompressor(u8),
    /// An OP_COMPRESSED with a compressor that was not negotiated on this connection.
    #[error("compressor {0} was not negotiated on this connection")]
    NotNegotiated(Compressor),
    /// An OP_COMPRESSED whose `uncompressedSize` exceeds `maxMessageSizeBytes`.
    #[error("OP_COMPRESSED uncompressedSize {size} exceeds maxMessageSizeBytes {max}")]
    UncompressedTooLarge {
        /// The declared size of the original message (without its header).
        size: i32,
        /// The limit (for the whole original message).
        max: usize,
    },
    /// The compressor's library refused the data (corrupt input).
    #[error("{compressor} (de)compression failed: {why}")]
    Compression {
        /// Which compressor.
        compressor: Compressor,
        /// What the library said.
        why: String,
    },
}

impl WireError {
    pub(crate) fn malformed(op: &'static str, why: impl Into<String>) -> Self {
        WireError::Malformed {
            op,
            why: why.into(),
        }
    }
}

#[cfg(test)]
mod compressed_tests;
#[cfg(test)]
mod tests;
