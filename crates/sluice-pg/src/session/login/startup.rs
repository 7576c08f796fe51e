//! The startup phase: SSLRequest and GSSENCRequest are answered `N` (TLS is not offered),
//! CancelRequest is routed and the socket closed, and a StartupMessage is returned.

use bytes::BytesMut;

use crate::client_io::ClientIo;
use crate::context::PgContext;
use crate::protocol::backend;
use crate::protocol::startup::{parse_startup, StartupPacket, StartupParams};
use crate::session::PgSessionError;

/// Reads startup packets until a StartupMessage; `None` if the client only cancelled or
/// closed.
pub(crate) async fn read_startup(
    client: &mut ClientIo,
    ctx: &PgContext,
) -> Result<Option<StartupParams>, PgSessionError> {
    loop {
        let Some(packet) = client.read_startup().await? else {
            return Ok(None);
        };
        match parse_startup(&packet)? {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                let ssl = matches!(parse_startup(&packet), Ok(StartupPacket::SslRequest));
                if !client.buf.is_empty() {
                    // Bytes after an encryption request before our answer: a protocol
                    // violation (and the CVE-2021-23214 buffer-stuffing pattern).
                    return Err(PgSessionError::Protocol(
                        crate::protocol::ProtocolError::Unexpected('?'),
                    ));
                }
                let acceptor = if ssl && !client.stream.is_tls() {
                    ctx.tls_acceptor()
                } else {
                    None
                };
                match acceptor {
                    Some(acceptor) => {
                        client.write(b"S").await?;
                        client.upgrade(&acceptor).await?;
                    }
                    None => client.write(b"N").await?,
                }
            }
            StartupPacket::Cancel { pid, secret } => {
                ctx.cancel.cancel(pid, secret).await;
                return Ok(None);
            }
            StartupPacket::Startup(params) => {
                if ctx.config.postgres.tls.mode == sluice_config::ClientTlsMode::Require
                    && !client.stream.is_tls()
                {
                    return Err(PgSessionError::TlsRequired);
                }
                if params.minor_version > 0 || params.protocol_options().next().is_some() {
                    let mut out = BytesMut::new();
                    let opts: Vec<&str> = params.protocol_options().collect();
                    backend::negotiate_protocol_version(&mut out, 0, opts.into_iter());
                    client.write(&out).await?;
                }
                return Ok(Some(params));
            }
        }
    }
}
