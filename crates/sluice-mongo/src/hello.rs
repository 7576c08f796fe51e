//! Sluice's own answer to `hello` / `isMaster` / `ismaster`: a router-like reply (as mongos
//! gives, `msg: "isdbgrid"`) carrying the upstream's wire versions and limits, so drivers
//! treat Sluice as the whole deployment and never discover (and bypass it for) the
//! backend's replica-set members.

use bson::{doc, oid::ObjectId, Bson, DateTime, Document, RawBsonRef, RawDocument};
use std::time::Duration;

use crate::upstream::ServerInfo;
use crate::wire::Compressor;

/// Longest `maxAwaitTimeMS` honoured for an awaitable hello.
const MAX_AWAIT: Duration = Duration::from_secs(60);

/// Whether `name` is one of the handshake commands Sluice answers itself.
pub fn is_hello(name: &str) -> bool {
    matches!(name, "hello" | "isMaster" | "ismaster")
}

/// What a client's hello asks for beyond the basics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HelloRequest {
    /// The command name as sent (`hello` gets `isWritablePrimary`, the others `ismaster`).
    pub legacy: bool,
    /// `helloOk: true` was sent (the client may switch to `hello`).
    pub hello_ok: bool,
    /// `saslSupportedMechs: "db.user"`: the user named.
    pub sasl_user: Option<String>,
    /// Awaitable hello: `topologyVersion.processId` and `maxAwaitTimeMS`.
    pub await_for: Option<(Option<ObjectId>, Duration)>,
    /// `compression`: the compressors the client offers, in its order of preference
    /// (`None`: the field was absent, so the reply names none either).
    pub compression: Option<Vec<String>>,
}

