//! How a pool opens server connections: the upstream, what it logs in with (shared with
//! the pool, so a client's SCRAM login can fill it in), TLS, and the first connection's
//! parameters (replayed to clients at login).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use sluice_config::Upstream;
use sluice_pool::Connector;

use super::ClientMeta;
use crate::upstream::{PgUpstreamError, ServerConn, ServerParams, UpstreamSecret};

/// Opens server connections for one pool and remembers the first one's parameters.
pub struct PgConnector {
    pub(super) upstream: Upstream,
    /// What the pool logs in with (shared with the pool: a SCRAM login fills it in).
    pub(super) secret: Arc<RwLock<UpstreamSecret>>,
    pub(super) tls: Option<tokio_rustls::TlsConnector>,
    pub(super) sslmode: sluice_config::SslMode,
    /// Startup parameters of the first server connection, replayed to clients at login.
    pub(super) params: Mutex<Option<ServerParams>>,
}

impl Connector for PgConnector {
    type Conn = ServerConn;
    type Error = PgUpstreamError;
    type Holder = ClientMeta;

    async fn connect(&self, limit: Duration) -> Result<ServerConn, PgUpstreamError> {
        let secret = self.secret.read().clone();
        Box::pin(ServerConn::connect(
            &self.upstream,
            &secret,
            limit,
            self.tls.as_ref(),
            self.sslmode,
        ))
        .await
    }

    fn is_transient(&self, error: &PgUpstreamError) -> bool {
        error.is_transient()
    }

    fn is_reusable(&self, conn: &ServerConn) -> bool {
        conn.looks_alive()
    }

    fn ident(&self, conn: &ServerConn) -> i64 {
        i64::from(conn.cancel.pid)
    }

    fn opened(&self, conn: &ServerConn) {
        let mut p = self.params.lock();
        if p.is_none() {
            *p = Some(conn.params.clone());
        }
    }
}
