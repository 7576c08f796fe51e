//! Why a checkout from a Postgres pool failed.

use std::time::Duration;

use thiserror::Error;

use crate::upstream::PgUpstreamError;

/// Why a checkout failed.
#[derive(Debug, Error)]
pub enum PgPoolError {
    /// No connection became available within `pool_timeout`.
    #[error("timed out after {waited:?} waiting for a server connection from pool \"{pool}\" (pool_timeout {timeout:?})")]
    Timeout {
        /// Pool name.
        pool: String,
        /// How long the client waited.
        waited: Duration,
        /// The configured limit.
        timeout: Duration,
    },
    /// Opening a new server connection failed.
    #[error("pool \"{pool}\" could not connect to its upstream: {source}")]
    Connect {
        /// Pool name.
        pool: String,
        /// What went wrong.
        #[source]
        source: PgUpstreamError,
    },
    /// The pool is shutting down.
    #[error("pool \"{0}\" is closed")]
    Closed(String),
    /// No host of a multi-host database can take the transaction now (all banned, or no
    /// replica for a client that asked for one).
    #[error("database \"{database}\" has no usable host for {target} now")]
    NoHost {
        /// Database name.
        database: String,
        /// What the transaction wanted (`the primary`, `a replica`, ...).
        target: &'static str,
    },
}
