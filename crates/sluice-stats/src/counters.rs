//! Per-pool monotonically increasing counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::histogram::{Histogram, HistogramSnapshot};

/// Kinds of errors counted per pool (the `kind` label of
/// `sluice_pool_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A client gave up waiting for a server connection (checkout timeout).
    Timeout,
    /// Opening a new server connection failed (network, TLS or upstream auth).
    Connect,
    /// A server connection broke while a client was using it.
    ServerLost,
    /// A client or server violated the wire protocol.
    Protocol,
    /// A client failed authentication against the proxy.
    Auth,
}

impl ErrorKind {
    /// Every kind, in label order; index `i` is stored in slot `i`.
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Timeout,
        ErrorKind::Connect,
        ErrorKind::ServerLost,
        ErrorKind::Protocol,
        ErrorKind::Auth,
    ];

    /// The stable label used in metrics and JSON (`"timeout"`, `"connect"`,
    /// `"server_lost"`, `"protocol"`, `"auth"`).
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::ServerLost => "server_lost",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Auth => "auth",
        }
    }

    fn index(self) -> usize {
        match self {
            ErrorKind::Timeout => 0,
            ErrorKind::Connect => 1,
            ErrorKind::ServerLost => 2,
            ErrorKind::Protocol => 3,
            ErrorKind::Auth => 4,
        }
    }
}

/// Live counters for one pool. Every method is a single relaxed atomic
/// operation (or two, for the histogram), cheap enough for the hot path.
#[derive(Debug, Default)]
pub struct PoolCounters {
    checkouts_total: AtomicU64,
    transactions_total: AtomicU64,
    queries_total: AtomicU64,
    bytes_in_total: AtomicU64,
    bytes_out_total: AtomicU64,
    server_connects_total: AtomicU64,
    listen_reconnects_total: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Time clients waited to check out a server connection.
    pub checkout_wait: Histogram,
}

impl PoolCounters {
    /// Creates zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one successful checkout of a server connection.
    pub fn inc_checkouts(&self) {
        self.checkouts_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one completed transaction (or, in session mode, session).
    pub fn inc_transactions(&self) {
        self.transactions_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one query (a simple `Query` or an extended-protocol `Sync`).
    pub fn inc_queries(&self) {
        self.queries_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds bytes forwarded client → server.
    pub fn add_bytes_in(&self, bytes: u64) {
        self.bytes_in_total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds bytes forwarded server → client.
    pub fn add_bytes_out(&self, bytes: u64) {
        self.bytes_out_total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts one new server connection successfully opened.
    pub fn inc_server_connects(&self) {
        self.server_connects_total.fetch_add(1, Ordering::Relaxed);
    }

    /// The notification listener reconnected after losing its connection.
    pub fn inc_listen_reconnects(&self) {
        self.listen_reconnects_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Reconnects of the notification listener so far.
    pub fn listen_reconnects(&self) -> u64 {
        self.listen_reconnects_total.load(Ordering::Relaxed)
    }

    /// Counts one error of the given kind.
    pub fn inc_error(&self, kind: ErrorKind) {
        self.errors[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long a checkout waited (successful or not).
    pub fn record_checkout_wait(&self, wait: Duration) {
        self.checkout_wait.record(wait);
    }

    /// Copies every counter.
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            checkouts_total: self.checkouts_total.load(Ordering::Relaxed),
            transactions_total: self.transactions_total.load(Ordering::Relaxed),
            queries_total: self.queries_total.load(Ordering::Relaxed),
            bytes_in_total: self.bytes_in_total.load(Ordering::Relaxed),
            bytes_out_total: self.bytes_out_total.load(Ordering::Relaxed),
            server_connects_total: self.server_connects_total.load(Ordering::Relaxed),
            errors: ErrorCounts(std::array::from_fn(|i| {
                self.errors[i].load(Ordering::Relaxed)
            })),
            checkout_wait: self.checkout_wait.snapshot(),
        }
    }
}

/// Error counts indexed by [`ErrorKind`]; serializes as a JSON object
/// `{"timeout": n, "connect": n, ...}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts(pub [u64; ErrorKind::ALL.len()]);

impl ErrorCounts {
    /// The count for one kind.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind.index()]
    }

    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl Serialize for ErrorCounts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(ErrorKind::ALL.len()))?;
        for kind in ErrorKind::ALL {
            map.serialize_entry(kind.label(), &self.get(kind))?;
        }
        map.end()
    }
}

/// A copy of [`PoolCounters`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CountersSnapshot {
    /// Successful checkouts of server connections.
    pub checkouts_total: u64,
    /// Completed transactions.
    pub transactions_total: u64,
    /// Queries forwarded.
    pub queries_total: u64,
    /// Bytes forwarded client → server.
    pub bytes_in_total: u64,
    /// Bytes forwarded server → client.
    pub bytes_out_total: u64,
    /// Server connections opened.
    pub server_connects_total: u64,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Checkout wait time distribution.
    pub checkout_wait: HistogramSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_unique_and_indexed() {
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
        let mut labels: Vec<_> = ErrorKind::ALL.iter().map(|k| k.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn counting_and_snapshot() {
        let c = PoolCounters::new();
        c.inc_checkouts();
        c.inc_checkouts();
        c.inc_transactions();
        c.inc_queries();
        c.add_bytes_in(10);
        c.add_bytes_out(20);
        c.inc_server_connects();
        c.inc_error(ErrorKind::Timeout);
        c.inc_error(ErrorKind::Auth);
        c.inc_error(ErrorKind::Auth);
        c.record_checkout_wait(Duration::from_millis(1));
        let s = c.snapshot();
        assert_eq!(s.checkouts_total, 2);
        assert_eq!(s.transactions_total, 1);
        assert_eq!(s.queries_total, 1);
        assert_eq!(s.bytes_in_total, 10);
        assert_eq!(s.bytes_out_total, 20);
        assert_eq!(s.server_connects_total, 1);
        assert_eq!(s.errors.get(ErrorKind::Auth), 2);
        assert_eq!(s.errors.get(ErrorKind::Connect), 0);
        assert_eq!(s.errors.total(), 3);
        assert_eq!(s.checkout_wait.count, 1);
    }

    #[test]
    fn errors_serialize_as_object() {
        let mut counts = ErrorCounts::default();
        counts.0[ErrorKind::ServerLost.index()] = 4;
        let json = serde_json::to_value(counts).expect("json");
        assert_eq!(json["server_lost"], 4);
        assert_eq!(json["timeout"], 0);
        assert_eq!(json.as_object().map(|o| o.len()), Some(5));
    }
}
