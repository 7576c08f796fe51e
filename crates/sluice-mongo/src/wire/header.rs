//! The 16-byte standard message header (MongoDB wire protocol, "Standard Message Header"):
//! `messageLength`, `requestID`, `responseTo`, `opCode`, all little-endian int32. Both
//! directions.

/// Length of the standard message header.
pub const HEADER_LEN: usize = 16;

/// The opcodes Sluice knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// OP_REPLY (1): the legacy answer to OP_QUERY.
    Reply,
    /// OP_QUERY (2004): legacy; accepted for `hello`/`isMaster` only.
    Query,
    /// OP_COMPRESSED (2012): another message, compressed (see [`super::compress`]).
    Compressed,
    /// OP_MSG (2013): every modern command and reply.
    Msg,
    /// Anything else (removed legacy opcodes).
    Other(i32),
}

impl OpCode {
    /// The opcode for its number.
    pub fn from_i32(code: i32) -> Self {
        match code {
            1 => Self::Reply,
            2004 => Self::Query,
            2012 => Self::Compressed,
            2013 => Self::Msg,
            other => Self::Other(other),
        }
    }

    /// Its number on the wire.
    pub fn as_i32(self) -> i32 {
        match self {
            Self::Reply => 1,
            Self::Query => 2004,
            Self::Compressed => 2012,
            Self::Msg => 2013,
            Self::Other(n) => n,
        }
    }
}

/// A decoded message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Total message length including the header.
    pub length: i32,
    /// Sender's identifier for this message.
    pub request_id: i32,
    /// For replies, the `request_id` being answered; 0 for requests.
    pub response_to: i32,
    /// What kind of message follows.
    pub op_code: OpCode,
}

impl Header {
    /// Reads a header from the first 16 bytes of `buf` (`None` if shorter).
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let field = |i: usize| -> Option<i32> {
            let bytes: [u8; 4] = buf.get(i * 4..i * 4 + 4)?.try_into().ok()?;
            Some(i32::from_le_bytes(bytes))
        };
        Some(Header {
            length: field(0)?,
            request_id: field(1)?,
            response_to: field(2)?,
            op_code: OpCode::from_i32(field(3)?),
        })
    }

    /// Writes the header into the first 16 bytes of `buf` (which must be that long).
    pub fn write(&self, buf: &mut [u8]) {
        let fields = [
            self.length,
            self.request_id,
            self.response_to,
            self.op_code.as_i32(),
        ];
        for (chunk, value) in buf.chunks_exact_mut(4).zip(fields) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
    }
}
