//! Sluice statistics: the single source of truth for every number the proxy
//! reports.
//!
//! * [`Histogram`] — lock-free, fixed exponential buckets for checkout waits.
//! * [`PoolCounters`] — cheap atomic counters the pool and session code bump.
//! * [`PoolSnapshot`] / [`PoolSource`] — a point-in-time view of one pool,
//!   produced by the pool code on demand.
//! * [`Registry`] — every live pool plus client connection gauges.
//! * [`ProcessStats`] — resident memory, open fds, CPU time from `/proc/self`.
//! * [`render_prometheus`] — Prometheus text exposition (format 0.0.4).
//!
//! This crate has no async runtime dependency: it is plain data and atomics.
#![forbid(unsafe_code)]

mod counters;
mod histogram;
mod pool;
mod process;
mod prometheus;
mod registry;

pub use counters::{CountersSnapshot, ErrorCounts, ErrorKind, PoolCounters};
pub use histogram::{Histogram, HistogramSnapshot, BUCKET_BOUNDS_SECONDS};
pub use pool::{CheckoutInfo, PoolSnapshot, PoolSource};
pub use process::{ProcessStats, ProcessStatsError, CLOCK_TICKS_PER_SECOND};
pub use prometheus::{render_prometheus, PROMETHEUS_CONTENT_TYPE};
pub use registry::{ClientGauges, ClientGuard, ClientSnapshot, ClientState, Registry, Summary};
