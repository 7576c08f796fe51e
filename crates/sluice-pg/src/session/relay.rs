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
//!
//! The bytes themselves move through [`pump`], which never waits on one socket while the
//! other goes unread; [`checkout`] gets a server when a request needs one.

mod checkout;
mod limits;

use checkout::Now;
use limits::Since;
mod listen;
mod pin;
mod pump;
mod release;

use bytes::Buf;
use sluice_config::PoolMode;

use pump::{Outbox, Read, Wake};

use super::exchange::{Exchange, Features, Sides};
use super::PgSessionError;
use crate::client_io::ClientIo;
use crate::pool::{ClientMeta, PgPool, PooledConn};
use crate::protocol::frame::frames_before_terminate;
use crate::state::ClientState;
use crate::upstream::{PgUpstreamError, UpstreamProtocolError};
use sluice_stats::{ClientGuard, ClientState as GaugeState, ErrorKind};
use std::sync::Arc;

/// The relay state of one client.
pub(crate) struct Relay<'a> {
    client: &'a mut ClientIo,
    pool: PgPool,
    mode: PoolMode,
    /// This client's cancel-key registration (its slot names the server it is on).
    registration: crate::cancel::Registration,
    /// Counts the client as connected until the relay ends; holds the context the client
    /// logged in under, whose configuration its limits come from.
    admitted: super::login::ClientCount<'a>,
    server: Option<PooledConn>,
    exchange: Exchange,
    state: ClientState,
    /// A checkout failed mid extended-protocol batch: drop messages until Sync, as a
    /// server does after an error.
    skip_until_sync: bool,
    /// The client sent Terminate: what it sent before still goes to the server, nothing
    /// more is read from it and nothing more is sent to it.
    terminating: bool,
    /// Bytes on their way to the server (the client's frames, Sluice's own queries).
    to_server: Outbox,
    /// Bytes on their way to the client.
    to_client: Outbox,
    /// The server's TLS stream may hold bytes of `to_server` unflushed.
    server_unflushed: bool,
    /// The client's TLS stream may hold bytes of `to_client` unflushed.
    client_unflushed: bool,
    /// Who this client is, for the pool's active-checkout table.
    who: Arc<ClientMeta>,
    /// This client's slot in the idle/waiting/active client gauges.
    gauge: ClientGuard,
    /// The idle timer, allocated only when an idle timeout is configured and then reset
    /// rather than rebuilt (keeps the per-client future small).
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Whether `timer` applies to the current wait.
    timer_armed: bool,
    /// The client's place in the pool's notification hub, while it LISTENs (transaction
    /// mode; boxed so a client that never listens carries a pointer).
    notify: Option<Box<crate::notify::Subscription>>,
    /// The server is pinned to this client for session state (see [`pin`]).
    pin: Option<Box<crate::pool::PinSlot>>,
    /// The client was told once that `max_pinned_servers` was reached.
    pin_warned: bool,
    /// The client is gone: its server is cleaned and returned, never pinned.
    leaving: bool,
    /// `query_timeout` / `transaction_timeout` and when what they bound began (boxed,
    /// and only when one is set).
    since: Option<Box<Since>>,
    /// A database with several hosts: how each transaction finds its host.
    route: Option<Box<crate::hosts::ClientRoute>>,
}

/// Most bytes read from a client that waits for a server (see [`Relay::wait_for_server`]).
const WATCH_CAP: usize = 64 * 1024;

enum Flow {
    Continue,
    Done,
}

/// How the relay ends after a step, or `None` if it goes on.
fn ended(flow: Result<Flow, PgSessionError>) -> Option<Result<(), PgSessionError>> {
    match flow {
        Ok(Flow::Continue) => None,
        Ok(Flow::Done) => Some(Ok(())),
        Err(e) => Some(Err(e)),
    }
}

