//! The few facts Sluice reads from a forwarded command to route it: its session (`lsid`),
//! transaction number and state, whether it is a long-polling `getMore`, its
//! `$readPreference`, and the cursors a `getMore`/`killCursors` continues. Everything is read
//! through `bson::RawDocument` without copying the command.

use std::time::Duration;

use bson::{RawBsonRef, RawDocument};

use crate::wire::ErrorCode;

/// The smallest `maxStalenessSeconds` the server-selection spec allows
/// (`smallestMaxStalenessSeconds`): a secondary's staleness is only known to within a
/// heartbeat and the primary's idle-write period.
pub const SMALLEST_MAX_STALENESS: Duration = Duration::from_secs(90);

/// How often an idle primary writes a no-op to the oplog (`idleWritePeriodMS`, 10 s), so
/// a secondary's `lastWriteDate` moves even without client writes.
pub const IDLE_WRITE_PERIOD: Duration = Duration::from_secs(10);

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
    /// `$readPreference` when it allows more than the primary (`None`: primary).
    pub read_pref: Option<ReadPref>,
    /// A `$readPreference` Sluice cannot use (unknown mode, malformed tags, a
    /// `maxStalenessSeconds` out of range): why.
    pub bad_read_pref: Option<ReadPrefError>,
    /// For `getMore` / `killCursors`: the cursor ids continued or killed.
    pub cursor_ids: Vec<i64>,
}

/// `$readPreference.mode`, as the server-selection spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Only the primary (the default).
    Primary,
    /// The primary, or a secondary when there is none.
    PrimaryPreferred,
    /// Only a secondary.
    Secondary,
    /// A secondary, or the primary when there is none.
    SecondaryPreferred,
    /// Whichever member answers fastest.
    Nearest,
}

impl ReadMode {
    fn parse(mode: &str) -> Option<ReadMode> {
        Some(match mode {
            "primary" => ReadMode::Primary,
            "primaryPreferred" => ReadMode::PrimaryPreferred,
            "secondary" => ReadMode::Secondary,
            "secondaryPreferred" => ReadMode::SecondaryPreferred,
            "nearest" => ReadMode::Nearest,
            _ => return None,
        })
    }
}

/// A non-primary `$readPreference`: the mode, its tag sets (tried in order; an empty set
/// matches any member) and how far behind the primary a secondary may be.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPref {
    /// The mode.
    pub mode: ReadMode,
    /// Tag sets; empty means "any member".
    pub tag_sets: Vec<Vec<(String, String)>>,
    /// `maxStalenessSeconds` (`None`: no limit), at least [`SMALLEST_MAX_STALENESS`].
    pub max_staleness: Option<Duration>,
}

/// Why a `$readPreference` cannot be used; each maps to the error code mongos answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadPrefError {
    /// Not a document, no string mode, malformed tag sets.
    #[error("{0}")]
    Malformed(&'static str),
    /// A mode the spec does not name.
    #[error("unknown read preference mode {0:?}")]
    UnknownMode(String),
    /// `maxStalenessSeconds` with mode `primary`, which reads no secondary.
    #[error("mode primary cannot be combined with maxStalenessSeconds")]
    StalenessWithPrimary,
    /// A negative `maxStalenessSeconds` other than -1 ("no maximum").
    #[error("maxStalenessSeconds must be a non-negative number, not {0}")]
    NegativeStaleness(i64),
    /// `maxStalenessSeconds` under [`SMALLEST_MAX_STALENESS`], or under the heartbeat
    /// interval plus [`IDLE_WRITE_PERIOD`] (the least staleness that can be measured).
    #[error("maxStalenessSeconds value can not be less than {min} (got {max})")]
    StalenessTooSmall {
        /// The value asked for, in seconds.
        max: i64,
        /// The smallest allowed, in seconds.
        min: u64,
    },
}

impl ReadPrefError {
    /// The error code of the reply: FailedToParse for a malformed document, BadValue for
    /// an impossible combination, MaxStalenessOutOfRange for a too small staleness.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed(_) | Self::UnknownMode(_) => ErrorCode::FailedToParse,
            Self::StalenessWithPrimary | Self::NegativeStaleness(_) => ErrorCode::BadValue,
            Self::StalenessTooSmall { .. } => ErrorCode::MaxStalenessOutOfRange,
        }
    }
}

