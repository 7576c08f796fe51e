//! OP_MSG (opCode 2013), both directions: `flagBits` (uint32), then sections — kind 0 (one
//! BSON body document) and kind 1 (a document sequence: int32 size, cstring identifier,
//! documents) — then an optional CRC-32C checksum. MongoDB wire protocol, "OP_MSG".

use bson::RawDocument;
use bytes::{BufMut, BytesMut};

use super::header::{Header, OpCode, HEADER_LEN};
use super::WireError;

/// OP_MSG flag bits.
pub mod flags {
    /// The message ends with a CRC-32C checksum.
    pub const CHECKSUM_PRESENT: u32 = 1;
    /// The sender will not wait for a reply (requests), or more replies follow (exhaust).
    pub const MORE_TO_COME: u32 = 1 << 1;
    /// The client accepts a stream of replies (exhaust cursors, streaming hello).
    pub const EXHAUST_ALLOWED: u32 = 1 << 16;
    /// Bits 0–15 are "required": an unknown one set must be rejected.
    pub const REQUIRED: u32 = 0xffff;
    /// The required bits this codec understands.
    pub const KNOWN_REQUIRED: u32 = CHECKSUM_PRESENT | MORE_TO_COME;
}

const OP: &str = "OP_MSG";

/// A kind-1 section: documents sent beside the body (e.g. `documents` of an insert).
#[derive(Debug, Clone, PartialEq)]
pub struct DocSequence<'a> {
    /// Which command argument the documents belong to.
    pub identifier: &'a str,
    /// The documents, in order.
    pub documents: Vec<&'a RawDocument>,
}

/// A parsed OP_MSG, borrowing from the message bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct OpMsg<'a> {
    /// The `flagBits` field.
    pub flags: u32,
    /// The kind-0 section: the command (or reply) document.
    pub body: &'a RawDocument,
    /// Kind-1 sections, in order.
    pub sequences: Vec<DocSequence<'a>>,
    /// The trailing CRC-32C, when `checksumPresent` is set (not verified: Sluice drops it
    /// when forwarding, see [`super::Frame::prepare_forward`]).
    pub checksum: Option<u32>,
}

impl<'a> OpMsg<'a> {
    /// Parses the bytes after the header.
    pub fn parse(body: &'a [u8]) -> Result<OpMsg<'a>, WireError> {
        let flag_bytes: [u8; 4] = body
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| WireError::malformed(OP, "missing flagBits"))?;
        let msg_flags = u32::from_le_bytes(flag_bytes);
        let unknown = msg_flags & flags::REQUIRED & !flags::KNOWN_REQUIRED;
        if unknown != 0 {
            return Err(WireError::malformed(
                OP,
                format!("unknown required flag bits {unknown:#x}"),
            ));
        }
        let mut end = body.len();
        let checksum = if msg_flags & flags::CHECKSUM_PRESENT != 0 {
            end = end
                .checked_sub(4)
                .filter(|&e| e >= 4)
                .ok_or_else(|| WireError::malformed(OP, "missing checksum"))?;
            let bytes: [u8; 4] = body
                .get(end..)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| WireError::malformed(OP, "missing checksum"))?;
            Some(u32::from_le_bytes(bytes))
        } else {
            None
        };
        let mut rest = body.get(4..end).unwrap_or_default();
        let mut main = None;
        let mut sequences = Vec::new();
        while let Some((&kind, after)) = rest.split_first() {
            match kind {
                0 => {
                    let (doc, tail) = take_document(after)?;
                    if main.replace(doc).is_some() {
                        return Err(WireError::malformed(OP, "more than one kind-0 section"));
                    }
                    rest = tail;
                }
                1 => {
                    let (seq, tail) = take_sequence(after)?;
                    sequences.push(seq);
                    rest = tail;
                }
                other => {
                    return Err(WireError::malformed(
                        OP,
                        format!("unknown section kind {other}"),
                    ))
                }
            }
        }
        let body = main.ok_or_else(|| WireError::malformed(OP, "no kind-0 section"))?;
        Ok(OpMsg {
            flags: msg_flags,
            body,
            sequences,
            checksum,
        })
    }

    /// The command name: the first key of the body (empty for an empty document).
    pub fn command_name(&self) -> &'a str {
        first_key(self.body)
    }

    /// Whether the sender expects no reply to this message.
    pub fn more_to_come(&self) -> bool {
        self.flags & flags::MORE_TO_COME != 0
    }
}

