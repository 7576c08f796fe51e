//! One client connection: read a whole message, answer it (hello, login) or forward it
//! over an upstream connection checked out for that one round trip (or over the
//! connection pinned to its transaction), write the reply back with the client's ids.
//! Between requests the [`crate::guards`] apply: the login and idle deadlines, the
//! pre-authentication message cap; a connection over `max_client_conn` gets its first
//! request answered with an error and is closed. Before all that, the connection may be
//! TLS ([`crate::tls`]). Requests may come compressed once a hello agreed on a compressor;
//! see `compression`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bson::{doc, Document};
use bytes::BytesMut;
use sluice_stats::ErrorKind;
use sluice_tls::ClientStream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::client_auth::ClientAuth;
use crate::context::MongoContext;
use crate::guards::{deadline, Expiry, OpenCursors, PRE_AUTH_MAX_MESSAGE, REFUSAL_WAIT};
use crate::hello::{is_hello, HelloRequest};
use crate::request::RequestInfo;
use crate::tls::ClientTlsError;
use crate::wire::{
    encode_op_msg, encode_op_reply, error_doc, flags, may_compress, Compressor, ErrorCode, Frame,
    FrameDecoder, OpCode, OpMsg, OpQuery, WireError,
};

mod compression;
mod exhaust;
mod forward;
mod hello;
mod read;

/// Why a session ended abnormally (logged, never sent).
#[derive(Debug, thiserror::Error)]
enum MongoSessionError {
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{} expired", .0.key())]
    Expired(Expiry),
}

/// Runs one client session to its end: TLS first when `[mongo.tls]` turns it on (see
/// [`crate::tls`]), then requests until the client leaves.
pub async fn run(
    ctx: Arc<MongoContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    token: CancellationToken,
) {
    let span = tracing::info_span!("mongo", client = %peer);
    async move {
        let connected = Instant::now();
        let slot = ctx.guards.admit();
        // The handshake counts towards the login deadline; a refused client gets as long
        // as for its first request.
        let until = match &slot {
            Ok(_) => deadline(&ctx.guards.settings(), false, connected, false).map(|d| d.0),
            Err(_) => Some(connected + REFUSAL_WAIT),
        };
        let Some(stream) = open(&ctx, tcp, until, &token).await else {
            return;
        };
        let mut session = Session::new(ctx, stream, peer, token, connected);
        let _slot = match slot {
            Ok(slot) => slot,
            Err(refused) => {
                tracing::warn!(%refused, "refusing a MongoDB client");
                session.refuse(refused).await;
                return;
            }
        };
        match session.serve().await {
            Ok(()) => tracing::debug!("client disconnected"),
            Err(MongoSessionError::Expired(expiry)) => {
                tracing::info!(timeout = expiry.key(), "closing a MongoDB client");
            }
            Err(e) => tracing::debug!(error = %e, "session ended"),
        }
    }
    .instrument(span)
    .await;
}

/// The client stream (TLS accepted, plaintext detected or refused) before `until`;
/// `None` (logged once, at info) when the connection is to be closed.
async fn open(
    ctx: &MongoContext,
    tcp: TcpStream,
    until: Option<Instant>,
    token: &CancellationToken,
) -> Option<ClientStream> {
    let tls = ctx.client_tls();
    let accepted = tokio::select! {
        _ = token.cancelled() => return None,
        _ = sleep_until(until) => {
            tracing::info!(timeout = Expiry::Login.key(), "closing a MongoDB client before TLS");
            return None;
        }
        a = crate::tls::accept(tls.as_ref(), tcp) => a,
    };
    match accepted {
        Ok(stream) => Some(stream),
        Err(ClientTlsError::Closed) => None,
        // Caused by the client, like the Postgres side's refusals: info, once per connection.
        Err(e) => {
            tracing::info!(error = %e, "closing a MongoDB client");
            None
        }
    }
}

