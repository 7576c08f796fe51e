//! A TCP relay that watches MongoDB wire compression (OP_COMPRESSED) go by, for the
//! compression tests. It counts every message by direction, opcode and compressor, so a
//! test can prove that compression happened (or did not).
//!
//! Two modes:
//! * [`TapMode::Observe`] passes every byte unchanged (between a driver and Sluice).
//! * [`TapMode::Compressing`] plays a compressing server in front of one that does not
//!   compress (SecantusDB): it answers `compression: [first offered]` in `hello` replies,
//!   decompresses requests before passing them on, and compresses the replies to
//!   compressed requests with their compressor, as mongod does.
//! * [`TapMode::NoStreaming`] plays a server that never streams exhaust replies: it clears
//!   `exhaustAllowed` on requests (counting those that had it, see
//!   [`WireTap::exhaust_requests`]), so each one gets one reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use sluice_mongo::wire::{
    compress, decompress, encode_op_msg, flags, Compressor, Frame, FrameDecoder, OpCode, OpMsg,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the relay does besides counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapMode {
    /// Bytes pass unchanged.
    Observe,
    /// Plays a server that compresses with any of snappy, zlib, zstd.
    Compressing,
    /// Plays a server that ignores `exhaustAllowed` (one reply per getMore).
    NoStreaming,
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the connecting side (a request).
    Request,
    /// From the server side (a reply).
    Reply,
}

