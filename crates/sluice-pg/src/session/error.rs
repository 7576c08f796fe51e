//! Session errors and the one place that maps them to ErrorResponse fields.

use thiserror::Error;

use crate::pool::PgPoolError;
use crate::protocol::backend::Severity;
use crate::protocol::ProtocolError;
use crate::upstream::PgUpstreamError;

/// Why a client session ended (or a request failed).
#[derive(Debug, Error)]
pub enum PgSessionError {
    /// The client socket failed.
    #[error("client I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol.
    #[error("client protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// The first packet's length is not a startup packet's: closed without an answer.
    #[error("invalid length of startup packet: {0}")]
    BadStartupPacket(ProtocolError),
    /// The StartupMessage named no user.
    #[error("no user name in startup packet")]
    MissingUser,
    /// The client asked for a database Sluice does not serve.
    #[error("unknown database \"{0}\"")]
    UnknownDatabase(String),
    /// The wildcard entry has made as many databases as it may.
    #[error("database \"{0}\" not made: the wildcard entry's limit of {1} databases is reached")]
    TooManyDatabases(String, usize),
    /// Wrong password or unknown user (deliberately indistinguishable to the client).
    #[error("authentication failed for user \"{0}\"")]
    AuthFailed(String),
    /// `auth_query` could not answer (PostgreSQL down, a bad query or privileges).
    #[error("{0}")]
    AuthQuery(crate::auth_query::AuthQueryError),
    /// The client's authentication messages broke the exchange Sluice offered.
    #[error("unsupported authentication response: {0}")]
    AuthProtocol(#[from] AuthProtocolError),
    /// `max_client_conn` reached.
    #[error("too many clients ({0} = {1})")]
    TooManyClients(&'static str, usize),
    /// A server connection could not be had.
    #[error(transparent)]
    PgPool(PgPoolError),
    /// The server connection broke while the client was using it.
    #[error("server connection lost: {0}")]
    ServerLost(#[from] PgUpstreamError),
    /// PostgreSQL refused a setting of the client's startup packet (as its own startup
    /// would: `FATAL: invalid value for parameter ...`).
    #[error("startup setting refused by the server: {code} {message}")]
    BadStartupSetting {
        /// The server's SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
    },
    /// Sluice is shutting down.
    #[error("shutting down")]
    Shutdown,
    /// `[postgres.tls] mode = "require"` and the client did not use TLS.
    #[error("plaintext login refused: TLS is required")]
    TlsRequired,
    /// The client did not finish logging in within `client_login_timeout`.
    #[error("client_login_timeout expired before the client authenticated")]
    LoginTimeout,
    /// The client held no server and sent nothing for `client_idle_timeout`.
    #[error("client_idle_timeout expired")]
    IdleTimeout,
    /// More than [`crate::notify::CLIENT_QUEUE`] notifications waited for the client.
    #[error("too many notifications waiting for the client")]
    NotificationsOverflow,
    /// The client sat in an open transaction for `idle_transaction_timeout`.
    #[error("idle_transaction_timeout expired")]
    IdleInTransactionTimeout,
    /// The client's pool was closed: its database was removed or changed by a reload.
    #[error("the pool was closed by a reload")]
    PoolClosed,
    /// The server had not answered a request for `query_timeout`.
    #[error("query_timeout expired")]
    QueryTimeout,
    /// The client's transaction had been open for `transaction_timeout`.
    #[error("transaction_timeout expired")]
    TransactionTimeout,
    /// A message exceeded `max_packet_size`.
    #[error("message of {len} bytes exceeds max_packet_size {max}")]
    PacketTooLarge {
        /// Declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// How a client's authentication messages went wrong.
#[derive(Debug, Error)]
pub enum AuthProtocolError {
    /// Another message came where a password message was due.
    #[error("expected a password message, got '{0}'")]
    NotPassword(char),
    /// The client chose a SASL mechanism Sluice did not offer.
    #[error("SASL mechanism \"{0}\" not supported")]
    Mechanism(String),
    /// A SCRAM message did not parse.
    #[error("malformed SCRAM message: {0}")]
    Scram(#[source] sluice_auth::AuthError),
}

impl From<crate::client_io::ClientIoError> for PgSessionError {
    fn from(e: crate::client_io::ClientIoError) -> Self {
        use crate::client_io::ClientIoError;
        match e {
            ClientIoError::Io(e) => PgSessionError::Io(e),
            ClientIoError::Protocol(e) => PgSessionError::Protocol(e),
            ClientIoError::BadStartupPacket(e) => PgSessionError::BadStartupPacket(e),
        }
    }
}

impl PgSessionError {
    /// The error for a client frame that cannot be read: a length over `max` (the
    /// `max_packet_size`) is [`PgSessionError::PacketTooLarge`], anything else a protocol error.
    pub(crate) fn client_frame(e: ProtocolError, max: usize) -> Self {
        match e {
            ProtocolError::BadLength { len, .. } if len > max as i64 => {
                PgSessionError::PacketTooLarge {
                    len: len as usize,
                    max,
                }
            }
            e => e.into(),
        }
    }

    /// Logs the error once, at a level that fits who caused it.
    pub fn log(&self, client: std::net::SocketAddr) {
        match self {
            PgSessionError::Io(_) => {
                tracing::debug!(%client, error = %self, "client session ended")
            }
            PgSessionError::Shutdown => tracing::debug!(%client, "client closed for shutdown"),
            PgSessionError::PgPool(_)
            | PgSessionError::ServerLost(_)
            | PgSessionError::AuthQuery(_) => {
                tracing::warn!(%client, error = %self, "client session failed")
            }
            _ => tracing::info!(%client, error = %self, "client rejected"),
        }
    }

    /// The ErrorResponse to send the client (severity, SQLSTATE, message), if the socket is
    /// still worth writing to.
    pub fn to_error_response(&self) -> Option<(Severity, &'static str, String)> {
        use Severity::Fatal;
        Some(match self {
            PgSessionError::Io(_) | PgSessionError::BadStartupPacket(_) => return None,
            PgSessionError::Protocol(e) => {
                (Fatal, "08P01", format!("invalid frontend message: {e}"))
            }
            PgSessionError::MissingUser => (
                Fatal,
                "28000",
                "no PostgreSQL user name specified in startup packet".into(),
            ),
            PgSessionError::UnknownDatabase(db) => {
                (Fatal, "3D000", format!("database \"{db}\" does not exist"))
            }
            PgSessionError::TooManyDatabases(..) => (Fatal, "53300", self.to_string()),
            PgSessionError::AuthFailed(user) => (
                Fatal,
                "28P01",
                format!("password authentication failed for user \"{user}\""),
            ),
            PgSessionError::AuthProtocol(what) => (Fatal, "08P01", what.to_string()),
            PgSessionError::TooManyClients(key, max) => (
                Fatal,
                "53300",
                format!("sorry, too many clients already ({key} = {max})"),
            ),
            PgSessionError::PgPool(e) => {
                let (code, msg) = pool_error_fields(e);
                (Fatal, code, msg)
            }
            PgSessionError::ServerLost(_) | PgSessionError::AuthQuery(_) => {
                (Fatal, "08006", self.to_string())
            }
            PgSessionError::BadStartupSetting { code, message } => {
                // The SQLSTATEs set_config() raises; the field must be 'static here.
                let code = match code.as_str() {
                    "42704" => "42704",
                    "42501" => "42501",
                    "55P02" => "55P02",
                    _ => "22023",
                };
                (Fatal, code, message.clone())
            }
            PgSessionError::TlsRequired => (
                Fatal,
                "28000",
                "SSL/TLS is required: connect with sslmode=require or stronger".into(),
            ),
            PgSessionError::LoginTimeout
            | PgSessionError::IdleTimeout
            | PgSessionError::IdleInTransactionTimeout
            | PgSessionError::QueryTimeout
            | PgSessionError::TransactionTimeout
            | PgSessionError::PoolClosed => {
                let (code, message) = self.fixed_fields();
                (Fatal, code, message.into())
            }
            PgSessionError::NotificationsOverflow => (
                Fatal,
                "53400",
                format!(
                    "terminating connection: more than {} notifications were waiting for this \
                     client (it does not read them fast enough)",
                    crate::notify::CLIENT_QUEUE
                ),
            ),
            PgSessionError::PacketTooLarge { len, max } => (
                Fatal,
                "08P01",
                format!("message of {len} bytes exceeds max_packet_size ({max})"),
            ),
            PgSessionError::Shutdown => (
                Fatal,
                "57P01",
                "terminating connection because Sluice is shutting down".into(),
            ),
        })
    }
}

impl PgSessionError {
    /// SQLSTATE and message of the errors that end a session with a fixed text: the
    /// timeouts (PostgreSQL's codes for the same events) and a pool closed by a reload.
    fn fixed_fields(&self) -> (&'static str, &'static str) {
        match self {
            PgSessionError::PoolClosed => (
                "57P01",
                "terminating connection: its pool was closed (the database was removed or \
                 changed by a configuration reload, or Sluice is shutting down); reconnect",
            ),
            PgSessionError::LoginTimeout => (
                "08006",
                "terminating connection: client_login_timeout expired before authentication",
            ),
            PgSessionError::IdleTimeout => (
                "57P05",
                "terminating connection due to idle-session timeout (client_idle_timeout)",
            ),
            PgSessionError::IdleInTransactionTimeout => (
                "25P03",
                "terminating connection due to idle-in-transaction timeout \
                 (idle_transaction_timeout); the transaction was rolled back",
            ),
            PgSessionError::QueryTimeout => (
                "57014",
                "terminating connection: the server did not answer within query_timeout; \
                 the query was cancelled",
            ),
            _ => (
                "25P04",
                "terminating connection due to transaction timeout (transaction_timeout); \
                 the transaction was rolled back",
            ),
        }
    }
}

/// SQLSTATE and message for a failed checkout (sent as ERROR mid-session, FATAL at login).
pub fn pool_error_fields(e: &PgPoolError) -> (&'static str, String) {
    match e {
        PgPoolError::Timeout { .. } => ("53300", e.to_string()),
        PgPoolError::Connect {
            source: PgUpstreamError::Server { code, message },
            pool,
        } => {
            // Keep the server's own class where it is one clients know about.
            let code = match code.as_str() {
                "28P01" => "28P01",
                "28000" => "28000",
                "3D000" => "3D000",
                "53300" => "53300",
                "57P03" => "57P03",
                _ => "08006",
            };
            (
                code,
                format!("pool \"{pool}\": upstream refused the connection: {message}"),
            )
        }
        PgPoolError::Connect { .. } => ("08006", e.to_string()),
        PgPoolError::Closed(_) => ("57P01", e.to_string()),
        PgPoolError::NoHost { .. } => ("08006", e.to_string()),
    }
}
