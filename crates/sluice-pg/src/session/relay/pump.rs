//! The relay's two-way pump. Each direction has an [`Outbox`] of bytes the sans-IO
//! exchange produced and the peer has not taken yet; one poll pass
//!
//! 1. writes both outboxes as far as their sockets take them (partial writes stay queued,
//!    and the socket's waker is registered for the rest),
//! 2. reads the client only while the outbox towards the server has room, and the server
//!    only while the outbox towards the client has room,
//! 3. polls the idle timer.
//!
//! So the relay never waits on one socket while the other goes unread, and a full outbox
//! stops reading on the side that feeds it: that is the backpressure, and it bounds the
//! memory of a session to [`CAP`] plus one read per direction. On the fast path a pass
//! costs what the old loop did: one read and, on the next pass, one write per batch.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::Relay;
use crate::session::PgSessionError;

/// Most bytes an outbox holds before the relay stops reading the side that fills it (four
/// of the buffer cache's blocks, so a drained outbox can still go back to the cache). A
/// single frame may overshoot it: frames are forwarded whole.
pub(super) const CAP: usize = 4 * crate::bufpool::SIZE;

/// Bytes on their way to one peer, written as its socket accepts them. Whether a TLS
/// stream still holds some of them unflushed is a flag of the relay's (`client_unflushed`,
/// `server_unflushed`), passed in: there it shares the relay's padding, where here it
/// would cost every client 16 bytes.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    /// What waits to be written; the exchange appends to it.
    pub(super) buf: BytesMut,
}

impl Outbox {
    /// Whether reading the side that fills this outbox may go on.
    pub(super) fn has_room(&self) -> bool {
        self.buf.len() < CAP
    }

