//! TLS towards MongoDB clients (`[mongo.tls]`). MongoDB has no in-band upgrade like
//! PostgreSQL's SSLRequest: a driver with `tls=true` opens with a TLS ClientHello, so the
//! first bytes of a connection, peeked (never consumed), say which it is. With `allow`,
//! TLS and plaintext clients share the port; with `require`, a plaintext one is closed.
//! Certificate loading is `sluice_tls`'s; this module only detects and accepts.

use std::time::Duration;

use sluice_config::{ClientTlsConfig, ClientTlsMode};
use sluice_tls::{ClientStream, MaybeTls, TlsError};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// The TLS record type of a handshake message (a ClientHello comes in one).
const HANDSHAKE_RECORD: u8 = 0x16;

/// The handshake type of a ClientHello.
const CLIENT_HELLO: u8 = 0x01;

/// How many leading bytes decide: the 5-byte record header and the handshake type.
const SNIFF_LEN: usize = 6;

/// How long to wait before peeking again when fewer than [`SNIFF_LEN`] bytes came (a
/// peek does not consume readiness, so waiting on the socket would return at once); the
/// wait doubles up to [`SNIFF_RETRY_MAX`] for a client that stalls mid-header.
const SNIFF_RETRY: Duration = Duration::from_millis(5);
const SNIFF_RETRY_MAX: Duration = Duration::from_millis(200);

/// The running client TLS setting: a mode that turns TLS on, and its acceptor (the
/// loaded certificate and key). Cheap to clone: the acceptor is shared.
#[derive(Clone)]
pub struct ClientTls {
    /// `allow` or `require`.
    pub mode: ClientTlsMode,
    /// The certificate and key, loaded.
    pub acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Loads the certificate and key of a `[mongo.tls]` table; `None` for `disable`.
    pub fn load(cfg: &ClientTlsConfig) -> Result<Option<ClientTls>, TlsError> {
        Ok(sluice_tls::acceptor(cfg)?.map(|acceptor| ClientTls {
            mode: cfg.mode,
            acceptor,
        }))
    }
}

/// Why a client connection was closed before Sluice read a request from it.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// `require`, and the connection did not open with a TLS handshake.
    #[error("the client did not start TLS, and mongo.tls.mode is \"require\"")]
    PlaintextRefused,
    /// The TLS handshake failed (bad ClientHello, untrusted certificate on the client's
    /// side, ...).
    #[error("TLS handshake with the client failed: {0}")]
    Handshake(std::io::Error),
    /// Peeking at the first bytes failed.
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The client closed before sending anything.
    #[error("the client closed before sending anything")]
    Closed,
}

/// What the first bytes of a connection say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// A TLS ClientHello.
    Tls,
    /// Anything else (a MongoDB message: its header starts with a little-endian length).
    Plain,
}

/// Classifies the first bytes of a connection, or `None` while more are needed.
///
/// One byte alone cannot tell: a MongoDB message whose length is 22 modulo 256 also starts
/// with 0x16. So a ClientHello must show its whole record header (type 0x16, a 3.x
/// version) and its handshake type (1). A plaintext message matching all of that would
/// have to be 790 bytes long (or 64 KiB more) and have a request id whose second byte is
/// 1.
pub fn classify(first: &[u8]) -> Option<Opening> {
    let looks_tls = match first {
        [] => return None,
        [t, ..] if *t != HANDSHAKE_RECORD => false,
        [_, major, ..] if *major != 0x03 => false,
        [_, _, minor, ..] if *minor > 0x04 => false,
        [_, _, _, _, _, kind, ..] => *kind == CLIENT_HELLO,
        _ => return None,
    };
    Some(if looks_tls {
        Opening::Tls
    } else {
        Opening::Plain
    })
}

