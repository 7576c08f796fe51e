//! The configured users' credentials, rebuilt on reload (reusing unchanged verifiers), and
//! the comparisons a reload makes between two user lists.

use std::collections::HashMap;

use sluice_auth::Secret;
use sluice_config::PostgresConfig;

use super::{ContextError, UserAuth};

/// Whether two user lists have the same users with the same secrets.
pub(super) fn same_secrets(a: &HashMap<String, UserAuth>, b: &HashMap<String, UserAuth>) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(name, x)| b.get(name).is_some_and(|y| y.secret == x.secret))
}

/// Each user's own pool mode (`[[postgres.user_settings]]`), by name.
pub(super) fn user_modes(pg: &PostgresConfig) -> Vec<(&str, Option<sluice_config::PoolMode>)> {
    let mut modes: Vec<_> = pg
        .user_settings
        .iter()
        .map(|s| (s.name.as_str(), s.pool_mode))
        .collect();
    modes.sort_by(|a, b| a.0.cmp(b.0));
    modes
}

/// The credentials of the `[[postgres.users]]` list (and `auth_file`).
pub(super) fn configured_users(
    pg: &PostgresConfig,
) -> Result<HashMap<String, UserAuth>, ContextError> {
    refreshed_users(pg, &HashMap::new())
}

/// The credentials of `pg`'s users, reusing those of `before` whose secret is unchanged
/// (deriving a verifier from a password runs PBKDF2, and gives a new salt each time).
pub(super) fn refreshed_users(
    pg: &PostgresConfig,
    before: &HashMap<String, UserAuth>,
) -> Result<HashMap<String, UserAuth>, ContextError> {
    let mut configured = HashMap::new();
    for u in &pg.users {
        let secret = Secret::parse(&u.password).map_err(|source| ContextError::BadSecret {
            user: u.name.clone(),
            source,
        })?;
        let auth = match before.get(&u.name) {
            Some(old) if old.secret == secret => old.clone(),
            _ => {
                let scram = secret.scram_verifier();
                UserAuth { secret, scram }
            }
        };
        configured.insert(u.name.clone(), auth);
    }
    Ok(configured)
}
