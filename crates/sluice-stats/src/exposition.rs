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
use crate::families::{CLIENTS, CONNECTIONS, ERRORS, PREPARED, SCALARS, SESSION_FEATURES, WAIT};
use crate::histogram::HistogramSnapshot;
use crate::pool::PoolSnapshot;
use crate::registry::{ClientGauges, ClientState, Registry};

/// `Content-Type` for the output of [`Exposition::render`].
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Labels every pool series carries, in this order.
const POOL_LABELS: [&str; 3] = ["database", "user", "pool"];

/// Labels a MongoDB pool's series carry after [`POOL_LABELS`]: the replica-set member the
/// pool connects to and its current role (see [`crate::MemberInfo`]). PostgreSQL series
/// go without them, which Prometheus reads as the same labels left empty.
const MEMBER_LABELS: [&str; 2] = ["member", "role"];

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

/// `database`, `user`, `pool` of one pool, then `member` and `role` for a MongoDB pool.
fn pool_labels(p: &PoolSnapshot) -> Vec<LabelPair> {
    let values = [&p.database, &p.user, &p.name];
    let mut labels: Vec<LabelPair> = POOL_LABELS
        .iter()
        .zip(values)
        .map(|(name, value)| label(name, value))
        .collect();
    if let Some(m) = &p.member {
        labels.extend(
            MEMBER_LABELS
                .iter()
                .zip([&m.address, &m.role])
                .map(|(n, v)| label(n, v)),
        );
    }
    labels
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