impl<'a> Relay<'a> {
    pub(crate) fn new(
        client: &'a mut ClientIo,
        logged_in: super::login::LoggedIn<'a>,
        ctx: &crate::context::PgContext,
    ) -> Self {
        let super::login::LoggedIn {
            pool,
            registration,
            state,
            who,
            count,
            server,
            route,
        } = logged_in;
        let gauge = ctx.stats.clients().track(match server {
            Some(_) => sluice_stats::ClientState::Active,
            None => sluice_stats::ClientState::Idle,
        });

        let settings = pool.settings();
        let transaction = settings.mode == PoolMode::Transaction;
        let features = Features {
            map_statements: transaction && settings.max_prepared_statements > 0,
            track_settings: transaction,
            cache_size: u32::try_from(settings.max_prepared_statements).unwrap_or(u32::MAX),
            listen_in_place: transaction,
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
            admitted: count,
            server,
            exchange,
            state,
            skip_until_sync: false,
            terminating: false,
            to_server: Outbox::default(),
            to_client: Outbox::default(),
            server_unflushed: false,
            client_unflushed: false,
            who,
            gauge,
            timer: None,
            timer_armed: false,
            notify: None,
            pin: None,
            pin_warned: false,
            leaving: false,
            since: Since::from_config(&ctx.config.postgres),
            route,
        }
    }

    /// Relays until the client leaves or, after shutdown, until the client is between
    /// transactions.
    pub(crate) async fn run(&mut self) -> Result<(), PgSessionError> {
        let mut shutting_down = false;
        let result = loop {
            // Shutdown ends a session only between requests, so only then is it checked
            // (a busy client's own input may keep the wait below from polling it).
            let between = self.server.is_none() || self.exchange.idle();
            shutting_down = shutting_down || (between && self.registration.shutting_down());
            if shutting_down && between {
                // The client still gets what it is owed, then the shutdown notice.
                if let Err(e) = Box::pin(self.flush_client_all()).await {
                    break Err(e);
                }
                break Err(PgSessionError::Shutdown);
            }
            self.prepare_wait();
            // Only a relay that waits on its client needs waking for shutdown: one with a
            // request in flight wakes for the answer and sees the flag above.
            let pumped = std::future::poll_fn(|cx| self.poll_pump_watching(cx, between));
            // Unwrapped in the same statement: the 80-byte result must not stay alive.
            let wake = match pumped.await {
                Some(Ok(wake)) => wake,
                Some(Err(e)) => break Err(e),
                None => {
                    shutting_down = true;
                    continue;
                }
            };
            // What the pass found, acted on here rather than in a function of its own, and
            // no result held across an await (either would add to every client's future):
            // server input first (it may end a transaction and release the server).
            let (client, server) = match wake {
                Wake::Input { client, server } => (client, server),
                Wake::Flushed => break Ok(()),
                Wake::Timeout => break Err(self.timeout_reason()),
            };
            match server {
                // Boxed, as the other rare paths: an idle client should not carry them.
                Some(Read::End) => match ended(Box::pin(self.server_lost()).await) {
                    Some(end) => break end,
                    None => continue,
                },
                Some(Read::Data) => {
                    if let Err(e) = self.server_input().await {
                        break Err(e);
                    }
                }
                None => {}
            }
            let flow = match client {
                Some(Read::Data) => self.client_input().await,
                Some(Read::End) => Ok(Flow::Done),
                None => Ok(Flow::Continue),
            };
            if let Some(end) = ended(flow) {
                break end;
            }
        };
        // The result goes into the boxed future: it is not held beside the relay's own.
        Box::pin(self.finish_then(result)).await
    }

    /// Before waiting for input: between transactions, hold no buffers; arm the idle timer.
    fn prepare_wait(&mut self) {
        if self.server.is_none() {
            self.client.release_buffer();
            crate::bufpool::give_if_empty(&mut self.to_server.buf);
            crate::bufpool::give_if_empty(&mut self.to_client.buf);
        }
        self.arm_timer();
    }

    /// Handles bytes from the client: complete frames go through the exchange to a server
    /// (checked out first if none is held).
    async fn client_input(&mut self) -> Result<Flow, PgSessionError> {
        if self.mode == PoolMode::Session && self.exchange.idle() && self.pool.is_closed() {
            // Session mode holds its server for life: a client of a closed pool ends
            // between requests (transaction mode ends at its next checkout).
            if self.exchange.status() == b'I' {
                return Err(PgSessionError::PoolClosed);
            }
        }
        loop {
            let (len, terminate) = self.complete_frames()?;
            if len > 0 {
                let mut read_while_waiting = false;
                if self.server.is_none() {
                    let buffered = self.client.buf.len();
                    // Boxed: waiting, connecting and checking are larger and rarer paths;
                    // idle clients should not carry them. (What `checkout_now` returns
                    // goes into the box inside this block, so the future keeps no copy.)
                    let consumed = {
                        let waiting = match self.checkout_now(len) {
                            Now::Got => None,
                            Now::Skip(n) => Some(Ok(n)),
                            Now::Closed => return Err(PgSessionError::PoolClosed),
                            Now::Wait(first) => Some(Err(Box::pin(self.checkout(first, len)))),
                        };
                        match waiting {
                            None => None,
                            Some(Ok(n)) => Some(n),
                            Some(Err(waiting)) => waiting.await?,
                        }
                    };
                    if let Some(consumed) = consumed {
                        self.client.buf.advance(consumed);
                        continue;
                    }
                    read_while_waiting = self.client.buf.len() > buffered;
                }
                self.forward_client(len)?;
                if !self.after_exchange_now() {
                    Box::pin(self.after_exchange()).await;
                }
                if read_while_waiting {
                    // What the client sent during the wait is already buffered: the socket
                    // will not wake the pump for it again.
                    continue;
                }
            }
            if !terminate {
                return Ok(Flow::Continue);
            }
            if !self.server_owed() {
                return Ok(Flow::Done);
            }
            // What came before the Terminate still goes to the server (a COMMIT, say).
            self.terminating = true;
            self.discard_client();
            return Ok(Flow::Continue);
        }
    }

