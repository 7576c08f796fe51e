//! Prometheus exposition through the `prometheus` crate: a [`PoolCollector`]
//! that turns pool snapshots and client gauges into metric families at scrape
//! time, the crate's process collector, and [`Exposition`], which gathers both
//! and encodes them as text (format 0.0.4).
//!
//! Nothing here sits on the hot path: the pools keep counting in their own
//! atomics ([`crate::PoolCounters`]) and every number is read from a fresh
//! [`PoolSnapshot`] when `/metrics` is scraped, so the exported values are
//! derived from the pool state and cannot drift from it.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Encoder as _, TextEncoder};

use crate::counters::ErrorKind;
use crate::histogram::HistogramSnapshot;
use crate::pool::PoolSnapshot;
use crate::registry::{ClientGauges, ClientState, Registry};

/// `Content-Type` for the output of [`Exposition::render`].
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Labels every pool series carries, in this order.
const POOL_LABELS: [&str; 3] = ["database", "user", "pool"];

/// Why the metrics could not be gathered or encoded.
#[derive(Debug, thiserror::Error)]
pub enum ExpositionError {
    /// The `prometheus` crate rejected a descriptor, a registration or the
    /// gathered families.
    #[error("prometheus: {0}")]
    Prometheus(#[from] prometheus::Error),
    /// The text encoder produced bytes that are not UTF-8.
    #[error("metrics text is not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

/// One per-pool family with a single value per pool.
struct Scalar {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    value: fn(&PoolSnapshot) -> f64,
}

/// The per-pool gauges and counters, in exposition order.
const SCALARS: [Scalar; 10] = [
    Scalar {
        name: "sluice_pool_max_connections",
        help: "Configured pool size.",
        kind: MetricType::GAUGE,
        value: |p| p.max as f64,
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

const CONNECTIONS: (&str, &str) = ("sluice_pool_connections", "Server connections by state.");
const ERRORS: (&str, &str) = ("sluice_pool_errors_total", "Errors by kind.");
const WAIT: (&str, &str) = (
    "sluice_pool_wait_seconds",
    "Time clients waited to check out a server connection.",
);
const CLIENTS: (&str, &str) = ("sluice_client_connections", "Client connections by state.");
const PREPARED: (&str, &str) = (
    "sluice_prepared_statements",
    "Distinct prepared statements in the pool's shared registry (held by a client or server).",
);

/// Postgres-only families of session features (LISTEN/NOTIFY, pinning): name, help,
/// type, value.
type SessionFamily = (
    &'static str,
    &'static str,
    MetricType,
    fn(&PoolSnapshot) -> u64,
);
const SESSION_FEATURES: [SessionFamily; 6] = [
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

/// A `prometheus` [`Collector`] over a Sluice [`Registry`]: on every
/// [`Collector::collect`] it snapshots each pool (Postgres, then MongoDB) and
/// the client gauges and builds the `sluice_*` families from them.
pub struct PoolCollector {
    registry: Arc<Registry>,
    descs: Vec<Desc>,
}

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCollector")
            .field("registry", &self.registry)
            .field("families", &self.descs.len())
            .finish()
    }
}

impl PoolCollector {
    /// Describes every family this collector produces.
    pub fn new(registry: Arc<Registry>) -> Result<Self, ExpositionError> {
        let desc = |(name, help): (&str, &str), extra: &[&str]| {
            let labels = POOL_LABELS.iter().chain(extra).map(|l| l.to_string());
            Desc::new(name.into(), help.into(), labels.collect(), HashMap::new())
        };
        let mut descs = vec![desc(CONNECTIONS, &["state"])?];
        for s in &SCALARS {
            descs.push(desc((s.name, s.help), &[])?);
        }
        descs.push(desc(ERRORS, &["kind"])?);
        descs.push(desc(WAIT, &[])?);
        descs.push(desc(PREPARED, &[])?);
        for (name, help, _, _) in SESSION_FEATURES {
            descs.push(desc((name, help), &[])?);
        }
        descs.push(Desc::new(
            CLIENTS.0.into(),
            CLIENTS.1.into(),
            vec!["state".into()],
            HashMap::new(),
        )?);
        Ok(Self { registry, descs })
    }
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut pools = self.registry.pool_snapshots();
        // Postgres pools come first; MongoDB pools have no prepared statements.
        let pg = pools.len();
        pools.extend(self.registry.mongo_snapshots());
        let mut families = pool_families(&pools, pg);
        families.push(clients_family(self.registry.clients()));
        families
    }
}

/// The per-pool families, one series per pool; the first `pg` pools are Postgres ones.
fn pool_families(pools: &[PoolSnapshot], pg: usize) -> Vec<MetricFamily> {
    let labels: Vec<Vec<LabelPair>> = pools.iter().map(pool_labels).collect();
    let series = || pools.iter().zip(&labels);
    let mut families = Vec::with_capacity(SCALARS.len() + 5);
    families.push(family(
        CONNECTIONS,
        MetricType::GAUGE,
        series()
            .flat_map(|(p, l)| {
                [("idle", p.idle), ("active", p.active)]
                    .map(|(state, n)| gauge(with_label(l, "state", state), n as f64))
            })
            .collect(),
    ));
    for s in &SCALARS {
        let metric: fn(Vec<LabelPair>, f64) -> proto::Metric = if s.kind == MetricType::COUNTER {
            counter
        } else {
            gauge
        };
        families.push(family(
            (s.name, s.help),
            s.kind,
            series()
                .map(|(p, l)| metric(l.clone(), (s.value)(p)))
                .collect(),
        ));
    }
    families.push(family(
        ERRORS,
        MetricType::COUNTER,
        series()
            .flat_map(|(p, l)| {
                ErrorKind::ALL.map(|kind| {
                    let n = p.counters.errors.get(kind) as f64;
                    counter(with_label(l, "kind", kind.label()), n)
                })
            })
            .collect(),
    ));
    families.push(family(
        WAIT,
        MetricType::HISTOGRAM,
        series()
            .map(|(p, l)| histogram(l.clone(), &p.counters.checkout_wait))
            .collect(),
    ));
    families.push(family(
        PREPARED,
        MetricType::GAUGE,
        series()
            .take(pg)
            .map(|(p, l)| gauge(l.clone(), p.prepared_statements as f64))
            .collect(),
    ));
    families.extend(session_families(series().take(pg)));
    families
}

/// The [`SESSION_FEATURES`] families over the Postgres pools' `series`.
fn session_families<'a>(
    series: impl Iterator<Item = (&'a PoolSnapshot, &'a Vec<LabelPair>)> + Clone,
) -> Vec<MetricFamily> {
    SESSION_FEATURES
        .iter()
        .map(|&(name, help, kind, value)| {
            let metrics = series
                .clone()
                .map(|(p, l)| {
                    let v = value(p) as f64;
                    if kind == MetricType::COUNTER {
                        counter(l.clone(), v)
                    } else {
                        gauge(l.clone(), v)
                    }
                })
                .collect();
            family((name, help), kind, metrics)
        })
        .collect()
}

/// Client connections by state.
fn clients_family(clients: &ClientGauges) -> MetricFamily {
    family(
        CLIENTS,
        MetricType::GAUGE,
        ClientState::ALL
            .iter()
            .map(|&state| {
                gauge(
                    vec![label("state", state.label())],
                    clients.get(state) as f64,
                )
            })
            .collect(),
    )
}

/// Everything `/metrics` serves: the pool collector plus the `prometheus`
/// crate's process collector (Linux), in a `prometheus` registry of their own.
pub struct Exposition {
    registry: prometheus::Registry,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition").finish_non_exhaustive()
    }
}

