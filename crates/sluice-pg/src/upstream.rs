//! Connections to upstream PostgreSQL servers: connect, authenticate as Sluice (whatever
//! the server asks: SCRAM-SHA-256, md5, cleartext or trust), collect ParameterStatus and
//! BackendKeyData, and small helpers to run a reset query on a pooled connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use sluice_config::Upstream;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::protocol::{messages, startup};
use crate::state::ServerState;
use crate::tls::{MaybeTls, ServerStream};
use rustls::pki_types::ServerName;
use sluice_config::SslMode;

/// Parameters the server reported at startup (`server_version`, `TimeZone`, ...).
pub type ServerParams = Arc<[(String, String)]>;

/// Why talking to an upstream server failed.
#[derive(Debug, Error)]
pub enum UpstreamError {
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
    Auth(String),
    /// The TLS handshake failed or the server refused TLS that sslmode requires.
    #[error("upstream TLS: {0}")]
    Tls(String),
    /// The server sent bytes that are not valid protocol.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
}

impl Clone for UpstreamError {
    fn clone(&self) -> Self {
        match self {
            UpstreamError::Io(e) => UpstreamError::Io(std::io::Error::new(e.kind(), e.to_string())),
            UpstreamError::Closed => UpstreamError::Closed,
            UpstreamError::Timeout => UpstreamError::Timeout,
            UpstreamError::Server { code, message } => UpstreamError::Server {
                code: code.clone(),
                message: message.clone(),
            },
            UpstreamError::Auth(m) => UpstreamError::Auth(m.clone()),
            UpstreamError::Protocol(m) => UpstreamError::Protocol(m.clone()),
            UpstreamError::Tls(m) => UpstreamError::Tls(m.clone()),
        }
    }
}

impl UpstreamError {
    /// True when retrying soon may succeed (server down or starting), false for errors a
    /// retry cannot fix (bad credentials, unknown database).
    pub fn is_transient(&self) -> bool {
        match self {
            UpstreamError::Io(_) | UpstreamError::Closed | UpstreamError::Timeout => true,
            // 57P03 cannot_connect_now (starting up / shutting down), 53300 too many connections,
            // 57P01 admin shutdown.
            UpstreamError::Server { code, .. } => {
                matches!(code.as_str(), "57P03" | "53300" | "57P01")
            }
            UpstreamError::Auth(_) | UpstreamError::Protocol(_) | UpstreamError::Tls(_) => false,
        }
    }
}

/// Longest a ROLLBACK or reset query on a returned server may take before the server is
/// closed instead (a hung or stopped backend must not hold its slot, or its client, forever).
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The key needed to cancel a query running on one upstream backend.
#[derive(Debug, Clone)]
pub struct CancelKey {
    /// Where the backend's postmaster listens.
    pub host: String,
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
    /// Opens and authenticates a connection, bounded by `timeout`.
    pub async fn connect(
        up: &Upstream,
        timeout: Duration,
        tls: Option<&tokio_rustls::TlsConnector>,
        sslmode: SslMode,
    ) -> Result<ServerConn, UpstreamError> {
        tokio::time::timeout(timeout, Self::connect_inner(up, tls, sslmode))
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    /// TCP connect, then SSLRequest and the TLS handshake when configured.
    async fn open(
        up: &Upstream,
        tls: Option<&tokio_rustls::TlsConnector>,
        sslmode: SslMode,
    ) -> Result<ServerStream, UpstreamError> {
        let mut tcp = TcpStream::connect((up.host.as_str(), up.port)).await?;
        tcp.set_nodelay(true)?;
        let Some(connector) = tls else {
            return Ok(MaybeTls::Plain(tcp));
        };
        tcp.write_all(&startup::SSL_REQUEST_PACKET).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match answer[0] {
            startup::SSL_ACCEPTED => {
                let name = ServerName::try_from(up.host.clone()).map_err(|e| {
                    UpstreamError::Auth(format!("bad TLS server name {}: {e}", up.host))
                })?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| UpstreamError::Tls(e.to_string()))?;
                Ok(MaybeTls::Tls(Box::new(stream)))
            }
            startup::SSL_REFUSED if sslmode == SslMode::Prefer => Ok(MaybeTls::Plain(tcp)),
            startup::SSL_REFUSED => Err(UpstreamError::Tls(format!(
                "server does not support SSL, but sslmode is {sslmode:?}"
            ))),
            other => Err(UpstreamError::Protocol(format!(
                "unexpected answer {other:#x} to SSLRequest"
            ))),
        }
    }

