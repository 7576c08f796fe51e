//! One upstream connection: request/reply round trips of whole messages with Sluice-owned
//! request ids (compressed when the handshake agreed on a compressor), and whether it can
//! be reused. Where to connect is `target` (the URI),
//! how a connection is opened and logged in is `handshake`, what can fail is `error`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bson::{Document, RawDocumentBuf};
use bytes::BytesMut;
use sluice_tls::ServerStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::wire::{
    compress, decompress, encode_op_msg, flags, may_compress, peek_command_name, Compressor, Frame,
    FrameDecoder, OpCode, OpMsg, WireError,
};

mod error;
mod handshake;
mod target;

pub use error::MongoUpstreamError;
use handshake::negotiate;
pub use handshake::ServerInfo;
pub use target::{Credential, Target};

/// Largest reply accepted before the server told its own `maxMessageSizeBytes`.
const DEFAULT_MAX_MESSAGE: usize = 48_000_000;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// One authenticated upstream connection.
pub struct UpstreamConn {
    stream: ServerStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    next_request_id: i32,
    /// Set while a request is written but its reply not yet read: a connection dropped in
    /// that state (client gone mid-request) must not be reused.
    in_flight: bool,
    /// While an exhaust stream runs: the `requestID` of its request and of its last reply;
    /// the next reply answers the last one (as mongod does) or, as some servers have it
    /// (SecantusDB), the request.
    streaming: Option<(i32, i32)>,
    /// The compressor the server agreed to in the handshake (`None`: uncompressed).
    compressor: Option<Compressor>,
    /// Process-unique id, for logs.
    pub id: u64,
    /// What the server said about itself at connect time.
    pub info: ServerInfo,
    /// `host:port` it is connected to.
    pub addr: String,
}

impl UpstreamConn {
    /// Connects to the first seed host that is a writable primary, other than those in
    /// `avoid` (members whose claim the replica-set monitor found stale), and logs in.
    pub async fn connect(
        target: &Target,
        avoid: &[String],
        timeout: Duration,
    ) -> Result<UpstreamConn, MongoUpstreamError> {
        tokio::time::timeout(timeout, Self::connect_any(target, avoid))
            .await
            .map_err(|_| MongoUpstreamError::Timeout)?
    }

    /// Connects to `addr` (whatever its role: the replica-set monitor chose it) and logs in.
    pub async fn connect_to(
        target: &Target,
        addr: &str,
        timeout: Duration,
    ) -> Result<UpstreamConn, MongoUpstreamError> {
        tokio::time::timeout(timeout, Self::connect_one(target, addr))
            .await
            .map_err(|_| MongoUpstreamError::Timeout)?
            .map(|(conn, _)| conn)
    }

    /// The `hello` reply of `addr`, on a connection opened for it and closed after (the
    /// replica-set monitor's heartbeat; no login is needed for `hello`).
    pub async fn probe(
        target: &Target,
        addr: &str,
        timeout: Duration,
    ) -> Result<Document, MongoUpstreamError> {
        tokio::time::timeout(timeout, Self::handshake(target, addr))
            .await
            .map_err(|_| MongoUpstreamError::Timeout)?
            .map(|(_, reply)| reply)
    }

    async fn connect_any(
        target: &Target,
        avoid: &[String],
    ) -> Result<UpstreamConn, MongoUpstreamError> {
        let mut last = None;
        for addr in target.hosts.iter().filter(|h| !avoid.contains(h)) {
            match Self::connect_one(target, addr).await {
                Ok((conn, primary)) if primary || target.hosts.len() == 1 => return Ok(conn),
                Ok(_) => last = Some(MongoUpstreamError::NoPrimary(target.hosts.clone())),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| MongoUpstreamError::NoPrimary(target.hosts.clone())))
    }

    async fn connect_one(
        target: &Target,
        addr: &str,
    ) -> Result<(UpstreamConn, bool), MongoUpstreamError> {
        let (mut conn, reply) = Self::handshake(target, addr).await?;
        let primary = reply.get_bool("isWritablePrimary").unwrap_or(false)
            || reply.get_bool("ismaster").unwrap_or(false);
        if let Some(c) = &target.credential {
            let mechanism = c.mechanism.unwrap_or_else(|| negotiate(&reply));
            conn.login(c, mechanism).await?;
        }
        Ok((conn, primary))
    }

    /// Runs one command Sluice itself issues and returns the reply body.
    pub async fn command(&mut self, cmd: &Document) -> Result<Document, MongoUpstreamError> {
        let mut bytes = Vec::new();
        cmd.to_writer(&mut bytes)
            .map_err(|e| MongoUpstreamError::Wire(WireError::malformed("OP_MSG", e.to_string())))?;
        let frame = Frame::from_bytes(encode_op_msg(0, 0, 0, &bytes))
            .ok_or_else(|| MongoUpstreamError::Wire(WireError::malformed("OP_MSG", "encoding")))?;
        let reply = self.round_trip(frame).await?;
        let msg = OpMsg::parse(reply.body())?;
        let raw = RawDocumentBuf::from_bytes(msg.body.as_bytes().to_vec())
            .map_err(|e| WireError::malformed("OP_MSG", e.to_string()))?;
        raw.to_document()
            .map_err(|e| MongoUpstreamError::Wire(WireError::malformed("OP_MSG", e.to_string())))
    }

