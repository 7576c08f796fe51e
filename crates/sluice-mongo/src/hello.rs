//! Sluice's own answer to `hello` / `isMaster` / `ismaster`: a router-like reply (as mongos
//! gives, `msg: "isdbgrid"`) carrying the upstream's wire versions and limits, so drivers
//! treat Sluice as the whole deployment and never discover (and bypass it for) the
//! backend's replica-set members.
//!
//! Its `topologyVersion` is Sluice's own: a `processId` fixed for the process's life and a
//! `counter` that grows whenever what the reply shows changes. An awaitable hello (one
//! carrying `topologyVersion` and `maxAwaitTimeMS`, the streaming monitoring protocol)
//! whose client already has the current version waits before the answer; see
//! [`HelloRequest::wait`].

use bson::{doc, oid::ObjectId, Bson, DateTime, Document, RawBsonRef, RawDocument, Timestamp};
use std::time::Duration;

use crate::upstream::ServerInfo;
use crate::wire::Compressor;

/// Longest `maxAwaitTimeMS` honoured for an awaitable hello.
const MAX_AWAIT: Duration = Duration::from_secs(60);

/// Whether `name` is one of the handshake commands Sluice answers itself.
pub fn is_hello(name: &str) -> bool {
    matches!(name, "hello" | "isMaster" | "ismaster")
}

/// Sluice's `topologyVersion`: who answers (`processId`) and how many times what it shows
/// changed (`counter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopologyVersion {
    /// Fixed for the life of the process.
    pub process_id: ObjectId,
    /// Grows with every change of the reply's contents.
    pub counter: i64,
}

impl TopologyVersion {
    /// The `topologyVersion` document.
    pub fn to_doc(self) -> Document {
        doc! {"processId": self.process_id, "counter": self.counter}
    }
}

/// The awaitable part of a hello: the `topologyVersion` the client has and how long it
/// lets the server wait for a change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AwaitHello {
    /// `topologyVersion.processId` (`None`: missing or not an ObjectId).
    pub process_id: Option<ObjectId>,
    /// `topologyVersion.counter` (`None`: missing or not an integer).
    pub counter: Option<i64>,
    /// `maxAwaitTimeMS`, at most [`MAX_AWAIT`].
    pub max_await: Duration,
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
    /// Awaitable hello: `topologyVersion` and `maxAwaitTimeMS`.
    pub await_for: Option<AwaitHello>,
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
        let await_for = match (get("topologyVersion"), await_ms) {
            (Some(RawBsonRef::Document(tv)), Some(ms)) => Some(AwaitHello {
                process_id: match tv.get("processId") {
                    Ok(Some(RawBsonRef::ObjectId(id))) => Some(id),
                    _ => None,
                },
                counter: match tv.get("counter") {
                    Ok(Some(RawBsonRef::Int64(n))) => Some(n),
                    Ok(Some(RawBsonRef::Int32(n))) => Some(i64::from(n)),
                    _ => None,
                },
                max_await: Duration::from_millis(ms).min(MAX_AWAIT),
            }),
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

    /// How long to hold the reply: the full `maxAwaitTimeMS` (unless the topology
    /// changes first) when the client already has Sluice's current `topologyVersion`, else
    /// zero (it learns the new one at once).
    pub fn wait(&self, current: TopologyVersion) -> Duration {
        match self.await_for {
            Some(a)
                if a.process_id == Some(current.process_id)
                    && a.counter == Some(current.counter) =>
            {
                a.max_await
            }
            _ => Duration::ZERO,
        }
    }

    /// Records that the client now has `current` (it was just sent): the next reply of a
    /// streamed hello waits.
    pub fn seen(&mut self, current: TopologyVersion) {
        if let Some(a) = &mut self.await_for {
            a.process_id = Some(current.process_id);
            a.counter = Some(current.counter);
        }
    }
}

