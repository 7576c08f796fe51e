//! Client side of SCRAM-SHA-256 from keys instead of a password: SCRAM pass-through.
//!
//! When a client proved itself against a verifier Sluice holds (configured, or fetched by
//! `auth_query`), the exchange reveals its ClientKey. With that and the verifier's
//! ServerKey, Sluice can log in to a PostgreSQL server holding the same verifier as that
//! user, as PgBouncer 1.14+ does, so no password need be stored anywhere. The same client
//! logs in with a password: its keys are derived once per server salt (see
//! [`crate::password_keys`]), so a pool's logins after the first cost HMACs only.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::secret::hmac_sha256;
use crate::{ct_eq, AuthError};

/// What a successful SCRAM exchange leaves: enough to log in again as the same user.
///
/// `Debug` omits the keys.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ScramKeys {
    /// `HMAC(SaltedPassword, "Client Key")`, recovered from the client's proof.
    pub client_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`, from the verifier.
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(<redacted>)")
    }
}

/// What a [`ScramKeysClient`] proves itself with.
enum KeySource {
    /// Keys a client's exchange revealed.
    Keys(ScramKeys),
    /// A password (its keys depend on the server's salt).
    Password(String),
}

/// One client-side SCRAM-SHA-256 exchange driven by [`ScramKeys`] or a password (no
/// channel binding).
///
/// Call [`ScramKeysClient::client_first`], then [`ScramKeysClient::handle_server_first`]
/// with the AuthenticationSASLContinue data, then [`ScramKeysClient::handle_server_final`]
/// with the AuthenticationSASLFinal data, which checks the server's signature.
pub struct ScramKeysClient {
    keys: KeySource,
    client_nonce: String,
    /// client-first-message-bare, kept for the AuthMessage.
    first_bare: String,
    /// The server's expected signature, once the final message has been written.
    server_signature: Option<[u8; 32]>,
}

impl ScramKeysClient {
    /// Starts an exchange with `client_nonce` (printable ASCII without `,`; callers pass
    /// a random one, tests a fixed one).
    pub fn new(keys: ScramKeys, client_nonce: String) -> Self {
        Self::with_source(KeySource::Keys(keys), client_nonce)
    }

    /// Starts an exchange that logs in with `password`: its keys are derived from the
    /// salt and iteration count the server sends (once per salt, see
    /// [`crate::password_keys`]).
    pub fn with_password(password: String, client_nonce: String) -> Self {
        Self::with_source(KeySource::Password(password), client_nonce)
    }

    fn with_source(keys: KeySource, client_nonce: String) -> Self {
        let first_bare = format!("n=,r={client_nonce}");
        Self {
            keys,
            client_nonce,
            first_bare,
            server_signature: None,
        }
    }

    /// The client-first-message for SASLInitialResponse.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare).into_bytes()
    }

    /// Reads the server-first-message and returns the client-final-message (with proof).
    pub fn handle_server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, AuthError> {
        let msg = std::str::from_utf8(msg)
            .map_err(|_| AuthError::Malformed("server-first-message is not UTF-8"))?;
        let mut attrs = msg.split(',');
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(AuthError::Malformed("server-first-message lacks r="))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(AuthError::Malformed("server nonce does not extend ours"));
        }
        let lacks = AuthError::Malformed("server-first-message lacks s= or i=");
        let salt = attrs
            .next()
            .and_then(|a| a.strip_prefix("s="))
            .ok_or(lacks.clone())?;
        let iterations = attrs
            .next()
            .and_then(|a| a.strip_prefix("i="))
            .ok_or(lacks)?;
        let keys = match &self.keys {
            // Salt and iterations only serve to derive keys we already have.
            KeySource::Keys(keys) => *keys,
            KeySource::Password(password) => {
                let salt = STANDARD
                    .decode(salt)
                    .map_err(|_| AuthError::Malformed("server salt is not valid base64"))?;
                let iterations = iterations
                    .parse::<u32>()
                    .ok()
                    .filter(|&i| i > 0)
                    .ok_or(AuthError::Malformed("server iteration count is invalid"))?;
                crate::password_keys(password, &salt, iterations)
            }
        };
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{msg},{without_proof}", self.first_bare);
        let stored_key: [u8; 32] = Sha256::digest(keys.client_key).into();
        let signature = hmac_sha256(&stored_key, &[auth_message.as_bytes()]);
        let mut proof = keys.client_key;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        self.server_signature = Some(hmac_sha256(&keys.server_key, &[auth_message.as_bytes()]));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message: the server must prove it knows the ServerKey.
    pub fn handle_server_final(&self, msg: &[u8]) -> Result<(), AuthError> {
        let expected = self.server_signature.ok_or(AuthError::InvalidState)?;
        let msg = std::str::from_utf8(msg)
            .map_err(|_| AuthError::Malformed("server-final-message is not UTF-8"))?;
        if msg.starts_with("e=") {
            return Err(AuthError::InvalidPassword);
        }
        let v = msg
            .split(',')
            .next()
            .and_then(|a| a.strip_prefix("v="))
            .ok_or(AuthError::Malformed("server-final-message lacks v="))?;
        let v = STANDARD
            .decode(v)
            .map_err(|_| AuthError::Malformed("server signature is not valid base64"))?;
        if ct_eq(&v, &expected) {
            Ok(())
        } else {
            Err(AuthError::Malformed("the server's signature is wrong"))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{ScramServer, ScramVerifier};

    /// A client that knows the password logs in; its recovered keys log in again, to
    /// another exchange with the same verifier, without the password.
    #[test]
    fn keys_recovered_from_one_login_pass_the_next() {
        let verifier = ScramVerifier::from_password("hunter2", b"0123456789abcdef", 4096);
        let mut server = ScramServer::new(verifier.clone(), "srvnonce".into());
        let mut client = postgres_protocol::authentication::sasl::ScramSha256::new(
            b"hunter2",
            postgres_protocol::authentication::sasl::ChannelBinding::unsupported(),
        );
        let first = server.handle_client_first(client.message()).unwrap();
        client.update(&first).unwrap();
        let last = server.handle_client_final(client.message()).unwrap();
        client.finish(&last).unwrap();
        let keys = server.keys().unwrap();

        let mut upstream = ScramServer::new(verifier, "other".into());
        let mut pass = ScramKeysClient::new(keys, "cnonce".into());
        let first = upstream.handle_client_first(&pass.client_first()).unwrap();
        let fin = pass.handle_server_first(&first).unwrap();
        let last = upstream.handle_client_final(&fin).unwrap();
        pass.handle_server_final(&last).unwrap();
        assert!(upstream.is_done());
    }

    /// A password login agrees with postgres-protocol's client and with PostgreSQL's
    /// verifier; a second login with the same salt uses the cached keys.
    #[test]
    fn a_password_login_passes_twice_with_the_keys_derived_once() {
        let verifier = ScramVerifier::from_password("pa\u{df}word", b"another-salt-16b", 4096);
        for nonce in ["one", "two"] {
            let mut upstream = ScramServer::new(verifier.clone(), format!("srv-{nonce}"));
            let mut client = ScramKeysClient::with_password("pa\u{df}word".into(), nonce.into());
            let first = upstream
                .handle_client_first(&client.client_first())
                .unwrap();
            let fin = client.handle_server_first(&first).unwrap();
            let last = upstream.handle_client_final(&fin).unwrap();
            client.handle_server_final(&last).unwrap();
        }
        let mut wrong = ScramKeysClient::with_password("nope".into(), "n".into());
        let mut upstream = ScramServer::new(verifier, "srv".into());
        let first = upstream.handle_client_first(&wrong.client_first()).unwrap();
        let fin = wrong.handle_server_first(&first).unwrap();
        assert_eq!(
            upstream.handle_client_final(&fin),
            Err(AuthError::InvalidPassword)
        );
        let mut bad = ScramKeysClient::with_password("p".into(), "c".into());
        assert!(bad.handle_server_first(b"r=cX,s=AA==,i=0").is_err());
        assert!(bad.handle_server_first(b"r=cX,s=!!,i=4096").is_err());
    }

    #[test]
    fn wrong_keys_are_refused_and_a_forged_server_is_caught() {
        let verifier = ScramVerifier::from_password("right", b"salt", 4096);
        let other = ScramVerifier::from_password("wrong", b"salt", 4096);
        let keys = ScramKeys {
            client_key: [7; 32],
            server_key: other.server_key,
        };
        let mut upstream = ScramServer::new(verifier, "n".into());
        let mut pass = ScramKeysClient::new(keys, "c".into());
        let first = upstream.handle_client_first(&pass.client_first()).unwrap();
        let fin = pass.handle_server_first(&first).unwrap();
        assert_eq!(
            upstream.handle_client_final(&fin),
            Err(AuthError::InvalidPassword)
        );
        assert!(pass.handle_server_final(b"v=AAAA").is_err());
        assert!(pass.handle_server_final(b"e=invalid-proof").is_err());
        let mut fresh = ScramKeysClient::new(keys, "c".into());
        assert!(fresh.handle_server_first(b"r=x,s=AA==,i=1").is_err());
    }
}
