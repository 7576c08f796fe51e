//! The newest `$clusterTime` the upstream deployment gossiped, so Sluice's own `hello`
//! carries it (with `operationTime`) as a mongos's does: a client's first command then has
//! a cluster time to send, as it would against the deployment itself.
//!
//! Every forwarded reply and every upstream handshake is offered to [`ClusterClock::observe`];
//! the timestamp is compared with an atomic first, so a reply that brings nothing newer
//! costs one key lookup and no lock.

use std::sync::atomic::{AtomicU64, Ordering};

use bson::{Document, RawBsonRef, RawDocument, Timestamp};
use parking_lot::Mutex;

/// The newest `$clusterTime` document seen, shared by everything that talks upstream.
#[derive(Debug, Default)]
pub struct ClusterClock {
    /// `clusterTime` of `doc` as `time << 32 | increment` (0: none yet).
    newest: AtomicU64,
    /// The whole `$clusterTime` document (signature included), as the upstream sent it.
    doc: Mutex<Option<Document>>,
}

impl ClusterClock {
    /// Keeps `body`'s `$clusterTime` if it is newer than the one held.
    pub fn observe(&self, body: &RawDocument) {
        let Ok(Some(RawBsonRef::Document(ct))) = body.get("$clusterTime") else {
            return;
        };
        let Ok(Some(RawBsonRef::Timestamp(ts))) = ct.get("clusterTime") else {
            return;
        };
        let key = order_key(ts);
        if key <= self.newest.load(Ordering::Relaxed) {
            return;
        }
        let Ok(doc) = Document::try_from(ct) else {
            return;
        };
        let mut held = self.doc.lock();
        // Checked again under the lock: another reply may have brought a newer one.
        if key > self.newest.load(Ordering::Relaxed) {
            self.newest.store(key, Ordering::Relaxed);
            *held = Some(doc);
        }
    }

    /// The `$clusterTime` document and its timestamp (for `operationTime`), if any was seen.
    pub fn newest(&self) -> Option<(Document, Timestamp)> {
        let doc = self.doc.lock().clone()?;
        let ts = doc.get_timestamp("clusterTime").ok()?;
        Some((doc, ts))
    }
}

/// A timestamp as one number that orders as the timestamps do.
fn order_key(ts: Timestamp) -> u64 {
    (u64::from(ts.time) << 32) | u64::from(ts.increment)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bson::{rawdoc, Binary};

    fn reply(time: u32, increment: u32) -> bson::RawDocumentBuf {
        let sig = Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: vec![time as u8; 20],
        };
        rawdoc! {
            "ok": 1.0,
            "$clusterTime": {
                "clusterTime": Timestamp { time, increment },
                "signature": {"hash": sig, "keyId": 7_i64},
            },
            "operationTime": Timestamp { time, increment },
        }
    }

    #[test]
    fn keeps_the_newest_with_its_signature() {
        let clock = ClusterClock::default();
        assert!(clock.newest().is_none());
        clock.observe(&rawdoc! {"ok": 1.0});
        assert!(clock.newest().is_none());
        clock.observe(&reply(100, 2));
        clock.observe(&reply(100, 1));
        clock.observe(&reply(99, 9));
        let (doc, ts) = clock.newest().unwrap();
        assert_eq!(
            ts,
            Timestamp {
                time: 100,
                increment: 2
            }
        );
        let sig = doc.get_document("signature").unwrap();
        assert_eq!(sig.get_i64("keyId").unwrap(), 7);
        assert_eq!(sig.get_binary_generic("hash").unwrap(), &vec![100u8; 20]);
        clock.observe(&reply(101, 0));
        assert_eq!(clock.newest().unwrap().1.time, 101);
    }

    #[test]
    fn ignores_a_malformed_cluster_time() {
        let clock = ClusterClock::default();
        clock.observe(&rawdoc! {"$clusterTime": "soon"});
        clock.observe(&rawdoc! {"$clusterTime": {"clusterTime": 5_i64}});
        assert!(clock.newest().is_none());
    }
}