/// Reads `maxStalenessSeconds`: `None` when absent, -1 or 0 (mongos's "not set").
fn max_staleness(doc: &RawDocument) -> Result<Option<Duration>, ReadPrefError> {
    let secs = match doc.get("maxStalenessSeconds").ok().flatten() {
        None => return Ok(None),
        Some(RawBsonRef::Double(f)) if f.fract() == 0.0 && f.abs() < 1e15 => f as i64,
        Some(v) => as_i64(v).ok_or(ReadPrefError::Malformed(
            "maxStalenessSeconds must be a whole number",
        ))?,
    };
    match secs {
        -1 | 0 => Ok(None),
        n if n < 0 => Err(ReadPrefError::NegativeStaleness(n)),
        n if n.unsigned_abs() < SMALLEST_MAX_STALENESS.as_secs() => {
            Err(ReadPrefError::StalenessTooSmall {
                max: n,
                min: SMALLEST_MAX_STALENESS.as_secs(),
            })
        }
        n => Ok(Some(Duration::from_secs(n.unsigned_abs()))),
    }
}

/// Reads `$readPreference`: `Ok(None)` for primary (or absent).
fn read_pref(value: Option<RawBsonRef<'_>>) -> Result<Option<ReadPref>, ReadPrefError> {
    let doc = match value {
        None => return Ok(None),
        Some(RawBsonRef::Document(d)) => d,
        Some(_) => {
            return Err(ReadPrefError::Malformed(
                "$readPreference must be a document",
            ))
        }
    };
    let mode = match doc.get_str("mode") {
        Ok(m) => ReadMode::parse(m).ok_or_else(|| ReadPrefError::UnknownMode(m.to_owned()))?,
        Err(_) => {
            return Err(ReadPrefError::Malformed(
                "$readPreference needs a string mode",
            ))
        }
    };
    let max_staleness = max_staleness(doc)?;
    if mode == ReadMode::Primary {
        return match max_staleness {
            Some(_) => Err(ReadPrefError::StalenessWithPrimary),
            None => Ok(None),
        };
    }
    let mut tag_sets = Vec::new();
    // The wire name is `tags`; the Rust driver 3.x sends `tagSets`, so both are read.
    let sets = match doc.get("tags") {
        Ok(Some(v)) => Some(v),
        _ => doc.get("tagSets").ok().flatten(),
    };
    if let Some(RawBsonRef::Array(sets)) = sets {
        for set in sets {
            let Ok(RawBsonRef::Document(set)) = set else {
                return Err(ReadPrefError::Malformed(
                    "$readPreference.tags must be an array of documents",
                ));
            };
            let mut tags = Vec::new();
            for entry in set {
                match entry {
                    Ok((k, RawBsonRef::String(v))) => tags.push((k.to_owned(), v.to_owned())),
                    _ => {
                        return Err(ReadPrefError::Malformed(
                            "$readPreference tag values must be strings",
                        ))
                    }
                }
            }
            tag_sets.push(tags);
        }
    }
    Ok(Some(ReadPref {
        mode,
        tag_sets,
        max_staleness,
    }))
}

fn as_i64(v: RawBsonRef<'_>) -> Option<i64> {
    match v {
        RawBsonRef::Int64(n) => Some(n),
        RawBsonRef::Int32(n) => Some(i64::from(n)),
        _ => None,
    }
}

/// Whether a reply is an error saying the server is not (or no longer) the primary: a
/// failover is under way and the replica-set monitor should look now.
pub fn reply_says_not_primary(body: &RawDocument) -> bool {
    let failed = match body.get("ok").ok().flatten() {
        Some(RawBsonRef::Double(v)) => v == 0.0,
        Some(RawBsonRef::Int32(v)) => v == 0,
        Some(RawBsonRef::Int64(v)) => v == 0,
        _ => false,
    };
    // NotWritablePrimary, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary,
    // PrimarySteppedDown, InterruptedDueToReplStateChange.
    failed
        && matches!(
            body.get("code").ok().flatten().and_then(as_i64),
            Some(10107 | 13435 | 13436 | 189 | 11602)
        )
}

