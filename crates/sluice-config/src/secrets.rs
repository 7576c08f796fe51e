//! Credentials in the configuration: user lists (inline, `password_file`, PgBouncer's
//! `auth_file`) and `*_file` secrets.

use crate::{ConfigError, UserConfig};

/// A `[[<section>.users]]` entry as written.
pub(crate) struct UserEntry {
    pub(crate) name: String,
    pub(crate) password: Option<String>,
    pub(crate) password_file: Option<String>,
}

/// A `[[<section>.users]]` list; each password is given inline or in a `password_file`.
pub(crate) fn users(section: &str, raw: Vec<UserEntry>) -> Result<Vec<UserConfig>, ConfigError> {
    raw.into_iter()
        .map(|user| {
            let key = format!("{section}.users.password_file");
            let password = secret(&key, user.password, user.password_file)?.ok_or_else(|| {
                ConfigError::invalid(
                    format!("{section}.users"),
                    format!("user {:?} needs password or password_file", user.name),
                )
            })?;
            Ok(UserConfig {
                name: user.name,
                password,
            })
        })
        .collect()
}

/// The users of a PgBouncer `auth_file`; a name also in `[[postgres.users]]` is an error.
pub(crate) fn auth_file_users(
    path: &str,
    listed: &[UserConfig],
) -> Result<Vec<UserConfig>, ConfigError> {
    let key = "postgres.auth_file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {path}: {e}")))?;
    let users = crate::userlist::parse(&text)
        .map_err(|e| ConfigError::invalid(key, format!("{path}: {e}")))?;
    users
        .into_iter()
        .map(|(name, password)| {
            if listed.iter().any(|u| u.name == name) {
                return Err(ConfigError::invalid(
                    key,
                    format!("{path}: user {name:?} is also in [[postgres.users]]"),
                ));
            }
            Ok(UserConfig { name, password })
        })
        .collect()
}

/// A secret given inline or as `*_file` (not both).
pub(crate) fn secret(
    file_key: &str,
    inline: Option<String>,
    file: Option<String>,
) -> Result<Option<String>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            file_key,
            "give the value or the file, not both",
        )),
        (None, Some(path)) => crate::expand::read_secret_file(file_key, &path).map(Some),
        (inline, None) => Ok(inline),
    }
}
