//! The query phase: frames flow raw between the client and a pooled server. Sluice reads
//! only what pooling needs — message tags, ReadyForQuery status, CommandComplete tags,
//! ParameterStatus and named Parse — to decide when a server can go back to the pool:
//!
//! * transaction mode: at ReadyForQuery `I`, once every Sync/Query the client sent has been
//!   answered and no extended-protocol batch is half sent;
//! * session mode: when the client leaves.
//!
//! A server that picked up session state during a checkout in transaction mode (a SET, a
//! named prepared statement, a temp table, LISTEN, a cursor) is reset with
//! `server_reset_query` before anyone else gets it. A server whose client left mid
//! transaction is rolled back and reset; one whose client left mid query is cancelled and
//! closed. No client ever sees another's state.

use bytes::{Buf, BytesMut};
use sluice_config::PoolMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::error::pool_error_fields;
use super::io::{ClientIo, MAX_CLIENT_FRAME};
use super::SessionError;
use crate::cancel::CancelSlot;
use crate::pool::{Pool, PooledConn};
use crate::protocol::backend::{self, Severity};
use crate::protocol::frame::{frame_len, Frames, MAX_FRAME_LEN};
use crate::protocol::frontend::parse_names_statement;

/// CommandComplete tags after which a server keeps state beyond the transaction.
const STATEFUL_TAGS: &[&[u8]] = &[
    b"SET\0",
    b"RESET\0",
    b"PREPARE\0",
    b"DECLARE CURSOR\0",
    b"LISTEN\0",
    b"CREATE TABLE\0",
    b"CREATE SEQUENCE\0",
    b"CREATE VIEW\0",
    b"LOAD\0",
];

/// The relay state of one client.
pub(crate) struct Relay<'a> {
    client: &'a mut ClientIo,
    pool: &'a Pool,
    mode: PoolMode,
    cancel_slot: &'a CancelSlot,
    server: Option<PooledConn>,
    /// Sync, Query and FunctionCall messages sent to the server and not yet answered by
    /// ReadyForQuery.
    pending: usize,
    /// Extended-protocol messages were sent since the last Sync (a batch is open).
    extended: bool,
    /// Syncs sent since the last Execute or Query. A server in COPY FROM STDIN mode ignores
    /// Sync, so these go unanswered when the client ends the copy (CopyDone/CopyFail).
    syncs_since_command: usize,
    /// Transaction status from the latest ReadyForQuery.
    status: u8,
    /// The server holds session state from this checkout and needs a reset.
    dirty: bool,
    /// A checkout failed mid extended-protocol batch: drop messages until Sync, as a
    /// server does after an error.
    skip_until_sync: bool,
    /// The last frame forwarded to the client was an ErrorResponse.
    last_was_error: bool,
}

enum Flow {
    Continue,
    Done,
}

impl<'a> Relay<'a> {
    pub(crate) fn new(
        client: &'a mut ClientIo,
        pool: &'a Pool,
        cancel_slot: &'a CancelSlot,
    ) -> Self {
        Self {
            client,
            pool,
            mode: pool.settings().mode,
            cancel_slot,
            server: None,
            pending: 0,
            syncs_since_command: 0,
            extended: false,
            status: b'I',
            dirty: false,
            skip_until_sync: false,
            last_was_error: false,
        }
    }

