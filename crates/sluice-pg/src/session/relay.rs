//! The query phase: frames flow between the client and a pooled server through the
//! sans-IO [`Exchange`], which decides what to forward, rewrite, inject or swallow. This
//! file does the I/O and the pooling decisions:
//!
//! * transaction mode: the server goes back to the pool at ReadyForQuery `I` once every
//!   request has been answered and no extended-protocol batch is open;
//! * session mode: when the client leaves.
//!
//! A server that picked up state Sluice cannot carry (temp tables, cursors, SQL PREPARE,
//! untracked settings) is reset with `server_reset_query` before anyone else gets it. A
//! server whose client left mid transaction is rolled back and reset; one whose client
//! left mid query is cancelled and closed. No client ever sees another's state.

use bytes::{Buf, BytesMut};
use sluice_config::PoolMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::error::pool_error_fields;
use super::exchange::{Exchange, Features, Io};
use super::io::ClientIo;
use super::SessionError;
use crate::pool::{ClientMeta, Pool, PooledConn};
use crate::protocol::backend::{self, Severity};
use crate::protocol::frame::{frame_len, ProtocolError};
use crate::state::ClientState;
use crate::upstream::UpstreamError;
use sluice_stats::{ClientGuard, ClientState as GaugeState, ErrorKind};
use std::sync::Arc;

/// The relay state of one client.
pub(crate) struct Relay<'a> {
    client: &'a mut ClientIo,
    pool: &'a Pool,
    mode: PoolMode,
    /// This client's cancel-key registration (its slot names the server it is on).
    registration: crate::cancel::Registration,
    /// Counts the client as connected until the relay ends.
    _count: super::ClientCount<'a>,
    server: Option<PooledConn>,
    exchange: Exchange,
    state: ClientState,
    /// A checkout failed mid extended-protocol batch: drop messages until Sync, as a
    /// server does after an error.
    skip_until_sync: bool,
    to_server: BytesMut,
    to_client: BytesMut,
    /// Who this client is, for the pool's active-checkout table.
    who: Arc<ClientMeta>,
    /// This client's slot in the idle/waiting/active client gauges.
    gauge: ClientGuard,
    limits: Limits,
    /// The idle timer, allocated only when an idle timeout is configured and then reset
    /// rather than rebuilt (keeps the per-client future small).
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Whether `timer` applies to the current wait.
    timer_armed: bool,
}

/// Per-client limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `max_packet_size`.
    pub max_packet: usize,
    /// `client_idle_timeout` (None: disabled).
    pub client_idle: Option<std::time::Duration>,
    /// `idle_transaction_timeout` (None: disabled).
    pub idle_transaction: Option<std::time::Duration>,
}

enum Flow {
    Continue,
    Done,
}

impl<'a> Relay<'a> {
    pub(crate) fn new(
        client: &'a mut ClientIo,
        logged_in: super::LoggedIn<'a>,
        ctx: &crate::context::Context,
    ) -> Self {
        let super::LoggedIn {
            pool,
            registration,
            state,
            who,
            count,
            server,
        } = logged_in;
        let pg = &ctx.config.postgres;
        let nonzero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
        let limits = Limits {
            max_packet: pg.max_packet_size,
            client_idle: nonzero(pg.client_idle_timeout),
            idle_transaction: nonzero(pg.idle_transaction_timeout),
        };
        let gauge = ctx.stats.clients().track(match server {
            Some(_) => sluice_stats::ClientState::Active,
            None => sluice_stats::ClientState::Idle,
        });

        let settings = pool.settings();
        let transaction = settings.mode == PoolMode::Transaction;
        let features = Features {
            map_statements: transaction && settings.max_prepared_statements > 0,
            track_settings: transaction,
            cache_size: settings.max_prepared_statements,
            refuse_listen: transaction,
        };
        let mut exchange = Exchange::new(features);
        if let Some(server) = &server {
            registration.slot.set(Some(server.cancel.clone()));
            exchange.on_checkout();
        }
        Self {
            client,
            pool,
            mode: settings.mode,
            registration,
            _count: count,
            server,
            exchange,
            state,
            skip_until_sync: false,
            to_server: BytesMut::new(),
            to_client: BytesMut::new(),
            who,
            gauge,
            limits,
            timer: None,
            timer_armed: false,
        }
    }

