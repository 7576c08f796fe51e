//! The tables of the `sluice_*` pool families: names, help texts, types, and how each
//! value is read from a [`PoolSnapshot`]. [`crate::exposition`] builds the families from
//! them at scrape time.

use prometheus::proto::MetricType;

use crate::pool::PoolSnapshot;

/// One per-pool family with a single value per pool.
pub(crate) struct Scalar {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    pub(crate) kind: MetricType,
    pub(crate) value: fn(&PoolSnapshot) -> f64,
}

/// The per-pool gauges and counters, in exposition order.
pub(crate) const SCALARS: [Scalar; 11] = [
    Scalar {
        name: "sluice_pool_max_connections",
        help: "Configured pool size.",
        kind: MetricType::GAUGE,
        value: |p| p.max as f64,
    },
    Scalar {
        name: "sluice_pool_open_connections",
        help: "Server connections open: idle, checked out, or being opened.",
        kind: MetricType::GAUGE,
        value: |p| p.size as f64,
    },
    Scalar {
        name: "sluice_pool_waiting_clients",
        help: "Clients queued for a server connection.",
        kind: MetricType::GAUGE,
        value: |p| p.waiting as f64,
    },
    Scalar {
        name: "sluice_pool_longest_wait_seconds",
        help: "Wait time of the longest-queued client.",
        kind: MetricType::GAUGE,
        value: |p| p.longest_wait_seconds,
    },
    Scalar {
        name: "sluice_pool_utilization",
        help: "Checked-out connections divided by pool size.",
        kind: MetricType::GAUGE,
        value: |p| p.utilization(),
    },
    Scalar {
        name: "sluice_pool_checkouts_total",
        help: "Server connection checkouts.",
        kind: MetricType::COUNTER,
        value: |p| p.counters.checkouts_total as f64,
    },
    Scalar {
        name: "sluice_pool_transactions_total",
        help: "Transactions completed.",
        kind: MetricType::COUNTER,
        value: |p| p.counters.transactions_total as f64,
    },
    Scalar {
        name: "sluice_pool_queries_total",
        help: "Queries forwarded.",
        kind: MetricType::COUNTER,
        value: |p| p.counters.queries_total as f64,
    },
    Scalar {
        name: "sluice_pool_bytes_received_total",
        help: "Bytes received from clients and forwarded to servers.",
        kind: MetricType::COUNTER,
        value: |p| p.counters.bytes_in_total as f64,
    },
    Scalar {
        name: "sluice_pool_bytes_sent_total",
        help: "Bytes received from servers and sent to clients.",
        kind: MetricType::COUNTER,
        value: |p| p.counters.bytes_out_total as f64,
    },
    Scalar {
        name: "sluice_pool_server_connects_total",
        help: "Server connections opened.",
        kind: MetricType::COUNTER,
        value: |p| p.counters.server_connects_total as f64,
    },
];

pub(crate) const CONNECTIONS: (&str, &str) =
    ("sluice_pool_connections", "Server connections by state.");
pub(crate) const ERRORS: (&str, &str) = ("sluice_pool_errors_total", "Errors by kind.");
pub(crate) const WAIT: (&str, &str) = (
    "sluice_pool_wait_seconds",
    "Time clients waited to check out a server connection.",
);
pub(crate) const CLIENTS: (&str, &str) =
    ("sluice_client_connections", "Client connections by state.");
pub(crate) const PREPARED: (&str, &str) = (
    "sluice_prepared_statements",
    "Distinct prepared statements in the pool's shared registry (held by a client or server).",
);

/// Postgres-only families of session features (LISTEN/NOTIFY, pinning): name, help,
/// type, value.
pub(crate) type SessionFamily = (
    &'static str,
    &'static str,
    MetricType,
    fn(&PoolSnapshot) -> u64,
);
pub(crate) const SESSION_FEATURES: [SessionFamily; 6] = [
    (
        "sluice_pinned_servers",
        "Servers kept by a client across transactions for session state (transaction mode pinning).",
        MetricType::GAUGE,
        |p| p.pinned.len() as u64,
    ),
    (
        "sluice_listen_channels",
        "Channels the pool's notification listener connection LISTENs on.",
        MetricType::GAUGE,
        |p| p.notify.channels,
    ),
    (
        "sluice_listen_clients",
        "Clients listening on channels through the pool's notification listener.",
        MetricType::GAUGE,
        |p| p.notify.listeners,
    ),
    (
        "sluice_notifications_total",
        "Notifications handed to listening clients.",
        MetricType::COUNTER,
        |p| p.notify.notifications_total,
    ),
    (
        "sluice_notification_overflows_total",
        "Clients disconnected because their queue of undelivered notifications was full.",
        MetricType::COUNTER,
        |p| p.notify.overflows_total,
    ),
    (
        "sluice_listen_reconnects_total",
        "Reconnects of the notification listener after its connection broke (notifications sent meanwhile are lost).",
        MetricType::COUNTER,
        |p| p.notify.reconnects_total,
    ),
];
