//! Configured credentials: plain passwords, md5 hashes and SCRAM verifiers.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::AuthError;

/// The prefix PostgreSQL uses for SCRAM-SHA-256 verifiers in `pg_authid`.
const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";
/// Iteration count used when deriving a verifier from a plain password
/// (PostgreSQL's default `scram_iterations`).
pub(crate) const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length used when deriving a verifier from a plain password
/// (PostgreSQL's default).
pub(crate) const DEFAULT_SALT_LEN: usize = 16;

/// A configured client credential, parsed from config text with
/// [`Secret::parse`].
///
/// `Debug` output is redacted so secrets do not end up in logs.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A clear-text password; allows both SCRAM and md5 authentication.
    Plain(String),
    /// The 16 bytes of `md5(password || username)`, configured as
    /// `md5<32 hex digits>`; allows md5 authentication only.
    Md5([u8; 16]),
    /// A SCRAM-SHA-256 verifier; allows SCRAM authentication only.
    Scram(ScramVerifier),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Secret::Plain(<redacted>)"),
            Secret::Md5(_) => f.write_str("Secret::Md5(<redacted>)"),
            Secret::Scram(v) => write!(f, "Secret::Scram({v:?})"),
        }
    }
}

impl Secret {
    /// Parses configured secret text, the way PostgreSQL interprets
    /// `pg_authid.rolpassword`:
    ///
    /// * `SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>` →
    ///   [`Secret::Scram`] (malformed text with that prefix is an error);
    /// * `md5` followed by exactly 32 hex digits → [`Secret::Md5`];
    /// * anything else → [`Secret::Plain`].
    pub fn parse(text: &str) -> Result<Secret, AuthError> {
        if text.starts_with(SCRAM_PREFIX) {
            return ScramVerifier::parse(text).map(Secret::Scram);
        }
        if let Some(hex) = text.strip_prefix("md5") {
            if let Some(bytes) = decode_hex16(hex) {
                return Ok(Secret::Md5(bytes));
            }
        }
        Ok(Secret::Plain(text.to_owned()))
    }

    /// The SCRAM verifier to authenticate this secret with, if SCRAM is
    /// possible: a configured verifier is returned as is, a plain password is
    /// turned into a verifier with a fresh random 16-byte salt and 4096
    /// iterations (SASLprep applied as PostgreSQL does), and an md5 hash gives
    /// `None`.
    ///
    /// Deriving from a plain password runs PBKDF2, so callers should compute
    /// this once at config load and cache it, not call it per login.
    pub fn scram_verifier(&self) -> Option<ScramVerifier> {
        match self {
            Secret::Scram(v) => Some(v.clone()),
            Secret::Plain(password) => {
                let mut salt = [0u8; DEFAULT_SALT_LEN];
                rand::rngs::OsRng.fill_bytes(&mut salt);
                Some(ScramVerifier::from_password(
                    password,
                    &salt,
                    DEFAULT_ITERATIONS,
                ))
            }
            Secret::Md5(_) => None,
        }
    }
}

/// A SCRAM-SHA-256 verifier: what the server stores to check a client's
/// proof without knowing the password.
///
/// `Display` writes PostgreSQL's format, which [`ScramVerifier::parse`]
/// reads back. `Debug` omits the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count sent to the client.
    pub iterations: u32,
    /// Salt sent to the client (raw bytes, not base64).
    pub salt: Vec<u8>,
    /// `SHA-256(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &STANDARD.encode(&self.salt))
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCRAM_PREFIX}{}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