/// Sleeps until `until`; for ever when `None`.
async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Session {
    ctx: Arc<MongoContext>,
    /// Plaintext or TLS (boxed: an idle plaintext client pays one enum tag for it).
    stream: ClientStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    peer: String,
    auth: ClientAuth,
    connection_id: i64,
    next_reply_id: i32,
    /// Ends awaitable hellos and the wait for the next request at shutdown.
    token: CancellationToken,
    /// `maxMessageSizeBytes`: the frame limit once logged in.
    max_message: usize,
    /// Without `[[mongo.users]]`: whether a first request came (then it counts as logged in).
    greeted: bool,
    /// The last sign of life the login / idle deadline counts from.
    last_seen: Instant,
    /// Cursors this client has open: they keep it from the idle timeout.
    cursors: OpenCursors,
    /// Sessions (`lsid`) this client ran transaction commands for; while one is still
    /// pinned the idle timeout waits.
    txn_sessions: HashSet<Vec<u8>>,
    /// The compressor agreed in the client's hello (`None`: none offered or none shared).
    compressor: Option<Compressor>,
    /// While a compressed request is handled: the compressor its reply must use (the
    /// same one, by the Wire Compression spec).
    reply_with: Option<Compressor>,
}

impl Session {
    fn new(
        ctx: Arc<MongoContext>,
        stream: ClientStream,
        peer: SocketAddr,
        token: CancellationToken,
        connected: Instant,
    ) -> Self {
        let max = ctx.pool.server_info().map_or(48_000_000, |i| {
            usize::try_from(i.max_message_size_bytes).unwrap_or(48_000_000)
        });
        Session {
            token,
            max_message: max,
            greeted: false,
            last_seen: connected,
            cursors: OpenCursors::default(),
            txn_sessions: HashSet::new(),
            compressor: None,
            reply_with: None,
            auth: ClientAuth::new(ctx.users.clone(), ctx.auth_required),
            connection_id: ctx.next_connection_id(),
            ctx,
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            decoder: FrameDecoder::new(max),
            peer: peer.to_string(),
            next_reply_id: 1,
        }
    }

    async fn serve(&mut self) -> Result<(), MongoSessionError> {
        loop {
            let frame = match self.read_frame().await {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(MongoSessionError::Wire(e)) => {
                    // The stream cannot be resynchronised: answer (if the header was
                    // readable) and close.
                    let (code, msg) = match e {
                        WireError::TooLarge { len, .. } if !self.logged_in() => (
                            ErrorCode::BsonObjectTooLarge,
                            format!(
                                "sluice: a message of {len} bytes before authentication is \
                                 over the {PRE_AUTH_MAX_MESSAGE}-byte limit; log in first"
                            ),
                        ),
                        WireError::TooLarge { .. } => {
                            (ErrorCode::BsonObjectTooLarge, e.to_string())
                        }
                        _ => (ErrorCode::FailedToParse, e.to_string()),
                    };
                    let request_id =
                        crate::wire::Header::parse(&self.buf).map_or(0, |h| h.request_id);
                    self.pool_error_count(ErrorKind::Protocol);
                    let _ = self.reply(request_id, &error_doc(code, msg)).await;
                    return Err(e.into());
                }
                Err(e) => return Err(e),
            };
            self.handle(frame).await?;
            self.greeted = true;
            self.last_seen = Instant::now();
        }
    }

    fn pool_error_count(&self, kind: ErrorKind) {
        self.ctx.pool.counters().inc_error(kind);
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), MongoSessionError> {
        let request_id = frame.header.request_id;
        match frame.header.op_code {
            OpCode::Msg => self.handle_msg(frame).await,
            OpCode::Query => self.handle_legacy(&frame).await,
            OpCode::Compressed => self.handle_compressed(&frame).await,
            other => {
                self.pool_error_count(ErrorKind::Protocol);
                let msg = format!("unsupported opCode {}", other.as_i32());
                self.reply(request_id, &error_doc(ErrorCode::FailedToParse, msg))
                    .await?;
                Err(WireError::UnsupportedOpCode(other.as_i32()).into())
            }
        }
    }

