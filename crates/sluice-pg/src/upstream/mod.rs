//! Connections to upstream PostgreSQL servers: connect, authenticate as Sluice (whatever
//! the server asks: SCRAM-SHA-256, md5, cleartext or trust), collect ParameterStatus and
//! BackendKeyData, and small helpers to run a reset query on a pooled connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorFields, Message};
use sluice_config::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

mod error;
mod login;

pub(crate) use error::{proto, unexpected};
pub use error::{PgUpstreamError, UpstreamAuthError, UpstreamProtocolError, UpstreamTlsError};

use crate::protocol::messages;
use crate::state::ServerState;
use crate::tls::ServerStream;
use sluice_config::SslMode;

/// Parameters the server reported at startup (`server_version`, `TimeZone`, ...).
pub type ServerParams = Arc<[(String, String)]>;

/// Longest a ROLLBACK or reset query on a returned server may take before the server is
/// closed instead (a hung or stopped backend must not hold its slot, or its client, forever).
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What Sluice proves itself with when it logs in to a server as a pool's user.
#[derive(Clone, Default)]
pub enum UpstreamSecret {
    /// Nothing: only trust (or a server that asks for nothing) lets the login through.
    #[default]
    None,
    /// A password (from the upstream URL, or a configured user's plaintext secret).
    Password(String),
    /// A stored `md5(password || user)`: enough for the md5 method, not for SCRAM.
    Md5([u8; 16]),
    /// The keys a client's SCRAM login revealed (pass-through; SCRAM only).
    Scram(sluice_auth::ScramKeys),
}

impl UpstreamSecret {
    /// The secret an upstream URL carries.
    pub fn of(up: &Upstream) -> Self {
        up.password.clone().map_or(Self::None, Self::Password)
    }

    /// What a client's stored secret lets Sluice log in with as that user: a verifier
    /// needs the keys of a SCRAM login first (`None` here).
    pub fn from_client_secret(secret: &sluice_auth::Secret) -> Self {
        match secret {
            sluice_auth::Secret::Plain(p) => Self::Password(p.clone()),
            sluice_auth::Secret::Md5(h) => Self::Md5(*h),
            sluice_auth::Secret::Scram(_) => Self::None,
        }
    }

    /// Whether there is anything to log in with.
    pub fn is_none(&self) -> bool {
        matches!(self, Self::None)
    }
}

impl std::fmt::Debug for UpstreamSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "UpstreamSecret::None",
            Self::Password(_) => "UpstreamSecret::Password(<redacted>)",
            Self::Md5(_) => "UpstreamSecret::Md5(<redacted>)",
            Self::Scram(_) => "UpstreamSecret::Scram(<redacted>)",
        })
    }
}

/// The key needed to cancel a query running on one upstream backend.
#[derive(Debug, Clone)]
pub struct CancelKey {
    /// Where the backend's postmaster listens (shared: the key is copied into the client's
    /// cancel slot at every checkout, which must not allocate).
    pub host: std::sync::Arc<str>,
    /// Its port.
    pub port: u16,
    /// Backend process id from BackendKeyData.
    pub pid: i32,
    /// Secret from BackendKeyData.
    pub secret: i32,
}

/// One authenticated connection to an upstream server, idle at a ReadyForQuery boundary
/// when it sits in a pool.
#[derive(Debug)]
pub struct ServerConn {
    /// The socket (TLS when the database's sslmode asked for it).
    pub stream: ServerStream,
    /// Bytes read from the server but not yet forwarded (kept with the connection).
    pub buf: BytesMut,
    /// Parameters the server reported during startup.
    pub params: ServerParams,
    /// Cancel key of this backend.
    pub cancel: CancelKey,
    /// When the connection was opened (for lifetime limits and stats).
    pub created: Instant,
    /// Settings and prepared statements Sluice knows this session has.
    pub state: ServerState,
    /// Since when it has been idle in the pool (for `server_idle_timeout`).
    pub idle_since: Instant,
    /// When `server_lifetime` (with jitter) runs out, if set.
    pub expires: Option<Instant>,
}

impl ServerConn {
    /// Opens and authenticates a connection as `up.user` with `secret`, bounded by
    /// `timeout`.
    pub async fn connect(
        up: &Upstream,
        secret: &UpstreamSecret,
        timeout: Duration,
        tls: Option<&tokio_rustls::TlsConnector>,
        sslmode: SslMode,
    ) -> Result<ServerConn, PgUpstreamError> {
        tokio::time::timeout(timeout, login::connect(up, secret, tls, sslmode))
            .await
            .map_err(|_| PgUpstreamError::Timeout)?
    }