impl ScramVerifier {
    /// Parses PostgreSQL's verifier format
    /// `SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>`.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let rest = text.strip_prefix(SCRAM_PREFIX).ok_or(AuthError::Malformed(
            "SCRAM verifier must start with SCRAM-SHA-256$",
        ))?;
        let (params, keys) = rest.split_once('$').ok_or(AuthError::Malformed(
            "SCRAM verifier is missing the key part",
        ))?;
        let (iter, salt) = params
            .split_once(':')
            .ok_or(AuthError::Malformed("SCRAM verifier is missing the salt"))?;
        let (stored, server) = keys.split_once(':').ok_or(AuthError::Malformed(
            "SCRAM verifier is missing the server key",
        ))?;
        let iterations: u32 = iter
            .parse()
            .map_err(|_| AuthError::Malformed("SCRAM verifier iteration count is invalid"))?;
        if iterations == 0 {
            return Err(AuthError::Malformed(
                "SCRAM verifier iteration count is zero",
            ));
        }
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| AuthError::Malformed("SCRAM verifier salt is not valid base64"))?;
        if salt.is_empty() {
            return Err(AuthError::Malformed("SCRAM verifier salt is empty"));
        }
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key: decode_key(stored)?,
            server_key: decode_key(server)?,
        })
    }

    /// Computes the verifier for `password` with the given salt and
    /// iteration count, applying SASLprep first as PostgreSQL does (if the
    /// password is not valid for SASLprep it is used as is).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = Self::salted_password(password, salt, iterations);
        Self::from_salted_password(&salted, salt.to_vec(), iterations)
    }

    /// SCRAM's SaltedPassword: PBKDF2-HMAC-SHA-256 of the SASLprep'd password (the
    /// expensive step of every password login).
    pub(crate) fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
        let prepared = match stringprep::saslprep(password) {
            Ok(p) => p.into_owned(),
            Err(_) => password.to_owned(),
        };
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(prepared.as_bytes(), salt, iterations, &mut salted);
        salted
    }

    /// Builds a verifier from an already computed SaltedPassword.
    pub(crate) fn from_salted_password(salted: &[u8; 32], salt: Vec<u8>, iterations: u32) -> Self {
        let client_key = hmac_sha256(salted, &[b"Client Key"]);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac_sha256(salted, &[b"Server Key"]);
        ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        }
    }
}

/// HMAC-SHA-256 of the concatenation of `parts` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC accepts keys of any length; this cannot happen.
        Err(_) => unreachable!("HMAC-SHA-256 accepts keys of any length"),
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Decodes a base64 32-byte key.
fn decode_key(b64: &str) -> Result<[u8; 32], AuthError> {
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| AuthError::Malformed("SCRAM verifier key is not valid base64"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| AuthError::Malformed("SCRAM verifier key is not 32 bytes"))
}

/// Decodes exactly 32 hex digits (either case) into 16 bytes.
fn decode_hex16(hex: &str) -> Option<[u8; 16]> {
    let digits = hex.as_bytes();
    if digits.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (hi, lo) = match pair {
            [hi, lo] => (hex_val(*hi)?, hex_val(*lo)?),
            _ => return None,
        };
        *byte = (hi << 4) | lo;
    }
    Some(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_kinds() {
        assert_eq!(
            Secret::parse("hunter2").unwrap(),
            Secret::Plain("hunter2".into())
        );
        assert_eq!(Secret::parse("").unwrap(), Secret::Plain(String::new()));
        // Too short / non-hex md5-looking text is a plain password.
        assert_eq!(
            Secret::parse("md5abc").unwrap(),
            Secret::Plain("md5abc".into())
        );
        assert!(matches!(
            Secret::parse("md5zz000000000000000000000000000000").unwrap(),
            Secret::Plain(_)
        ));
        let s = Secret::parse("md5000102030405060708090a0b0c0d0eff").unwrap();
        let mut want = [0u8; 16];
        for (i, b) in want.iter_mut().enumerate().take(15) {
            *b = i as u8;
        }
        want[15] = 0xff;
        assert_eq!(s, Secret::Md5(want));
        assert!(Secret::parse("SCRAM-SHA-256$garbage").is_err());
    }

    #[test]
    fn debug_is_redacted() {
        let s = format!("{:?}", Secret::parse("topsecret").unwrap());
        assert!(!s.contains("topsecret"));
    }

    #[test]
    fn malformed_verifiers() {
        let good = ScramVerifier::from_password("pw", b"saltsaltsaltsalt", 4096).to_string();
        assert!(ScramVerifier::parse(&good).is_ok());
        for bad in [
            "",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096",
            "SCRAM-SHA-256$4096:c2FsdA==",
            "SCRAM-SHA-256$4096:c2FsdA==$",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:!!$AAAA:AAAA",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:$AAAA:AAAA",
            "SCRAM-SHA-1$4096:c2FsdA==$AAAA:AAAA",
        ] {
            assert!(ScramVerifier::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn plain_derives_verifier() {
        let s = Secret::Plain("pw".into());
        let v = s.scram_verifier().unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt.len(), 16);
        assert_eq!(v, ScramVerifier::from_password("pw", &v.salt, 4096));
        assert!(Secret::Md5([0; 16]).scram_verifier().is_none());
        let sv = Secret::Scram(v.clone());
        assert_eq!(sv.scram_verifier().unwrap(), v);
    }
}
