//! Getting a server for a client's request: at once when one is idle, else in line while
//! the client and shutdown are watched; when none can be had, the request is answered with
//! the pool's error and dropped up to its end, as a server drops a failed batch.

use sluice_stats::ClientState as GaugeState;

use super::{Relay, WATCH_CAP};
use crate::hosts::{readonly, Target};
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
        let shutdown = self.registration.registry().closed().clone();
        let mut watching = self.client.buf.len() < WATCH_CAP;
        loop {
            tokio::select! {
                biased;
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

    /// A server for the request of `len` bytes: an idle one, or one from the queue,
    /// checked with `server_check_query` first when it sat idle past `server_check_delay`.
    /// When a host of a multi-host database cannot be reached, the request goes once to
    /// another host that can take it.
    async fn obtain_server(
        &mut self,
        mut first: Option<PooledConn>,
        len: usize,
    ) -> Result<Result<PooledConn, PgPoolError>, PgSessionError> {
        let mut rerouted = false;
        loop {
            let got = match first.take().or_else(|| self.pool.try_checkout(&self.who)) {
                Some(server) => Ok(server),
                None => {
                    self.gauge.set(GaugeState::Waiting);
                    self.wait_for_server().await?
                }
            };
            match got {
                Ok(server) if self.check_due(&server) => {
                    if let Some(server) = self.check_server(server).await {
                        return Ok(Ok(server));
                    }
                    // Closed; the next one (or a new one) is taken.
                }
                Err(e) if !rerouted && self.reroute(&e, len) => rerouted = true,
                other => return Ok(other),
            }
        }
    }

    /// Whether `server` sat idle long enough to be checked before use.
    fn check_due(&self, server: &PooledConn) -> bool {
        self.limits()
            .check_delay
            .is_some_and(|d| server.idle_at_least(d))
    }

    /// Runs `server_check_query` on a server that sat idle past `server_check_delay`:
    /// the server if it answered, `None` (and the connection closed) if not.
    async fn check_server(&self, mut server: PooledConn) -> Option<PooledConn> {
        let query = self.pool.settings().check_query.clone();
        if query.is_empty() {
            return Some(server);
        }
        match server.run_simple(&query).await {
            Ok(b'I') => Some(server),
            other => {
                tracing::info!(pool = %self.pool.settings().name, result = ?other, "server_check_query failed; closing that server");
                None
            }
        }
    }

    /// A database with several hosts, transaction mode: points `self.pool` at the host
    /// this transaction goes to (a replica for a read `read_write_split` may send there).
    /// `false` when no host can take it: the client was told, as for a failed checkout.
    fn route_to_host(&mut self, len: usize) -> bool {
        match self.routed_pool(len) {
            Ok(()) => true,
            Err(e) => {
                self.checkout_failed(&e);
                false
            }
        }
    }

    /// A connect to this transaction's host failed (a database with several hosts): bans
    /// that host and points `self.pool` at another that can take the request. `true`
    /// when there is one.
    fn reroute(&mut self, e: &PgPoolError, len: usize) -> bool {
        let Some(route) = &self.route else {
            return false;
        };
        if !matches!(e, PgPoolError::Connect { .. }) {
            return false;
        }
        route.route.connect_failed(&self.pool, &e.to_string());
        let before = self.pool.clone();
        let moved = self.routed_pool(len).is_ok() && !self.pool.same(&before);
        if moved {
            tracing::info!(client = %self.who.addr, from = %before.settings().name, to = %self.pool.settings().name, "host unreachable; transaction sent to another host");
        }
        moved
    }

    /// Tells the client why it got no server (the rest of its request is dropped).
    fn checkout_failed(&mut self, e: &PgPoolError) {
        if let (Some(route), PgPoolError::Connect { .. }) = (&self.route, e) {
            route.route.connect_failed(&self.pool, &e.to_string());
        }
        self.gauge.set(GaugeState::Idle);
        tracing::warn!(client = %self.who.addr, error = %e, "checkout failed");
        let (code, message) = pool_error_fields(e);
        backend::error_response(&mut self.to_client.buf, Severity::Error, code, &message);
        self.skip_until_sync = true;
    }

    fn routed_pool(&mut self, len: usize) -> Result<(), PgPoolError> {
        let Some(route) = self.route.as_deref() else {
            return Ok(());
        };
        if self.mode != sluice_config::PoolMode::Transaction {
            return Ok(());
        }
        let mut target = route.target;
        if target == Target::Primary
            && route.route.set.read_write_split
            && self.exchange.status() == b'I'
            && readonly::is_read_only_request(
                &self.client.buf[..len],
                self.limits().max_packet,
                &|name| self.state.statements.get(name).map(|s| s.rest.clone()),
            )
        {
            target = Target::PreferReplica;
        }
        match route.route.pick(target) {
            Some(pool) => {
                if !pool.same(&self.pool) {
                    self.pool = pool.clone();
                }
                Ok(())
            }
            None => Err(PgPoolError::NoHost {
                database: route.route.set.database.clone(),
                target: target.describe(),
            }),
        }
    }

    /// Checks out a server for the `len` bytes of complete frames at the front of the
    /// buffer when that needs no wait: an idle server that needs no check, or the request
    /// answered without one (no host can take it, or the batch is being skipped). Else
    /// [`Now::Wait`] with what [`Relay::checkout`] starts from. (A small result: its
    /// caller's future holds it while the wait runs.)
    pub(super) fn checkout_now(&mut self, len: usize) -> Now {
        // `route_to_host` answers a request no host can take itself.
        if !self.skip_until_sync && self.route_to_host(len) {
            return match self.pool.try_checkout(&self.who) {
                Some(server) if !self.check_due(&server) => self.checked_out(Ok(server), len),
                first => Now::Wait(first),
            };
        }
        Now::Skip(self.skip_request(len))
    }

    /// The checkout that waits (see [`Relay::checkout_now`]): `first` is the idle server
    /// that needs checking, if any. `Ok(None)`: got one. `Ok(Some(n))`: no server; `n`
    /// bytes were answered as a server would answer them after an error (ErrorResponse,
    /// then ReadyForQuery at the end of the request) and must be dropped.
    pub(super) async fn checkout(
        &mut self,
        first: Option<PooledConn>,
        len: usize,
    ) -> Result<Option<usize>, PgSessionError> {
        let got = self.obtain_server(first, len).await?;
        match self.checked_out(got, len) {
            Now::Got => Ok(None),
            Now::Skip(n) => Ok(Some(n)),
            Now::Closed | Now::Wait(_) => Err(PgSessionError::PoolClosed),
        }
    }

    /// Takes the server a checkout gave, or answers the request with its error.
    fn checked_out(&mut self, got: Result<PooledConn, PgPoolError>, len: usize) -> Now {
        match got {
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
                Now::Got
            }
            Err(PgPoolError::Closed(_)) => Now::Closed,
            Err(e) => {
                self.checkout_failed(&e);
                Now::Skip(self.skip_request(len))
            }
        }
    }

    /// Drops frames up to the end of the request, answering it with ReadyForQuery: the
    /// bytes to drop.
    fn skip_request(&mut self, len: usize) -> usize {
        match request_end(&self.client.buf[..len], self.limits().max_packet) {
            Ok(end) => {
                self.skip_until_sync = false;
                backend::ready_for_query(&mut self.to_client.buf, b'I');
                end
            }
            Err(covered) => covered,
        }
    }
}

/// What a checkout came to.
pub(super) enum Now {
    /// The client holds a server now.
    Got,
    /// No server: this many bytes of the request were answered and must be dropped.
    Skip(usize),
    /// The pool closed (a reload removed it): the session ends.
    Closed,
    /// It must wait: run [`Relay::checkout`] with this.
    Wait(Option<PooledConn>),
}
