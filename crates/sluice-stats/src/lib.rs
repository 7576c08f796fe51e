//! Sluice statistics: the single source of truth for every number the proxy
//! reports.
//!
//! * [`Histogram`] — lock-free, fixed exponential buckets for checkout waits.
//! * [`PoolCounters`] — cheap atomic counters the pool and session code bump.
//! * [`PoolSnapshot`] / [`PoolSource`] — a point-in-time view of one pool,
//!   produced by the pool code on demand.
//! * [`Registry`] — every live pool plus client connection gauges.
//! * [`PoolCollector`] / [`Exposition`] — Prometheus text exposition through
//!   the `prometheus` crate: pool families built from snapshots at scrape
//!   time, plus the crate's process metrics.
//!
//! This crate has no async runtime dependency: it is plain data and atomics.
#![forbid(unsafe_code)]

mod counters;
mod exposition;
mod families;
mod histogram;
mod pool;
mod registry;

pub use counters::{CountersSnapshot, ErrorCounts, ErrorKind, PoolCounters};
pub use exposition::{Exposition, ExpositionError, PoolCollector, PROMETHEUS_CONTENT_TYPE};
pub use histogram::{Histogram, HistogramSnapshot, BUCKET_BOUNDS_SECONDS};
pub use pool::{CheckoutInfo, MemberInfo, NotifySnapshot, PinnedInfo, PoolSnapshot, PoolSource};
pub use registry::{ClientGauges, ClientGuard, ClientSnapshot, ClientState, Registry, Summary};
