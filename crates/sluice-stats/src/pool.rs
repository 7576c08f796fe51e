//! Point-in-time view of one pool, and the trait the pool code implements.

use serde::Serialize;

use crate::counters::CountersSnapshot;

/// Something that can describe one pool right now. Implemented by the pool
/// code and registered in a [`crate::Registry`]; called on every admin or
/// metrics request, so it should be cheap and must not block for long.
pub trait PoolSource: Send + Sync {
    /// Describes the pool as of now.
    fn snapshot(&self) -> PoolSnapshot;

    /// Whether the pool can reach its upstream (`Err` with the reason), for pools whose
    /// health the admin listener reads from the registry (MongoDB); `None` (the default)
    /// when health is reported elsewhere.
    fn health(&self) -> Option<Result<(), String>> {
        None
    }
}

/// The client currently holding a server connection the longest.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckoutInfo {
    /// Client peer address (`ip:port`, or a socket path).
    pub client_addr: String,
    /// The client's `application_name` startup parameter (empty if unset).
    pub application_name: String,
    /// How long the connection has been checked out, in seconds.
    pub age_seconds: f64,
}

/// A client that keeps its server across transactions for session state (transaction
/// mode pinning).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PinnedInfo {
    /// Client peer address.
    pub client_addr: String,
    /// The client's `application_name`.
    pub application_name: String,
    /// What keeps it pinned (`temp table`, `cursor`, `advisory lock`, `prepared statement`).
    pub reason: String,
    /// How long it has been pinned, in seconds.
    pub age_seconds: f64,
}

/// Plain-data description of one pool at one moment; what `/admin/pool-stats`
/// returns per pool and what the Prometheus output is rendered from.
///
/// Build it with a struct literal (`..Default::default()` is fine) and attach
/// counters with [`PoolSnapshot::with_counters`], which also fills the
/// checkout-wait quantiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PoolSnapshot {
    /// Pool name (the `pool` metrics label), unique within the registry.
    pub name: String,
    /// Upstream database name.
    pub database: String,
    /// Upstream user name.
    pub user: String,
    /// Pooling mode: `"session"` or `"transaction"`.
    pub mode: String,
    /// Configured maximum number of server connections (pool size).
    pub max: u64,
    /// Server connections currently open (idle + active + being opened).
    pub size: u64,
    /// Open server connections not checked out.
    pub idle: u64,
    /// Server connections checked out by clients.
    pub active: u64,
    /// Clients queued waiting for a server connection.
    pub waiting: u64,
    /// How long the longest-waiting queued client has waited, in seconds
    /// (0 if none is waiting).
    pub longest_wait_seconds: f64,
    /// Cumulative counters and the checkout wait histogram.
    pub counters: CountersSnapshot,
    /// Median checkout wait in seconds, estimated from the histogram.
    pub wait_p50_seconds: f64,
    /// 99th percentile checkout wait in seconds, estimated from the histogram.
    pub wait_p99_seconds: f64,
    /// The checkout held the longest, if any connection is checked out.
    pub oldest_checkout: Option<CheckoutInfo>,
    /// Distinct prepared statements in the pool's shared registry: those some client or
    /// server connection still holds, at most `prepared_statement_registry_size`
    /// (PostgreSQL pools in transaction mode; 0 otherwise).
    pub prepared_statements: u64,
    /// LISTEN/NOTIFY through the pool's notification hub (transaction mode).
    pub notify: NotifySnapshot,
    /// Clients pinning a server (transaction mode), oldest first.
    pub pinned: Vec<PinnedInfo>,
    /// The replica-set member the pool connects to and its role (MongoDB pools; `None`
    /// for PostgreSQL ones): exported as the `member` and `role` labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<MemberInfo>,
}

/// Which upstream server a MongoDB pool connects to, as of the latest heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemberInfo {
    /// `host:port` of the member (empty while the pool has not found its server yet).
    pub address: String,
    /// Its role: `primary`, `secondary`, `arbiter`, `other` (hidden, recovering, ...) or
    /// `unknown` (did not answer its heartbeat, or lost an election).
    pub role: String,
}

/// The figures of a pool's notification hub (LISTEN/NOTIFY in transaction mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct NotifySnapshot {
    /// Distinct channels the hub's connection LISTENs on.
    pub channels: u64,
    /// Clients listening through the hub.
    pub listeners: u64,
    /// Notifications handed to clients.
    pub notifications_total: u64,
    /// Clients disconnected because their notification queue was full.
    pub overflows_total: u64,
    /// Reconnects of the hub's connection after it broke (notifications sent while it
    /// was down are lost).
    pub reconnects_total: u64,
}

impl PoolSnapshot {
    /// Sets `counters` and derives `wait_p50_seconds` / `wait_p99_seconds`
    /// from its checkout wait histogram.
    pub fn with_counters(mut self, counters: CountersSnapshot) -> Self {
        self.wait_p50_seconds = counters.checkout_wait.quantile(0.5);
        self.wait_p99_seconds = counters.checkout_wait.quantile(0.99);
        self.counters = counters;
        self
    }

    /// Fraction of the pool checked out (`active / max`, in `0..=1`; 0 when
    /// `max` is 0).
    pub fn utilization(&self) -> f64 {
        ratio(self.active, self.max)
    }
}

/// `num / den` clamped to `0..=1`, or 0 when `den` is 0.
pub(crate) fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        (num as f64 / den as f64).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::PoolCounters;
    use std::time::Duration;

    #[test]
    fn with_counters_fills_quantiles() {
        let c = PoolCounters::new();
        for _ in 0..10 {
            c.record_checkout_wait(Duration::from_millis(800));
        }
        let snap = PoolSnapshot {
            name: "p".into(),
            max: 4,
            active: 1,
            ..Default::default()
        }
        .with_counters(c.snapshot());
        assert!(snap.wait_p50_seconds > 0.5 && snap.wait_p50_seconds <= 1.0);
        assert!(snap.wait_p99_seconds >= snap.wait_p50_seconds);
        assert_eq!(snap.utilization(), 0.25);
        let json = serde_json::to_value(&snap).expect("json");
        assert_eq!(json["counters"]["checkout_wait"]["count"], 10);
        assert!(json["oldest_checkout"].is_null());
    }

    #[test]
    fn utilization_edge_cases() {
        assert_eq!(ratio(3, 0), 0.0);
        assert_eq!(ratio(5, 4), 1.0);
    }
}