    /// How many bytes of complete client frames are buffered, and whether a Terminate
    /// follows them.
    fn complete_frames(&self) -> Result<(usize, bool), PgSessionError> {
        let max = self.limits().max_packet;
        frames_before_terminate(&self.client.buf, max)
            .map_err(|e| PgSessionError::client_frame(e, max))
    }

    /// Runs `len` bytes of complete client frames through the exchange into the outboxes.
    fn forward_client(&mut self, len: usize) -> Result<(), PgSessionError> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let server = &mut **server;
        let mut io = Sides {
            client: &mut self.state,
            server: &mut server.state,
            registry: self.pool.statements(),
            to_server: &mut self.to_server.buf,
            to_client: &mut self.to_client.buf,
        };
        let result = self.exchange.on_client(&self.client.buf[..len], &mut io);
        self.client.buf.advance(len);
        result?;
        self.count();
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

    /// Writes everything the client is owed, waiting as long as it takes (before a
    /// session ends).
    async fn flush_client_all(&mut self) -> Result<(), PgSessionError> {
        let sent = self
            .to_client
            .send_all(&mut self.client_unflushed, &mut self.client.stream)
            .await?;
        self.pool.counters().add_bytes_out(sent as u64);
        Ok(())
    }

    /// Handles bytes from the server and releases it at the end of a transaction in
    /// transaction mode.
    async fn server_input(&mut self) -> Result<(), PgSessionError> {
        self.server_frames()?;
        if self.listens() {
            Box::pin(self.sync_listening()).await;
        }
        if self.terminating {
            self.discard_client();
        }
        // Released only once everything meant for it was written (the answers are queued
        // for the client; they need no server).
        if self.transaction_over() && !self.release_clean() {
            Box::pin(self.release()).await;
        }
        Ok(())
    }

    /// Runs the server's complete frames through the exchange (which may also queue a
    /// query of its own: the read-back of settings). Not async, so that none of its
    /// locals is held in the session's future.
    fn server_frames(&mut self) -> Result<(), PgSessionError> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let server = &mut **server;
        let mut io = Sides {
            client: &mut self.state,
            server: &mut server.state,
            registry: self.pool.statements(),
            to_server: &mut self.to_server.buf,
            to_client: &mut self.to_client.buf,
        };
        match self.exchange.on_server(&server.buf, &mut io) {
            Ok(consumed) => server.buf.advance(consumed),
            Err(e) => {
                self.server = None;
                self.registration.slot.set(None);
                self.discard_server();
                return Err(PgSessionError::ServerLost(
                    UpstreamProtocolError::Frame(e).into(),
                ));
            }
        }
        self.count();
        Ok(())
    }

    /// The server closed or failed while this client held it.
    async fn server_lost(&mut self) -> Result<Flow, PgSessionError> {
        self.server = None;
        self.pin = None;
        self.gauge.set(GaugeState::Idle);
        self.pool.counters().inc_error(ErrorKind::ServerLost);
        self.registration.slot.set(None);
        self.discard_server();
        if self.terminating {
            return Ok(Flow::Done);
        }
        // What the server said before it went still reaches the client.
        self.flush_client_all().await?;
        if self.exchange.last_was_error() {
            // The server already told the client why (e.g. FATAL 57P01 on shutdown).
            return Ok(Flow::Done);
        }
        Err(PgSessionError::ServerLost(PgUpstreamError::Closed))
    }
}
