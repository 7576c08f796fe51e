//! One upstream connection: TCP connect, the `hello` handshake (which also tells Sluice the
//! server's wire versions and limits) and the SCRAM login with the URI's credentials, then
//! request/reply round trips of whole messages with Sluice-owned request ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bson::{doc, spec::BinarySubtype, Binary, Document, RawDocumentBuf};
use bytes::BytesMut;
use mongodb::options::{AuthMechanism, ClientOptions, ServerAddress};
use sluice_tls::{MaybeTls, MongoTlsOptions, ServerStream};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::scram_client::{Mechanism, ScramClient, ScramError};
use crate::wire::{encode_op_msg, Frame, FrameDecoder, OpCode, OpMsg, WireError};

/// Largest reply accepted before the server told its own `maxMessageSizeBytes`.
const DEFAULT_MAX_MESSAGE: usize = 48_000_000;

/// Where the upstream is and who Sluice is there, from the upstream URI.
#[derive(Clone)]
pub struct Target {
    /// Seed hosts, `host:port`, tried in order; the first writable primary wins.
    pub hosts: Vec<String>,
    /// `(user, password, authSource, mechanism)` when the URI has credentials.
    pub credential: Option<Credential>,
    /// `appName` sent in the handshake.
    pub app_name: String,
    /// Set when the URI asks for TLS (`tls=true` / `ssl=true`, or `mongodb+srv`).
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// Watch the replica set (follow the primary, route `$readPreference`): several seed
    /// hosts or `replicaSet=`, and no `directConnection=true`.
    pub monitor: bool,
    /// How often the replica set is checked (`heartbeatFrequencyMS`, default 10 s).
    pub heartbeat: Duration,
}

