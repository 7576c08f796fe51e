//! The pool as the source of its notification hub's connection ([`crate::notify`]).

use super::PgPool;
use crate::upstream::{PgUpstreamError, ServerConn};

/// The notification hub's connection is one more of this pool's, outside its slots.
impl crate::notify::HubUpstream for PgPool {
    async fn connect(&self) -> Result<ServerConn, PgUpstreamError> {
        let s = self.settings();
        let secret = self.secret();
        ServerConn::connect(
            &s.upstream,
            &secret,
            s.connect_timeout,
            s.tls.as_ref(),
            s.sslmode,
        )
        .await
    }

    fn name(&self) -> String {
        self.settings().name.clone()
    }

    fn reconnected(&self) {
        self.counters().inc_listen_reconnects();
    }
}