    /// Writes as much as `stream` takes without waiting and returns how many bytes that
    /// was; whatever is left stays queued, with the stream's waker registered. `unflushed`:
    /// a TLS stream accepted bytes it may still hold in its own record buffer (it needs a
    /// flush before the outbox counts as empty).
    fn poll_send<S: AsyncWrite + Unpin>(
        &mut self,
        unflushed: &mut bool,
        stream: &mut S,
        tls: bool,
        cx: &mut Context<'_>,
    ) -> io::Result<usize> {
        let mut sent = 0;
        while !self.buf.is_empty() {
            match Pin::new(&mut *stream).poll_write(cx, &self.buf) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) if n == self.buf.len() => {
                    sent += n;
                    self.buf.clear();
                    // Partial writes advanced the start of the block; take it back whole
                    // (no allocation: the buffer is empty and its block unshared).
                    if self.buf.capacity() < crate::bufpool::SIZE {
                        self.buf.reserve(crate::bufpool::SIZE);
                    }
                }
                Poll::Ready(Ok(n)) => {
                    sent += n;
                    self.buf.advance(n);
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        *unflushed |= tls && sent > 0;
        if *unflushed && self.buf.is_empty() {
            match Pin::new(stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => *unflushed = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(sent)
    }

    /// Writes and flushes everything, however long the peer takes: for the last words
    /// before a session ends, when there is nothing else left to pump.
    pub(super) async fn send_all<S: AsyncWrite + Unpin>(
        &mut self,
        unflushed: &mut bool,
        stream: &mut S,
    ) -> io::Result<usize> {
        let n = self.buf.len();
        if n > 0 || *unflushed {
            stream.write_all(&self.buf).await?;
            stream.flush().await?;
        }
        self.buf.clear();
        *unflushed = false;
        Ok(n)
    }
}

/// What a read from one side brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// New bytes are in that side's buffer.
    Data,
    /// End of stream, or a read error (the relay treats both as the peer leaving).
    End,
}

impl Read {
    fn from(read: io::Result<usize>) -> Self {
        match read {
            Ok(0) | Err(_) => Read::End,
            Ok(_) => Read::Data,
        }
    }
}

/// What a pump pass found for the relay to act on.
pub(super) enum Wake {
    /// Reads completed: `Some` for each side that was read.
    Input {
        client: Option<Read>,
        server: Option<Read>,
    },
    /// The client sent Terminate and everything before it has reached the server.
    Flushed,
    /// The idle timer ran out.
    Timeout,
}

impl Relay<'_> {
    /// Something waits to be written (or flushed) to the server.
    pub(super) fn server_owed(&self) -> bool {
        !self.to_server.buf.is_empty() || self.server_unflushed
    }

    /// Something waits to be written (or flushed) to the client.
    pub(super) fn client_owed(&self) -> bool {
        !self.to_client.buf.is_empty() || self.client_unflushed
    }

    /// Drops what waits for the server (it is gone, or no longer wants it).
    pub(super) fn discard_server(&mut self) {
        self.to_server.buf.clear();
        self.server_unflushed = false;
    }

    /// Drops what waits for the client (it is gone, or no longer wants it).
    pub(super) fn discard_client(&mut self) {
        self.to_client.buf.clear();
        self.client_unflushed = false;
    }

    /// [`Relay::poll_pump`], and with `shutdown` also ready with `None` once the shutdown
    /// has begun: the cancel registry wakes the task then (see `CancelSlot::watch`); its
    /// flag is read after the waker is registered, so a shutdown between the two is not
    /// missed.
    pub(super) fn poll_pump_watching(
        &mut self,
        cx: &mut Context<'_>,
        shutdown: bool,
    ) -> Poll<Option<Result<Wake, PgSessionError>>> {
        match self.poll_pump(cx) {
            Poll::Pending if shutdown => {
                self.registration.slot.watch(cx.waker());
                match self.registration.shutting_down() {
                    true => Poll::Ready(None),
                    false => Poll::Pending,
                }
            }
            other => other.map(Some),
        }
    }

    /// One pump pass; see the module docs. Ready when there is input to handle (or the
    /// timer fired), pending with every relevant waker registered otherwise.
    pub(super) fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<Result<Wake, PgSessionError>> {
        self.poll_send_server(cx)?;
        let owed = self.client_owed();
        if owed {
            let tls = self.client.stream.is_tls();
            let sent = self.to_client.poll_send(
                &mut self.client_unflushed,
                &mut self.client.stream,
                tls,
                cx,
            )?;
            self.pool.counters().add_bytes_out(sent as u64);
            if !self.client_owed() {
                if self.server.is_none() {
                    // Between transactions: hold no buffers while waiting.
                    crate::bufpool::give_if_empty(&mut self.to_client.buf);
                }
                // No idle timer runs while output is owed; now one may.
                if !self.timer_armed {
                    self.arm_timer();
                }
            }
        }
        if self.poll_notifications(cx)? {
            return Poll::Ready(Ok(Wake::Input {
                client: None,
                server: None,
            }));
        }
        if self.terminating {
            if !self.server_owed() {
                return Poll::Ready(Ok(Wake::Flushed));
            }
        } else if self.to_server.has_room() {
            if let Poll::Ready(read) = self.client.poll_read_more(cx) {
                let server = self.poll_read_server(cx);
                return Poll::Ready(Ok(Wake::Input {
                    client: Some(Read::from(read)),
                    server,
                }));
            }
        }
        if let Some(read) = self.poll_read_server(cx) {
            return Poll::Ready(Ok(Wake::Input {
                client: None,
                server: Some(read),
            }));
        }
        if let (true, Some(timer)) = (self.timer_armed, self.timer.as_mut()) {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Wake::Timeout));
            }
        }
        Poll::Pending
    }

    /// Sets the timer for the wait that starts now (or disarms it): the idle timeout that
    /// applies, or `query_timeout` / `transaction_timeout` when one runs out sooner.
    pub(super) fn arm_timer(&mut self) {
        let hard = self.hard_deadline();
        let idle = self
            .idle_limit()
            .map(|limit| tokio::time::Instant::now() + limit);
        let Some(deadline) = idle.into_iter().chain(hard).min() else {
            self.timer_armed = false;
            return;
        };
        match &mut self.timer {
            Some(t) => t.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.timer_armed = true;
    }

    /// When `query_timeout` or `transaction_timeout` runs out for what is running now
    /// (`None`: neither is set, or nothing runs), noting when the request and the
    /// transaction began.
    fn hard_deadline(&mut self) -> Option<tokio::time::Instant> {
        let since = self.since.as_mut()?;
        let held = self.server.is_some();
        let busy = held && self.exchange.busy();
        let in_transaction = held && self.exchange.status() != b'I';
        let now = tokio::time::Instant::now();
        since.request = busy.then(|| since.request.unwrap_or(now));
        since.transaction = in_transaction.then(|| since.transaction.unwrap_or(now));
        let query = since.request.zip(since.query).map(|(s, l)| s + l);
        let transaction = since
            .transaction
            .zip(since.max_transaction)
            .map(|(s, l)| s + l);
        query.into_iter().chain(transaction).min()
    }

    /// Why the timer fired: a hard limit that ran out, else the idle timeout in force.
    pub(super) fn timeout_reason(&self) -> PgSessionError {
        let now = tokio::time::Instant::now();
        if let Some(since) = &self.since {
            let over = |s: Option<tokio::time::Instant>, l: Option<std::time::Duration>| {
                s.zip(l).is_some_and(|(s, l)| now >= s + l)
            };
            if over(since.request, since.query) {
                return PgSessionError::QueryTimeout;
            }
            if over(since.transaction, since.max_transaction) {
                return PgSessionError::TransactionTimeout;
            }
        }
        if self.server.is_some() {
            PgSessionError::IdleInTransactionTimeout
        } else {
            PgSessionError::IdleTimeout
        }
    }

    /// The idle timeout that applies right now: `client_idle_timeout` between
    /// transactions, `idle_transaction_timeout` inside one with nothing in flight.
    /// As in PostgreSQL, a session that still owes the client output is not idle.
    fn idle_limit(&self) -> Option<std::time::Duration> {
        if self.client_owed() {
            return None;
        }
        match &self.server {
            None => self.limits().client_idle,
            Some(_) if !self.exchange.busy() && self.exchange.status() != b'I' => {
                self.limits().idle_transaction
            }
            Some(_) => None,
        }
    }

    /// Writes what waits for the server; a failed write loses the server.
    fn poll_send_server(&mut self, cx: &mut Context<'_>) -> Result<(), PgSessionError> {
        if !self.server_owed() {
            return Ok(());
        }
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let server = &mut **server;
        let tls = server.stream.is_tls();
        match self
            .to_server
            .poll_send(&mut self.server_unflushed, &mut server.stream, tls, cx)
        {
            Ok(sent) => {
                self.pool.counters().add_bytes_in(sent as u64);
                Ok(())
            }
            Err(e) => {
                self.server = None;
                self.registration.slot.set(None);
                self.discard_server();
                Err(PgSessionError::ServerLost(e.into()))
            }
        }
    }

    /// Reads from the held server if the outbox towards the client has room.
    fn poll_read_server(&mut self, cx: &mut Context<'_>) -> Option<Read> {
        if !self.to_client.has_room() {
            return None;
        }
        let server = &mut **self.server.as_mut()?;
        match tokio_util::io::poll_read_buf(Pin::new(&mut server.stream), cx, &mut server.buf) {
            Poll::Ready(read) => Some(Read::from(read)),
            Poll::Pending => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use tokio::io::AsyncReadExt;

    /// A peer that takes bytes slowly: what it does not take stays queued, in order, and
    /// the outbox reports how much went out each time.
    #[tokio::test]
    async fn partial_writes_stay_queued_in_order() {
        let (mut near, mut far) = tokio::io::duplex(64);
        let mut out = Outbox::default();
        let sent: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        out.buf.put_slice(&sent);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut got = Vec::new();
        let mut unflushed = false;
        while !out.buf.is_empty() {
            let before = out.buf.len();
            let n = out
                .poll_send(&mut unflushed, &mut near, false, &mut cx)
                .unwrap();
            assert!(n <= 64, "the peer's window is 64 bytes, {n} went out");
            assert_eq!(out.buf.len(), before - n);
            let mut chunk = [0u8; 64];
            let read = far.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..read]);
        }
        assert_eq!(got, sent);
        assert!(
            out.buf.capacity() >= crate::bufpool::SIZE,
            "block taken back whole"
        );
        out.buf.put_slice(&vec![0; CAP]);
        assert!(
            !out.has_room(),
            "a full outbox stops the other side's reads"
        );
    }
}
