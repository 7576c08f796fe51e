//! The [`ScramKeys`] of a password, derived once per (password, salt, iteration count).
//!
//! Logging in to a server with a password costs a PBKDF2 of 4,096 HMAC-SHA-256 rounds
//! (PostgreSQL's default), about a millisecond of CPU: the pool paid it for every server
//! connection it opened, so a pool of 20 spent 20 ms of CPU filling up and every reconnect
//! (`server_lifetime`, a failover) paid again. A server keeps one salt per role, so the
//! keys are the same each time: they are derived once and then only HMACs are computed.
//!
//! Entries are found by a SHA-256 digest of the inputs, so the cache holds no copy of the
//! password; it is capped ([`CAP`]) and emptied when full (it holds one entry per role and
//! server secret in use).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use crate::{ScramKeys, ScramVerifier};

/// Most entries kept.
pub const CAP: usize = 1024;

/// The cache, locked (a panic elsewhere while it was held leaves whole entries only).
fn cache() -> std::sync::MutexGuard<'static, HashMap<[u8; 32], ScramKeys>> {
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], ScramKeys>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The keys `password` gives with `salt` and `iterations` (SASLprep applied, as
/// PostgreSQL does), from the cache when they were derived before.
pub fn password_keys(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
    let id = digest(password, salt, iterations);
    if let Some(keys) = cache().get(&id).copied() {
        return keys;
    }
    // Derived outside the lock: other pools' logins do not wait behind a PBKDF2.
    let keys = derive(password, salt, iterations);
    let mut map = cache();
    if map.len() >= CAP {
        map.clear();
    }
    map.insert(id, keys);
    keys
}

/// How many entries the cache holds (for tests and statistics).
pub fn cached_entries() -> usize {
    cache().len()
}

fn derive(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
    let salted = ScramVerifier::salted_password(password, salt, iterations);
    ScramKeys {
        client_key: crate::secret::hmac_sha256(&salted, &[b"Client Key"]),
        server_key: crate::secret::hmac_sha256(&salted, &[b"Server Key"]),
    }
}

/// Names one (password, salt, iterations) without keeping the password: lengths are
/// included so no two inputs share a byte string.
fn digest(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((salt.len() as u64).to_be_bytes());
    h.update(salt);
    h.update(iterations.to_be_bytes());
    h.update(password.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cached_keys_match_the_verifier_and_differ_by_salt() {
        let v = ScramVerifier::from_password("pässword", b"salt-one", 4096);
        let keys = password_keys("pässword", b"salt-one", 4096);
        let stored: [u8; 32] = Sha256::digest(keys.client_key).into();
        assert_eq!(stored, v.stored_key);
        assert_eq!(keys.server_key, v.server_key);
        // Served from the cache the second time, and the same.
        assert_eq!(password_keys("pässword", b"salt-one", 4096), keys);
        assert!(cached_entries() >= 1);
        assert_ne!(password_keys("pässword", b"salt-two", 4096), keys);
        assert_ne!(password_keys("pässword", b"salt-one", 4097), keys);
        assert_ne!(password_keys("password", b"salt-one", 4096), keys);
    }

    #[test]
    fn the_digest_separates_salt_from_password() {
        assert_ne!(digest("bc", b"a", 1), digest("c", b"ab", 1));
    }
}
