//! Server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677), as PostgreSQL does it.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::secret::{hmac_sha256, DEFAULT_ITERATIONS, DEFAULT_SALT_LEN};
use crate::{ct_eq, AuthError, ScramKeys, ScramVerifier};

/// Number of random bytes in a server nonce (before base64), as PostgreSQL.
const SERVER_NONCE_BYTES: usize = 18;

/// Server side of one SCRAM-SHA-256 exchange with a client.
///
/// No channel binding is offered: the client's gs2 header must be `n,,` or
/// `y,,`; `p=…` is rejected with [`AuthError::UnsupportedChannelBinding`].
/// The `n=` user name inside client-first-message is ignored, as PostgreSQL
/// does (the user comes from the startup packet). Errors are sticky: once a
/// step failed, every later call returns an error.
pub struct ScramServer {
    verifier: ScramVerifier,
    server_nonce: String,
    /// Unknown user: go through the motions, always fail at the end.
    failing: bool,
    state: State,
}

enum State {
    /// Waiting for client-first-message.
    Initial,
    /// server-first-message sent; waiting for client-final-message.
    SentFirst {
        gs2_header: &'static [u8],
        /// client-first-message-bare + "," + server-first-message, the
        /// first part of AuthMessage.
        auth_prefix: String,
        /// client nonce + server nonce.
        nonce: String,
    },
    /// Finished successfully; the ClientKey the client's proof revealed.
    Done { client_key: [u8; 32] },
    /// Failed; sticky.
    Failed,
}

impl ScramServer {
    /// Starts an exchange for a known user with the given verifier.
    ///
    /// `server_nonce` is the server's nonce part; callers pass
    /// [`ScramServer::random_nonce`] (tests inject a fixed one to replay a
    /// recorded exchange). It must be printable ASCII without `,`.
    pub fn new(verifier: ScramVerifier, server_nonce: String) -> Self {
        ScramServer {
            verifier,
            server_nonce,
            failing: false,
            state: State::Initial,
        }
    }

    /// Starts a believable exchange for an unknown user that always fails at
    /// the final step with [`AuthError::InvalidPassword`], so an attacker
    /// cannot tell an unknown user from a wrong password.
    ///
    /// The salt is derived deterministically from `user` and a per-process
    /// random key, so repeated attempts for the same name see the same salt;
    /// the iteration count is PostgreSQL's default 4096.
    pub fn new_failing(user: &str, server_nonce: String) -> Self {
        let key = mock_key();
        let digest = hmac_sha256(key, &[b"salt\0", user.as_bytes()]);
        let salt: Vec<u8> = digest.iter().copied().take(DEFAULT_SALT_LEN).collect();
        let stored_key = hmac_sha256(key, &[b"stored\0", user.as_bytes()]);
        let server_key = hmac_sha256(key, &[b"server\0", user.as_bytes()]);
        ScramServer {
            verifier: ScramVerifier {
                iterations: DEFAULT_ITERATIONS,
                salt,
                stored_key,
                server_key,
            },
            server_nonce,
            failing: true,
            state: State::Initial,
        }
    }