/// The command name of an OP_MSG body (the bytes after the header) without parsing the
/// message: the first key of its first section when that is the kind-0 body (as every
/// driver sends it); `None` otherwise. For decisions that must not cost a full parse
/// (whether a forwarded request may be compressed).
pub fn peek_command_name(body: &[u8]) -> Option<&str> {
    // flagBits (4), section kind (1), document length (4), element type (1), key.
    if *body.get(4)? != 0 {
        return None;
    }
    let key = body.get(10..)?;
    let nul = key.iter().position(|&b| b == 0)?;
    std::str::from_utf8(key.get(..nul)?).ok()
}

/// The first key of `doc`, or `""`.
pub(crate) fn first_key(doc: &RawDocument) -> &str {
    match doc.iter().next() {
        Some(Ok((key, _))) => key,
        _ => "",
    }
}

/// Reads one BSON document (length-prefixed) off the front of `buf`.
pub(crate) fn take_document(buf: &[u8]) -> Result<(&RawDocument, &[u8]), WireError> {
    let len_bytes: [u8; 4] = buf
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| WireError::malformed(OP, "truncated document"))?;
    let len = usize::try_from(i32::from_le_bytes(len_bytes))
        .map_err(|_| WireError::malformed(OP, "negative document length"))?;
    let bytes = buf
        .get(..len)
        .ok_or_else(|| WireError::malformed(OP, "document runs past the message"))?;
    let doc = RawDocument::from_bytes(bytes)
        .map_err(|e| WireError::malformed(OP, format!("invalid BSON: {e}")))?;
    validate(doc)?;
    Ok((doc, buf.get(len..).unwrap_or_default()))
}

/// Walks every element once so later lookups cannot meet malformed bytes.
fn validate(doc: &RawDocument) -> Result<(), WireError> {
    for element in doc {
        element.map_err(|e| WireError::malformed(OP, format!("invalid BSON: {e}")))?;
    }
    Ok(())
}

fn take_sequence(buf: &[u8]) -> Result<(DocSequence<'_>, &[u8]), WireError> {
    let size_bytes: [u8; 4] = buf
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| WireError::malformed(OP, "truncated document sequence"))?;
    let size = usize::try_from(i32::from_le_bytes(size_bytes))
        .ok()
        .filter(|&s| s >= 4)
        .ok_or_else(|| WireError::malformed(OP, "bad document sequence size"))?;
    let section = buf
        .get(4..size)
        .ok_or_else(|| WireError::malformed(OP, "document sequence runs past the message"))?;
    let nul = section
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| WireError::malformed(OP, "unterminated sequence identifier"))?;
    let identifier = std::str::from_utf8(section.get(..nul).unwrap_or_default())
        .map_err(|_| WireError::malformed(OP, "sequence identifier is not UTF-8"))?;
    let mut docs_bytes = section.get(nul + 1..).unwrap_or_default();
    let mut documents = Vec::new();
    while !docs_bytes.is_empty() {
        let (doc, tail) = take_document(docs_bytes)?;
        documents.push(doc);
        docs_bytes = tail;
    }
    Ok((
        DocSequence {
            identifier,
            documents,
        },
        buf.get(size..).unwrap_or_default(),
    ))
}

/// Encodes an OP_MSG with one kind-0 section holding `doc` (raw BSON bytes).
pub fn encode_op_msg(request_id: i32, response_to: i32, msg_flags: u32, doc: &[u8]) -> BytesMut {
    let len = HEADER_LEN + 4 + 1 + doc.len();
    let mut out = BytesMut::with_capacity(len);
    out.resize(HEADER_LEN, 0);
    out.put_u32_le(msg_flags);
    out.put_u8(0);
    out.put_slice(doc);
    let header = Header {
        length: i32::try_from(out.len()).unwrap_or(i32::MAX),
        request_id,
        response_to,
        op_code: OpCode::Msg,
    };
    if let Some(head) = out.get_mut(..HEADER_LEN) {
        header.write(head);
    }
    out
}