/// Peeks at the first bytes of `tcp` until [`classify`] can tell (never consuming them).
pub async fn sniff(tcp: &TcpStream) -> Result<Opening, ClientTlsError> {
    let mut first = [0u8; SNIFF_LEN];
    let mut retry = SNIFF_RETRY;
    loop {
        let n = tcp.peek(&mut first).await?;
        if n == 0 {
            return Err(ClientTlsError::Closed);
        }
        if let Some(opening) = classify(&first[..n]) {
            return Ok(opening);
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(SNIFF_RETRY_MAX);
    }
}

/// The client stream for a new connection: plaintext when `tls` is `None` (`disable`);
/// otherwise TLS when it opens with a ClientHello (handshake done here), plaintext under
/// `allow`, and [`ClientTlsError::PlaintextRefused`] under `require`. Unbounded in time:
/// the caller applies the login deadline.
pub async fn accept(
    tls: Option<&ClientTls>,
    tcp: TcpStream,
) -> Result<ClientStream, ClientTlsError> {
    let Some(tls) = tls else {
        return Ok(MaybeTls::Plain(tcp));
    };
    match (sniff(&tcp).await?, tls.mode) {
        (Opening::Tls, _) => {
            let stream = tls
                .acceptor
                .accept(tcp)
                .await
                .map_err(ClientTlsError::Handshake)?;
            Ok(MaybeTls::Tls(Box::new(stream)))
        }
        (Opening::Plain, ClientTlsMode::Require) => Err(ClientTlsError::PlaintextRefused),
        (Opening::Plain, _) => Ok(MaybeTls::Plain(tcp)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hello_is_told_from_mongodb_messages() {
        // TLS 1.0 record layer (as TLS 1.2/1.3 ClientHellos send), length 0x0200, ClientHello.
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]),
            Some(Opening::Tls)
        );
        assert_eq!(
            classify(&[0x16, 0x03, 0x03, 0x00, 0xc8, 0x01]),
            Some(Opening::Tls)
        );
        // Not enough yet.
        assert_eq!(classify(&[]), None);
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02]), None);
        // An OP_MSG of 278 bytes (0x116) starts with 0x16 too.
        assert_eq!(classify(&[0x16, 0x01, 0x00, 0x00]), Some(Opening::Plain));
        // A 790-byte message (0x316) with a request id whose second byte is not 1.
        assert_eq!(
            classify(&[0x16, 0x03, 0x00, 0x00, 0x07, 0x00]),
            Some(Opening::Plain)
        );
        // Ordinary messages decide on the first byte.
        assert_eq!(classify(&[0xdd]), Some(Opening::Plain));
        assert_eq!(classify(&[0x16, 0x03, 0x09]), Some(Opening::Plain));
    }

    /// A `ClientTls` with a fresh self-signed certificate (files in `dir`).
    fn client_tls(dir: &std::path::Path, mode: ClientTlsMode) -> ClientTls {
        let key =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let (cert_file, key_file) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert_file, key.cert.pem()).expect("write cert");
        std::fs::write(&key_file, key.key_pair.serialize_pem()).expect("write key");
        let cfg = ClientTlsConfig {
            mode,
            cert_file: Some(cert_file),
            key_file: Some(key_file),
        };
        ClientTls::load(&cfg).expect("load").expect("enabled")
    }

    /// Connects a client (TLS or plaintext, which sends a MongoDB-like header) and
    /// returns what [`accept`] made of the server side.
    async fn open(tls: Option<&ClientTls>, client_tls: bool) -> Result<bool, ClientTlsError> {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            if !client_tls {
                // 278 bytes: the first byte is 0x16 like a TLS record's.
                let _ = tcp.write_all(&[0x16, 0x01, 0, 0, 1, 0, 0, 0]).await;
                return None;
            }
            let connector = sluice_tls::connector(sluice_config::SslMode::Require, None)
                .expect("connector")
                .expect("tls");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            connector.connect(name, tcp).await.ok()
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        let result = accept(tls, tcp).await.map(|s| s.is_tls());
        let _ = client.await;
        result
    }

    #[tokio::test]
    async fn accept_tells_tls_from_plaintext_by_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let allow = client_tls(dir.path(), ClientTlsMode::Allow);
        let require = ClientTls {
            mode: ClientTlsMode::Require,
            ..allow.clone()
        };
        assert!(!open(None, false).await.expect("disable: plaintext"));
        assert!(open(Some(&allow), true).await.expect("allow: tls"));
        assert!(!open(Some(&allow), false).await.expect("allow: plaintext"));
        assert!(open(Some(&require), true).await.expect("require: tls"));
        assert!(matches!(
            open(Some(&require), false).await,
            Err(ClientTlsError::PlaintextRefused)
        ));
    }
}
