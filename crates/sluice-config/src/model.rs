//! The validated configuration types handed to the proxy.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use crate::database::{DatabaseConfig, HostConfig, HostRole, SslMode};
pub use crate::modes::{AuthType, PoolMode};

/// Process-wide settings (`[general]`).
#[derive(Debug, Clone, PartialEq)]
pub struct GeneralConfig {
    /// How long a graceful shutdown waits for clients before closing them.
    pub shutdown_timeout: Duration,
    /// Runtime threads: 1 (the default) = one event loop on one thread, as PgBouncer,
    /// with the lowest CPU per query; n = a multi-threaded runtime with n workers; 0 = one
    /// worker per CPU. More than one only helps when the proxy needs more than a core.
    pub worker_threads: usize,
}

impl Default for GeneralConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: Duration::from_secs(30),
            worker_threads: 1,
        }
    }
}

/// The HTTP admin listener (`[admin]`): health, pool statistics, metrics, reload.
#[derive(Clone, PartialEq)]
pub struct AdminConfig {
    /// Serve the admin listener at all.
    pub enabled: bool,
    /// Address of the admin listener.
    pub listen: SocketAddr,
    /// Bearer token required on `/admin/*` (None: no token needed).
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9930)),
            token: None,
        }
    }
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// PostgreSQL proxy settings (`[postgres]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Default pool mode for databases that do not override it.
    pub pool_mode: PoolMode,
    /// Maximum number of simultaneous client connections.
    pub max_client_conn: usize,
    /// Most clients of one database at once (0: no limit), PgBouncer's
    /// `max_db_client_connections`.
    pub max_db_client_connections: usize,
    /// Most clients of one user at once (0: no limit), `max_user_client_connections`.
    pub max_user_client_connections: usize,
    /// Most server connections of all pools of one database together (0: no limit).
    pub max_db_connections: usize,
    /// Most server connections of all pools of one user together (0: no limit).
    pub max_user_connections: usize,
    /// Default maximum number of server connections per database pool.
    pub pool_size: usize,
    /// Default number of server connections kept open per database pool.
    pub min_pool_size: usize,
    /// How long a client waits for a server connection before getting an error.
    pub pool_timeout: Duration,
    /// Query run on a server connection before reuse; empty means none.
    pub server_reset_query: String,
    /// Transaction mode: a client whose transaction left state that cannot follow it (a
    /// temp table, a WITH HOLD cursor, a session advisory lock, an SQL `PREPARE`) keeps
    /// that server until the state is gone, instead of the server being reset.
    pub pin_session_state: bool,
    /// Most servers of one pool pinned at once (None: half the pool size); beyond it the
    /// server is reset as without pinning, and the client is warned once.
    pub max_pinned_servers: Option<usize>,
    /// How clients authenticate to the proxy.
    pub auth_type: AuthType,
    /// How long connecting (and logging in) to a server may take.
    pub server_connect_timeout: Duration,
    /// TLS towards clients.
    pub tls: ClientTlsConfig,
    /// Per-server cache of shared prepared statements in transaction mode; 0 disables
    /// statement mapping (named statements then only work inside one transaction).
    pub max_prepared_statements: usize,
    /// Most distinct statements each pool's shared registry indexes (transaction mode).
    /// A statement leaves the registry as soon as no client and no server holds it; past
    /// this many, the least recently parsed are dropped from it (their holders keep them;
    /// the next Parse of that text gets a new server-side name). At least 1; default 10,000.
    pub prepared_statement_registry_size: usize,
    /// Largest message accepted from an authenticated client, in bytes (PostgreSQL's own
    /// limit, 1 GiB - 1, is the outer bound).
    pub max_packet_size: usize,
    /// How long a client may take from connecting to finishing authentication (no slowloris). 0 disables.
    pub client_login_timeout: Duration,
    /// Close a client that holds no server and sends nothing for this long. 0 disables.
    pub client_idle_timeout: Duration,
    /// Take the server back from a client idle inside a transaction for this long: the transaction is rolled back and the client gets an error and is disconnected. 0 disables.
    pub idle_transaction_timeout: Duration,
    /// Extra server connections per pool a client may open once it has waited
    /// `reserve_pool_timeout` (PgBouncer's `reserve_pool_size`; 0: none).
    pub reserve_pool_size: usize,
    /// How long a client waits before the reserve may be used.
    pub reserve_pool_timeout: Duration,
    /// Run on a server connection idle at least `server_check_delay` before it is handed
    /// to a client; a failure closes it and another is taken. Empty: no check.
    pub server_check_query: String,
    /// How long a returned server may sit idle and still be handed out unchecked.
    pub server_check_delay: Duration,
    /// A request the server has not finished answering after this long is cancelled and
    /// the client disconnected (PgBouncer's `query_timeout`). 0 disables.
    pub query_timeout: Duration,
    /// A client whose transaction has been open this long is disconnected and the
    /// transaction rolled back (`transaction_timeout`). 0 disables.
    pub transaction_timeout: Duration,
    /// Close idle server connections above min_pool_size unused for this long. 0 disables.
    pub server_idle_timeout: Duration,
    /// Close server connections older than this (each gets up to 10% random jitter, so a pool does not reconnect all at once) when they are next idle. 0 disables.
    pub server_lifetime: Duration,
    /// After the upstream refused a login (bad credentials, no such database), wait this long before trying again (doubling on each further failure, up to 8 times); clients get the error meanwhile.
    pub server_login_retry: Duration,
    /// Databases clients can connect to.
    pub databases: Vec<DatabaseConfig>,
    /// Users allowed to connect; empty means the upstream URL credentials are used.
    /// Includes the users of `auth_file`.
    pub users: Vec<UserConfig>,
    /// PgBouncer's userlist.txt the users were also read from, if any.
    pub auth_file: Option<std::path::PathBuf>,
    /// PgBouncer's `auth_user`: a user of `users` (plaintext password or md5 hash) as whom
    /// Sluice runs `auth_query` to fetch the secret of a user it does not know. None: only
    /// `users` may log in.
    pub auth_user: Option<String>,
    /// The query that returns `(name, secret)` for the user name `$1`; run on the client's
    /// database, as `auth_user`.
    pub auth_query: String,
    /// How long a secret fetched by `auth_query` (or the absence of one) is trusted; a
    /// failed login with a cached secret drops it at once.
    pub auth_cache_ttl: Duration,
    /// Users (from `users`) allowed into the SQL admin console (database `sluice` or
    /// `pgbouncer`).
    pub admin_users: Vec<String>,
    /// Per-user overrides (`[[postgres.user_settings]]`, PgBouncer's `[users]`).
    pub user_settings: Vec<UserSettings>,
    /// How long a host of a multi-host database that failed a connect or a health
    /// check (or lagged past `max_replica_lag`) is left out.
    pub ban_time: Duration,
    /// How often each host of a multi-host database is checked.
    pub health_check_interval: Duration,
    /// Most replication lag a replica may have and still take reads (0: no limit).
    pub max_replica_lag: Duration,
}