/// Login data for the upstream.
#[derive(Clone)]
pub struct Credential {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// Database the user is defined in (`authSource`, default `admin`).
    pub source: String,
    /// Mechanism from the URI (`None`: negotiate SCRAM-SHA-256, else SCRAM-SHA-1).
    pub mechanism: Option<Mechanism>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("hosts", &self.hosts)
            .field("user", &self.credential.as_ref().map(|c| &c.user))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why an upstream connection could not be made or used.
#[derive(Debug, Error)]
pub enum MongoUpstreamError {
    /// The URI is invalid or asks for something Sluice cannot do yet.
    #[error("mongo.upstream: {0}")]
    Uri(String),
    /// TCP connect or I/O failed.
    #[error("{addr}: {source}")]
    Io {
        /// Which host.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The upstream closed the connection.
    #[error("upstream closed the connection")]
    Closed,
    /// Connect + handshake + login took longer than `connect_timeout`.
    #[error("connecting to the upstream timed out")]
    Timeout,
    /// The upstream broke the wire protocol.
    #[error("upstream protocol error: {0}")]
    Wire(#[from] WireError),
    /// The upstream refused Sluice's login, or answered the handshake with an error.
    #[error("upstream refused {what}: {message}")]
    Refused {
        /// Which step.
        what: &'static str,
        /// The server's errmsg.
        message: String,
    },
    /// The SCRAM exchange failed on Sluice's side.
    #[error("upstream login: {0}")]
    Scram(#[from] ScramError),
    /// The URI's TLS files could not be loaded.
    #[error("mongo.upstream TLS: {0}")]
    Tls(#[from] sluice_tls::TlsError),
    /// The TLS handshake with the upstream failed (certificate not trusted, wrong host...).
    #[error("{addr}: TLS handshake: {source}")]
    Handshake {
        /// Which host.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No seed host is a writable primary.
    #[error("no writable primary among {0:?}")]
    NoPrimary(Vec<String>),
}

impl Target {
    /// Parses the upstream URI with the MongoDB driver's own option parser (which also
    /// resolves `mongodb+srv`).
    pub async fn parse(uri: &str) -> Result<Target, MongoUpstreamError> {
        let options = ClientOptions::parse(uri)
            .await
            .map_err(|e| MongoUpstreamError::Uri(e.to_string()))?;
        let tls = match &options.tls {
            Some(mongodb::options::Tls::Enabled(t)) => {
                Some(sluice_tls::mongo_connector(&MongoTlsOptions {
                    ca_file: t.ca_file_path.clone(),
                    allow_invalid_certificates: t.allow_invalid_certificates.unwrap_or(false),
                    certificate_key_file: t.cert_key_file_path.clone(),
                })?)
            }
            _ => None,
        };
        let hosts = options
            .hosts
            .iter()
            .map(|h| match h {
                ServerAddress::Tcp { host, port } => {
                    Ok(format!("{host}:{}", port.unwrap_or(27017)))
                }
                other => Err(MongoUpstreamError::Uri(format!(
                    "unsupported host {other} (TCP hosts only)"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let credential = match &options.credential {
            Some(c) => {
                let user = c.username.clone().unwrap_or_default();
                let mechanism = match &c.mechanism {
                    None => None,
                    Some(AuthMechanism::ScramSha256) => Some(Mechanism::Sha256),
                    Some(AuthMechanism::ScramSha1) => Some(Mechanism::Sha1),
                    Some(other) => {
                        return Err(MongoUpstreamError::Uri(format!(
                        "authMechanism {other:?} is not supported (SCRAM-SHA-256 or SCRAM-SHA-1)"
                    )))
                    }
                };
                let source = c
                    .source
                    .clone()
                    .or_else(|| options.default_database.clone())
                    .unwrap_or_else(|| "admin".into());
                (!user.is_empty()).then(|| Credential {
                    user,
                    password: c.password.clone().unwrap_or_default(),
                    source,
                    mechanism,
                })
            }
            None => None,
        };
        let monitor = options.direct_connection != Some(true)
            && (hosts.len() > 1 || options.repl_set_name.is_some());
        Ok(Target {
            hosts,
            credential,
            monitor,
            heartbeat: options.heartbeat_freq.unwrap_or(Duration::from_secs(10)),
            app_name: options.app_name.unwrap_or_else(|| "sluice".into()),
            tls,
        })
    }
}

/// The server's wire versions and limits, from its `hello` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInfo {
    /// `minWireVersion`.
    pub min_wire_version: i32,
    /// `maxWireVersion`.
    pub max_wire_version: i32,
    /// `maxBsonObjectSize`.
    pub max_bson_object_size: i32,
    /// `maxMessageSizeBytes`.
    pub max_message_size_bytes: i32,
    /// `maxWriteBatchSize`.
    pub max_write_batch_size: i32,
    /// `logicalSessionTimeoutMinutes` (None: sessions unsupported).
    pub logical_session_timeout_minutes: Option<i64>,
}

impl Default for ServerInfo {
    /// Conservative values used before the upstream was ever reached.
    fn default() -> Self {
        ServerInfo {
            min_wire_version: 0,
            max_wire_version: 17,
            max_bson_object_size: 16 * 1024 * 1024,
            max_message_size_bytes: 48_000_000,
            max_write_batch_size: 100_000,
            logical_session_timeout_minutes: Some(30),
        }
    }
}

impl ServerInfo {
    fn from_hello(reply: &Document) -> ServerInfo {
        let d = ServerInfo::default();
        let int = |key: &str, default: i32| -> i32 {
            match reply.get(key) {
                Some(bson::Bson::Int32(v)) => *v,
                Some(bson::Bson::Int64(v)) => i32::try_from(*v).unwrap_or(default),
                Some(bson::Bson::Double(v)) => *v as i32,
                _ => default,
            }
        };
        ServerInfo {
            min_wire_version: int("minWireVersion", d.min_wire_version),
            max_wire_version: int("maxWireVersion", 0),
            max_bson_object_size: int("maxBsonObjectSize", d.max_bson_object_size),
            max_message_size_bytes: int("maxMessageSizeBytes", d.max_message_size_bytes),
            max_write_batch_size: int("maxWriteBatchSize", d.max_write_batch_size),
            logical_session_timeout_minutes: match reply.get("logicalSessionTimeoutMinutes") {
                Some(bson::Bson::Int32(v)) => Some(i64::from(*v)),
                Some(bson::Bson::Int64(v)) => Some(*v),
                _ => None,
            },
        }
    }
}

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
    /// Process-unique id, for logs.
    pub id: u64,
    /// What the server said about itself at connect time.
    pub info: ServerInfo,
    /// `host:port` it is connected to.
    pub addr: String,
}

impl UpstreamConn {
    /// Connects to the first seed host that is a writable primary, and logs in.
    pub async fn connect(
        target: &Target,
        timeout: Duration,
    ) -> Result<UpstreamConn, MongoUpstreamError> {
        tokio::time::timeout(timeout, Self::connect_any(target))
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

    async fn connect_any(target: &Target) -> Result<UpstreamConn, MongoUpstreamError> {
        let mut last = None;
        for addr in &target.hosts {
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

    /// TCP (+ TLS) connect and the `hello` handshake; returns the connection and the reply.
    async fn handshake(
        target: &Target,
        addr: &str,
    ) -> Result<(UpstreamConn, Document), MongoUpstreamError> {
        let io = |source| MongoUpstreamError::Io {
            addr: addr.to_owned(),
            source,
        };
        let tcp = TcpStream::connect(addr).await.map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        let stream = match &target.tls {
            None => MaybeTls::Plain(tcp),
            Some(connector) => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| MongoUpstreamError::Uri(format!("host {host}: {e}")))?;
                let tls = connector.connect(name, tcp).await.map_err(|source| {
                    MongoUpstreamError::Handshake {
                        addr: addr.to_owned(),
                        source,
                    }
                })?;
                MaybeTls::Tls(Box::new(tls))
            }
        };
        let mut conn = UpstreamConn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            decoder: FrameDecoder::new(DEFAULT_MAX_MESSAGE),
            next_request_id: 1,
            in_flight: false,
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            info: ServerInfo::default(),
            addr: addr.to_owned(),
        };
        let mut hello = doc! {
            "hello": 1,
            "$db": "admin",
            "client": {
                "driver": {"name": "sluice", "version": env!("CARGO_PKG_VERSION")},
                "os": {"type": std::env::consts::OS},
                "application": {"name": target.app_name.clone()},
            },
        };
        if let Some(c) = &target.credential {
            hello.insert("saslSupportedMechs", format!("{}.{}", c.source, c.user));
        }
        let reply = conn.command(&hello).await?;
        check_ok("hello", &reply)?;
        conn.info = ServerInfo::from_hello(&reply);
        let max = usize::try_from(conn.info.max_message_size_bytes).unwrap_or(DEFAULT_MAX_MESSAGE);
        conn.decoder = FrameDecoder::new(max.max(DEFAULT_MAX_MESSAGE));
        Ok((conn, reply))
    }

    async fn login(
        &mut self,
        c: &Credential,
        mechanism: Mechanism,
    ) -> Result<(), MongoUpstreamError> {
        let mut scram = ScramClient::new(mechanism, &c.user, &c.password);
        let first = scram.client_first();
        let start = doc! {
            "saslStart": 1,
            "mechanism": mechanism.name(),
            "payload": binary(first),
            "autoAuthorize": 1,
            "options": {"skipEmptyExchange": true},
            "$db": c.source.clone(),
        };
        let reply = self.command(&start).await?;
        check_ok("login", &reply)?;
        let conversation = reply
            .get("conversationId")
            .cloned()
            .unwrap_or(bson::Bson::Int32(1));
        let final_msg = scram.handle_server_first(payload(&reply)?)?;
        let step = doc! {
            "saslContinue": 1,
            "conversationId": conversation.clone(),
            "payload": binary(final_msg),
            "$db": c.source.clone(),
        };
        let reply = self.command(&step).await?;
        check_ok("login", &reply)?;
        scram.handle_server_final(payload(&reply)?)?;
        let mut done = reply.get_bool("done").unwrap_or(false);
        while !done {
            let step = doc! {
                "saslContinue": 1,
                "conversationId": conversation.clone(),
                "payload": binary(Vec::new()),
                "$db": c.source.clone(),
            };
            let reply = self.command(&step).await?;
            check_ok("login", &reply)?;
            done = reply.get_bool("done").unwrap_or(true);
        }
        Ok(())
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

    /// Sends a request (ids rewritten) and returns the reply to it.
    pub async fn round_trip(&mut self, mut frame: Frame) -> Result<Frame, MongoUpstreamError> {
        let id = self.next_id();
        frame.set_ids(id, 0);
        frame.prepare_forward(true);
        self.in_flight = true;
        self.write(&frame.data).await?;
        let reply = self.read_frame().await?;
        if reply.header.response_to != id {
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
        self.in_flight = false;
        Ok(reply)
    }

    /// Sends a `moreToCome` request: no reply will come.
    pub async fn send_only(&mut self, mut frame: Frame) -> Result<(), MongoUpstreamError> {
        let id = self.next_id();
        frame.set_ids(id, 0);
        frame.prepare_forward(true);
        self.in_flight = true;
        self.write(&frame.data).await?;
        self.in_flight = false;
        Ok(())
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

/// SCRAM-SHA-256 when the server lists it for this user (or lists nothing), else SHA-1.
fn negotiate(hello: &Document) -> Mechanism {
    match hello.get_array("saslSupportedMechs") {
        Ok(mechs) if !mechs.iter().any(|m| m.as_str() == Some("SCRAM-SHA-256")) => {
            if mechs.iter().any(|m| m.as_str() == Some("SCRAM-SHA-1")) {
                Mechanism::Sha1
            } else {
                Mechanism::Sha256
            }
        }
        _ => Mechanism::Sha256,
    }
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

fn payload(reply: &Document) -> Result<&[u8], MongoUpstreamError> {
    reply
        .get_binary_generic("payload")
        .map(|v| v.as_slice())
        .map_err(|_| MongoUpstreamError::Refused {
            what: "login",
            message: "reply without payload".into(),
        })
}

fn check_ok(what: &'static str, reply: &Document) -> Result<(), MongoUpstreamError> {
    let ok = match reply.get("ok") {
        Some(bson::Bson::Double(v)) => *v == 1.0,
        Some(bson::Bson::Int32(v)) => *v == 1,
        Some(bson::Bson::Int64(v)) => *v == 1,
        Some(bson::Bson::Boolean(v)) => *v,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(MongoUpstreamError::Refused {
            what,
            message: reply.get_str("errmsg").unwrap_or("no errmsg").to_owned(),
        })
    }
}