    fn next_id(&mut self) -> i32 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Sends a request (ids rewritten, `exhaustAllowed` cleared) and returns the reply.
    pub async fn round_trip(&mut self, frame: Frame) -> Result<Frame, MongoUpstreamError> {
        self.request(frame, false).await
    }

    /// Sends a request keeping its `exhaustAllowed` bit (a client's exhaust getMore) and
    /// returns the first reply. While the last reply read has `moreToCome`, the server
    /// streams more: read them with [`UpstreamConn::next_streamed`]; the connection is
    /// not reusable until the stream has ended.
    pub async fn open_stream(&mut self, frame: Frame) -> Result<Frame, MongoUpstreamError> {
        self.request(frame, true).await
    }

    /// The next reply of an exhaust stream opened with [`UpstreamConn::open_stream`]:
    /// it answers the previous reply (its `responseTo` is that reply's `requestID`) or the
    /// request that opened the stream.
    pub async fn next_streamed(&mut self) -> Result<Frame, MongoUpstreamError> {
        let Some((request, previous)) = self.streaming else {
            return Err(MongoUpstreamError::Wire(WireError::malformed(
                "reply",
                "no exhaust stream is open",
            )));
        };
        self.read_reply(request, Some(previous)).await
    }

    async fn request(
        &mut self,
        mut frame: Frame,
        exhaust: bool,
    ) -> Result<Frame, MongoUpstreamError> {
        let id = self.next_id();
        frame.set_ids(id, 0);
        frame.prepare_forward(!exhaust);
        self.in_flight = true;
        self.send(&frame).await?;
        self.read_reply(id, None).await
    }

    /// Reads the reply to request `id` (or, in a stream, to the `previous` reply); the
    /// connection stays in flight while the reply says more are coming.
    async fn read_reply(
        &mut self,
        id: i32,
        previous: Option<i32>,
    ) -> Result<Frame, MongoUpstreamError> {
        let reply = self.read_frame().await?;
        let to = reply.header.response_to;
        if to != id && Some(to) != previous {
            return Err(MongoUpstreamError::Wire(WireError::malformed(
                "reply",
                format!("responseTo {} for request {id}", reply.header.response_to),
            )));
        }
        if reply.header.op_code != OpCode::Msg {
            return Err(MongoUpstreamError::Wire(WireError::UnsupportedOpCode(
                reply.header.op_code.as_i32(),
            )));
        }
        let more = reply
            .msg_flags()
            .is_some_and(|f| f & flags::MORE_TO_COME != 0);
        self.streaming = more.then_some((id, reply.header.request_id));
        self.in_flight = more;
        Ok(reply)
    }

    /// Sends a `moreToCome` request: no reply will come.
    pub async fn send_only(&mut self, mut frame: Frame) -> Result<(), MongoUpstreamError> {
        let id = self.next_id();
        frame.set_ids(id, 0);
        frame.prepare_forward(true);
        self.in_flight = true;
        self.send(&frame).await?;
        self.in_flight = false;
        Ok(())
    }

    /// Writes a request, compressed when a compressor was agreed and its command may be
    /// (never the handshake or anything carrying credentials).
    async fn send(&mut self, frame: &Frame) -> Result<(), MongoUpstreamError> {
        let compressor = self.compressor.filter(|_| {
            frame.header.op_code == OpCode::Msg
                && peek_command_name(frame.body()).is_some_and(may_compress)
        });
        match compressor {
            Some(c) => self.write(&compress(frame, c)?).await,
            None => self.write(&frame.data).await,
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), MongoUpstreamError> {
        let addr = &self.addr;
        self.stream
            .write_all(data)
            .await
            .map_err(|source| MongoUpstreamError::Io {
                addr: addr.clone(),
                source,
            })
    }

    async fn read_frame(&mut self) -> Result<Frame, MongoUpstreamError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                if frame.header.op_code == OpCode::Compressed {
                    return Ok(decompress(&frame, self.decoder.max_len())?.frame);
                }
                return Ok(frame);
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|source| MongoUpstreamError::Io {
                    addr: self.addr.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(MongoUpstreamError::Closed);
            }
        }
    }

    /// Whether the connection can go back to the pool: nothing half-sent, nothing unread,
    /// and the server has not closed it.
    pub fn is_reusable(&self) -> bool {
        if self.in_flight || !self.buf.is_empty() {
            return false;
        }
        let Some(tcp) = self.stream.tcp() else {
            return false;
        };
        // Any byte (data, or a TLS alert) or EOF on an idle connection means it is unusable;
        // reading it is harmless because the connection is then dropped.
        let mut probe = [0u8; 1];
        matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

#[cfg(test)]
mod compression_tests;
#[cfg(test)]
mod stream_tests;