/// One user's settings, overriding the database's and the global ones as PgBouncer's
/// `[users]` section does; they apply to the user whether it is configured or let in by
/// `auth_query`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserSettings {
    /// The client user name they apply to.
    pub name: String,
    /// Pool mode of this user's pools, over the database's.
    pub pool_mode: Option<PoolMode>,
    /// Most server connections of each of this user's pools, over the database's.
    pub pool_size: Option<usize>,
    /// Most server connections of this user across databases (0: no limit).
    pub max_user_connections: Option<usize>,
    /// Most clients of this user at once (0: no limit).
    pub max_user_client_connections: Option<usize>,
}

/// PgBouncer's default `auth_query`.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1";

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 6432)),
            pool_mode: PoolMode::Transaction,
            max_client_conn: 10_000,
            max_db_client_connections: 0,
            max_user_client_connections: 0,
            max_db_connections: 0,
            max_user_connections: 0,
            pool_size: 15,
            min_pool_size: 5,
            pool_timeout: Duration::from_secs(30),
            server_reset_query: "DISCARD ALL".to_owned(),
            pin_session_state: true,
            max_pinned_servers: None,
            auth_type: AuthType::ScramSha256,
            server_connect_timeout: Duration::from_secs(5),
            tls: ClientTlsConfig::default(),
            max_prepared_statements: 200,
            prepared_statement_registry_size: 10_000,
            max_packet_size: 64 * 1024 * 1024,
            client_login_timeout: Duration::from_secs(60),
            client_idle_timeout: Duration::from_secs(0),
            idle_transaction_timeout: Duration::from_secs(0),
            reserve_pool_size: 0,
            reserve_pool_timeout: Duration::from_secs(5),
            server_check_query: "select 1".to_owned(),
            server_check_delay: Duration::from_secs(30),
            query_timeout: Duration::ZERO,
            transaction_timeout: Duration::ZERO,
            server_idle_timeout: Duration::from_secs(600),
            server_lifetime: Duration::from_secs(3600),
            server_login_retry: Duration::from_secs(5),
            databases: Vec::new(),
            users: Vec::new(),
            user_settings: Vec::new(),
            ban_time: Duration::from_secs(60),
            health_check_interval: Duration::from_secs(5),
            max_replica_lag: Duration::ZERO,
            auth_file: None,
            auth_user: None,
            auth_query: DEFAULT_AUTH_QUERY.to_owned(),
            auth_cache_ttl: Duration::from_secs(60),
            admin_users: Vec::new(),
        }
    }
}