    /// Legacy OP_QUERY: only the `isMaster`/`hello` handshake.
    async fn handle_legacy(&mut self, frame: &Frame) -> Result<(), MongoSessionError> {
        let request_id = frame.header.request_id;
        let reply = match OpQuery::parse(frame.body()) {
            Ok(q) if q.is_command() && is_hello(q.command_name()) => {
                let req = HelloRequest::parse(q.command_name(), q.command());
                match self.hello(&req).await {
                    Some(reply) => reply,
                    None => return Ok(()), // the client left during an awaitable hello
                }
            }
            Ok(_) => error_doc(
                ErrorCode::FailedToParse,
                "OP_QUERY is supported only for hello/isMaster; use OP_MSG",
            ),
            Err(e) => error_doc(ErrorCode::FailedToParse, e.to_string()),
        };
        let bytes = to_bytes(&reply);
        let id = self.next_id();
        // Only hello comes here, and its reply is never compressed.
        self.reply_with = None;
        self.write(&encode_op_reply(id, request_id, &bytes)).await
    }

    async fn handle_msg(&mut self, frame: Frame) -> Result<(), MongoSessionError> {
        let request_id = frame.header.request_id;
        let msg = match OpMsg::parse(frame.body()) {
            Ok(msg) => msg,
            Err(e) => {
                self.pool_error_count(ErrorKind::Protocol);
                return self
                    .reply(
                        request_id,
                        &error_doc(ErrorCode::FailedToParse, e.to_string()),
                    )
                    .await;
            }
        };
        let name = msg.command_name();
        if !may_compress(name) {
            self.reply_with = None;
        }
        if is_hello(name) {
            return self.hello_msg(request_id, &msg).await;
        }
        let local = match name {
            "saslStart" => Some(self.auth.sasl_start(msg.body)),
            "saslContinue" => Some(self.auth.sasl_continue(msg.body)),
            "logout" => Some(doc! {"ok": 1.0}),
            "authenticate" => Some(error_doc(
                ErrorCode::MechanismUnavailable,
                "Sluice accepts SCRAM-SHA-256 only",
            )),
            n if !self.auth.authorized() => {
                if n != "saslStart" {
                    self.pool_error_count(ErrorKind::Auth);
                }
                Some(error_doc(
                    ErrorCode::Unauthorized,
                    format!("command {n} requires authentication"),
                ))
            }
            _ => None,
        };
        if let Some(reply) = local {
            if msg.more_to_come() {
                return Ok(());
            }
            return self.reply(request_id, &reply).await;
        }
        let info = RequestInfo::parse(name, msg.body);
        let more_to_come = msg.more_to_come();
        let exhaust = name == "getMore" && msg.flags & flags::EXHAUST_ALLOWED != 0;
        self.forward(frame, info, more_to_come, exhaust).await
    }

    fn next_id(&mut self) -> i32 {
        let id = self.next_reply_id;
        self.next_reply_id = self.next_reply_id.checked_add(1).unwrap_or(1);
        id
    }

    async fn reply(&mut self, request_id: i32, doc: &Document) -> Result<(), MongoSessionError> {
        let id = self.next_id();
        let msg = encode_op_msg(id, request_id, 0, &to_bytes(doc));
        self.send(msg).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), MongoSessionError> {
        self.stream.write_all(bytes).await?;
        // TLS: write_all can leave the last records inside rustls when the socket is full;
        // the reply must reach the client before the next wait (a no-op on plaintext).
        self.stream.flush().await?;
        Ok(())
    }
}

fn to_bytes(doc: &Document) -> Vec<u8> {
    let mut out = Vec::new();
    if let Err(e) = doc.to_writer(&mut out) {
        tracing::error!(error = %e, "encoding a reply document");
    }
    out
}
