//! Writers for the backend (Sluice → client) messages Sluice sends itself: authentication
//! requests, ParameterStatus, BackendKeyData, ReadyForQuery, ErrorResponse (§55.7). Each
//! appends one whole frame to a buffer, writing a placeholder length and patching it in.

use bytes::{BufMut, BytesMut};

fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    at
}

fn finish(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; values come from config or the upstream.
    buf.put_slice(s.replace('\0', "").as_bytes());
    buf.put_u8(0);
}

fn auth(buf: &mut BytesMut, code: i32, data: &[u8]) {
    let at = begin(buf, b'R');
    buf.put_i32(code);
    buf.put_slice(data);
    finish(buf, at);
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    auth(buf, 0, &[]);
}

/// AuthenticationMD5Password with the salt the client must use.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    auth(buf, 5, &salt);
}

/// AuthenticationSASL listing one mechanism.
pub fn auth_sasl(buf: &mut BytesMut, mechanism: &str) {
    let at = begin(buf, b'R');
    buf.put_i32(10);
    put_cstr(buf, mechanism);
    buf.put_u8(0);
    finish(buf, at);
}

/// AuthenticationSASLContinue carrying the server-first-message.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    auth(buf, 11, data);
}

/// AuthenticationSASLFinal carrying the server-final-message.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    auth(buf, 12, data);
}

/// ParameterStatus `name = value`.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &[u8]) {
    let at = begin(buf, b'S');
    put_cstr(buf, name);
    // A value is bytes in the client's encoding; a NUL would end the field early.
    buf.extend(value.iter().copied().filter(|&b| b != 0));
    buf.put_u8(0);
    finish(buf, at);
}

/// BackendKeyData: the key a client will quote in a CancelRequest.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    let at = begin(buf, b'K');
    buf.put_i32(pid);
    buf.put_i32(secret);
    finish(buf, at);
}

/// ReadyForQuery with a transaction status (`I`, `T` or `E`).
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    let at = begin(buf, b'Z');
    buf.put_u8(status);
    finish(buf, at);
}

/// NegotiateProtocolVersion: the newest minor version Sluice supports and the options it
/// did not recognise.
pub fn negotiate_protocol_version<'a>(
    buf: &mut BytesMut,
    minor: i32,
    unsupported: impl ExactSizeIterator<Item = &'a str>,
) {
    let at = begin(buf, b'v');
    buf.put_i32(minor);
    buf.put_i32(unsupported.len() as i32);
    for opt in unsupported {
        put_cstr(buf, opt);
    }
    finish(buf, at);
}

/// Severity of an ErrorResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends; Sluice closes the socket after sending it.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// NoticeResponse (`N`): severity NOTICE, SQLSTATE 00000 and `message`, for information
/// that goes with a command's result.
pub fn notice_response(buf: &mut BytesMut, message: &str) {
    let at = begin(buf, b'N');
    for (field, value) in [
        (b'S', "NOTICE"),
        (b'V', "NOTICE"),
        (b'C', "00000"),
        (b'M', message),
    ] {
        buf.put_u8(field);
        put_cstr(buf, value);
    }
    buf.put_u8(0);
    finish(buf, at);
}

/// ErrorResponse with severity, SQLSTATE and message.
pub fn error_response(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let at = begin(buf, b'E');
    for (field, value) in [
        (b'S', severity.as_str()),
        (b'V', severity.as_str()),
        (b'C', code),
        (b'M', message),
    ] {
        buf.put_u8(field);
        put_cstr(buf, value);
    }
    buf.put_u8(0);
    finish(buf, at);
}

/// RowDescription for columns of type `text` in text format.
pub fn row_description_text(buf: &mut BytesMut, columns: &[&str]) {
    let start = begin(buf, super::tag::backend::ROW_DESCRIPTION);
    buf.put_i16(columns.len() as i16);
    for c in columns {
        buf.put_slice(c.as_bytes());
        buf.put_u8(0);
        buf.put_i32(0); // table oid
        buf.put_i16(0); // column number
        buf.put_i32(25); // type oid: text
        buf.put_i16(-1); // type size: variable
        buf.put_i32(-1); // type modifier
        buf.put_i16(0); // text format
    }
    finish(buf, start);
}

/// DataRow of text values (`None`: NULL).
pub fn data_row<'a>(buf: &mut BytesMut, values: impl ExactSizeIterator<Item = Option<&'a [u8]>>) {
    let start = begin(buf, super::tag::backend::DATA_ROW);
    buf.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                buf.put_i32(v.len() as i32);
                buf.put_slice(v);
            }
            None => buf.put_i32(-1),
        }
    }
    finish(buf, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{Frames, MAX_FRAME_LEN};
    use postgres_protocol::message::backend::Message;

    #[test]
    fn frames_parse_back_with_rust_postgres() {
        let mut buf = BytesMut::new();
        auth_ok(&mut buf);
        auth_md5(&mut buf, [1, 2, 3, 4]);
        auth_sasl(&mut buf, "SCRAM-SHA-256");
        parameter_status(&mut buf, "server_version", b"15.8");
        backend_key_data(&mut buf, 42, 7);
        error_response(&mut buf, Severity::Fatal, "28P01", "bad");
        ready_for_query(&mut buf, b'I');
        let n = Frames::new(&buf, MAX_FRAME_LEN).count();
        assert_eq!(n, 7);
        let mut kinds = Vec::new();
        while let Some(m) = Message::parse(&mut buf).unwrap() {
            kinds.push(match m {
                Message::AuthenticationOk => "ok",
                Message::AuthenticationMd5Password(b) => {
                    assert_eq!(b.salt(), [1, 2, 3, 4]);
                    "md5"
                }
                Message::AuthenticationSasl(_) => "sasl",
                Message::ParameterStatus(_) => "ps",
                Message::BackendKeyData(k) => {
                    assert_eq!((k.process_id(), k.secret_key()), (42, 7));
                    "key"
                }
                Message::ErrorResponse(_) => "err",
                Message::ReadyForQuery(r) => {
                    assert_eq!(r.status(), b'I');
                    "rfq"
                }
                _ => "other",
            });
        }
        assert_eq!(kinds, ["ok", "md5", "sasl", "ps", "key", "err", "rfq"]);
    }
}