/// One kind of message seen: its direction, opcode, and compressor (OP_COMPRESSED only).
pub type Seen = (Direction, i32, Option<&'static str>);

/// The relay; stops accepting when dropped.
pub struct WireTap {
    port: u16,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl WireTap {
    /// Listens on a free port and relays each connection to `backend` (`host:port`).
    /// Must be called inside a tokio runtime.
    ///
    /// # Panics
    /// If it cannot listen.
    pub async fn start(backend: &str, mode: TapMode) -> WireTap {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tap");
        let port = listener.local_addr().expect("tap addr").port();
        let counts = Arc::new(Counts::default());
        let backend = backend.to_owned();
        let shared = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (backend, counts) = (backend.clone(), shared.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&backend).await {
                        let _ = relay(client, server, mode, &counts).await;
                    }
                });
            }
        });
        WireTap { port, counts, task }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many messages of this kind went by (compressor `None`: of any compressor, or
    /// not compressed for opcodes other than 2012).
    pub fn count(&self, direction: Direction, op_code: i32, compressor: Option<&str>) -> u64 {
        let counts = self.counts.seen.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .filter(|((d, op, c), _)| {
                *d == direction && *op == op_code && (compressor.is_none() || *c == compressor)
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Everything counted, for failure messages.
    pub fn summary(&self) -> String {
        let counts = self.counts.seen.lock().unwrap_or_else(|e| e.into_inner());
        format!("{counts:?}")
    }

    /// How many OP_MSG requests came with `exhaustAllowed` (counted in
    /// [`TapMode::NoStreaming`] only).
    pub fn exhaust_requests(&self) -> u64 {
        self.counts.exhaust.load(Ordering::Relaxed)
    }
}

impl Drop for WireTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the relay counted.
#[derive(Default)]
struct Counts {
    seen: Mutex<HashMap<Seen, u64>>,
    exhaust: AtomicU64,
}

fn note(counts: &Counts, direction: Direction, frame: &Frame) {
    let compressor = (frame.header.op_code == OpCode::Compressed)
        .then(|| frame.body().get(8).copied())
        .flatten()
        .map(|id| Compressor::from_id(id).map_or("unknown", Compressor::name));
    let key = (direction, frame.header.op_code.as_i32(), compressor);
    *counts
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default() += 1;
}

const MAX: usize = 64 << 20;

async fn read(sock: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Frame> {
    let decoder = FrameDecoder::new(MAX);
    loop {
        if let Some(frame) = decoder.decode(buf).map_err(std::io::Error::other)? {
            return Ok(frame);
        }
        if sock.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// One request at a time, as drivers and Sluice use a connection (exhaust streams and
/// `moreToCome` requests excepted: a `moreToCome` request gets no reply read).
async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    mode: TapMode,
    counts: &Counts,
) -> std::io::Result<()> {
    let (mut cbuf, mut sbuf) = (BytesMut::new(), BytesMut::new());
    loop {
        let request = read(&mut client, &mut cbuf).await?;
        note(counts, Direction::Request, &request);
        // Read inside compressed requests in both modes (a compressed `moreToCome`
        // request gets no reply).
        let (plain, compressor) = if request.header.op_code == OpCode::Compressed {
            let d = decompress(&request, MAX).map_err(std::io::Error::other)?;
            (d.frame, Some(d.compressor))
        } else {
            (request.clone(), None)
        };
        let msg = OpMsg::parse(plain.body()).ok();
        let name = msg.as_ref().map(|m| m.command_name().to_owned());
        let offered = msg.as_ref().and_then(|m| offered_compressor(m.body));
        let no_reply = msg.as_ref().is_some_and(OpMsg::more_to_come);
        let stripped;
        let forward = match mode {
            TapMode::Observe => &request,
            TapMode::Compressing => &plain,
            TapMode::NoStreaming => {
                stripped = without_exhaust(&plain, counts);
                &stripped
            }
        };
        server.write_all(&forward.data).await?;
        if no_reply {
            continue;
        }
        let reply = read(&mut server, &mut sbuf).await?;
        let reply = match (mode, compressor) {
            (TapMode::Observe | TapMode::NoStreaming, _) => reply,
            (TapMode::Compressing, Some(c)) => {
                let packed = compress(&reply, c).map_err(std::io::Error::other)?;
                Frame::from_bytes(packed).ok_or_else(|| std::io::Error::other("compress"))?
            }
            (TapMode::Compressing, None) => match (name.as_deref(), offered) {
                (Some("hello" | "isMaster" | "ismaster"), Some(c)) => agree(&reply, c)?,
                _ => reply,
            },
        };
        note(counts, Direction::Reply, &reply);
        client.write_all(&reply.data).await?;
    }
}

/// `frame` with `exhaustAllowed` cleared (counted when it was set).
fn without_exhaust(frame: &Frame, counts: &Counts) -> Frame {
    let mut out = frame.clone();
    if let Some(bits) = frame
        .msg_flags()
        .filter(|b| b & flags::EXHAUST_ALLOWED != 0)
    {
        counts.exhaust.fetch_add(1, Ordering::Relaxed);
        if let Some(field) = out.data.get_mut(16..20) {
            field.copy_from_slice(&(bits & !flags::EXHAUST_ALLOWED).to_le_bytes());
        }
    }
    out
}

/// The first compressor of a hello's `compression` list that the tap supports.
fn offered_compressor(hello: &bson::RawDocument) -> Option<Compressor> {
    let list = hello.get_array("compression").ok()?;
    let names = list.into_iter().filter_map(|v| v.ok()?.as_str());
    Compressor::choose(names, &Compressor::SUPPORTED)
}

/// A hello reply with `compression: [c]` added.
fn agree(reply: &Frame, c: Compressor) -> std::io::Result<Frame> {
    let msg = OpMsg::parse(reply.body()).map_err(std::io::Error::other)?;
    let mut doc = bson::Document::try_from(msg.body).map_err(std::io::Error::other)?;
    doc.insert("compression", vec![c.name()]);
    let mut bytes = Vec::new();
    doc.to_writer(&mut bytes).map_err(std::io::Error::other)?;
    let h = reply.header;
    Frame::from_bytes(encode_op_msg(h.request_id, h.response_to, 0, &bytes))
        .ok_or_else(|| std::io::Error::other("encode hello"))
}
