//! One replica-set member as its last `hello` reply describes it: the server type by the
//! SDAM spec's "parsing a hello response" rules, the election facts (`electionId`,
//! `setVersion`, wire version) that decide between two primaries, `lastWrite.lastWriteDate`
//! for the staleness of a secondary, and the member lists a primary announces.

use std::time::Duration;

use bson::oid::ObjectId;
use bson::{Bson, Document};
use tokio::time::Instant;

/// A member's role, from its `hello` (after the election rules: a member that claims to
/// be primary but lost, or is stale, is [`Role::Unknown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The primary: writable, and the newest by `(electionId, setVersion)`.
    Primary,
    /// `secondary: true` and not hidden.
    Secondary,
    /// `arbiterOnly: true`: holds no data, never selected.
    Arbiter,
    /// Hidden, recovering, starting up, a ghost, a mongos: never selected.
    Other,
    /// Did not answer, answered `ok: 0`, belongs to another set, or claimed to be primary
    /// with an older election than the newest seen: never selected.
    Unknown,
}

impl Role {
    /// The `role` label of the member's pool in the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
            Role::Arbiter => "arbiter",
            Role::Other => "other",
            Role::Unknown => "unknown",
        }
    }
}

/// One member that answered its heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// `host:port` as Sluice reaches it.
    pub addr: String,
    /// Its role.
    pub role: Role,
    /// The heartbeat's round-trip time.
    pub rtt: Duration,
    /// Its replica-set tags (string values only).
    pub tags: Vec<(String, String)>,
    /// `setName`, to drop a member of another set.
    pub set_name: Option<String>,
    /// Whether it said it is writable (`isWritablePrimary` / `ismaster`); the election
    /// rules decide whether it becomes [`Role::Primary`].
    pub claims_primary: bool,
    /// `electionId` (only a primary's counts).
    pub election_id: Option<ObjectId>,
    /// `setVersion` (only a primary's counts).
    pub set_version: Option<i64>,
    /// `maxWireVersion`: from 17 (MongoDB 6.0) `electionId` is compared before
    /// `setVersion`, before it the other way round.
    pub max_wire: i64,
    /// `lastWrite.lastWriteDate` in milliseconds since the epoch, by the member's clock.
    pub last_write: Option<i64>,
    /// When Sluice received this reply (its own clock): the staleness formula subtracts
    /// it from `last_write`, so the two clocks never need to agree.
    pub updated: Instant,
    /// `hosts`, `passives` and `arbiters`: the set's members as this member lists them.
    pub lists: Vec<String>,
    /// `me`: the name the member knows itself by, when it says.
    pub me: Option<String>,
}

/// What a heartbeat brought back from one member.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The `hello` reply body.
    pub doc: Document,
    /// Its round-trip time.
    pub rtt: Duration,
    /// When it arrived.
    pub at: Instant,
}

fn int(reply: &Document, key: &str) -> Option<i64> {
    match reply.get(key)? {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

fn tags(reply: &Document) -> Vec<(String, String)> {
    reply
        .get_document("tags")
        .map(|t| {
            t.iter()
                .filter_map(|(k, v)| match v {
                    Bson::String(s) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn lists(reply: &Document) -> Vec<String> {
    ["hosts", "passives", "arbiters"]
        .iter()
        .filter_map(|k| reply.get_array(k).ok())
        .flatten()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect()
}

impl Member {
    /// Reads a member from its `hello` reply, by the SDAM spec's server-type rules.
    pub fn from_hello(addr: &str, reply: &Reply) -> Member {
        let doc = &reply.doc;
        let flag = |k: &str| doc.get_bool(k).unwrap_or(false);
        let ok = int(doc, "ok") == Some(1);
        let set_name = doc.get_str("setName").ok().map(str::to_owned);
        let writable = flag("isWritablePrimary") || flag("ismaster");
        let hidden = flag("hidden");
        let router = doc.get_str("msg") == Ok("isdbgrid");
        // A writable standalone (no `setName`) in a multi-host URI is still a primary
        // candidate, as Sluice always treated it; the election rules decide.
        let claims_primary = ok && writable && !hidden && !router;
        let role = if !ok {
            Role::Unknown
        } else if hidden || router || claims_primary || set_name.is_none() {
            Role::Other
        } else if flag("secondary") {
            Role::Secondary
        } else if flag("arbiterOnly") {
            Role::Arbiter
        } else {
            Role::Other
        };
        let last_write = doc
            .get_document("lastWrite")
            .ok()
            .and_then(|w| w.get_datetime("lastWriteDate").ok())
            .map(|d| d.timestamp_millis());
        Member {
            addr: addr.to_owned(),
            role,
            rtt: reply.rtt,
            tags: tags(doc),
            set_name,
            claims_primary,
            election_id: doc.get_object_id("electionId").ok(),
            set_version: int(doc, "setVersion"),
            max_wire: int(doc, "maxWireVersion").unwrap_or(0),
            last_write,
            updated: reply.at,
            lists: lists(doc),
            me: doc.get_str("me").ok().map(str::to_owned),
        }
    }

    /// Whether it knows itself by another name than the address Sluice reaches it at
    /// (`me`, compared without regard to case as host names are).
    pub fn is_alias(&self) -> bool {
        self.me
            .as_deref()
            .is_some_and(|me| !me.eq_ignore_ascii_case(&self.addr))
    }

    /// Whether every tag of `tag_set` is on this member.
    pub fn matches(&self, tag_set: &[(String, String)]) -> bool {
        tag_set.iter().all(|t| self.tags.contains(t))
    }

    /// Data-bearing and selectable for reads: the primary or a secondary.
    pub fn readable(&self) -> bool {
        matches!(self.role, Role::Primary | Role::Secondary)
    }
}
