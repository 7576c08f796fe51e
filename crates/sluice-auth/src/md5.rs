//! PostgreSQL md5 password authentication (AuthenticationMD5Password).

use md5::{Digest, Md5};

use crate::{ct_eq, hex_encode, Secret};

/// Checks a client's PasswordMessage answer to AuthenticationMD5Password
/// against a stored secret.
///
/// The expected answer is `"md5" + hex(md5(hex(md5(password || user)) ||
/// salt))`. `secret` may be [`Secret::Plain`] or [`Secret::Md5`]; a
/// [`Secret::Scram`] verifier cannot check md5 answers and always gives
/// `false`. A single trailing NUL byte (the C string terminator of the
/// PasswordMessage) is tolerated. The comparison is constant time.
pub fn md5_verify(secret: &Secret, user: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let inner = match secret {
        Secret::Plain(password) => {
            let mut h = Md5::new();
            h.update(password.as_bytes());
            h.update(user.as_bytes());
            hex_encode(&h.finalize())
        }
        Secret::Md5(hash) => hex_encode(hash),
        Secret::Scram(_) => return false,
    };
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    let expected = format!("md5{}", hex_encode(&h.finalize()));
    let response = response.strip_suffix(&[0]).unwrap_or(response);
    ct_eq(expected.as_bytes(), response)
}

/// The PasswordMessage text a client sends in answer to
/// AuthenticationMD5Password for (`user`, `password`, `salt`); used by the
/// proxy to authenticate to an upstream server that asks for md5.
pub fn md5_response(user: &str, password: &str, salt: [u8; 4]) -> String {
    postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt)
}

/// The md5 answer computed from a stored `md5(password || user)` hash rather than the
/// password: PostgreSQL's md5 method only ever needs that hash.
pub fn md5_response_from_hash(hash: &[u8; 16], salt: [u8; 4]) -> String {
    let mut h = Md5::new();
    h.update(hex_encode(hash).as_bytes());
    h.update(salt);
    format!("md5{}", hex_encode(&h.finalize()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // md5(md5("password" + "postgres") hex + salt), cross-checked with
        // the stored hash PostgreSQL computes for this user/password.
        let salt = [0x01, 0x02, 0x03, 0x04];
        let resp = md5_response("postgres", "password", salt);
        assert_eq!(resp.len(), 35);
        assert!(resp.starts_with("md5"));
        let stored = Secret::parse("md532e12f215ba27cb750c9e093ce4b5127").unwrap();
        assert!(matches!(stored, Secret::Md5(_)));
        assert!(md5_verify(&stored, "postgres", salt, resp.as_bytes()));
        let Secret::Md5(hash) = stored else {
            unreachable!()
        };
        assert_eq!(md5_response_from_hash(&hash, salt), resp);
    }
}
