//! Why talking to an upstream PostgreSQL server failed. Cloneable (one failed connect is
//! reported to every client waiting on it), so sources are shared behind `Arc`.

use std::sync::Arc;

use sluice_config::SslMode;
use thiserror::Error;

use crate::protocol::ProtocolError;

/// Why talking to an upstream server failed.
#[derive(Debug, Error)]
pub enum PgUpstreamError {
    /// TCP connect, read or write failed.
    #[error("upstream I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("upstream closed the connection")]
    Closed,
    /// The connect or login took longer than `server_connect_timeout`.
    #[error("timed out connecting to upstream")]
    Timeout,
    /// The server answered with an ErrorResponse.
    #[error("upstream error {code}: {message}")]
    Server {
        /// SQLSTATE.
        code: String,
        /// Primary message.
        message: String,
    },
    /// The server asked for something Sluice cannot answer (no password, GSS, ...).
    #[error("upstream authentication not possible: {0}")]
    Auth(#[from] UpstreamAuthError),
    /// The TLS handshake failed or the server refused TLS that sslmode requires.
    #[error("upstream TLS: {0}")]
    Tls(#[from] UpstreamTlsError),
    /// The server sent bytes that are not valid protocol, or not what was owed.
    #[error("upstream protocol error: {0}")]
    Protocol(#[from] UpstreamProtocolError),
}

/// Why Sluice could not log in to the server (as opposed to the server refusing it).
#[derive(Debug, Clone, Error)]
pub enum UpstreamAuthError {
    /// The server asked for a password and the upstream URL has none.
    #[error("server asked for a password; none configured")]
    NoPassword,
    /// The server offered only SASL mechanisms Sluice does not speak.
    #[error("no supported SASL mechanism")]
    NoMechanism,
    /// The server's SCRAM message could not be used.
    #[error("{0}")]
    Scram(Arc<std::io::Error>),
    /// The server's SCRAM signature did not verify: it does not know the password.
    #[error("server signature: {0}")]
    ServerSignature(Arc<std::io::Error>),
    /// An authentication request Sluice does not answer (GSS, SSPI, ...).
    #[error("unsupported authentication request")]
    Unsupported,
}

/// Why the TLS layer towards the server failed.
#[derive(Debug, Clone, Error)]
pub enum UpstreamTlsError {
    /// The host is not a name or address a certificate can be checked against.
    #[error("bad TLS server name {host}: {source}")]
    ServerName {
        /// The configured host.
        host: String,
        /// Why rustls refused it.
        source: Arc<rustls::pki_types::InvalidDnsNameError>,
    },
    /// The handshake failed.
    #[error("{0}")]
    Handshake(Arc<std::io::Error>),
    /// The server answered the SSLRequest with `N` and sslmode requires TLS.
    #[error("server does not support SSL, but sslmode is {0:?}")]
    Refused(SslMode),
}

/// What in the server's bytes was not valid protocol, or not what was owed.
#[derive(Debug, Clone, Error)]
pub enum UpstreamProtocolError {
    /// A message did not decode.
    #[error("{0}")]
    Decode(Arc<std::io::Error>),
    /// A framing error in what the server sent through the relay.
    #[error("{0}")]
    Frame(#[from] ProtocolError),
    /// A message that makes no sense at this point.
    #[error("unexpected {0}")]
    Unexpected(&'static str),
    /// The answer to SSLRequest was neither `S` nor `N`.
    #[error("unexpected answer {0:#x} to SSLRequest")]
    SslAnswer(u8),
    /// A ROLLBACK left the connection inside a transaction.
    #[error("not idle after ROLLBACK")]
    NotIdleAfterRollback,
    /// A ROLLBACK the login needed failed.
    #[error("ROLLBACK failed: {0}")]
    Rollback(Box<PgUpstreamError>),
}

impl Clone for PgUpstreamError {
    fn clone(&self) -> Self {
        match self {
            PgUpstreamError::Io(e) => {
                PgUpstreamError::Io(std::io::Error::new(e.kind(), e.to_string()))
            }
            PgUpstreamError::Closed => PgUpstreamError::Closed,
            PgUpstreamError::Timeout => PgUpstreamError::Timeout,
            PgUpstreamError::Server { code, message } => PgUpstreamError::Server {
                code: code.clone(),
                message: message.clone(),
            },
            PgUpstreamError::Auth(e) => PgUpstreamError::Auth(e.clone()),
            PgUpstreamError::Protocol(e) => PgUpstreamError::Protocol(e.clone()),
            PgUpstreamError::Tls(e) => PgUpstreamError::Tls(e.clone()),
        }
    }
}

impl PgUpstreamError {
    /// True when retrying soon may succeed (server down or starting), false for errors a
    /// retry cannot fix (bad credentials, unknown database).
    pub fn is_transient(&self) -> bool {
        match self {
            PgUpstreamError::Io(_) | PgUpstreamError::Closed | PgUpstreamError::Timeout => true,
            // 57P03 cannot_connect_now (starting up / shutting down), 53300 too many connections,
            // 57P01 admin shutdown.
            PgUpstreamError::Server { code, .. } => {
                matches!(code.as_str(), "57P03" | "53300" | "57P01")
            }
            PgUpstreamError::Auth(_) | PgUpstreamError::Protocol(_) | PgUpstreamError::Tls(_) => {
                false
            }
        }
    }
}

/// A decoding failure of a server message.
pub(crate) fn proto(e: std::io::Error) -> PgUpstreamError {
    UpstreamProtocolError::Decode(Arc::new(e)).into()
}

/// A message that makes no sense at this point.
pub(crate) fn unexpected(what: &'static str) -> PgUpstreamError {
    UpstreamProtocolError::Unexpected(what).into()
}
