//! Cross-field validation rules.

use std::collections::HashMap;
use std::time::Duration;

use crate::model::{
    AuthType, ClientTlsConfig, DatabaseConfig, HostRole, MongoConfig, PostgresConfig,
};
use crate::{Config, ConfigError};

/// Database names reserved for the admin console.
pub const RESERVED_DATABASE_NAMES: &[&str] = &["sluice", "pgbouncer"];

/// Implementation of [`Config::validate`].
pub(crate) fn validate(config: &Config) -> Result<(), ConfigError> {
    let pg = &config.postgres;
    validate_postgres(pg)?;
    if let Some(mongo) = &config.mongo {
        validate_mongo(mongo)?;
    }
    if pg.databases.is_empty() && config.mongo.is_none() {
        return Err(ConfigError::invalid(
            "postgres.databases",
            "at least one database is required",
        ));
    }
    let mut seen = HashMap::new();
    for (i, db) in pg.databases.iter().enumerate() {
        validate_database(pg, i, db, &mut seen)?;
    }
    let users = users("postgres", &pg.users)?;
    validate_user_settings(pg)?;
    validate_admin_users(pg, &users)?;
    validate_auth_user(pg)
}

/// `auth_user` is a configured user whose secret can log in upstream (not a verifier),
/// and `auth_query` has the `$1` it is run with.
fn validate_auth_user(pg: &PostgresConfig) -> Result<(), ConfigError> {
    let Some(name) = &pg.auth_user else {
        return Ok(());
    };
    let Some(user) = pg.users.iter().find(|u| &u.name == name) else {
        return Err(ConfigError::invalid(
            "postgres.auth_user",
            format!(
                "{name:?} is not in [[postgres.users]] or auth_file, where its password must be"
            ),
        ));
    };
    if user.password.starts_with("SCRAM-SHA-256$") {
        return Err(ConfigError::invalid(
            "postgres.auth_user",
            format!(
                "{name:?} has a SCRAM verifier, which cannot log in to the server; give its \
                 password (or password_file)"
            ),
        ));
    }
    if !pg.auth_query.contains("$1") {
        return Err(ConfigError::invalid(
            "postgres.auth_query",
            "must take the user name as $1",
        ));
    }
    Ok(())
}

/// Rules for the `[postgres]` settings (not its lists).
fn validate_postgres(pg: &PostgresConfig) -> Result<(), ConfigError> {
    at_least_one("postgres.max_client_conn", pg.max_client_conn)?;
    at_least_one("postgres.pool_size", pg.pool_size)?;
    at_least_one(
        "postgres.prepared_statement_registry_size",
        pg.prepared_statement_registry_size,
    )?;
    if pg.min_pool_size > pg.pool_size {
        return Err(ConfigError::invalid(
            "postgres.min_pool_size",
            format!(
                "must not exceed postgres.pool_size (got {} > {})",
                pg.min_pool_size, pg.pool_size
            ),
        ));
    }
    positive("postgres.pool_timeout", pg.pool_timeout)?;
    positive("postgres.server_connect_timeout", pg.server_connect_timeout)?;
    positive("postgres.health_check_interval", pg.health_check_interval)?;
    client_tls("postgres.tls", &pg.tls)?;
    for (i, db) in pg.databases.iter().enumerate() {
        if matches!(
            db.sslmode,
            crate::SslMode::VerifyCa | crate::SslMode::VerifyFull
        ) && db.sslrootcert.is_none()
        {
            return Err(ConfigError::invalid(
                format!("postgres.databases[{i}].sslrootcert"),
                "required with sslmode verify-ca or verify-full",
            ));
        }
    }
    if !(16 * 1024..=0x3fff_ffff).contains(&pg.max_packet_size) {
        return Err(ConfigError::invalid(
            "postgres.max_packet_size",
            format!(
                "must be between 16384 and 1073741823 (PostgreSQL's limit), got {}",
                pg.max_packet_size
            ),
        ));
    }
    Ok(())
}

/// Rules for `postgres.databases[i]`; `seen` collects the names so far.
fn validate_database<'a>(
    pg: &PostgresConfig,
    i: usize,
    db: &'a DatabaseConfig,
    seen: &mut HashMap<&'a str, usize>,
) -> Result<(), ConfigError> {
    let key = |field: &str| format!("postgres.databases[{i}].{field}");
    if db.name.is_empty() {
        return Err(ConfigError::invalid(key("name"), "must not be empty"));
    }
    if RESERVED_DATABASE_NAMES.contains(&db.name.as_str()) {
        return Err(ConfigError::invalid(
            key("name"),
            format!("{:?} is reserved for the admin console", db.name),
        ));
    }
    if let Some(first) = seen.insert(db.name.as_str(), i) {
        return Err(ConfigError::invalid(
            key("name"),
            format!(
                "duplicate database name {:?} (also postgres.databases[{first}])",
                db.name
            ),
        ));
    }
    if db.upstream.host.is_empty() {
        return Err(ConfigError::invalid(key("upstream"), "missing host"));
    }
    validate_hosts(i, db)?;
    if db.upstream.forwards_user() && pg.users.is_empty() {
        return Err(ConfigError::invalid(
            key("upstream"),
            "names no user, so each client logs in upstream as itself; that needs \
             [[postgres.users]] (or auth_file) to say who may connect, optionally with \
             auth_user for auth_query",
        ));
    }
    if let Some(size) = db.pool_size {
        at_least_one(&key("pool_size"), size)?;
    }
    let (size, min) = (db.pool_size(pg), db.min_pool_size(pg));
    if min > size {
        return Err(ConfigError::invalid(
            key("min_pool_size"),
            format!("must not exceed the database's pool_size (got {min} > {size})"),
        ));
    }
    if pg.users.is_empty() && pg.auth_type != AuthType::Trust && db.upstream.password.is_none() {
        return Err(ConfigError::invalid(
            key("upstream"),
            "has no password, but clients authenticate with the upstream credentials \
             when no [[postgres.users]] are configured; add a password, \
             configure [[postgres.users]], or set auth_type = \"trust\"",
        ));
    }
    Ok(())
}

