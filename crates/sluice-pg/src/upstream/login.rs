//! Opening a server connection: TCP, the SSLRequest and TLS handshake when configured,
//! the StartupMessage, and the login as the pool's upstream user — whatever the server asks
//! (SCRAM-SHA-256, md5, cleartext or trust), with a password, a stored md5 hash or a
//! client's SCRAM keys ([`UpstreamSecret`]) — collecting ParameterStatus and BackendKeyData
//! up to the first ReadyForQuery.

use std::sync::Arc;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::SCRAM_SHA_256;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use sluice_config::{SslMode, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{
    proto, read_message, server_error, unexpected, CancelKey, PgUpstreamError, ServerConn,
    UpstreamAuthError, UpstreamProtocolError, UpstreamSecret, UpstreamTlsError,
};
use crate::protocol::startup;
use crate::state::ServerState;
use crate::tls::{MaybeTls, ServerStream};

/// Opens and authenticates a connection (unbounded: the caller sets the timeout).
pub(super) async fn connect(
    up: &Upstream,
    secret: &UpstreamSecret,
    tls: Option<&tokio_rustls::TlsConnector>,
    sslmode: SslMode,
) -> Result<ServerConn, PgUpstreamError> {
    let mut stream = open(up, tls, sslmode).await?;
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
    let (params, key) = log_in(&mut stream, &mut buf, up, secret).await?;
    Ok(ServerConn {
        stream,
        buf,
        params: params.into(),
        cancel: CancelKey {
            host: up.host.as_str().into(),
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

/// TCP connect, then SSLRequest and the TLS handshake when configured.
async fn open(
    up: &Upstream,
    tls: Option<&tokio_rustls::TlsConnector>,
    sslmode: SslMode,
) -> Result<ServerStream, PgUpstreamError> {
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
            let name = ServerName::try_from(up.host.clone()).map_err(|source| {
                UpstreamTlsError::ServerName {
                    host: up.host.clone(),
                    source: Arc::new(source),
                }
            })?;
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| UpstreamTlsError::Handshake(Arc::new(e)))?;
            Ok(MaybeTls::Tls(Box::new(stream)))
        }
        startup::SSL_REFUSED if sslmode == SslMode::Prefer => Ok(MaybeTls::Plain(tcp)),
        startup::SSL_REFUSED => Err(UpstreamTlsError::Refused(sslmode).into()),
        other => Err(UpstreamProtocolError::SslAnswer(other).into()),
    }
}

/// The server's parameters and its cancel key (pid, secret).
type LoginResult = (Vec<(String, String)>, (i32, i32));

/// Answers the server's authentication requests up to ReadyForQuery.
async fn log_in(
    stream: &mut ServerStream,
    buf: &mut BytesMut,
    up: &Upstream,
    secret: &UpstreamSecret,
) -> Result<LoginResult, PgUpstreamError> {
    let mut scram: Option<Scram> = None;
    let mut params = Vec::new();
    let mut key = (0, 0);
    loop {
        let msg = read_message(stream, buf).await?;
        let mut reply = BytesMut::new();
        match msg {
            Message::ParameterStatus(body) => {
                let name = body.name().map_err(proto)?.to_owned();
                let value = body.value().map_err(proto)?.to_owned();
                params.push((name, value));
            }
            Message::BackendKeyData(body) => key = (body.process_id(), body.secret_key()),
            Message::ErrorResponse(body) => return Err(server_error(body.fields())),
            Message::NoticeResponse(_) => {}
            Message::ReadyForQuery(_) => return Ok((params, key)),
            msg => answer(msg, (&up.user, secret), &mut scram, &mut reply)?,
        }
        if !reply.is_empty() {
            stream.write_all(&reply).await?;
        }
    }
}

/// A SCRAM exchange in progress: from a password (its keys derived once per server salt,
/// see [`sluice_auth::password_keys`]), or from a client's keys (pass-through).
struct Scram(sluice_auth::ScramKeysClient);

/// The md5 method's answer, from a password or a stored hash.
fn md5_answer(
    user: &str,
    secret: &UpstreamSecret,
    salt: [u8; 4],
) -> Result<String, PgUpstreamError> {
    match secret {
        UpstreamSecret::Password(p) => Ok(sluice_auth::md5_response(user, p, salt)),
        UpstreamSecret::Md5(h) => Ok(sluice_auth::md5_response_from_hash(h, salt)),
        _ => Err(UpstreamAuthError::NoPassword.into()),
    }
}

impl Scram {
    /// Starts an exchange with `secret`: the client-first-message to send.
    fn start(secret: &UpstreamSecret) -> Result<(Self, Vec<u8>), PgUpstreamError> {
        let nonce = sluice_auth::ScramServer::random_nonce();
        let client = match secret {
            UpstreamSecret::Password(p) => {
                sluice_auth::ScramKeysClient::with_password(p.clone(), nonce)
            }
            UpstreamSecret::Scram(keys) => sluice_auth::ScramKeysClient::new(*keys, nonce),
            _ => return Err(UpstreamAuthError::NoPassword.into()),
        };
        let first = client.client_first();
        Ok((Scram(client), first))
    }
}

/// Writes into `reply` the answer to one authentication request for (`user`, `secret`).
fn answer(
    msg: Message,
    (user, secret): (&str, &UpstreamSecret),
    scram: &mut Option<Scram>,
    reply: &mut BytesMut,
) -> Result<(), PgUpstreamError> {
    let scram_err = |e| UpstreamAuthError::Scram(Arc::new(std::io::Error::other(e)));
    match msg {
        Message::AuthenticationOk => {}
        Message::AuthenticationCleartextPassword => {
            let UpstreamSecret::Password(password) = secret else {
                return Err(UpstreamAuthError::NoPassword.into());
            };
            frontend::password_message(password.as_bytes(), reply).map_err(proto)?;
        }
        Message::AuthenticationMd5Password(body) => {
            let hash = md5_answer(user, secret, body.salt())?;
            frontend::password_message(hash.as_bytes(), reply).map_err(proto)?;
        }
        Message::AuthenticationSasl(body) => {
            let mut mechs = body.mechanisms();
            let mut found = false;
            while let Some(m) = mechs.next().map_err(proto)? {
                found |= m == SCRAM_SHA_256;
            }
            if !found {
                return Err(UpstreamAuthError::NoMechanism.into());
            }
            let (s, first) = Scram::start(secret)?;
            frontend::sasl_initial_response(SCRAM_SHA_256, &first, reply).map_err(proto)?;
            *scram = Some(s);
        }
        Message::AuthenticationSaslContinue(body) => {
            let s = scram.as_mut().ok_or_else(|| unexpected("SASLContinue"))?;
            let next = s.0.handle_server_first(body.data()).map_err(scram_err)?;
            frontend::sasl_response(&next, reply).map_err(proto)?;
        }
        Message::AuthenticationSaslFinal(body) => {
            let s = scram.take().ok_or_else(|| unexpected("SASLFinal"))?;
            s.0.handle_server_final(body.data()).map_err(|e| {
                UpstreamAuthError::ServerSignature(Arc::new(std::io::Error::other(e)))
            })?;
        }
        _ => return Err(UpstreamAuthError::Unsupported.into()),
    }
    Ok(())
}
