//! The file layer of `[[postgres.databases]]` and `[[postgres.user_settings]]`: their
//! TOML schema as written, and how each entry becomes its validated form.

use serde::Deserialize;
use toml::Spanned;

use crate::database::{parse_address, split_hosts, HostConfig, HostRole};
use crate::model::{DatabaseConfig, PoolMode, SslMode, UserSettings};
use crate::source::Source;
use crate::upstream::Upstream;
use crate::ConfigError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDatabase {
    name: String,
    upstream: Spanned<String>,
    /// The upstream password, instead of one in the URL (no URL-encoding needed).
    password: Option<String>,
    /// A file holding `password` (a mounted secret).
    password_file: Option<String>,
    pool_size: Option<usize>,
    min_pool_size: Option<usize>,
    pool_mode: Option<PoolMode>,
    max_db_connections: Option<usize>,
    max_db_client_connections: Option<usize>,
    sslmode: Option<SslMode>,
    sslrootcert: Option<std::path::PathBuf>,
    hosts: Option<Vec<RawHost>>,
    read_write_split: Option<bool>,
}

/// One entry of a database's `hosts` list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    /// `host:port`.
    address: String,
    role: Option<HostRole>,
}

/// One `[[postgres.user_settings]]` entry (PgBouncer's `[users]`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUserSettings {
    name: String,
    pool_mode: Option<PoolMode>,
    pool_size: Option<usize>,
    max_user_connections: Option<usize>,
    max_user_client_connections: Option<usize>,
}

/// The `[[postgres.user_settings]]` list.
pub(crate) fn user_settings(raw: Vec<RawUserSettings>) -> Vec<UserSettings> {
    raw.into_iter()
        .map(|u| UserSettings {
            name: u.name,
            pool_mode: u.pool_mode,
            pool_size: u.pool_size,
            max_user_connections: u.max_user_connections,
            max_user_client_connections: u.max_user_client_connections,
        })
        .collect()
}

/// The `[[postgres.databases]]` list, with each upstream URL parsed.
pub(crate) fn databases(
    source: &Source<'_>,
    raw: Vec<RawDatabase>,
) -> Result<Vec<DatabaseConfig>, ConfigError> {
    raw.into_iter()
        .enumerate()
        .map(|(i, db)| database(source, i, db))
        .collect()
}

/// Entry `i` of `[[postgres.databases]]`.
fn database(source: &Source<'_>, i: usize, db: RawDatabase) -> Result<DatabaseConfig, ConfigError> {
    let key = |field: &str| format!("postgres.databases[{i}].{field}");
    let text = db.upstream.get_ref();
    let at = db.upstream.span().start;
    let (url, url_hosts) = split_hosts(text).map_err(|e| source.error(&key("upstream"), at, e))?;
    let mut upstream = Upstream::parse(&url).map_err(|e| source.error(&key("upstream"), at, e))?;
    if let Some(password) = crate::secrets::secret(&key("password"), db.password, db.password_file)?
    {
        if upstream.password.is_some() {
            return Err(ConfigError::invalid(
                key("password"),
                "the upstream URL has a password too: give one of them",
            ));
        }
        upstream.password = Some(password);
    }
    let hosts = match db.hosts {
        Some(list) => list
            .into_iter()
            .map(|h| {
                let (host, port) =
                    parse_address(&h.address).map_err(|e| ConfigError::invalid(key("hosts"), e))?;
                Ok(HostConfig {
                    host,
                    port,
                    role: h.role.unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?,
        None => url_hosts
            .into_iter()
            .map(|(host, port)| HostConfig {
                host,
                port,
                role: HostRole::Auto,
            })
            .collect(),
    };
    if let Some(first) = hosts.first() {
        // The URL's host is the first one (auth_query and single-host code use it).
        upstream.host.clone_from(&first.host);
        upstream.port = first.port;
    }
    Ok(DatabaseConfig {
        name: db.name,
        upstream,
        pool_size: db.pool_size,
        min_pool_size: db.min_pool_size,
        pool_mode: db.pool_mode,
        max_db_connections: db.max_db_connections,
        max_db_client_connections: db.max_db_client_connections,
        hosts,
        read_write_split: db.read_write_split.unwrap_or(false),
        sslmode: db.sslmode.unwrap_or_default(),
        sslrootcert: db.sslrootcert,
    })
}
