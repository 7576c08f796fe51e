//! Getting a server for a client's request: at once when one is idle, else in line while
//! the client and shutdown are watched; when none can be had, the request is answered with
//! the pool's error and dropped up to its end, as a server drops a failed batch.

use sluice_stats::ClientState as GaugeState;

use super::{Relay, WATCH_CAP};
use crate::pool::{PgPoolError, PooledConn};
use crate::protocol::backend::{self, Severity};
use crate::protocol::frame::request_end;
use crate::session::error::pool_error_fields;
use crate::session::PgSessionError;

impl Relay<'_> {
    /// Waits in line for a server while watching the client and shutdown: a client that
    /// disconnects, or a shutdown that begins, ends the wait at once, and the dropped
    /// checkout gives up its place in the queue. What the client sends meanwhile is kept
    /// (up to [`WATCH_CAP`] bytes; beyond that only shutdown and the pool are watched).
    async fn wait_for_server(&mut self) -> Result<Result<PooledConn, PgPoolError>, PgSessionError> {
        let (pool, who) = (self.pool.clone(), self.who.clone());
        let checkout = pool.checkout(&who);
        tokio::pin!(checkout);
        let shutdown = self.shutdown.clone().unwrap_or_default();
        let mut watching = self.client.buf.len() < WATCH_CAP;
        loop {
            tokio::select! {
                result = &mut checkout => return Ok(result),
                _ = shutdown.cancelled() => return Err(PgSessionError::Shutdown),
                read = self.client.read_more(), if watching => match read {
                    Ok(0) => {
                        tracing::debug!(client = %who.addr, "client left while waiting for a server");
                        return Err(PgSessionError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    Ok(_) => watching = self.client.buf.len() < WATCH_CAP,
                    Err(e) => return Err(PgSessionError::Io(e)),
                },
            }
        }
    }

    /// Checks out a server for the `len` bytes of complete frames at the front of the
    /// buffer. `Ok(None)`: got one. `Ok(Some(n))`: no server; `n` bytes were answered as a
    /// server would answer them after an error (ErrorResponse, then ReadyForQuery at the end
    /// of the request) and must be dropped.
    pub(super) async fn checkout(&mut self, len: usize) -> Result<Option<usize>, PgSessionError> {
        if !self.skip_until_sync {
            let checkout = match self.pool.try_checkout(&self.who) {
                Some(server) => Ok(server),
                None => {
                    self.gauge.set(GaugeState::Waiting);
                    // Boxed: the waiting and connect paths are large and rarer; idle
                    // clients should not carry them.
                    Box::pin(self.wait_for_server()).await?
                }
            };
            match checkout {
                Ok(server) => {
                    self.gauge.set(GaugeState::Active);
                    for buf in [&mut self.to_server.buf, &mut self.to_client.buf] {
                        if buf.capacity() == 0 {
                            *buf = crate::bufpool::take();
                        }
                    }
                    self.registration.slot.set(Some(server.cancel.clone()));
                    self.server = Some(server);
                    self.exchange.on_checkout();
                    return Ok(None);
                }
                Err(PgPoolError::Closed(_)) => return Err(PgSessionError::PoolClosed),
                Err(e) => {
                    self.gauge.set(GaugeState::Idle);
                    tracing::warn!(client = %self.who.addr, error = %e, "checkout failed");
                    let (code, message) = pool_error_fields(&e);
                    backend::error_response(
                        &mut self.to_client.buf,
                        Severity::Error,
                        code,
                        &message,
                    );
                    self.skip_until_sync = true;
                }
            }
        }
        // Drop frames up to the end of the request, answering it with ReadyForQuery.
        let pos = match request_end(&self.client.buf[..len], self.limits.max_packet) {
            Ok(end) => {
                self.skip_until_sync = false;
                backend::ready_for_query(&mut self.to_client.buf, b'I');
                end
            }
            Err(covered) => covered,
        };
        Ok(Some(pos))
    }
}
