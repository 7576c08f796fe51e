//! The few facts Sluice reads from a forwarded command to route it: its session (`lsid`),
//! transaction number and state, and whether it is a long-polling `getMore`. Everything is
//! read through `bson::RawDocument` without copying the command.

use bson::{RawBsonRef, RawDocument};

/// Routing facts of one command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestInfo {
    /// The command name.
    pub name: String,
    /// The raw bytes of the `lsid` document (the session key), if any.
    pub lsid: Option<Vec<u8>>,
    /// `txnNumber` when sent with `autocommit: false` (i.e. inside a transaction).
    pub txn_number: Option<i64>,
    /// `startTransaction: true`.
    pub start_transaction: bool,
    /// A getMore with `maxTimeMS` (tailable awaitData / change stream): it may hold an
    /// upstream connection for a long time.
    pub long_poll: bool,
    /// For `endSessions`: the sessions ended.
    pub ended_sessions: Vec<Vec<u8>>,
}

impl RequestInfo {
    /// Reads the routing facts of command `body` named `name`.
    pub fn parse(name: &str, body: &RawDocument) -> RequestInfo {
        let get = |key: &str| body.get(key).ok().flatten();
        let lsid = match get("lsid") {
            Some(RawBsonRef::Document(d)) => Some(d.as_bytes().to_vec()),
            _ => None,
        };
        let autocommit_false = matches!(get("autocommit"), Some(RawBsonRef::Boolean(false)));
        let txn_number = match get("txnNumber") {
            Some(RawBsonRef::Int64(n)) if autocommit_false => Some(n),
            Some(RawBsonRef::Int32(n)) if autocommit_false => Some(i64::from(n)),
            _ => None,
        };
        let start_transaction = matches!(get("startTransaction"), Some(RawBsonRef::Boolean(true)));
        let long_poll = name == "getMore" && get("maxTimeMS").is_some();
        let ended_sessions = match (name, get("endSessions")) {
            ("endSessions", Some(RawBsonRef::Array(items))) => items
                .into_iter()
                .filter_map(|item| match item {
                    Ok(RawBsonRef::Document(d)) => Some(d.as_bytes().to_vec()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        RequestInfo {
            name: name.to_owned(),
            lsid,
            txn_number,
            start_transaction,
            long_poll,
            ended_sessions,
        }
    }

    /// Whether this command ends the transaction it belongs to.
    pub fn ends_transaction(&self) -> bool {
        matches!(self.name.as_str(), "commitTransaction" | "abortTransaction")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bson::{rawdoc, Binary, Uuid};

    fn uuid() -> Binary {
        Binary::from_uuid(Uuid::new())
    }

    #[test]
    fn transaction_fields() {
        let id = uuid();
        let cmd = rawdoc! {
            "insert": "c", "lsid": {"id": id.clone()}, "txnNumber": 3_i64,
            "autocommit": false, "startTransaction": true, "$db": "t",
        };
        let info = RequestInfo::parse("insert", &cmd);
        assert!(info.lsid.is_some() && info.start_transaction);
        assert_eq!(info.txn_number, Some(3));
        // A retryable write has txnNumber but no autocommit: not a transaction.
        let retryable = rawdoc! {"insert": "c", "lsid": {"id": id.clone()}, "txnNumber": 4_i64};
        assert_eq!(RequestInfo::parse("insert", &retryable).txn_number, None);
        let commit = rawdoc! {"commitTransaction": 1, "lsid": {"id": id.clone()}, "txnNumber": 3_i64, "autocommit": false};
        let commit = RequestInfo::parse("commitTransaction", &commit);
        assert!(commit.ends_transaction());
        assert_eq!(commit.lsid, info.lsid);
    }

    #[test]
    fn long_poll_and_end_sessions() {
        let g = rawdoc! {"getMore": 5_i64, "collection": "c", "maxTimeMS": 1000};
        assert!(RequestInfo::parse("getMore", &g).long_poll);
        let g = rawdoc! {"getMore": 5_i64, "collection": "c"};
        assert!(!RequestInfo::parse("getMore", &g).long_poll);
        let e = rawdoc! {"endSessions": [{"id": uuid()}, {"id": uuid()}]};
        assert_eq!(
            RequestInfo::parse("endSessions", &e).ended_sessions.len(),
            2
        );
    }
}
