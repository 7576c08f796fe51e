//! Transaction pinning: every command of an `lsid` + `txnNumber` transaction goes over one
//! upstream connection, from `startTransaction` until `commitTransaction` /
//! `abortTransaction` is answered. The pin is keyed by session, not by client connection,
//! because drivers may send one session's commands over any of their connections to a
//! router. A pin is dropped when its session ends (`endSessions`), when the same session
//! starts another transaction, or after [`PIN_IDLE_LIMIT`] without a command; a connection
//! whose transaction did not end normally is closed, never returned to the pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::pool::PooledConn;

/// How long a transaction may sit idle before its pin is dropped (mongod's default
/// `transactionLifetimeLimitSeconds` is 60).
pub const PIN_IDLE_LIMIT: Duration = Duration::from_secs(60);

/// One pinned transaction.
pub struct Pinned {
    /// The transaction's `txnNumber`.
    pub txn_number: i64,
    /// The connection; `None` once the transaction ended or the connection broke.
    pub conn: tokio::sync::Mutex<Option<PooledConn>>,
    last_used: Mutex<Instant>,
}

impl Pinned {
    /// Marks the pin used now.
    pub fn touch(&self) {
        *self.last_used.lock() = Instant::now();
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // Still holding a connection: its transaction never ended through Sluice.
        if let Some(conn) = self.conn.get_mut().take() {
            conn.discard();
        }
    }
}

/// Every pinned transaction, by session.
#[derive(Default)]
pub struct Pins {
    map: Mutex<HashMap<Vec<u8>, Arc<Pinned>>>,
}

impl Pins {
    /// Pins `conn` for transaction `txn_number` of session `lsid`, replacing (and closing)
    /// any earlier pin of that session.
    pub fn pin(&self, lsid: Vec<u8>, txn_number: i64, conn: PooledConn) -> Arc<Pinned> {
        let pinned = Arc::new(Pinned {
            txn_number,
            conn: tokio::sync::Mutex::new(Some(conn)),
            last_used: Mutex::new(Instant::now()),
        });
        let old = self.map.lock().insert(lsid, pinned.clone());
        drop(old);
        pinned
    }

    /// The pin of this session's transaction `txn_number`, if any.
    pub fn get(&self, lsid: &[u8], txn_number: i64) -> Option<Arc<Pinned>> {
        let map = self.map.lock();
        map.get(lsid)
            .filter(|p| p.txn_number == txn_number)
            .cloned()
    }

    /// Removes `pinned` if it is still the session's pin.
    pub fn unpin(&self, lsid: &[u8], pinned: &Arc<Pinned>) {
        let mut map = self.map.lock();
        if map.get(lsid).is_some_and(|p| Arc::ptr_eq(p, pinned)) {
            map.remove(lsid);
        }
    }

    /// Drops the pins of ended sessions.
    pub fn end_sessions(&self, lsids: &[Vec<u8>]) {
        let removed: Vec<_> = {
            let mut map = self.map.lock();
            lsids.iter().filter_map(|l| map.remove(l)).collect()
        };
        drop(removed);
    }

    /// Drops pins idle for longer than `limit` (as of `now`); returns how many.
    pub fn expire(&self, now: Instant, limit: Duration) -> usize {
        let removed: Vec<_> = {
            let mut map = self.map.lock();
            let stale: Vec<Vec<u8>> = map
                .iter()
                .filter(|(_, p)| now.duration_since(*p.last_used.lock()) > limit)
                .map(|(k, _)| k.clone())
                .collect();
            stale.iter().filter_map(|k| map.remove(k)).collect()
        };
        removed.len()
    }

    /// Whether session `lsid` has a pinned (still open) transaction.
    pub fn is_pinned(&self, lsid: &[u8]) -> bool {
        self.map.lock().contains_key(lsid)
    }

    /// Number of pinned transactions.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether no transaction is pinned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
