//! One `[[postgres.databases]]` entry: its upstream host or hosts (with their roles), its
//! per-database overrides, and TLS towards it.

use crate::model::{PoolMode, PostgresConfig};
use crate::upstream::Upstream;

/// One database clients can connect to (`[[postgres.databases]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseConfig {
    /// The database name clients ask for.
    pub name: String,
    /// The server this database is pooled to.
    pub upstream: Upstream,
    /// Per-database override of `postgres.pool_size`.
    pub pool_size: Option<usize>,
    /// Per-database override of `postgres.min_pool_size`.
    pub min_pool_size: Option<usize>,
    /// Per-database override of `postgres.pool_mode`.
    pub pool_mode: Option<PoolMode>,
    /// Per-database override of `postgres.max_db_connections` (0: no limit).
    pub max_db_connections: Option<usize>,
    /// Per-database override of `postgres.max_db_client_connections` (0: no limit).
    pub max_db_client_connections: Option<usize>,
    /// Every upstream host with its role (`hosts = [...]` or a multi-host URL); empty:
    /// the upstream URL's one host. The URL's host is the first one.
    pub hosts: Vec<HostConfig>,
    /// Sends a transaction that is one read-only statement (or begins `READ ONLY`) to
    /// the least busy healthy replica.
    pub read_write_split: bool,
    /// TLS towards this database's server.
    pub sslmode: SslMode,
    /// CA certificates (PEM) that verify the server for `verify-ca` / `verify-full`.
    pub sslrootcert: Option<std::path::PathBuf>,
}

/// TLS towards an upstream server, with libpq's names and meanings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, without verifying the certificate (the default).
    #[default]
    Prefer,
    /// TLS always, without verifying the certificate.
    Require,
    /// TLS always; the certificate must chain to `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the upstream host.
    VerifyFull,
}

impl DatabaseConfig {
    /// Whether `other` pools to the same server in the same way (upstream with its
    /// credentials, TLS; the caller compares the pool modes in force): a reload keeps the
    /// database's pools only then.
    pub fn same_upstream(&self, other: &DatabaseConfig) -> bool {
        self.upstream == other.upstream
            && self.hosts == other.hosts
            && self.sslmode == other.sslmode
            && self.sslrootcert == other.sslrootcert
    }

    /// Effective `max_db_connections` for this database.
    pub fn max_db_connections(&self, pg: &PostgresConfig) -> usize {
        self.max_db_connections.unwrap_or(pg.max_db_connections)
    }

    /// Effective `max_db_client_connections` for this database.
    pub fn max_db_client_connections(&self, pg: &PostgresConfig) -> usize {
        self.max_db_client_connections
            .unwrap_or(pg.max_db_client_connections)
    }

    /// Effective maximum pool size for this database.
    pub fn pool_size(&self, pg: &PostgresConfig) -> usize {
        self.pool_size.unwrap_or(pg.pool_size)
    }

    /// Effective minimum pool size for this database.
    ///
    /// An inherited (global) minimum is capped at this database's pool size; an
    /// explicit per-database minimum is returned as is (validation ensures it fits).
    pub fn min_pool_size(&self, pg: &PostgresConfig) -> usize {
        self.min_pool_size
            .unwrap_or_else(|| pg.min_pool_size.min(self.pool_size(pg)))
    }

    /// Effective pool mode for this database.
    pub fn pool_mode(&self, pg: &PostgresConfig) -> PoolMode {
        self.pool_mode.unwrap_or(pg.pool_mode)
    }

    /// Pool mode of `user`'s pool here: the user's own, else the database's (PgBouncer's
    /// order).
    pub fn pool_mode_for(&self, pg: &PostgresConfig, user: &str) -> PoolMode {
        pg.user_settings(user)
            .and_then(|s| s.pool_mode)
            .unwrap_or_else(|| self.pool_mode(pg))
    }

    /// Size of `user`'s pool here: the user's own, else the database's (PgBouncer's order).
    pub fn pool_size_for(&self, pg: &PostgresConfig, user: &str) -> usize {
        pg.user_settings(user)
            .and_then(|s| s.pool_size)
            .unwrap_or_else(|| self.pool_size(pg))
    }
}

/// What a host of a database is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRole {
    /// Takes writes and transactions (and reads when no replica is healthy).
    Primary,
    /// Takes reads only.
    Replica,
    /// Found with `pg_is_in_recovery()` by the health check, so a promoted replica
    /// becomes the primary without a restart.
    #[default]
    Auto,
}

impl std::fmt::Display for HostRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostRole::Primary => "primary",
            HostRole::Replica => "replica",
            HostRole::Auto => "auto",
        })
    }
}

/// One upstream host of a database.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostConfig {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// What it is for.
    pub role: HostRole,
}

impl HostConfig {
    /// `host:port` (IPv6 in brackets), as shown in statistics and logs.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses `host[:port]` (IPv6 in brackets); the port defaults to 5432.
pub(crate) fn parse_address(text: &str) -> Result<(String, u16), String> {
    let text = text.trim();
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: unclosed ["))?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{text:?}: no host"));
    }
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("{text:?}: {p:?} is not a port"))?,
        None => crate::upstream::DEFAULT_PORT,
    };
    Ok((host.to_owned(), port))
}

/// Splits a libpq-style multi-host URL (`postgres://u:p@a:5432,b:5433/db`) into the
/// URL with its first host and every host; a one-host URL gives no hosts.
pub(crate) fn split_hosts(url: &str) -> Result<(String, Vec<(String, u16)>), String> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let hosts_start = authority.rfind('@').map_or(0, |i| i + 1);
    let list = &authority[hosts_start..];
    if !list.contains(',') {
        return Ok((url.to_owned(), Vec::new()));
    }
    let hosts = list
        .split(',')
        .map(parse_address)
        .collect::<Result<Vec<_>, _>>()?;
    let first = list.split(',').next().unwrap_or_default();
    let single = format!(
        "{}{}{}{}",
        &url[..scheme_end],
        &authority[..hosts_start],
        first,
        &rest[authority_end..]
    );
    Ok((single, hosts))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn multi_host_urls_split_into_their_hosts() {
        let (url, hosts) = split_hosts("postgres://u:p@a:5432,b,[::1]:5434/db").unwrap();
        assert_eq!(url, "postgres://u:p@a:5432/db");
        assert_eq!(
            hosts,
            vec![
                ("a".to_owned(), 5432),
                ("b".to_owned(), 5432),
                ("::1".to_owned(), 5434)
            ]
        );
        let (url, hosts) = split_hosts("postgres://u@h:1/db").unwrap();
        assert_eq!((url.as_str(), hosts.len()), ("postgres://u@h:1/db", 0));
        assert!(split_hosts("postgres://u@a:x,b/db").is_err());
        assert!(split_hosts("postgres://u@,b/db").is_err());
        assert_eq!(parse_address("h:7").unwrap(), ("h".to_owned(), 7));
    }
}