impl Exposition {
    /// Registers a [`PoolCollector`] over `registry` and the process collector.
    pub fn new(registry: Arc<Registry>) -> Result<Self, ExpositionError> {
        let prom = prometheus::Registry::new();
        prom.register(Box::new(PoolCollector::new(registry)?))?;
        #[cfg(target_os = "linux")]
        prom.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self { registry: prom })
    }

    /// Gathers every family (sorted by name; series sorted by label values)
    /// and encodes them as Prometheus text. Pool families are left out while
    /// there are no pools.
    pub fn render(&self) -> Result<String, ExpositionError> {
        let families = self.registry.gather();
        let mut buf = Vec::with_capacity(4096);
        TextEncoder::new().encode(&families, &mut buf)?;
        Ok(String::from_utf8(buf)?)
    }
}

/// `database`, `user`, `pool` of one pool.
fn pool_labels(p: &PoolSnapshot) -> Vec<LabelPair> {
    let values = [&p.database, &p.user, &p.name];
    POOL_LABELS
        .iter()
        .zip(values)
        .map(|(name, value)| label(name, value))
        .collect()
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

/// `base` plus one more label at the end.
fn with_label(base: &[LabelPair], name: &str, value: &str) -> Vec<LabelPair> {
    let mut labels = Vec::with_capacity(base.len() + 1);
    labels.extend_from_slice(base);
    labels.push(label(name, value));
    labels
}

fn family(
    (name, help): (&str, &str),
    kind: MetricType,
    metrics: Vec<proto::Metric>,
) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn gauge(labels: Vec<LabelPair>, value: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(value);
    let mut m = proto::Metric::from_label(labels);
    m.set_gauge(g);
    m
}

fn counter(labels: Vec<LabelPair>, value: f64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(value);
    let mut m = proto::Metric::from_label(labels);
    m.set_counter(c);
    m
}

/// The finite buckets of `h`; the encoder adds `+Inf` (= the count).
fn histogram(labels: Vec<LabelPair>, h: &HistogramSnapshot) -> proto::Metric {
    let buckets = h
        .buckets
        .iter()
        .map(|&(le, count)| {
            let mut b = proto::Bucket::default();
            b.set_upper_bound(le);
            b.set_cumulative_count(count);
            b
        })
        .collect();
    let mut ph = proto::Histogram::default();
    ph.set_sample_count(h.count);
    ph.set_sample_sum(h.sum_seconds);
    ph.set_bucket(buckets);
    let mut m = proto::Metric::from_label(labels);
    m.set_histogram(ph);
    m
}

#[cfg(test)]
#[path = "exposition_tests.rs"]
mod tests;
