//! Legacy OP_QUERY (opCode 2004, client → server) and OP_REPLY (opCode 1, server →
//! client). Drivers still open connections with an OP_QUERY `isMaster` on `admin.$cmd`;
//! Sluice accepts OP_QUERY for `hello`/`isMaster` only and answers with OP_REPLY.

use bson::{RawBsonRef, RawDocument};
use bytes::{BufMut, BytesMut};

use super::header::{Header, OpCode, HEADER_LEN};
use super::op_msg::{first_key, take_document};
use super::WireError;

const OP: &str = "OP_QUERY";

/// A parsed OP_QUERY, borrowing from the message bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct OpQuery<'a> {
    /// `fullCollectionName`, e.g. `admin.$cmd`.
    pub collection: &'a str,
    /// The query document (for commands, the command, possibly wrapped in `$query`).
    pub query: &'a RawDocument,
}

impl<'a> OpQuery<'a> {
    /// Parses the bytes after the header.
    pub fn parse(body: &'a [u8]) -> Result<OpQuery<'a>, WireError> {
        let rest = body
            .get(4..)
            .ok_or_else(|| WireError::malformed(OP, "missing flags"))?;
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| WireError::malformed(OP, "unterminated collection name"))?;
        let collection = std::str::from_utf8(rest.get(..nul).unwrap_or_default())
            .map_err(|_| WireError::malformed(OP, "collection name is not UTF-8"))?;
        let after = rest
            .get(nul + 1 + 8..)
            .ok_or_else(|| WireError::malformed(OP, "missing numberToSkip/numberToReturn"))?;
        let (query, _fields) = take_document(after).map_err(|e| match e {
            WireError::Malformed { why, .. } => WireError::malformed(OP, why),
            other => other,
        })?;
        Ok(OpQuery { collection, query })
    }

    /// Whether this is a command (`<db>.$cmd`).
    pub fn is_command(&self) -> bool {
        self.collection.ends_with(".$cmd")
    }

    /// The command document: `query`, or what its `$query` / `query` wrapper holds.
    pub fn command(&self) -> &'a RawDocument {
        for key in ["$query", "query"] {
            if let Ok(Some(RawBsonRef::Document(inner))) = self.query.get(key) {
                return inner;
            }
        }
        self.query
    }

    /// The command name (first key of [`OpQuery::command`]).
    pub fn command_name(&self) -> &'a str {
        first_key(self.command())
    }
}

/// Encodes an OP_REPLY carrying one document (raw BSON bytes) answering `response_to`.
pub fn encode_op_reply(request_id: i32, response_to: i32, doc: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(HEADER_LEN + 20 + doc.len());
    out.resize(HEADER_LEN, 0);
    out.put_i32_le(0); // responseFlags
    out.put_i64_le(0); // cursorID
    out.put_i32_le(0); // startingFrom
    out.put_i32_le(1); // numberReturned
    out.put_slice(doc);
    let header = Header {
        length: i32::try_from(out.len()).unwrap_or(i32::MAX),
        request_id,
        response_to,
        op_code: OpCode::Reply,
    };
    if let Some(head) = out.get_mut(..HEADER_LEN) {
        header.write(head);
    }
    out
}