    /// Relays until the client leaves or, after `shutdown`, until the client is between
    /// transactions.
    pub(crate) async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), SessionError> {
        let mut shutting_down = false;
        let result = loop {
            if shutting_down && (self.server.is_none() || self.exchange.idle()) {
                break Err(SessionError::Shutdown);
            }
            if self.server.is_none() {
                // Between transactions: hold no buffers while waiting.
                self.client.release_buffer();
                release(&mut self.to_server);
                release(&mut self.to_client);
            }
            self.arm_timer();
            let flow = tokio::select! {
                _ = shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    continue;
                }
                _ = timer_or_never(&mut self.timer), if self.timer_armed => {
                    break Err(if self.server.is_some() {
                        SessionError::IdleInTransactionTimeout
                    } else {
                        SessionError::IdleTimeout
                    });
                }
                read = read_server(&mut self.server) => match read {
                    Ok(0) | Err(_) => self.server_lost(),
                    Ok(_) => self.server_input().await,
                },
                read = self.client.read_more() => match read {
                    Ok(0) | Err(_) => Ok(Flow::Done),
                    Ok(_) => self.client_input().await,
                },
            };
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Done) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        Box::pin(self.finish()).await;
        result
    }

    /// Sets the idle timer for the wait that starts now (or disarms it).
    fn arm_timer(&mut self) {
        match self.idle_limit() {
            Some(limit) => {
                let deadline = tokio::time::Instant::now() + limit;
                match &mut self.timer {
                    Some(t) => t.as_mut().reset(deadline),
                    None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
            }
            None => {
                self.timer_armed = false;
                return;
            }
        }
        self.timer_armed = true;
    }

    /// The idle timeout that applies right now: `client_idle_timeout` between
    /// transactions, `idle_transaction_timeout` inside one with nothing in flight.
    fn idle_limit(&self) -> Option<std::time::Duration> {
        match &self.server {
            None => self.limits.client_idle,
            Some(_) if !self.exchange.busy() && self.exchange.status() != b'I' => {
                self.limits.idle_transaction
            }
            Some(_) => None,
        }
    }

    /// Handles bytes from the client: complete frames go through the exchange to a server
    /// (checked out first if none is held).
    async fn client_input(&mut self) -> Result<Flow, SessionError> {
        loop {
            let (len, terminate) = scan_client(&self.client.buf, self.limits.max_packet)?;
            if len > 0 {
                if self.server.is_none() {
                    if let Some(consumed) = self.checkout(len).await? {
                        self.client.buf.advance(consumed);
                        continue;
                    }
                }
                self.forward_client(len).await?;
            }
            return Ok(if terminate {
                Flow::Done
            } else {
                Flow::Continue
            });
        }
    }

    async fn forward_client(&mut self, len: usize) -> Result<(), SessionError> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let server = &mut **server;
        let mut io = Io {
            client: &mut self.state,
            server: &mut server.state,
            registry: self.pool.statements(),
            to_server: &mut self.to_server,
            to_client: &mut self.to_client,
        };
        let result = self.exchange.on_client(&self.client.buf[..len], &mut io);
        self.client.buf.advance(len);
        result?;
        self.send_to_server().await?;
        self.count();
        self.flush_client().await
    }

    /// Writes what the exchange produced for the server (the client's frames, or a query
    /// of Sluice's own); a failed write loses the server.
    async fn send_to_server(&mut self) -> Result<(), SessionError> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        if self.to_server.is_empty() {
            return Ok(());
        }
        self.pool
            .counters()
            .add_bytes_in(self.to_server.len() as u64);
        let sent = server.stream.write_all(&self.to_server).await;
        self.to_server.clear();
        if let Err(e) = sent {
            self.server = None;
            self.registration.slot.set(None);
            return Err(SessionError::ServerLost(e.into()));
        }
        Ok(())
    }

    /// Moves the exchange's query and transaction counts into the pool's counters.
    fn count(&mut self) {
        let (queries, transactions) = self.exchange.take_counts();
        let counters = self.pool.counters();
        for _ in 0..queries {
            counters.inc_queries();
        }
        for _ in 0..transactions {
            counters.inc_transactions();
        }
    }

    async fn flush_client(&mut self) -> Result<(), SessionError> {
        if !self.to_client.is_empty() {
            self.pool
                .counters()
                .add_bytes_out(self.to_client.len() as u64);
            let r = self.client.write(&self.to_client).await;
            self.to_client.clear();
            r?;
        }
        Ok(())
    }

    /// Checks out a server for the `len` bytes of complete frames at the front of the
    /// buffer. `Ok(None)`: got one. `Ok(Some(n))`: no server; `n` bytes were answered as a
    /// server would answer them after an error (ErrorResponse, then ReadyForQuery at the end
    /// of the request) and must be dropped.
    async fn checkout(&mut self, len: usize) -> Result<Option<usize>, SessionError> {
        if !self.skip_until_sync {
            let checkout = match self.pool.try_checkout(&self.who) {
                Some(server) => Ok(server),
                None => {
                    self.gauge.set(GaugeState::Waiting);
                    // Boxed: the waiting and connect paths are large and rarer; idle
                    // clients should not carry them.
                    Box::pin(self.pool.checkout(&self.who)).await
                }
            };
            match checkout {
                Ok(server) => {
                    self.gauge.set(GaugeState::Active);
                    for buf in [&mut self.to_server, &mut self.to_client] {
                        if buf.capacity() == 0 {
                            *buf = crate::bufpool::take();
                        }
                    }
                    self.registration.slot.set(Some(server.cancel.clone()));
                    self.server = Some(server);
                    self.exchange.on_checkout();
                    return Ok(None);
                }
                Err(e) => {
                    self.gauge.set(GaugeState::Idle);
                    tracing::warn!(client = %self.who.addr, error = %e, "checkout failed");
                    let (code, message) = pool_error_fields(&e);
                    backend::error_response(&mut self.to_client, Severity::Error, code, &message);
                    self.skip_until_sync = true;
                }
            }
        }
        // Drop frames up to the end of the request, answering it with ReadyForQuery.
        let buf = &self.client.buf[..len];
        let mut pos = 0;
        while let Ok(Some(total)) = frame_len(&buf[pos..], self.limits.max_packet) {
            let tag = buf[pos];
            pos += total;
            if matches!(tag, b'S' | b'Q' | b'F') {
                self.skip_until_sync = false;
                backend::ready_for_query(&mut self.to_client, b'I');
                break;
            }
        }
        self.flush_client().await?;
        Ok(Some(pos))
    }

    /// Handles bytes from the server and releases it at the end of a transaction in
    /// transaction mode.
    async fn server_input(&mut self) -> Result<Flow, SessionError> {
        let Some(server) = self.server.as_mut() else {
            return Ok(Flow::Continue);
        };
        let server = &mut **server;
        let mut io = Io {
            client: &mut self.state,
            server: &mut server.state,
            registry: self.pool.statements(),
            to_server: &mut self.to_server,
            to_client: &mut self.to_client,
        };
        let consumed = self.exchange.on_server(&server.buf, &mut io);
        let consumed = match consumed {
            Ok(n) => n,
            Err(e) => {
                self.server = None;
                self.registration.slot.set(None);
                return Err(SessionError::ServerLost(UpstreamError::Protocol(
                    e.to_string(),
                )));
            }
        };
        server.buf.advance(consumed);
        // The exchange may have injected a query of its own (the read-back of settings).
        self.send_to_server().await?;
        self.count();
        self.flush_client().await?;
        if self.mode == PoolMode::Transaction && self.exchange.idle() {
            self.release().await;
        }
        Ok(Flow::Continue)
    }

    /// The server closed or failed while this client held it.
    fn server_lost(&mut self) -> Result<Flow, SessionError> {
        self.server = None;
        self.gauge.set(GaugeState::Idle);
        self.pool.counters().inc_error(ErrorKind::ServerLost);
        self.registration.slot.set(None);
        if self.exchange.last_was_error() {
            // The server already told the client why (e.g. FATAL 57P01 on shutdown).
            return Ok(Flow::Done);
        }
        Err(SessionError::ServerLost(UpstreamError::Closed))
    }

    /// Returns the server to the pool, resetting it first if it picked up session state.
    async fn release(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        self.gauge.set(GaugeState::Idle);
        self.registration.slot.set(None);
        if self.exchange.settings_dirty() {
            // The client left before its settings were read back: they are unknown.
            server.state.settings_unknown = true;
        }
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
    async fn finish(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        self.registration.slot.set(None);
        if self.exchange.busy() {
            // Mid request: stop the work on the server and close the connection.
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

/// Length of the complete frames at the front of `buf` before any Terminate, and whether a
/// Terminate was reached.
fn scan_client(buf: &[u8], max: usize) -> Result<(usize, bool), SessionError> {
    let mut pos = 0;
    loop {
        let total = match frame_len(&buf[pos..], max) {
            Ok(Some(total)) => total,
            Ok(None) => break,
            Err(ProtocolError::BadLength { len, .. }) if len > max as i64 => {
                return Err(SessionError::PacketTooLarge {
                    len: len as usize,
                    max,
                })
            }
            Err(e) => return Err(e.into()),
        };
        if buf[pos] == b'X' {
            return Ok((pos, true));
        }
        pos += total;
    }
    Ok((pos, false))
}

/// Gives an empty output buffer's memory back to the buffer cache.
fn release(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        crate::bufpool::give(buf);
    }
}

/// Waits for the idle timer (forever when there is none).
async fn timer_or_never(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Reads from the held server, or waits forever when none is held.
async fn read_server(server: &mut Option<PooledConn>) -> std::io::Result<usize> {
    match server {
        Some(s) => {
            let s = &mut **s;
            s.stream.read_buf(&mut s.buf).await
        }
        None => std::future::pending().await,
    }
}
