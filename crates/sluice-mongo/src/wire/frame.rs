//! Splitting a byte stream into whole messages, and rewriting the two header fields a proxy
//! must own (`requestID`, `responseTo`). Both directions.

use bytes::BytesMut;

use super::header::{Header, HEADER_LEN};
use super::op_msg::flags;
use super::{OpCode, WireError};

/// Most buffer space reserved ahead of bytes that have not arrived yet.
const MAX_RESERVE: usize = 64 * 1024;

/// One whole message: its header and every byte of it, header included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The decoded header.
    pub header: Header,
    /// The whole message, header included (so it can be forwarded as is).
    pub data: BytesMut,
}

impl Frame {
    /// Builds a frame from a complete message; `None` if the header is missing or its
    /// length disagrees with `data`.
    pub fn from_bytes(data: BytesMut) -> Option<Frame> {
        let header = Header::parse(&data)?;
        (usize::try_from(header.length).ok()? == data.len()).then_some(Frame { header, data })
    }

    /// The bytes after the header.
    pub fn body(&self) -> &[u8] {
        self.data.get(HEADER_LEN..).unwrap_or_default()
    }

    /// Rewrites `requestID` and `responseTo`, leaving every other byte alone.
    pub fn set_ids(&mut self, request_id: i32, response_to: i32) {
        self.header.request_id = request_id;
        self.header.response_to = response_to;
        let header = self.header;
        if let Some(head) = self.data.get_mut(..HEADER_LEN) {
            header.write(head);
        }
    }

    /// The OP_MSG flag bits, if this is an OP_MSG with a flags field.
    pub fn msg_flags(&self) -> Option<u32> {
        if self.header.op_code != OpCode::Msg {
            return None;
        }
        let bytes: [u8; 4] = self.body().get(..4)?.try_into().ok()?;
        Some(u32::from_le_bytes(bytes))
    }

    fn set_msg_flags(&mut self, value: u32) {
        if let Some(field) = self.data.get_mut(HEADER_LEN..HEADER_LEN + 4) {
            field.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Prepares an OP_MSG for forwarding after its ids change: drops the CRC-32C checksum
    /// (it covers the header, so it would no longer match; it is optional) and, when
    /// `clear_exhaust`, the `exhaustAllowed` bit (for a request whose replies Sluice does
    /// not stream: anything but a client's exhaust getMore).
    pub fn prepare_forward(&mut self, clear_exhaust: bool) {
        let Some(mut f) = self.msg_flags() else {
            return;
        };
        if f & flags::CHECKSUM_PRESENT != 0 && self.data.len() >= HEADER_LEN + 4 + 4 {
            self.data.truncate(self.data.len() - 4);
            f &= !flags::CHECKSUM_PRESENT;
            self.header.length -= 4;
            let header = self.header;
            if let Some(head) = self.data.get_mut(..HEADER_LEN) {
                header.write(head);
            }
        }
        if clear_exhaust {
            f &= !flags::EXHAUST_ALLOWED;
        }
        self.set_msg_flags(f);
    }
}

/// Splits a stream into [`Frame`]s, refusing lengths outside `16..=max_len` before
/// buffering them.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_len: usize,
}

impl FrameDecoder {
    /// A decoder accepting messages up to `max_len` bytes (`maxMessageSizeBytes`).
    pub fn new(max_len: usize) -> Self {
        FrameDecoder { max_len }
    }

    /// Changes the limit for the messages decoded from now on (a client that logs in
    /// moves from the pre-authentication cap to `maxMessageSizeBytes`).
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// The limit in force.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Takes one whole message off the front of `buf`; `Ok(None)` until it is all there.
    /// After an error the stream cannot be resynchronised: close it.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let Some(header) = Header::parse(buf) else {
            return Ok(None);
        };
        let len = usize::try_from(header.length).map_err(|_| WireError::TooShort(header.length))?;
        if len < HEADER_LEN {
            return Err(WireError::TooShort(header.length));
        }
        if len > self.max_len {
            return Err(WireError::TooLarge {
                len: header.length,
                max: self.max_len,
            });
        }
        if buf.len() < len {
            // Room for the rest arrives as the bytes do: a header that merely claims a large
            // message must not make Sluice allocate it up front (10k such clients would).
            buf.reserve((len - buf.len()).min(MAX_RESERVE));
            return Ok(None);
        }
        let data = buf.split_to(len);
        Ok(Some(Frame { header, data }))
    }
}