impl HelloRequest {
    /// Reads the fields Sluice cares about from the command document.
    pub fn parse(name: &str, cmd: &RawDocument) -> HelloRequest {
        let get = |key: &str| cmd.get(key).ok().flatten();
        let hello_ok = matches!(get("helloOk"), Some(RawBsonRef::Boolean(true)));
        let sasl_user = match get("saslSupportedMechs") {
            Some(RawBsonRef::String(s)) => s.split_once('.').map(|(_, user)| user.to_owned()),
            _ => None,
        };
        let await_ms = match get("maxAwaitTimeMS") {
            Some(RawBsonRef::Int32(v)) => u64::try_from(v).ok(),
            Some(RawBsonRef::Int64(v)) => u64::try_from(v).ok(),
            Some(RawBsonRef::Double(v)) if v >= 0.0 => Some(v as u64),
            _ => None,
        };
        let process_id = match get("topologyVersion") {
            Some(RawBsonRef::Document(tv)) => match tv.get("processId") {
                Ok(Some(RawBsonRef::ObjectId(id))) => Some(Some(id)),
                _ => Some(None),
            },
            _ => None,
        };
        let await_for = match (process_id, await_ms) {
            (Some(pid), Some(ms)) => Some((pid, Duration::from_millis(ms).min(MAX_AWAIT))),
            _ => None,
        };
        let compression = match get("compression") {
            Some(RawBsonRef::Array(names)) => Some(
                names
                    .into_iter()
                    .filter_map(|n| match n {
                        Ok(RawBsonRef::String(s)) => Some(s.to_owned()),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        };
        HelloRequest {
            compression,
            legacy: name != "hello",
            hello_ok,
            sasl_user,
            await_for,
        }
    }

    /// The compressor of the session after this hello: the one agreed before (as mongod
    /// does, a later hello cannot change it), else the first one of the client's
    /// `compression` list that Sluice supports. Wire Compression spec, "Negotiation".
    pub fn negotiate(&self, agreed: Option<Compressor>) -> Option<Compressor> {
        let offered = self.compression.as_ref()?;
        agreed.or_else(|| {
            Compressor::choose(offered.iter().map(String::as_str), &Compressor::SUPPORTED)
        })
    }

    /// How long to hold the reply: the full `maxAwaitTimeMS` when the client already has
    /// Sluice's current topology (it never changes), else zero.
    pub fn wait(&self, process_id: ObjectId) -> Duration {
        match self.await_for {
            Some((Some(pid), d)) if pid == process_id => d,
            _ => Duration::ZERO,
        }
    }
}

/// Builds the reply. `sasl_mechs` is listed when the client asked for a user's mechanisms
/// and client authentication is on; `compressor` (from [`HelloRequest::negotiate`]) as the
/// one-element `compression` list.
pub fn hello_reply(
    req: &HelloRequest,
    info: &ServerInfo,
    process_id: ObjectId,
    connection_id: i64,
    sasl_mechs: bool,
    compressor: Option<Compressor>,
) -> Document {
    let mut d = Document::new();
    if req.legacy {
        d.insert("ismaster", true);
    } else {
        d.insert("isWritablePrimary", true);
    }
    if req.hello_ok {
        d.insert("helloOk", true);
    }
    d.insert("msg", "isdbgrid");
    d.insert(
        "topologyVersion",
        doc! {"processId": process_id, "counter": 0_i64},
    );
    d.insert("maxBsonObjectSize", info.max_bson_object_size);
    d.insert("maxMessageSizeBytes", info.max_message_size_bytes);
    d.insert("maxWriteBatchSize", info.max_write_batch_size);
    d.insert("localTime", DateTime::now());
    if let Some(minutes) = info.logical_session_timeout_minutes {
        d.insert("logicalSessionTimeoutMinutes", Bson::Int64(minutes));
    }
    d.insert("connectionId", connection_id);
    d.insert("minWireVersion", info.min_wire_version);
    d.insert("maxWireVersion", info.max_wire_version);
    d.insert("readOnly", false);
    if let Some(c) = compressor {
        d.insert("compression", vec![c.name()]);
    }
    if sasl_mechs && req.sasl_user.is_some() {
        d.insert("saslSupportedMechs", vec!["SCRAM-SHA-256"]);
    }
    d.insert("ok", 1.0);
    d
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn router_reply_hides_the_replica_set() {
        let cmd = rawdoc! {"isMaster": 1, "helloOk": true, "saslSupportedMechs": "admin.app"};
        let req = HelloRequest::parse("isMaster", &cmd);
        assert!(req.legacy && req.hello_ok);
        assert_eq!(req.sasl_user.as_deref(), Some("app"));
        let info = ServerInfo {
            max_wire_version: 27,
            ..ServerInfo::default()
        };
        let pid = ObjectId::new();
        let reply = hello_reply(&req, &info, pid, 7, true, None);
        assert_eq!(reply.get_str("msg").unwrap(), "isdbgrid");
        assert!(reply.get_bool("ismaster").unwrap());
        assert_eq!(reply.get_i32("maxWireVersion").unwrap(), 27);
        assert!(reply.get("setName").is_none() && reply.get("hosts").is_none());
        assert!(reply.get("compression").is_none());
        assert_eq!(
            reply.get_array("saslSupportedMechs").unwrap(),
            &vec![Bson::String("SCRAM-SHA-256".into())]
        );
    }

    #[test]
    fn awaitable_hello_waits_only_for_a_current_topology() {
        let pid = ObjectId::new();
        let cmd = rawdoc! {"hello": 1, "topologyVersion": {"processId": pid, "counter": 0_i64}, "maxAwaitTimeMS": 500};
        let req = HelloRequest::parse("hello", &cmd);
        assert_eq!(req.wait(pid), Duration::from_millis(500));
        assert_eq!(req.wait(ObjectId::new()), Duration::ZERO);
        let plain = HelloRequest::parse("hello", &rawdoc! {"hello": 1});
        assert_eq!(plain.wait(pid), Duration::ZERO);
    }

    #[test]
    fn compression_is_chosen_in_the_clients_order_and_kept() {
        let cmd = rawdoc! {"hello": 1, "compression": ["lz4", "zlib", "zstd"]};
        let req = HelloRequest::parse("hello", &cmd);
        let chosen = req.negotiate(None);
        assert_eq!(chosen, Some(Compressor::Zlib));
        let reply = hello_reply(
            &req,
            &ServerInfo::default(),
            ObjectId::new(),
            1,
            false,
            chosen,
        );
        assert_eq!(
            reply.get_array("compression").unwrap(),
            &vec![Bson::String("zlib".into())]
        );
        // A later hello keeps what was agreed; one without the field names nothing.
        let again = HelloRequest::parse("hello", &rawdoc! {"hello": 1, "compression": ["zstd"]});
        assert_eq!(again.negotiate(chosen), Some(Compressor::Zlib));
        let plain = HelloRequest::parse("hello", &rawdoc! {"hello": 1});
        assert_eq!(plain.negotiate(chosen), None);
        let none = HelloRequest::parse("hello", &rawdoc! {"hello": 1, "compression": ["lz4"]});
        assert_eq!(none.negotiate(None), None);
    }
}
