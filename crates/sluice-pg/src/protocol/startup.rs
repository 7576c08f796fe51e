//! The untagged first packet a client sends (frontend): `length: i32, code: i32, ...`.
//!
//! The code selects SSLRequest (80877103), GSSENCRequest (80877104), CancelRequest
//! (80877102) or a StartupMessage (protocol version, then `name\0value\0` pairs and a final
//! `\0`). See PostgreSQL docs §55.2.1 and §55.7.

use super::frame::{read_cstr_utf8, ProtocolError};

/// The SSLRequest packet Sluice sends a server: length 8, then the request code.
pub const SSL_REQUEST_PACKET: [u8; 8] = {
    let c = SSL_REQUEST.to_be_bytes();
    [0, 0, 0, 8, c[0], c[1], c[2], c[3]]
};
/// The server's one-byte answer to SSLRequest: go ahead with TLS.
pub const SSL_ACCEPTED: u8 = b'S';
/// The server's one-byte answer to SSLRequest: no TLS here.
pub const SSL_REFUSED: u8 = b'N';

/// Longest startup packet accepted (PostgreSQL's own limit, `MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// A decoded startup packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS; Sluice answers `N` (or upgrades, once TLS exists).
    SslRequest,
    /// The client asks for GSSAPI encryption; Sluice answers `N`.
    GssEncRequest,
    /// Cancel the running query of the session with this key.
    Cancel {
        /// Process id from the BackendKeyData the client was given.
        pid: i32,
        /// Secret key from the same BackendKeyData.
        secret: i32,
    },
    /// A protocol 3.x StartupMessage.
    Startup(StartupParams),
}

/// The parameters of a StartupMessage, in the order the client sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupParams {
    /// Minor protocol version requested (major is always 3 here).
    pub minor_version: u16,
    /// `name = value` pairs as sent.
    pub params: Vec<(String, String)>,
}

impl StartupParams {
    /// Looks up one parameter by name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The user name (required by the protocol).
    pub fn user(&self) -> Option<&str> {
        self.get("user").filter(|u| !u.is_empty())
    }

    /// The database name; PostgreSQL defaults it to the user name.
    pub fn database(&self) -> Option<&str> {
        self.get("database")
            .filter(|d| !d.is_empty())
            .or_else(|| self.user())
    }

    /// Protocol options (`_pq_.*`) the client asked for, which Sluice does not support.
    pub fn protocol_options(&self) -> impl Iterator<Item = &str> {
        self.params
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with("_pq_."))
    }
}

/// Returns the total length of the startup packet at the front of `buf`, once complete.
pub fn startup_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if len < 8 || len as usize > MAX_STARTUP_LEN {
        return Err(ProtocolError::BadLength {
            len: i64::from(len),
            max: MAX_STARTUP_LEN,
        });
    }
    let len = len as usize;
    Ok((buf.len() >= len).then_some(len))
}

/// Decodes one complete startup packet (as delimited by [`startup_len`]).
pub fn parse_startup(packet: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let code = packet
        .get(4..8)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(ProtocolError::Malformed("startup"))?;
    let rest = &packet[8..];
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let b = rest
                .get(..8)
                .ok_or(ProtocolError::Malformed("CancelRequest"))?;
            Ok(StartupPacket::Cancel {
                pid: i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                secret: i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(ProtocolError::UnsupportedProtocol { major, minor });
            }
            Ok(StartupPacket::Startup(parse_params(rest, minor)?))
        }
    }
}

fn parse_params(mut rest: &[u8], minor_version: u16) -> Result<StartupParams, ProtocolError> {
    let mut params = Vec::new();
    loop {
        match rest.first() {
            Some(0) => break,
            None => return Err(ProtocolError::Malformed("StartupMessage")),
            Some(_) => {
                let (name, after) = read_cstr_utf8(rest, "StartupMessage")?;
                let (value, after) = read_cstr_utf8(after, "StartupMessage")?;
                params.push((name.to_owned(), value.to_owned()));
                rest = after;
            }
        }
    }
    Ok(StartupParams {
        minor_version,
        params,
    })
}

/// Encodes a StartupMessage (used towards upstream servers).
pub fn write_startup(buf: &mut Vec<u8>, params: &[(&str, &str)]) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&196_608i32.to_be_bytes());
    for (k, v) in params {
        buf.extend_from_slice(k.as_bytes());
        buf.push(0);
        buf.extend_from_slice(v.as_bytes());
        buf.push(0);
    }
    buf.push(0);
    let len = (buf.len() - start) as i32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Encodes a CancelRequest (sent to the upstream server that runs a client's query).
pub fn write_cancel(pid: i32, secret: i32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&16i32.to_be_bytes());
    out[4..8].copy_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out[8..12].copy_from_slice(&pid.to_be_bytes());
    out[12..].copy_from_slice(&secret.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_startup_message() {
        let mut buf = Vec::new();
        write_startup(&mut buf, &[("user", "app"), ("database", "db")]);
        assert_eq!(startup_len(&buf), Ok(Some(buf.len())));
        for cut in 0..buf.len() {
            assert_eq!(startup_len(&buf[..cut]), Ok(None));
        }
        let StartupPacket::Startup(p) = parse_startup(&buf).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(p.user(), Some("app"));
        assert_eq!(p.database(), Some("db"));
    }

    #[test]
    fn database_defaults_to_user() {
        let mut buf = Vec::new();
        write_startup(&mut buf, &[("user", "app")]);
        let StartupPacket::Startup(p) = parse_startup(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(p.database(), Some("app"));
    }

    #[test]
    fn decodes_special_requests() {
        let c = write_cancel(7, -9);
        assert_eq!(
            parse_startup(&c),
            Ok(StartupPacket::Cancel { pid: 7, secret: -9 })
        );
        let ssl = [0, 0, 0, 8, 4, 210, 22, 47];
        assert_eq!(parse_startup(&ssl), Ok(StartupPacket::SslRequest));
    }

    #[test]
    fn rejects_bad_packets() {
        assert!(startup_len(&[0, 0, 0, 4]).is_err());
        assert!(startup_len(&[0, 1, 0, 0]).is_err());
        // protocol 2.0
        assert!(matches!(
            parse_startup(&[0, 0, 0, 9, 0, 2, 0, 0, 0]),
            Err(ProtocolError::UnsupportedProtocol { major: 2, .. })
        ));
        // unterminated parameter list
        assert!(parse_startup(&[0, 0, 0, 11, 0, 3, 0, 0, b'u', 0, b'x']).is_err());
        // short cancel
        assert!(parse_startup(&[0, 0, 0, 12, 4, 210, 22, 46, 0, 0, 0, 1]).is_err());
    }
}
