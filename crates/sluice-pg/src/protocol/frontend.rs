//! The frontend (client → Sluice) messages Sluice decodes itself during authentication:
//! PasswordMessage, SASLInitialResponse and SASLResponse, all tag `p` (§55.7).

use super::frame::{read_cstr_utf8, ProtocolError};

/// Body of a SASLInitialResponse: the mechanism chosen and the client-first-message.
#[derive(Debug, PartialEq, Eq)]
pub struct SaslInitial<'a> {
    /// Mechanism name, e.g. `SCRAM-SHA-256`.
    pub mechanism: &'a str,
    /// The client-first-message bytes (empty if the client sent length -1).
    pub data: &'a [u8],
}

/// Decodes a SASLInitialResponse body.
pub fn parse_sasl_initial(body: &[u8]) -> Result<SaslInitial<'_>, ProtocolError> {
    let (mechanism, rest) = read_cstr_utf8(body, "SASLInitialResponse")?;
    let len = rest
        .get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(ProtocolError::Malformed("SASLInitialResponse"))?;
    let data = &rest[4..];
    if len == -1 {
        return Ok(SaslInitial {
            mechanism,
            data: &[],
        });
    }
    if len < 0 || len as usize != data.len() {
        return Err(ProtocolError::Malformed("SASLInitialResponse"));
    }
    Ok(SaslInitial { mechanism, data })
}

/// Decodes a cleartext or md5 PasswordMessage body (a NUL-terminated string).
pub fn parse_password(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(ProtocolError::Malformed("PasswordMessage"))?;
    Ok(&body[..nul])
}

/// True if a Parse body names a statement (named statements outlive the transaction).
pub fn parse_names_statement(body: &[u8]) -> bool {
    body.first().is_some_and(|&b| b != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_initial() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"abc");
        let m = parse_sasl_initial(&body).unwrap();
        assert_eq!(m.mechanism, "SCRAM-SHA-256");
        assert_eq!(m.data, b"abc");
        body.push(b'x');
        assert!(parse_sasl_initial(&body).is_err());
        assert!(parse_sasl_initial(b"SCRAM").is_err());
        assert!(parse_sasl_initial(b"SCRAM\0\0\0").is_err());
    }

    #[test]
    fn password() {
        assert_eq!(parse_password(b"md5abc\0").unwrap(), b"md5abc");
        assert!(parse_password(b"md5abc").is_err());
    }
}
