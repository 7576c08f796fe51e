//! Sans-IO PostgreSQL authentication for Sluice.
//!
//! This crate holds pure functions and state machines over bytes; it never
//! touches sockets. The proxy calls it during the PostgreSQL startup exchange:
//!
//! * [`Secret`] parses a configured credential (plain text, `md5…` hash or
//!   `SCRAM-SHA-256$…` verifier) and derives a [`ScramVerifier`] from it.
//! * [`ScramServer`] is the server side of SCRAM-SHA-256 (what the proxy runs
//!   towards clients in AuthenticationSASL / SASLContinue / SASLFinal).
//! * [`md5_verify`] / [`md5_response`] / [`md5_response_from_hash`] handle
//!   AuthenticationMD5Password in both directions.
//! * [`ScramKeysClient`] logs in upstream with the [`ScramKeys`] a client's SCRAM
//!   exchange revealed (SCRAM pass-through), or with a password whose keys
//!   [`password_keys`] derives once per server salt.
#![forbid(unsafe_code)]

mod keycache;
mod md5;
mod passthrough;
mod scram;
mod secret;

pub use crate::keycache::{cached_entries, password_keys};
pub use crate::md5::{md5_response, md5_response_from_hash, md5_verify};
pub use crate::passthrough::{ScramKeys, ScramKeysClient};
pub use crate::scram::ScramServer;
pub use crate::secret::{ScramVerifier, Secret};

/// The SASL mechanism name to advertise in AuthenticationSASL.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Why an authentication step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The client proved knowledge of the wrong password (or the user does
    /// not exist; the two are deliberately indistinguishable).
    #[error("password authentication failed")]
    InvalidPassword,
    /// A message or configured secret could not be parsed; the text says which
    /// part was wrong.
    #[error("malformed authentication data: {0}")]
    Malformed(&'static str),
    /// The client asked for SCRAM channel binding (`p=…`), which is not
    /// supported.
    #[error("SCRAM channel binding is not supported")]
    UnsupportedChannelBinding,
    /// The client used a SCRAM feature PostgreSQL does not support either
    /// (authorization identity, mandatory extensions).
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),
    /// A step was called out of order, or after the exchange already failed
    /// or finished (errors are sticky).
    #[error("authentication exchange is not in a state to accept this message")]
    InvalidState,
}

/// Compares two byte strings in time independent of their contents (the
/// length is not treated as secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from short-circuiting the fold.
    std::hint::black_box(diff) == 0
}

/// Lower-case hex encoding.
pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn hex() {
        assert_eq!(hex_encode(&[0x00, 0xab, 0xff, 0x10]), "00abff10");
    }
}