    /// True if an idle connection still looks alive: nothing buffered and the socket has
    /// neither data (e.g. a FATAL "terminating connection") nor EOF waiting.
    pub fn looks_alive(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let Some(tcp) = self.stream.tcp() else {
            return false;
        };
        // Only a socket the poller marked readable is peeked at (without consuming: a TLS
        // stream's bytes must stay in the socket); one that is not costs no syscall and,
        // unlike `poll_peek`, takes no waker slot.
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let peek = tcp.try_io(tokio::io::Interest::READABLE, || {
            socket2::SockRef::from(tcp).peek(&mut probe)
        });
        matches!(peek, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Runs `sql` as a simple query and waits for ReadyForQuery, discarding the results,
    /// at most [`CLEANUP_TIMEOUT`]. Returns the final transaction status. Used for ROLLBACK
    /// and the reset query on a server coming back: a hung server fails with
    /// [`PgUpstreamError::Timeout`] and the caller closes it.
    pub async fn run_simple(&mut self, sql: &str) -> Result<u8, PgUpstreamError> {
        let run = async {
            let mut out = BytesMut::new();
            messages::write_query(&mut out, sql.as_bytes());
            self.stream.write_all(&out).await?;
            self.drain_until_ready().await
        };
        tokio::time::timeout(CLEANUP_TIMEOUT, run)
            .await
            .map_err(|_| PgUpstreamError::Timeout)?
    }

    /// Runs a simple query (bytes in this connection's client encoding) and returns the
    /// columns of its first row (`None` if it returned no row). An ErrorResponse is
    /// returned as [`PgUpstreamError::Server`] once ReadyForQuery has arrived.
    pub async fn query_first_row(
        &mut self,
        sql: &[u8],
    ) -> Result<Option<Vec<Option<Vec<u8>>>>, PgUpstreamError> {
        let mut out = BytesMut::new();
        messages::write_query(&mut out, sql);
        self.first_row_of(&out).await
    }

    /// As [`ServerConn::query_first_row`], with `params` bound as text to `$1`, `$2`, ...
    /// (the extended protocol, so no value is ever spliced into SQL).
    pub async fn query_first_row_with(
        &mut self,
        sql: &[u8],
        params: &[&[u8]],
    ) -> Result<Option<Vec<Option<Vec<u8>>>>, PgUpstreamError> {
        let mut out = BytesMut::new();
        messages::write_one_shot(&mut out, sql, params);
        self.first_row_of(&out).await
    }

    /// Sends `request` and returns the first DataRow's columns up to ReadyForQuery.
    async fn first_row_of(
        &mut self,
        request: &[u8],
    ) -> Result<Option<Vec<Option<Vec<u8>>>>, PgUpstreamError> {
        self.stream.write_all(request).await?;
        let (mut row, mut err) = (None, None);
        loop {
            match read_message(&mut self.stream, &mut self.buf).await? {
                Message::ReadyForQuery(_) => {
                    return match err {
                        Some(e) => Err(e),
                        None => Ok(row),
                    }
                }
                Message::DataRow(body) if row.is_none() => {
                    let data = body.buffer();
                    let mut columns = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(r) = ranges.next().map_err(proto)? {
                        columns.push(r.map(|r| data[r].to_vec()));
                    }
                    row = Some(columns);
                }
                Message::ErrorResponse(body) => err = Some(server_error(body.fields())),
                _ => {}
            }
        }
    }

    /// Reads and discards messages until a ReadyForQuery; returns its status. An
    /// ErrorResponse along the way is returned as an error (after reaching ReadyForQuery).
    pub async fn drain_until_ready(&mut self) -> Result<u8, PgUpstreamError> {
        let mut err = None;
        loop {
            match read_message(&mut self.stream, &mut self.buf).await? {
                Message::ReadyForQuery(r) => {
                    return match err {
                        Some(e) => Err(e),
                        None => Ok(r.status()),
                    }
                }
                Message::ErrorResponse(body) => err = Some(server_error(body.fields())),
                _ => {}
            }
        }
    }
}

/// Extracts SQLSTATE and message from ErrorResponse fields.
pub fn server_error(mut fields: ErrorFields<'_>) -> PgUpstreamError {
    use postgres_protocol::message::backend::ErrorField;
    let mut code = String::new();
    let mut message = String::new();
    while let Ok(Some(f)) = fields.next() {
        let f: ErrorField<'_> = f;
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    PgUpstreamError::Server { code, message }
}

/// Reads one whole backend message, buffering partial input in `buf`.
async fn read_message(
    stream: &mut ServerStream,
    buf: &mut BytesMut,
) -> Result<Message, PgUpstreamError> {
    loop {
        if let Some(msg) = Message::parse(buf).map_err(proto)? {
            return Ok(msg);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(PgUpstreamError::Closed);
        }
    }
}