    /// Relays until the client leaves or, after `shutdown`, until the client is between
    /// transactions.
    pub(crate) async fn run(mut self, shutdown: &CancellationToken) -> Result<(), SessionError> {
        let mut shutting_down = false;
        let result = loop {
            if shutting_down && self.between_transactions() {
                break Err(SessionError::Shutdown);
            }
            let flow = tokio::select! {
                _ = shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    continue;
                }
                read = read_server(&mut self.server) => match read {
                    Ok(0) | Err(_) => self.server_lost().await,
                    Ok(_) => self.server_input().await,
                },
                read = self.client.stream.read_buf(&mut self.client.buf) => match read {
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
        self.finish().await;
        result
    }

    fn between_transactions(&self) -> bool {
        self.server.is_none() || self.idle_server()
    }

    fn idle_server(&self) -> bool {
        self.pending == 0 && !self.extended && self.status == b'I'
    }

    /// Handles bytes from the client: forwards complete frames, checking a server out first.
    async fn client_input(&mut self) -> Result<Flow, SessionError> {
        let mut start = 0;
        let mut pos = 0;
        let mut flow = Flow::Continue;
        while let Some(total) = frame_len(&self.client.buf[pos..], MAX_CLIENT_FRAME)? {
            let tag = self.client.buf[pos];
            if tag == b'X' {
                flow = Flow::Done;
                break;
            }
            if self.server.is_none() {
                if !self.checkout_for(tag).await? {
                    pos += total;
                    start = pos;
                    continue;
                }
            }
            match tag {
                b'Q' | b'F' => {
                    self.pending += 1;
                    self.syncs_since_command = 0;
                }
                b'S' => {
                    self.pending += 1;
                    self.syncs_since_command += 1;
                    self.extended = false;
                }
                b'c' | b'f' => {
                    self.pending -= self.syncs_since_command.min(self.pending);
                    self.syncs_since_command = 0;
                }
                b'E' => {
                    self.extended = true;
                    self.syncs_since_command = 0;
                }
                b'P' => {
                    self.extended = true;
                    if parse_names_statement(&self.client.buf[pos + 5..pos + total]) {
                        self.dirty = true;
                    }
                }
                b'B' | b'D' | b'C' | b'H' => self.extended = true,
                _ => {}
            }
            pos += total;
        }
        if pos > start {
            if let Some(server) = self.server.as_mut() {
                if let Err(e) = server.stream.write_all(&self.client.buf[start..pos]).await {
                    self.client.buf.advance(pos);
                    self.server = None;
                    return Err(SessionError::ServerLost(e.into()));
                }
            }
        }
        self.client.buf.advance(pos);
        Ok(flow)
    }

    /// Checks out a server for a frame with tag `tag`. On failure answers the client as a
    /// server would (ErrorResponse, then ReadyForQuery at the end of the request) and
    /// returns `false` so the frame is dropped.
    async fn checkout_for(&mut self, tag: u8) -> Result<bool, SessionError> {
        if self.skip_until_sync {
            if tag == b'S' {
                self.skip_until_sync = false;
                let mut out = BytesMut::new();
                backend::ready_for_query(&mut out, b'I');
                self.client.write(&out).await?;
            }
            return Ok(false);
        }
        match self.pool.checkout().await {
            Ok(server) => {
                self.cancel_slot.set(Some(server.cancel.clone()));
                self.server = Some(server);
                self.status = b'I';
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkout failed");
                let (code, message) = pool_error_fields(&e);
                let mut out = BytesMut::new();
                backend::error_response(&mut out, Severity::Error, code, &message);
                match tag {
                    b'Q' | b'S' | b'F' => backend::ready_for_query(&mut out, b'I'),
                    _ => self.skip_until_sync = true,
                }
                self.client.write(&out).await?;
                Ok(false)
            }
        }
    }

    /// Handles bytes from the server: forwards complete frames and releases the server at
    /// the end of a transaction in transaction mode.
    async fn server_input(&mut self) -> Result<Flow, SessionError> {
        let Some(server) = self.server.as_mut() else {
            return Ok(Flow::Continue);
        };
        let mut frames = Frames::new(&server.buf, MAX_FRAME_LEN);
        for frame in frames.by_ref() {
            match frame.tag {
                b'Z' => {
                    self.status = frame.body.first().copied().unwrap_or(b'I');
                    self.pending = self.pending.saturating_sub(1);
                }
                b'S' => self.dirty = true,
                b'C' if STATEFUL_TAGS.contains(&frame.body) => self.dirty = true,
                _ => {}
            }
            self.last_was_error = frame.tag == b'E';
        }
        if let Some(e) = frames.error() {
            return Err(SessionError::ServerLost(
                crate::upstream::UpstreamError::Protocol(e.to_string()),
            ));
        }
        let n = frames.consumed();
        if n > 0 {
            self.client.write(&server.buf[..n]).await?;
            server.buf.advance(n);
        }
        if self.mode == PoolMode::Transaction && self.idle_server() {
            self.release().await;
        }
        Ok(Flow::Continue)
    }

    /// The server closed or failed while this client held it.
    async fn server_lost(&mut self) -> Result<Flow, SessionError> {
        self.server = None;
        self.cancel_slot.set(None);
        if self.last_was_error {
            // The server already told the client why (e.g. FATAL 57P01 on shutdown).
            return Ok(Flow::Done);
        }
        Err(SessionError::ServerLost(
            crate::upstream::UpstreamError::Closed,
        ))
    }

    /// Returns the server to the pool, resetting it first if it picked up session state.
    async fn release(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        self.cancel_slot.set(None);
        let dirty = std::mem::take(&mut self.dirty);
        let reset = &self.pool.settings().reset_query;
        if dirty && !reset.is_empty() {
            match server.run_simple(reset).await {
                Ok(b'I') => {}
                other => {
                    tracing::warn!(result = ?other, "server reset failed; closing it");
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
        self.cancel_slot.set(None);
        if self.pending > 0 || self.extended {
            // Mid query: stop the work on the server and close the connection.
            let key = server.cancel.clone();
            drop(server);
            tokio::spawn(async move { crate::cancel::send_cancel(&key).await });
            return;
        }
        if self.status != b'I' {
            match server.run_simple("ROLLBACK").await {
                Ok(b'I') => self.dirty = true,
                _ => return,
            }
        }
        if self.mode == PoolMode::Session {
            self.dirty = true;
        }
        self.release_after_finish(server).await;
    }

    async fn release_after_finish(&mut self, server: PooledConn) {
        self.server = Some(server);
        self.release().await;
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
