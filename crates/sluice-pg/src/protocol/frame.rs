//! Tagged message framing (both directions): `tag: u8, length: i32 (includes itself), body`.
//!
//! Sluice forwards frames as raw bytes; it only needs to know where each frame ends and, for
//! a few tags, what the body says. [`frame_len`] finds the boundary, checking the declared
//! length *before* any buffering decision so a lying peer cannot make Sluice reserve memory.

use thiserror::Error;

/// The largest frame PostgreSQL itself accepts or sends (1 GiB, `PQ_LARGE_MESSAGE_LIMIT`).
pub const MAX_FRAME_LEN: usize = 0x3fff_ffff;

/// A framing or decoding error: the peer broke the protocol. Sticky for the connection.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A length field was below the minimum (4) or above the limit.
    #[error("invalid message length {len} (allowed 4..={max})")]
    BadLength {
        /// The length the peer declared.
        len: i64,
        /// The largest length accepted here.
        max: usize,
    },
    /// A message body was shorter than its fields require, or a string lacked its NUL.
    #[error("malformed {0} message")]
    Malformed(&'static str),
    /// The startup packet asked for a protocol Sluice does not speak.
    #[error("unsupported frontend protocol {major}.{minor}")]
    UnsupportedProtocol {
        /// Major protocol version requested.
        major: u16,
        /// Minor protocol version requested.
        minor: u16,
    },
    /// A message arrived that is not valid at this point of the conversation.
    #[error("unexpected message type '{0}'")]
    Unexpected(char),
}

/// Returns the total size (tag + length + body) of the frame at the start of `buf`, or
/// `None` if the header or body is not complete yet.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, ProtocolError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 || len as usize > max {
        return Err(ProtocolError::BadLength {
            len: i64::from(len),
            max,
        });
    }
    let total = len as usize + 1;
    Ok((buf.len() >= total).then_some(total))
}

/// Length of the complete frames at the front of `buf` before any Terminate, and whether
/// a Terminate was reached there. A frame over `max` is an error.
pub fn frames_before_terminate(buf: &[u8], max: usize) -> Result<(usize, bool), ProtocolError> {
    let mut pos = 0;
    while let Some(total) = frame_len(&buf[pos..], max)? {
        if buf[pos] == super::tag::frontend::TERMINATE {
            return Ok((pos, true));
        }
        pos += total;
    }
    Ok((pos, false))
}

/// The end of the first request among the complete frames of `buf` (just after its Sync,
/// Query or FunctionCall), or `Err(n)`: no request ends there and the complete frames
/// cover `n` bytes. Used to drop what the client sent after Sluice refused its request.
pub fn request_end(buf: &[u8], max: usize) -> Result<usize, usize> {
    let mut pos = 0;
    while let Ok(Some(total)) = frame_len(&buf[pos..], max) {
        let tag = buf[pos];
        pos += total;
        if super::tag::frontend::ends_request(tag) {
            return Ok(pos);
        }
    }
    Err(pos)
}

/// One complete frame borrowed from a read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The message type byte.
    pub tag: u8,
    /// The body, after the length field.
    pub body: &'a [u8],
}

/// Iterates over the complete frames at the front of a buffer. After iteration,
/// [`Frames::consumed`] says how many bytes the complete frames cover; the rest is a partial
/// frame to keep for the next read.
#[derive(Debug)]
pub struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
    max: usize,
    error: Option<ProtocolError>,
}

impl<'a> Frames<'a> {
    /// Starts scanning `buf`, rejecting frames longer than `max` bytes.
    pub fn new(buf: &'a [u8], max: usize) -> Self {
        Self {
            buf,
            pos: 0,
            max,
            error: None,
        }
    }

    /// Bytes covered by the frames yielded so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }

    /// The framing error that stopped iteration, if any.
    pub fn error(&self) -> Option<&ProtocolError> {
        self.error.as_ref()
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Frame<'a>;

    fn next(&mut self) -> Option<Frame<'a>> {
        if self.error.is_some() {
            return None;
        }
        let rest = self.buf.get(self.pos..)?;
        match frame_len(rest, self.max) {
            Ok(Some(total)) => {
                let frame = Frame {
                    tag: rest[0],
                    body: &rest[5..total],
                };
                self.pos += total;
                Some(frame)
            }
            Ok(None) => None,
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

/// Reads a NUL-terminated string from the front of `buf`, returning its bytes and the rest.
///
/// Strings in the query phase (SQL text, statement and portal names, setting values) are in
/// the client's `client_encoding`, which need not be UTF-8: they stay bytes.
pub fn read_cstr<'a>(
    buf: &'a [u8],
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), ProtocolError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(ProtocolError::Malformed(what))?;
    Ok((&buf[..nul], &buf[nul + 1..]))
}

/// Reads a NUL-terminated string that must be UTF-8 (startup parameters, SASL mechanism
/// names: sent before any client encoding applies).
pub fn read_cstr_utf8<'a>(
    buf: &'a [u8],
    what: &'static str,
) -> Result<(&'a str, &'a [u8]), ProtocolError> {
    let (s, rest) = read_cstr(buf, what)?;
    let s = std::str::from_utf8(s).map_err(|_| ProtocolError::Malformed(what))?;
    Ok((s, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn terminate_and_request_ends_are_found_among_complete_frames() {
        let mut buf = frame(b'P', b"\0select 1\0\0\0");
        let parse = buf.len();
        buf.extend(frame(b'S', b""));
        let sync = buf.len();
        buf.extend(frame(b'Q', b"select 2\0"));
        buf.extend(frame(b'X', b""));
        buf.extend(&frame(b'Q', b"partial\0")[..3]);
        let before_x = buf.len() - 3 - 5;
        assert_eq!(
            frames_before_terminate(&buf, MAX_FRAME_LEN),
            Ok((before_x, true))
        );
        assert_eq!(
            frames_before_terminate(&buf[..sync], MAX_FRAME_LEN),
            Ok((sync, false))
        );
        assert_eq!(request_end(&buf, MAX_FRAME_LEN), Ok(sync));
        assert_eq!(request_end(&buf[..parse + 2], MAX_FRAME_LEN), Err(parse));
        assert!(frames_before_terminate(&frame(b'Q', b"x\0"), 3).is_err());
    }

    #[test]
    fn every_split_point_is_incomplete_until_whole() {
        let f = frame(b'Q', b"select 1\0");
        for cut in 0..f.len() {
            assert_eq!(frame_len(&f[..cut], MAX_FRAME_LEN), Ok(None), "cut {cut}");
        }
        assert_eq!(frame_len(&f, MAX_FRAME_LEN), Ok(Some(f.len())));
    }

    #[test]
    fn rejects_lying_lengths() {
        let mut f = frame(b'Q', b"x");
        f[1..5].copy_from_slice(&3i32.to_be_bytes());
        assert!(frame_len(&f, MAX_FRAME_LEN).is_err());
        f[1..5].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(frame_len(&f, MAX_FRAME_LEN).is_err());
        f[1..5].copy_from_slice(&100i32.to_be_bytes());
        assert!(matches!(
            frame_len(&f, 50),
            Err(ProtocolError::BadLength { len: 100, .. })
        ));
    }

    #[test]
    fn iterates_complete_frames_and_keeps_the_partial_tail() {
        let mut buf = frame(b'P', b"\0select 1\0\0\0");
        buf.extend(frame(b'S', b""));
        let whole = buf.len();
        buf.extend(&frame(b'Q', b"select 2\0")[..4]);
        let mut frames = Frames::new(&buf, MAX_FRAME_LEN);
        let tags: Vec<u8> = frames.by_ref().map(|f| f.tag).collect();
        assert_eq!(tags, b"PS");
        assert_eq!(frames.consumed(), whole);
        assert!(frames.error().is_none());
    }

    #[test]
    fn stops_at_a_bad_frame() {
        let mut buf = frame(b'S', b"");
        buf.extend([b'Q', 0, 0, 0, 1]);
        let mut frames = Frames::new(&buf, MAX_FRAME_LEN);
        assert_eq!(frames.next().map(|f| f.tag), Some(b'S'));
        assert_eq!(frames.next(), None);
        assert!(frames.error().is_some());
        assert_eq!(frames.consumed(), 5);
    }

    #[test]
    fn cstr() {
        assert_eq!(read_cstr(b"ab\0c", "t"), Ok((&b"ab"[..], &b"c"[..])));
        assert_eq!(read_cstr(b"\xa4\0", "t"), Ok((&b"\xa4"[..], &b""[..])));
        assert!(read_cstr(b"ab", "t").is_err());
        assert_eq!(read_cstr_utf8(b"ab\0c", "t"), Ok(("ab", &b"c"[..])));
        assert!(read_cstr_utf8(b"\xa4\0", "t").is_err());
    }
}
