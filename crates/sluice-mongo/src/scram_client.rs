//! Client side of SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802 / RFC 7677) as MongoDB runs it
//! over `saslStart` / `saslContinue`: what Sluice uses to log in to the upstream. Sans-IO:
//! feed the server's payloads in, get the client's payloads out.
//!
//! MongoDB specifics: SCRAM-SHA-1 uses `hex(md5("user:mongo:password"))` as the password;
//! SCRAM-SHA-256 uses the SASLprep'd password; both require at least 4096 iterations.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use rand::RngCore;
use sha1::Sha1;
use sha2::Sha256;
use thiserror::Error;

/// Fewest PBKDF2 iterations accepted from a server (driver specification).
const MIN_ITERATIONS: u32 = 4096;

/// Which hash the exchange uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// SCRAM-SHA-1.
    Sha1,
    /// SCRAM-SHA-256.
    Sha256,
}

impl Mechanism {
    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "SCRAM-SHA-1",
            Self::Sha256 => "SCRAM-SHA-256",
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha1 => match Hmac::<Sha1>::new_from_slice(key) {
                Ok(mut m) => {
                    m.update(data);
                    m.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            },
            Self::Sha256 => match Hmac::<Sha256>::new_from_slice(key) {
                Ok(mut m) => {
                    m.update(data);
                    m.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            },
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha1 => Sha1::digest(data).to_vec(),
            Self::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Self::Sha1 => {
                let mut out = [0u8; 20];
                pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            Self::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }
}

/// Why the upstream login failed on Sluice's side of the exchange.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScramError {
    /// The server's message could not be parsed.
    #[error("malformed SCRAM server message: {0}")]
    Malformed(&'static str),
    /// The server's nonce does not extend ours, or too few iterations.
    #[error("SCRAM server message rejected: {0}")]
    Rejected(&'static str),
    /// The server could not prove it knows the password.
    #[error("SCRAM server signature does not match")]
    BadServerSignature,
    /// A step was called out of order.
    #[error("SCRAM exchange out of order")]
    InvalidState,
}

enum State {
    Initial,
    SentFirst,
    SentFinal { server_signature: Vec<u8> },
    Done,
}

/// One client-side SCRAM exchange.
pub struct ScramClient {
    mechanism: Mechanism,
    user: String,
    password: String,
    nonce: String,
    state: State,
}

impl ScramClient {
    /// Starts an exchange for `user`/`password` with a random nonce.
    pub fn new(mechanism: Mechanism, user: &str, password: &str) -> Self {
        let mut bytes = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self::with_nonce(mechanism, user, password, STANDARD.encode(bytes))
    }

    /// Starts an exchange with a given nonce (tests replay recorded exchanges).
    pub fn with_nonce(mechanism: Mechanism, user: &str, password: &str, nonce: String) -> Self {
        let password = match mechanism {
            Mechanism::Sha1 => {
                let digest = Md5::digest(format!("{user}:mongo:{password}").as_bytes());
                digest.iter().map(|b| format!("{b:02x}")).collect()
            }
            Mechanism::Sha256 => stringprep::saslprep(password)
                .map(|p| p.into_owned())
                .unwrap_or_else(|_| password.to_owned()),
        };
        ScramClient {
            mechanism,
            user: user.replace('=', "=3D").replace(',', "=2C"),
            password,
            nonce,
            state: State::Initial,
        }
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// client-first-message, the `payload` of `saslStart`.
    pub fn client_first(&mut self) -> Vec<u8> {
        self.state = State::SentFirst;
        format!("n,,{}", self.first_bare()).into_bytes()
    }

    fn first_bare(&self) -> String {
        format!("n={},r={}", self.user, self.nonce)
    }

    /// Takes server-first-message and returns client-final-message.
    pub fn handle_server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::SentFirst) {
            return Err(ScramError::InvalidState);
        }
        let text = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for part in text.split(',') {
            match part.split_at_checked(2) {
                Some(("r=", v)) => nonce = Some(v),
                Some(("s=", v)) => salt = Some(v),
                Some(("i=", v)) => iterations = Some(v),
                _ => {}
            }
        }
        let nonce = nonce.ok_or(ScramError::Malformed("no nonce"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err(ScramError::Rejected(
                "server nonce does not extend the client's",
            ));
        }
        let salt = STANDARD
            .decode(salt.ok_or(ScramError::Malformed("no salt"))?)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let iterations: u32 = iterations
            .ok_or(ScramError::Malformed("no iteration count"))?
            .parse()
            .map_err(|_| ScramError::Malformed("bad iteration count"))?;
        if iterations < MIN_ITERATIONS {
            return Err(ScramError::Rejected("fewer than 4096 iterations"));
        }
        let m = self.mechanism;
        let salted = m.salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = m.hmac(&salted, b"Client Key");
        let stored_key = m.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.first_bare());
        let signature = m.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = m.hmac(&salted, b"Server Key");
        self.state = State::SentFinal {
            server_signature: m.hmac(&server_key, auth_message.as_bytes()),
        };
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Checks server-final-message (`v=...`).
    pub fn handle_server_final(&mut self, msg: &[u8]) -> Result<(), ScramError> {
        let State::SentFinal { server_signature } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::InvalidState);
        };
        let text = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let v = text
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .ok_or(ScramError::Malformed("no server signature"))?;
        let got = STANDARD
            .decode(v)
            .map_err(|_| ScramError::Malformed("signature is not base64"))?;
        if got != server_signature {
            return Err(ScramError::BadServerSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 7677 section 3 (user "user", password "pencil").
    #[test]
    fn rfc7677_sha256_vector() {
        let mut c = ScramClient::with_nonce(
            Mechanism::Sha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO".into(),
        );
        assert_eq!(c.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let final_msg = c
            .handle_server_first(
                b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            )
            .unwrap();
        assert_eq!(
            final_msg,
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.handle_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    /// RFC 5802 section 5 uses plain passwords; MongoDB's SHA-1 hashes it first, so
    /// check the shape and the nonce rule only.
    #[test]
    fn sha1_rejects_bad_nonce_and_low_iterations() {
        let mut c = ScramClient::with_nonce(Mechanism::Sha1, "u", "p", "abc".into());
        let _ = c.client_first();
        assert!(c.handle_server_first(b"r=xyz123,s=AAAA,i=4096").is_err());
        let mut c = ScramClient::with_nonce(Mechanism::Sha1, "u", "p", "abc".into());
        let _ = c.client_first();
        assert_eq!(
            c.handle_server_first(b"r=abcdef,s=AAAA,i=100"),
            Err(ScramError::Rejected("fewer than 4096 iterations"))
        );
        let mut c = ScramClient::with_nonce(Mechanism::Sha1, "u", "p", "abc".into());
        let _ = c.client_first();
        assert!(c.handle_server_first(b"r=abcdef,s=AAAA,i=4096").is_ok());
        assert_eq!(
            c.handle_server_final(b"v=AAAA"),
            Err(ScramError::BadServerSignature)
        );
    }

    #[test]
    fn user_names_are_escaped() {
        let mut c = ScramClient::with_nonce(Mechanism::Sha256, "a=b,c", "p", "n".into());
        assert_eq!(c.client_first(), b"n,,n=a=3Db=2Cc,r=n");
    }
}
