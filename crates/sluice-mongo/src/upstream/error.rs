//! Why an upstream connection could not be made or used.

use thiserror::Error;

use crate::scram_client::ScramError;
use crate::wire::WireError;

/// Why an upstream connection could not be made or used.
#[derive(Debug, Error)]
pub enum MongoUpstreamError {
    /// The URI is invalid or asks for something Sluice cannot do yet.
    #[error("mongo.upstream: {0}")]
    Uri(String),
    /// TCP connect or I/O failed.
    #[error("{addr}: {source}")]
    Io {
        /// Which host.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The upstream closed the connection.
    #[error("upstream closed the connection")]
    Closed,
    /// Connect + handshake + login took longer than `connect_timeout`.
    #[error("connecting to the upstream timed out")]
    Timeout,
    /// The upstream broke the wire protocol.
    #[error("upstream protocol error: {0}")]
    Wire(#[from] WireError),
    /// The upstream refused Sluice's login, or answered the handshake with an error.
    #[error("upstream refused {what}: {message}")]
    Refused {
        /// Which step.
        what: &'static str,
        /// The server's errmsg.
        message: String,
    },
    /// The SCRAM exchange failed on Sluice's side.
    #[error("upstream login: {0}")]
    Scram(#[from] ScramError),
    /// The URI's TLS files could not be loaded.
    #[error("mongo.upstream TLS: {0}")]
    Tls(#[from] sluice_tls::TlsError),
    /// The TLS handshake with the upstream failed (certificate not trusted, wrong host...).
    #[error("{addr}: TLS handshake: {source}")]
    Handshake {
        /// Which host.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No seed host is a writable primary.
    #[error("no writable primary among {0:?}")]
    NoPrimary(Vec<String>),
}