/// The `hosts` of `postgres.databases[i]`: at most one primary, and an upstream user for
/// the health check.
fn validate_hosts(i: usize, db: &DatabaseConfig) -> Result<(), ConfigError> {
    let key = |field: &str| format!("postgres.databases[{i}].{field}");
    if db
        .hosts
        .iter()
        .filter(|h| h.role == HostRole::Primary)
        .count()
        > 1
    {
        return Err(ConfigError::invalid(
            key("hosts"),
            "at most one host may have role \"primary\"",
        ));
    }
    if db.hosts.len() > 1 && db.upstream.forwards_user() {
        return Err(ConfigError::invalid(
            key("upstream"),
            "a database with several hosts needs a user in its upstream URL: the health \
             check logs in as it",
        ));
    }
    Ok(())
}

/// `[[postgres.user_settings]]`: names present and unique, pool sizes at least 1.
fn validate_user_settings(pg: &PostgresConfig) -> Result<(), ConfigError> {
    let mut seen = HashMap::new();
    for (i, s) in pg.user_settings.iter().enumerate() {
        let key = |field: &str| format!("postgres.user_settings[{i}].{field}");
        if s.name.is_empty() {
            return Err(ConfigError::invalid(key("name"), "must not be empty"));
        }
        if let Some(first) = seen.insert(s.name.as_str(), i) {
            return Err(ConfigError::invalid(
                key("name"),
                format!(
                    "duplicate user {:?} (also postgres.user_settings[{first}])",
                    s.name
                ),
            ));
        }
        if let Some(size) = s.pool_size {
            at_least_one(&key("pool_size"), size)?;
        }
    }
    Ok(())
}

/// Every `postgres.admin_users` entry names a user who can log in: a configured user, or
/// with none configured, a database's upstream user.
fn validate_admin_users(
    pg: &PostgresConfig,
    users: &HashMap<&str, usize>,
) -> Result<(), ConfigError> {
    for (i, admin) in pg.admin_users.iter().enumerate() {
        let known = if pg.users.is_empty() {
            pg.databases.iter().any(|d| &d.upstream.user == admin)
        } else {
            users.contains_key(admin.as_str())
        };
        if !known {
            return Err(ConfigError::invalid(
                format!("postgres.admin_users[{i}]"),
                format!(
                    "{admin:?} is not a configured user (list it in [[postgres.users]], or \
                     with no users, use a database's upstream user)"
                ),
            ));
        }
    }
    Ok(())
}

/// Rules for the `[mongo]` section.
fn validate_mongo(mongo: &MongoConfig) -> Result<(), ConfigError> {
    at_least_one("mongo.max_pool_size", mongo.max_pool_size)?;
    if mongo.min_pool_size > mongo.max_pool_size {
        return Err(ConfigError::invalid(
            "mongo.min_pool_size",
            format!(
                "must not exceed mongo.max_pool_size (got {} > {})",
                mongo.min_pool_size, mongo.max_pool_size
            ),
        ));
    }
    positive("mongo.pool_timeout", mongo.pool_timeout)?;
    positive("mongo.connect_timeout", mongo.connect_timeout)?;
    at_least_one("mongo.max_client_conn", mongo.max_client_conn)?;
    client_tls("mongo.tls", &mongo.tls)?;
    if mongo.users.is_empty() && !mongo.listen.ip().is_loopback() {
        return Err(ConfigError::invalid(
            "mongo.listen",
            format!(
                "{} is not a loopback address, so clients must authenticate: \
                 configure [[mongo.users]] (or listen on 127.0.0.1)",
                mongo.listen
            ),
        ));
    }
    users("mongo", &mongo.users)?;
    Ok(())
}

/// A `tls` table that turns TLS on names both the certificate and the key.
fn client_tls(key: &str, tls: &ClientTlsConfig) -> Result<(), ConfigError> {
    if tls.mode != crate::ClientTlsMode::Disable
        && (tls.cert_file.is_none() || tls.key_file.is_none())
    {
        return Err(ConfigError::invalid(
            key,
            "mode \"allow\" or \"require\" needs cert_file and key_file",
        ));
    }
    Ok(())
}

fn at_least_one(key: &str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(
            key,
            format!("must be at least 1 (got {value})"),
        ));
    }
    Ok(())
}

fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(key, "must be greater than zero"));
    }
    Ok(())
}

/// Checks a `[[<section>.users]]` list (names present and unique, passwords present) and
/// returns the names with their index.
fn users<'a>(
    section: &str,
    list: &'a [crate::model::UserConfig],
) -> Result<HashMap<&'a str, usize>, ConfigError> {
    let mut seen = HashMap::new();
    for (i, user) in list.iter().enumerate() {
        let key = |field: &str| format!("{section}.users[{i}].{field}");
        if user.name.is_empty() {
            return Err(ConfigError::invalid(key("name"), "must not be empty"));
        }
        if let Some(first) = seen.insert(user.name.as_str(), i) {
            return Err(ConfigError::invalid(
                key("name"),
                format!(
                    "duplicate user name {:?} (also {section}.users[{first}])",
                    user.name
                ),
            ));
        }
        if user.password.is_empty() {
            return Err(ConfigError::invalid(key("password"), "must not be empty"));
        }
    }
    Ok(seen)
}