impl PostgresConfig {
    /// Finds a database by the name clients ask for.
    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|db| db.name == name)
    }

    /// Finds a configured user by name.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|user| user.name == name)
    }

    /// The `[[postgres.user_settings]]` entry of `user`, if it has one.
    pub fn user_settings(&self, user: &str) -> Option<&UserSettings> {
        self.user_settings.iter().find(|s| s.name == user)
    }

    /// `max_user_connections` for `user`: its own setting, or the global one.
    pub fn max_user_connections_of(&self, user: &str) -> usize {
        self.user_settings(user)
            .and_then(|s| s.max_user_connections)
            .unwrap_or(self.max_user_connections)
    }

    /// `max_user_client_connections` for `user`: its own setting, or the global one.
    pub fn max_user_client_connections_of(&self, user: &str) -> usize {
        self.user_settings(user)
            .and_then(|s| s.max_user_client_connections)
            .unwrap_or(self.max_user_client_connections)
    }
}

/// MongoDB proxy settings (`[mongo]`); the MongoDB listener runs only when this section
/// is present.
#[derive(Clone, PartialEq)]
pub struct MongoConfig {
    /// Address MongoDB clients connect to.
    pub listen: SocketAddr,
    /// The upstream MongoDB URI, with Sluice's own credentials. Kept as text: the MongoDB
    /// crate parses it (hosts, replicaSet, authSource, TLS options, `mongodb+srv`), so this
    /// crate only checks the scheme.
    pub upstream: String,
    /// Most upstream connections open at once.
    pub max_pool_size: usize,
    /// Upstream connections opened at start and kept.
    pub min_pool_size: usize,
    /// How long a request may wait for an upstream connection.
    pub pool_timeout: Duration,
    /// How long connecting (handshake and login) to the upstream may take.
    pub connect_timeout: Duration,
    /// Most client connections open at once (every connection counts, drivers' monitoring
    /// connections included); the next one gets an error document and is closed.
    pub max_client_conn: usize,
    /// How long a client that has not logged in may stay silent: from connecting, and
    /// (with `users`) from each reply until it authenticates, since drivers' monitoring
    /// connections send only `hello` and never log in. Without `users`, the first request
    /// must arrive within it. 0 disables.
    pub client_login_timeout: Duration,
    /// Close a logged-in client that sent nothing for this long while it had no request
    /// in flight, no open cursor and no pinned transaction. 0 disables (the default).
    pub client_idle_timeout: Duration,
    /// TLS towards clients (`[mongo.tls]`; told from plaintext by the first bytes).
    pub tls: ClientTlsConfig,
    /// Compressors offered to the upstream, in order; empty (the default): none.
    pub compressors: Vec<crate::MongoCompressor>,
    /// Users who may log in to Sluice (SCRAM-SHA-256); empty means clients need not
    /// authenticate, which validation allows only on a loopback listener.
    pub users: Vec<UserConfig>,
}