    /// A fresh server nonce: 18 random bytes, base64-encoded (as PostgreSQL).
    pub fn random_nonce() -> String {
        let mut bytes = [0u8; SERVER_NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        STANDARD.encode(bytes)
    }

    /// Handles the data of the client's SASLInitialResponse
    /// (client-first-message) and returns the server-first-message to send
    /// in AuthenticationSASLContinue.
    pub fn handle_client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, State::Initial) {
            return self.fail(AuthError::InvalidState);
        }
        match self.client_first(msg) {
            Ok((state, reply)) => {
                self.state = state;
                Ok(reply)
            }
            Err(e) => self.fail(e),
        }
    }

    /// Handles the data of the client's SASLResponse (client-final-message)
    /// and returns the server-final-message (`v=…`) to send in
    /// AuthenticationSASLFinal, or [`AuthError::InvalidPassword`] when the
    /// client's proof is wrong (always, for [`ScramServer::new_failing`]).
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, AuthError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let State::SentFirst {
            gs2_header,
            auth_prefix,
            nonce,
        } = state
        else {
            return Err(AuthError::InvalidState);
        };
        let (reply, client_key) = self.client_final(msg, gs2_header, &auth_prefix, &nonce)?;
        self.state = State::Done { client_key };
        Ok(reply)
    }

    /// Whether the exchange completed successfully.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done { .. })
    }

    /// After a successful exchange, the client's ClientKey (its proof XOR the client
    /// signature) and the verifier's ServerKey: what logs in to a PostgreSQL server that
    /// holds the same verifier, as this user, without the password (SCRAM pass-through).
    pub fn keys(&self) -> Option<ScramKeys> {
        match self.state {
            State::Done { client_key } => Some(ScramKeys {
                client_key,
                server_key: self.verifier.server_key,
            }),
            _ => None,
        }
    }

    fn fail<T>(&mut self, e: AuthError) -> Result<T, AuthError> {
        self.state = State::Failed;
        Err(e)
    }

    fn client_first(&self, msg: &[u8]) -> Result<(State, Vec<u8>), AuthError> {
        let msg = std::str::from_utf8(msg)
            .map_err(|_| AuthError::Malformed("client-first-message is not UTF-8"))?;
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (gs2_header, rest): (&'static [u8], &str) = if let Some(r) = msg.strip_prefix("n,") {
            (b"n,,", r)
        } else if let Some(r) = msg.strip_prefix("y,") {
            (b"y,,", r)
        } else if msg.starts_with("p=") {
            return Err(AuthError::UnsupportedChannelBinding);
        } else {
            return Err(AuthError::Malformed(
                "client-first-message has an invalid channel binding flag",
            ));
        };
        if rest.starts_with("a=") {
            return Err(AuthError::Unsupported("authorization identity"));
        }
        let bare = rest.strip_prefix(',').ok_or(AuthError::Malformed(
            "client-first-message has an invalid gs2 header",
        ))?;
        if bare.starts_with("m=") {
            return Err(AuthError::Unsupported("mandatory SCRAM extension"));
        }
        let mut attrs = bare.split(',');
        // The user name is ignored (PostgreSQL uses the startup packet's).
        attr(attrs.next(), "n=", "client-first-message lacks n=")?;
        let client_nonce = attr(attrs.next(), "r=", "client-first-message lacks r=")?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(is_printable) {
            return Err(AuthError::Malformed("client nonce is invalid"));
        }
        check_extensions(attrs)?;

        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let auth_prefix = format!("{bare},{server_first}");
        let state = State::SentFirst {
            gs2_header,
            auth_prefix,
            nonce,
        };
        Ok((state, server_first.into_bytes()))
    }

    fn client_final(
        &self,
        msg: &[u8],
        gs2_header: &[u8],
        auth_prefix: &str,
        nonce: &str,
    ) -> Result<(Vec<u8>, [u8; 32]), AuthError> {
        let msg = std::str::from_utf8(msg)
            .map_err(|_| AuthError::Malformed("client-final-message is not UTF-8"))?;
        // client-final-message-without-proof "," proof, proof is last.
        let idx = msg
            .rfind(",p=")
            .ok_or(AuthError::Malformed("client-final-message lacks p="))?;
        let (without_proof, proof_attr) = msg.split_at(idx);
        let proof_b64 = proof_attr.get(3..).unwrap_or("");
        let mut attrs = without_proof.split(',');
        let cbind = attr(attrs.next(), "c=", "client-final-message lacks c=")?;
        let cbind = STANDARD
            .decode(cbind)
            .map_err(|_| AuthError::Malformed("channel binding data is not valid base64"))?;
        if cbind != gs2_header {
            return Err(AuthError::Malformed(
                "channel binding data does not match the gs2 header",
            ));
        }
        let client_nonce = attr(attrs.next(), "r=", "client-final-message lacks r=")?;
        if client_nonce != nonce {
            return Err(AuthError::Malformed("nonce mismatch"));
        }
        check_extensions(attrs)?;
        let proof = STANDARD
            .decode(proof_b64)
            .map_err(|_| AuthError::Malformed("client proof is not valid base64"))?;
        let proof = <[u8; 32]>::try_from(proof.as_slice())
            .map_err(|_| AuthError::Malformed("client proof has the wrong length"))?;

        let auth_message = format!("{auth_prefix},{without_proof}");
        let v = &self.verifier;
        let client_signature = hmac_sha256(&v.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        let ok = ct_eq(&computed, &v.stored_key);
        if !ok || self.failing {
            return Err(AuthError::InvalidPassword);
        }
        let server_signature = hmac_sha256(&v.server_key, &[auth_message.as_bytes()]);
        let reply = format!("v={}", STANDARD.encode(server_signature)).into_bytes();
        Ok((reply, client_key))
    }
}

/// Per-process random key for deriving believable salts for unknown users.
fn mock_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        key
    })
}

/// printable = %x21-2B / %x2D-7E (RFC 5802, nonce characters).
fn is_printable(c: u8) -> bool {
    (0x21..=0x7e).contains(&c) && c != b','
}

/// Returns the value of an attribute that must be `prefix…`.
fn attr<'a>(
    part: Option<&'a str>,
    prefix: &str,
    missing: &'static str,
) -> Result<&'a str, AuthError> {
    part.and_then(|p| p.strip_prefix(prefix))
        .ok_or(AuthError::Malformed(missing))
}

/// Optional trailing extensions: each must look like `x=value`.
fn check_extensions<'a>(attrs: impl Iterator<Item = &'a str>) -> Result<(), AuthError> {
    for a in attrs {
        let mut bytes = a.bytes();
        let well_formed = matches!(
            (bytes.next(), bytes.next()),
            (Some(k), Some(b'=')) if k.is_ascii_alphabetic()
        );
        if !well_formed {
            return Err(AuthError::Malformed("invalid SCRAM attribute"));
        }
    }
    Ok(())
}
