//! Giving a server back: at the end of a transaction in transaction mode (reset first if
//! it picked up session state, or kept pinned to its client), and when the client leaves
//! (rolled back, reset, or cancelled and closed mid request).

use sluice_config::PoolMode;
use sluice_stats::ClientState as GaugeState;

use super::Relay;
use crate::pool::PooledConn;
use crate::session::PgSessionError;

impl Relay<'_> {
    /// [`Relay::finish`], then `result`.
    pub(super) async fn finish_then(
        &mut self,
        result: Result<(), PgSessionError>,
    ) -> Result<(), PgSessionError> {
        self.finish().await;
        result
    }

    /// Transaction mode, and the server owes nothing and is owed nothing: it may go back.
    pub(super) fn transaction_over(&self) -> bool {
        self.mode == PoolMode::Transaction
            && self.server.is_some()
            && self.exchange.idle()
            && !self.server_owed()
    }

    /// [`Relay::release`] for a server without session state, which needs no await (so the
    /// futures of the common path stay small): true when done, false (nothing done) when
    /// the server needs the reset path.
    pub(super) fn release_clean(&mut self) -> bool {
        if self.server.is_none() {
            return true;
        }
        if self.exchange.needs_reset() {
            return false;
        }
        if let Some(server) = self.detach_server() {
            server.checkin();
        }
        true
    }

    /// Takes the server off the client for its check-in: unpinned, the client idle in the
    /// gauges and its cancel slot cleared.
    fn detach_server(&mut self) -> Option<PooledConn> {
        self.pin = None;
        let mut server = self.server.take()?;
        self.gauge.set(GaugeState::Idle);
        self.registration.slot.set(None);
        if self.exchange.settings_dirty() {
            // The client's settings were not read back: on this server they are unknown.
            server.state.settings_unknown = true;
        }
        Some(server)
    }

    /// Returns the server to the pool, resetting it first if it picked up session state.
    pub(super) async fn release(&mut self) {
        // Only a server with state goes through the pin check (boxed: it is rare); the
        // common release allocates nothing and reads no settings.
        if self.server.is_none()
            || (self.exchange.needs_reset() && Box::pin(self.keep_pinned()).await)
        {
            return;
        }
        let Some(mut server) = self.detach_server() else {
            return;
        };
        let reset = &self.pool.settings().reset_query;
        if self.exchange.needs_reset() && !reset.is_empty() {
            match Box::pin(server.run_simple(reset)).await {
                Ok(b'I') => server.state.clear(),
                other => {
                    tracing::warn!(client = %self.who.addr, result = ?other, "server reset failed; closing it");
                    return;
                }
            }
        }
        server.checkin();
    }

    /// The client is gone: clean the server and return it, or close it.
    pub(super) async fn finish(&mut self) {
        self.leaving = true;
        self.pin = None;
        let Some(mut server) = self.server.take() else {
            return;
        };
        self.registration.slot.set(None);
        if self.exchange.busy() || self.server_owed() {
            // Mid request (or mid frame on the wire): stop the work on the server and
            // close the connection.
            let key = server.cancel.clone();
            tokio::spawn(async move { crate::cancel::send_cancel(&key).await });
            return;
        }
        if self.exchange.status() != b'I' {
            if !matches!(Box::pin(server.run_simple("ROLLBACK")).await, Ok(b'I')) {
                return;
            }
            self.exchange.force_reset();
        }
        if self.mode == PoolMode::Session {
            self.exchange.force_reset();
        }
        self.server = Some(server);
        self.release().await;
    }
}
