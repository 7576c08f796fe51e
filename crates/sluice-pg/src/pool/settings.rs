//! What one pool is built from: its settings, resolved from the configuration.

use std::time::Duration;

use sluice_config::{PoolMode, Upstream};

/// Settings of one pool, resolved from the configuration.
#[derive(Clone)]
pub struct PoolSettings {
    /// Display name, `database/user`, used in errors and logs.
    pub name: String,
    /// Where and as whom to connect.
    pub upstream: Upstream,
    /// Most server connections this pool may hold.
    pub max_size: usize,
    /// Connections opened at start and kept open.
    pub min_size: usize,
    /// How long a client may wait for a connection.
    pub timeout: Duration,
    /// Bound on one connect + login.
    pub connect_timeout: Duration,
    /// Session or transaction pooling.
    pub mode: PoolMode,
    /// Query run before a used connection is reused (empty: none).
    pub reset_query: String,
    /// Connections beyond `max_size` for clients that waited `reserve_timeout`.
    pub reserve_size: usize,
    /// How long a client waits before the reserve may be used.
    pub reserve_timeout: Duration,
    /// Run on a server idle at least `check_delay` before it is handed out (empty: none).
    pub check_query: String,
    /// How long a server may sit idle and be handed out unchecked.
    pub check_delay: Duration,
    /// Keep a server with a client whose session state cannot follow it (transaction
    /// mode), at most `max_pinned` at once.
    pub pin_session_state: bool,
    /// Most servers pinned at once.
    pub max_pinned: usize,
    /// Per-server prepared statement cache size (0: no statement mapping).
    pub max_prepared_statements: usize,
    /// Close idle connections above `min_size` unused this long.
    pub server_idle_timeout: Option<Duration>,
    /// Close connections older than this (with up to 10% jitter).
    pub server_lifetime: Option<Duration>,
    /// Pause before retrying after the upstream refused a login.
    pub server_login_retry: Duration,
    /// Retry a refused or reset connect until `timeout`. Off for a replica of a database
    /// with several hosts: the failure bans the host and the transaction goes to another
    /// (set by the host's role, see [`super::PgPool::set_retry_connect`]).
    pub retry_connect: bool,
    /// TLS towards the upstream (`None`: sslmode disable).
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// libpq-style sslmode (prefer falls back to plaintext).
    pub sslmode: sluice_config::SslMode,
}

impl std::fmt::Debug for PoolSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSettings")
            .field("name", &self.name)
            .field("upstream", &self.upstream)
            .field("max_size", &self.max_size)
            .field("mode", &self.mode)
            .field("sslmode", &self.sslmode)
            .finish_non_exhaustive()
    }
}