impl MongoConfig {
    /// The upstream URI with any password replaced by `***` (for logs and `Debug`).
    pub fn upstream_redacted(&self) -> String {
        let uri = &self.upstream;
        let Some((scheme, rest)) = uri.split_once("://") else {
            return uri.clone();
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                let user = rest[..at].split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***{}", &rest[at..])
            }
            None => uri.clone(),
        }
    }
}

impl fmt::Debug for MongoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoConfig")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream_redacted())
            .field("max_pool_size", &self.max_pool_size)
            .field("min_pool_size", &self.min_pool_size)
            .field("pool_timeout", &self.pool_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_client_conn", &self.max_client_conn)
            .field("client_login_timeout", &self.client_login_timeout)
            .field("client_idle_timeout", &self.client_idle_timeout)
            .field("tls", &self.tls)
            .field("compressors", &self.compressors)
            .field("users", &self.users)
            .finish()
    }
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 27018)),
            upstream: String::new(),
            max_pool_size: 20,
            min_pool_size: 5,
            pool_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_client_conn: 10_000,
            client_login_timeout: Duration::from_secs(60),
            client_idle_timeout: Duration::ZERO,
            tls: ClientTlsConfig::default(),
            compressors: Vec::new(),
            users: Vec::new(),
        }
    }
}

/// TLS towards clients (`[postgres.tls]`, `[mongo.tls]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTlsConfig {
    /// Whether clients may, must or cannot use TLS.
    pub mode: ClientTlsMode,
    /// Certificate chain (PEM) Sluice presents.
    pub cert_file: Option<std::path::PathBuf>,
    /// Private key (PEM) for `cert_file`.
    pub key_file: Option<std::path::PathBuf>,
}

/// Whether clients use TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    /// No TLS (the default; PostgreSQL's SSLRequest is answered `N`).
    #[default]
    Disable,
    /// TLS when the client asks (SSLRequest, or a MongoDB ClientHello), else plaintext.
    Allow,
    /// Plaintext clients are refused (MongoDB: closed before their first request).
    Require,
}

/// A user allowed to connect to the proxy (`[[postgres.users]]`).
#[derive(Clone, PartialEq, Eq)]
pub struct UserConfig {
    /// User name clients log in with.
    pub name: String,
    /// A SCRAM verifier (`SCRAM-SHA-256$...`), an md5 hash (`md5` + 32 hex digits) or plaintext.
    pub password: String,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password", &"***")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_parse_and_display() {
        assert_eq!("Session".parse::<PoolMode>(), Ok(PoolMode::Session));
        assert_eq!(PoolMode::Transaction.to_string(), "transaction");
        assert!("statement".parse::<PoolMode>().is_err());
        assert_eq!(
            "scram-sha-256".parse::<AuthType>(),
            Ok(AuthType::ScramSha256)
        );
        assert_eq!("MD5".parse::<AuthType>(), Ok(AuthType::Md5));
        assert_eq!(AuthType::Trust.to_string(), "trust");
        assert!("password".parse::<AuthType>().is_err());
    }

    #[test]
    fn user_debug_hides_password() {
        let user = UserConfig {
            name: "app".into(),
            password: "hunter2".into(),
        };
        let debug = format!("{user:?}");
        assert!(
            debug.contains("app") && !debug.contains("hunter2"),
            "{debug}"
        );
    }
}
