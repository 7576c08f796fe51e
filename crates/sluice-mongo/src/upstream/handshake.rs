//! Opening an upstream connection: TCP (+ TLS), the `hello` handshake (which tells Sluice
//! the server's wire versions and limits) and the SCRAM login with the URI's credentials.

use std::sync::atomic::Ordering;

use bson::{doc, spec::BinarySubtype, Binary, Document};
use bytes::BytesMut;
use sluice_tls::MaybeTls;
use tokio::net::TcpStream;

use super::{
    Credential, MongoUpstreamError, Target, UpstreamConn, DEFAULT_MAX_MESSAGE, NEXT_CONN_ID,
};
use crate::scram_client::{Mechanism, ScramClient};
use crate::wire::{Compressor, FrameDecoder};

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

impl UpstreamConn {
    /// TCP (+ TLS) connect and the `hello` handshake; returns the connection and the reply.
    pub(super) async fn handshake(
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
            streaming: None,
            compressor: None,
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            info: ServerInfo::default(),
            addr: addr.to_owned(),
        };
        let reply = conn.command(&hello_command(target)).await?;
        check_ok("hello", &reply)?;
        if let Ok(raw) = bson::RawDocumentBuf::from_document(&reply) {
            target.cluster_time.observe(&raw);
        }
        conn.compressor = agreed_compressor(&reply, &target.compressors);
        if let Some(c) = conn.compressor {
            tracing::debug!(addr, compressor = %c, "upstream compression agreed");
        }
        conn.info = ServerInfo::from_hello(&reply);
        let max = usize::try_from(conn.info.max_message_size_bytes).unwrap_or(DEFAULT_MAX_MESSAGE);
        conn.decoder = FrameDecoder::new(max.max(DEFAULT_MAX_MESSAGE));
        Ok((conn, reply))
    }

    pub(super) async fn login(
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
}

/// Sluice's handshake `hello`: who it is, the login's mechanisms asked for, the
/// compressors offered.
fn hello_command(target: &Target) -> Document {
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
    if !target.compressors.is_empty() {
        let names: Vec<&str> = target.compressors.iter().map(|c| c.name()).collect();
        hello.insert("compression", names);
    }
    hello
}

/// The compressor of a connection: the first one of the server's `compression` answer
/// that Sluice offered (Wire Compression spec: the client uses the server's first).
fn agreed_compressor(hello: &Document, offered: &[Compressor]) -> Option<Compressor> {
    let names = hello.get_array("compression").ok()?;
    Compressor::choose(names.iter().filter_map(|n| n.as_str()), offered)
}

/// SCRAM-SHA-256 when the server lists it for this user (or lists nothing), else SHA-1.
pub(super) fn negotiate(hello: &Document) -> Mechanism {
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
