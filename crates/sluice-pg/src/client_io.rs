//! The client socket with its read buffer, shared by the login, the console and the relay.
//! Partial frames stay in the buffer between reads (never inside a half-finished
//! `read_exact`), so reads are cancel-safe in `select!`. A leaf: it knows the framing and
//! nothing of sessions.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::tls::{ClientStream, MaybeTls};

use crate::protocol::frame::{frame_len, ProtocolError};
use crate::protocol::startup::startup_len;

/// Room made in a read buffer before each read: one read takes a typical request whole.
const READ_CHUNK: usize = 8 * 1024;

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = crate::bufpool::take();
    } else if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Why a read or write on the client socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientIoError {
    /// The socket failed (or closed in the middle of a message).
    #[error("client I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the framing.
    #[error("client protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// The first packet's length is not a startup packet's: closed without an answer.
    #[error("invalid length of startup packet: {0}")]
    BadStartupPacket(ProtocolError),
}

/// Longest message accepted from a client before it has authenticated.
pub(crate) const MAX_AUTH_FRAME: usize = 16 * 1024;

/// A client connection.
pub(crate) struct ClientIo {
    pub(crate) stream: ClientStream,
    /// Bytes read from the client and not yet handled.
    pub(crate) buf: BytesMut,
}

impl ClientIo {
    /// The socket's descriptor (under TLS too), for the console's KILL.
    pub(crate) fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match &self.stream {
            MaybeTls::Plain(tcp) => Some(tcp.as_raw_fd()),
            MaybeTls::Tls(tls) => Some(tls.get_ref().0.as_raw_fd()),
            MaybeTls::Detached => None,
        }
    }

    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream: MaybeTls::Plain(stream),
            buf: BytesMut::new(),
        }
    }

    /// Reads more bytes; `Ok(false)` on a clean end of stream.
    pub(crate) async fn fill(&mut self) -> Result<bool, ClientIoError> {
        Ok(self.read_more().await? > 0)
    }

    /// Reads whatever the client sent next into `buf` (0 on end of stream). Cancel-safe.
    pub(crate) async fn read_more(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    /// Polls for what the client sent next, read into `buf` (0 on end of stream); the
    /// relay's pump calls this beside its other sockets.
    ///
    /// On plaintext sockets it waits for readability *before* reserving buffer space, so an
    /// idle client holds no read buffer at all (see [`ClientIo::release_buffer`]).
    pub(crate) fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        match &mut self.stream {
            MaybeTls::Plain(s) => loop {
                // poll_read_ready uses the socket's own waker slot: a far smaller future
                // than `readable()` (which carries a waiter node), and one per idle client.
                ready!(s.poll_read_ready(cx))?;
                reserve(&mut self.buf);
                let room = self.buf.capacity() - self.buf.len();
                // A short read drained the socket: forget the readiness, so the next wait
                // goes straight to the poller instead of spending a recv that returns
                // EAGAIN (one syscall per transaction). The outer `try_io` snapshots the
                // readiness tick *before* the recv, so an event that arrives after it
                // (new data) has a newer tick and is not cleared (no lost wakeup).
                let buf = &mut self.buf;
                let mut drained = None;
                let read = s.try_io(tokio::io::Interest::READABLE, || {
                    let n = s.try_read_buf(buf)?;
                    if n > 0 && n < room {
                        drained = Some(n);
                        return Err(std::io::ErrorKind::WouldBlock.into());
                    }
                    Ok(n)
                });
                if let Some(n) = drained {
                    return Poll::Ready(Ok(n));
                }
                match read {
                    // Readiness was stale (tokio clears it only on WouldBlock): give the
                    // buffer back before waiting again, or every idle client keeps one.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if self.buf.is_empty() {
                            crate::bufpool::give(&mut self.buf);
                        }
                    }
                    other => return Poll::Ready(other),
                }
            },
            stream => {
                reserve(&mut self.buf);
                tokio_util::io::poll_read_buf(Pin::new(stream), cx, &mut self.buf)
            }
        }
    }

    /// Frees the read buffer when it holds nothing (an idle client costs no buffer).
    pub(crate) fn release_buffer(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            crate::bufpool::give(&mut self.buf);
        }
    }

    /// Reads one untagged startup packet; `None` if the client closed first.
    pub(crate) async fn read_startup(&mut self) -> Result<Option<Bytes>, ClientIoError> {
        loop {
            // A bad startup length is not answered, as PostgreSQL does not ("invalid length
            // of startup packet" goes to its log only): node-postgres, for one, writes a
            // Terminate before the StartupMessage when a client ends in the tick it
            // connected, and expects the socket to just close.
            let len = startup_len(&self.buf).map_err(ClientIoError::BadStartupPacket)?;
            if let Some(len) = len {
                return Ok(Some(self.buf.split_to(len).freeze()));
            }
            if !self.fill().await? {
                return self.eof();
            }
        }
    }

    /// Reads one whole tagged frame of at most `max` bytes (authentication, admin
    /// console); `None` if the client closed first.
    pub(crate) async fn read_frame(
        &mut self,
        max: usize,
    ) -> Result<Option<(u8, Bytes)>, ClientIoError> {
        loop {
            if let Some(total) = frame_len(&self.buf, max)? {
                let mut frame = self.buf.split_to(total);
                let tag = frame[0];
                frame.advance(5);
                return Ok(Some((tag, frame.freeze())));
            }
            if !self.fill().await? {
                return self.eof();
            }
        }
    }

    fn eof<T>(&self) -> Result<Option<T>, ClientIoError> {
        if self.buf.is_empty() {
            Ok(None)
        } else {
            Err(ClientIoError::Io(std::io::ErrorKind::UnexpectedEof.into()))
        }
    }

    /// Performs the TLS handshake after Sluice answered an SSLRequest with `S`.
    pub(crate) async fn upgrade(
        &mut self,
        acceptor: &tokio_rustls::TlsAcceptor,
    ) -> Result<(), ClientIoError> {
        let MaybeTls::Plain(tcp) = std::mem::replace(&mut self.stream, MaybeTls::Detached) else {
            return Err(ClientIoError::Protocol(ProtocolError::Unexpected('S')));
        };
        let tls = acceptor.accept(tcp).await?;
        self.stream = MaybeTls::Tls(Box::new(tls));
        Ok(())
    }

    /// Writes all of `bytes` to the client.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientIoError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }
}