/// The `cursor.id` of a reply (find, aggregate, getMore...), if it has one.
pub fn reply_cursor_id(body: &RawDocument) -> Option<i64> {
    match body.get("cursor").ok().flatten()? {
        RawBsonRef::Document(c) => as_i64(c.get("id").ok().flatten()?),
        _ => None,
    }
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
        let (read_pref, bad_read_pref) = match read_pref(get("$readPreference")) {
            Ok(p) => (p, None),
            Err(e) => (None, Some(e)),
        };
        let cursor_ids = match (name, get(name)) {
            ("getMore", Some(v)) => as_i64(v).into_iter().collect(),
            ("killCursors", _) => match get("cursors") {
                Some(RawBsonRef::Array(ids)) => ids
                    .into_iter()
                    .filter_map(|v| v.ok().and_then(as_i64))
                    .collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        RequestInfo {
            name: name.to_owned(),
            lsid,
            txn_number,
            start_transaction,
            long_poll,
            ended_sessions,
            read_pref,
            bad_read_pref,
            cursor_ids,
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
    fn read_preference_and_cursor_ids() {
        let cmd = rawdoc! {"find": "c", "$readPreference": {"mode": "primary"}};
        assert_eq!(RequestInfo::parse("find", &cmd).read_pref, None);
        let cmd = rawdoc! {
            "find": "c",
            "$readPreference": {"mode": "secondaryPreferred", "tags": [{"dc": "east"}, {}]},
        };
        let info = RequestInfo::parse("find", &cmd);
        assert_eq!(
            info.read_pref,
            Some(ReadPref {
                mode: ReadMode::SecondaryPreferred,
                tag_sets: vec![vec![("dc".into(), "east".into())], vec![]],
                max_staleness: None,
            })
        );
        let cmd = rawdoc! {"find": "c", "$readPreference": {"mode": "secondary", "tagSets": [{"dc": "west"}]}};
        let info = RequestInfo::parse("find", &cmd);
        assert_eq!(
            info.read_pref.unwrap().tag_sets,
            vec![vec![("dc".to_owned(), "west".to_owned())]]
        );
        let cmd = rawdoc! {"find": "c", "$readPreference": {"mode": "sometimes"}};
        let info = RequestInfo::parse("find", &cmd);
        assert!(info.read_pref.is_none());
        assert!(info
            .bad_read_pref
            .unwrap()
            .to_string()
            .contains("sometimes"));
        let cmd = rawdoc! {"find": "c", "$readPreference": {"mode": "nearest", "tags": [{"n": 1}]}};
        assert!(RequestInfo::parse("find", &cmd).bad_read_pref.is_some());

        let g = rawdoc! {"getMore": 42_i64, "collection": "c"};
        assert_eq!(RequestInfo::parse("getMore", &g).cursor_ids, vec![42]);
        let k = rawdoc! {"killCursors": "c", "cursors": [7_i64, 8_i64]};
        assert_eq!(RequestInfo::parse("killCursors", &k).cursor_ids, vec![7, 8]);
        let reply = rawdoc! {"cursor": {"id": 99_i64, "ns": "t.c", "firstBatch": []}, "ok": 1.0};
        assert_eq!(reply_cursor_id(&reply), Some(99));
        assert_eq!(reply_cursor_id(&rawdoc! {"ok": 1.0}), None);
        let stepped_down = rawdoc! {"ok": 0.0, "errmsg": "not primary", "code": 10107};
        assert!(reply_says_not_primary(&stepped_down));
        assert!(!reply_says_not_primary(&rawdoc! {"ok": 0.0, "code": 11000}));
        assert!(!reply_says_not_primary(&rawdoc! {"ok": 1.0, "code": 10107}));
    }

    #[test]
    fn max_staleness_seconds() {
        let parse = |pref: bson::RawDocumentBuf| {
            let cmd = rawdoc! {"find": "c", "$readPreference": pref};
            let info = RequestInfo::parse("find", &cmd);
            (info.read_pref, info.bad_read_pref)
        };
        let (p, e) = parse(rawdoc! {"mode": "secondary", "maxStalenessSeconds": 120_i64});
        assert_eq!(p.unwrap().max_staleness, Some(Duration::from_secs(120)));
        assert_eq!(e, None);
        let (p, _) = parse(rawdoc! {"mode": "nearest", "maxStalenessSeconds": 90});
        assert_eq!(p.unwrap().max_staleness, Some(Duration::from_secs(90)));
        let (p, _) = parse(rawdoc! {"mode": "secondary", "maxStalenessSeconds": 100.0});
        assert_eq!(p.unwrap().max_staleness, Some(Duration::from_secs(100)));
        for none in [
            rawdoc! {"mode": "secondary", "maxStalenessSeconds": -1},
            rawdoc! {"mode": "secondary"},
        ] {
            assert_eq!(parse(none).0.unwrap().max_staleness, None);
        }
        // Under 90 s: MaxStalenessOutOfRange, as mongos answers.
        let (p, e) = parse(rawdoc! {"mode": "secondary", "maxStalenessSeconds": 89});
        assert_eq!(p, None);
        let e = e.unwrap();
        assert_eq!(e, ReadPrefError::StalenessTooSmall { max: 89, min: 90 });
        assert_eq!(e.code(), ErrorCode::MaxStalenessOutOfRange);
        assert!(e.to_string().contains("less than 90"), "{e}");
        let (_, e) = parse(rawdoc! {"mode": "primary", "maxStalenessSeconds": 120});
        assert_eq!(e, Some(ReadPrefError::StalenessWithPrimary));
        let (_, e) = parse(rawdoc! {"mode": "secondary", "maxStalenessSeconds": -5});
        assert_eq!(e.unwrap().code(), ErrorCode::BadValue);
        let (_, e) = parse(rawdoc! {"mode": "secondary", "maxStalenessSeconds": "soon"});
        assert_eq!(e.unwrap().code(), ErrorCode::FailedToParse);
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