    async fn connect_inner(
        up: &Upstream,
        tls: Option<&tokio_rustls::TlsConnector>,
        sslmode: SslMode,
    ) -> Result<ServerConn, UpstreamError> {
        let mut stream = Self::open(up, tls, sslmode).await?;
        let mut out = Vec::with_capacity(128);
        startup::write_startup(
            &mut out,
            &[
                ("user", up.user.as_str()),
                ("database", up.database.as_str()),
                ("application_name", "sluice"),
            ],
        );
        stream.write_all(&out).await?;
        let mut buf = BytesMut::with_capacity(8192);
        let mut scram: Option<ScramSha256> = None;
        let mut params = Vec::new();
        let mut key = (0, 0);
        loop {
            let msg = read_message(&mut stream, &mut buf).await?;
            let mut reply = BytesMut::new();
            match msg {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password(up)?.as_bytes(), &mut reply)
                        .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = sluice_auth::md5_response(&up.user, password(up)?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut reply)
                        .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechs = body.mechanisms();
                    let mut found = false;
                    while let Some(m) = mechs.next().map_err(proto)? {
                        found |= m == SCRAM_SHA_256;
                    }
                    if !found {
                        return Err(UpstreamError::Auth("no supported SASL mechanism".into()));
                    }
                    let s =
                        ScramSha256::new(password(up)?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut reply)
                        .map_err(proto)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| unexpected("SASLContinue"))?;
                    s.update(body.data())
                        .map_err(|e| UpstreamError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut reply).map_err(proto)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let mut s = scram.take().ok_or_else(|| unexpected("SASLFinal"))?;
                    s.finish(body.data())
                        .map_err(|e| UpstreamError::Auth(format!("server signature: {e}")))?;
                }
                Message::ParameterStatus(body) => {
                    let name = body.name().map_err(proto)?.to_owned();
                    let value = body.value().map_err(proto)?.to_owned();
                    params.push((name, value));
                }
                Message::BackendKeyData(body) => key = (body.process_id(), body.secret_key()),
                Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(_) => break,
                _ => {
                    return Err(UpstreamError::Auth(
                        "unsupported authentication request".into(),
                    ))
                }
            }
            if !reply.is_empty() {
                stream.write_all(&reply).await?;
            }
        }
        Ok(ServerConn {
            stream,
            buf,
            params: params.into(),
            cancel: CancelKey {
                host: up.host.clone(),
                port: up.port,
                pid: key.0,
                secret: key.1,
            },
            created: Instant::now(),
            state: ServerState::default(),
            idle_since: Instant::now(),
            expires: None,
        })
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
        // Peek without consuming (a TLS stream's bytes must stay in the socket).
        let mut probe = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        tcp.poll_peek(&mut cx, &mut buf).is_pending()
    }

    /// Runs `sql` as a simple query and waits for ReadyForQuery, discarding the results,
    /// at most [`CLEANUP_TIMEOUT`]. Returns the final transaction status. Used for ROLLBACK
    /// and the reset query on a server coming back: a hung server fails with
    /// [`UpstreamError::Timeout`] and the caller closes it.
    pub async fn run_simple(&mut self, sql: &str) -> Result<u8, UpstreamError> {
        let run = async {
            let mut out = BytesMut::new();
            messages::write_query(&mut out, sql.as_bytes());
            self.stream.write_all(&out).await?;
            self.drain_until_ready().await
        };
        tokio::time::timeout(CLEANUP_TIMEOUT, run)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    /// Runs a simple query (bytes in this connection's client encoding) and returns the
    /// columns of its first row (`None` if it returned no row). An ErrorResponse is
    /// returned as [`UpstreamError::Server`] once ReadyForQuery has arrived.
    pub async fn query_first_row(
        &mut self,
        sql: &[u8],
    ) -> Result<Option<Vec<Option<Vec<u8>>>>, UpstreamError> {
        let mut out = BytesMut::new();
        messages::write_query(&mut out, sql);
        self.stream.write_all(&out).await?;
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
    pub async fn drain_until_ready(&mut self) -> Result<u8, UpstreamError> {
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

fn password(up: &Upstream) -> Result<&str, UpstreamError> {
    up.password
        .as_deref()
        .ok_or_else(|| UpstreamError::Auth("server asked for a password; none configured".into()))
}

fn proto(e: std::io::Error) -> UpstreamError {
    UpstreamError::Protocol(e.to_string())
}

fn unexpected(what: &str) -> UpstreamError {
    UpstreamError::Protocol(format!("unexpected {what}"))
}

/// Extracts SQLSTATE and message from ErrorResponse fields.
pub fn server_error(mut fields: ErrorFields<'_>) -> UpstreamError {
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
    UpstreamError::Server { code, message }
}

/// Reads one whole backend message, buffering partial input in `buf`.
async fn read_message(
    stream: &mut ServerStream,
    buf: &mut BytesMut,
) -> Result<Message, UpstreamError> {
    loop {
        if let Some(msg) = Message::parse(buf).map_err(proto)? {
            return Ok(msg);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(UpstreamError::Closed);
        }
    }
}