/// Builds the reply. `sasl_mechs` is listed when the client asked for a user's mechanisms
/// and client authentication is on; `compressor` (from [`HelloRequest::negotiate`]) as the
/// one-element `compression` list.
pub fn hello_reply(
    req: &HelloRequest,
    info: &ServerInfo,
    topology: TopologyVersion,
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
    d.insert("topologyVersion", topology.to_doc());
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

/// Adds the upstream's newest `$clusterTime` (from [`crate::cluster_time::ClusterClock`])
/// and its `operationTime` to a hello reply, after `ok` as a mongos places them.
pub fn gossip_cluster_time(reply: &mut Document, newest: Option<(Document, Timestamp)>) {
    if let Some((cluster_time, at)) = newest {
        reply.insert("$clusterTime", cluster_time);
        reply.insert("operationTime", at);
    }
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
        let tv = TopologyVersion {
            process_id: ObjectId::new(),
            counter: 3,
        };
        let reply = hello_reply(&req, &info, tv, 7, true, None);
        let shown = reply.get_document("topologyVersion").unwrap();
        assert_eq!(shown.get_object_id("processId").unwrap(), tv.process_id);
        assert_eq!(shown.get_i64("counter").unwrap(), 3);
        assert_eq!(reply.get_str("msg").unwrap(), "isdbgrid");
        assert!(reply.get_bool("ismaster").unwrap());
        assert_eq!(reply.get_i32("maxWireVersion").unwrap(), 27);
        assert!(reply.get("setName").is_none() && reply.get("hosts").is_none());
        assert!(reply.get("$clusterTime").is_none());
        let mut gossiped = reply.clone();
        let at = Timestamp {
            time: 9,
            increment: 1,
        };
        gossip_cluster_time(&mut gossiped, Some((doc! {"clusterTime": at}, at)));
        assert_eq!(gossiped.get_timestamp("operationTime").unwrap(), at);
        let keys: Vec<_> = gossiped.keys().map(String::as_str).collect();
        assert_eq!(
            keys[keys.len() - 3..],
            ["ok", "$clusterTime", "operationTime"]
        );
        assert!(reply.get("compression").is_none());
        assert_eq!(
            reply.get_array("saslSupportedMechs").unwrap(),
            &vec![Bson::String("SCRAM-SHA-256".into())]
        );
    }

    #[test]
    fn awaitable_hello_waits_only_for_a_current_topology() {
        let pid = ObjectId::new();
        let tv = |counter| TopologyVersion {
            process_id: pid,
            counter,
        };
        let cmd = rawdoc! {"hello": 1, "topologyVersion": {"processId": pid, "counter": 1_i64}, "maxAwaitTimeMS": 500};
        let mut req = HelloRequest::parse("hello", &cmd);
        assert_eq!(req.wait(tv(1)), Duration::from_millis(500));
        let other = TopologyVersion {
            process_id: ObjectId::new(),
            counter: 1,
        };
        assert_eq!(req.wait(other), Duration::ZERO);
        // The topology changed since the client looked: answer at once, then wait again.
        assert_eq!(req.wait(tv(2)), Duration::ZERO);
        req.seen(tv(2));
        assert_eq!(req.wait(tv(2)), Duration::from_millis(500));
        let plain = HelloRequest::parse("hello", &rawdoc! {"hello": 1});
        assert_eq!(plain.wait(tv(1)), Duration::ZERO);
        let long = rawdoc! {"hello": 1, "topologyVersion": {"processId": pid, "counter": 1}, "maxAwaitTimeMS": 3_600_000_i64};
        assert_eq!(HelloRequest::parse("hello", &long).wait(tv(1)), MAX_AWAIT);
    }

    #[test]
    fn compression_is_chosen_in_the_clients_order_and_kept() {
        let cmd = rawdoc! {"hello": 1, "compression": ["lz4", "zlib", "zstd"]};
        let req = HelloRequest::parse("hello", &cmd);
        let chosen = req.negotiate(None);
        assert_eq!(chosen, Some(Compressor::Zlib));
        let tv = TopologyVersion {
            process_id: ObjectId::new(),
            counter: 0,
        };
        let reply = hello_reply(&req, &ServerInfo::default(), tv, 1, false, chosen);
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
