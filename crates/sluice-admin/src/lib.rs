//! Sluice admin HTTP server (HTTP/1.1 on hyper 1).
//!
//! | route                    | method | auth   | answer                                  |
//! |--------------------------|--------|--------|-----------------------------------------|
//! | `/health`                | GET    | none   | 200 / 503 JSON from [`AdminHooks::health`] |
//! | `/metrics`               | GET    | none   | Prometheus text                         |
//! | `/admin/pool-stats`      | GET    | bearer | JSON summary + every pool snapshot      |
//! | `/admin/reload`          | POST   | bearer | 200 / 400 JSON from [`AdminHooks::reload`] |
//!
//! Every path under `/admin/` requires `Authorization: Bearer <token>` when
//! [`AdminState::token`] is set (401 otherwise). Unknown paths get 404, a
//! wrong method on a known path 405 with an `Allow` header.
//!
//! Wiring: build an [`AdminState`] around the proxy's shared
//! [`sluice_stats::Registry`] and an [`AdminHooks`] implementation, then run
//! [`serve`] (or [`AdminServer`]) on its own task until shutdown.
#![forbid(unsafe_code)]

mod routes;
mod server;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use sluice_config::{ReloadError, ReloadPlan};
use sluice_stats::{Exposition, ExpositionError, Registry};

pub use routes::{handle, AdminBody};
pub use server::{serve, AdminError, AdminServer};

/// Future returned by [`AdminHooks::reload`]: what changed on success, or why the new
/// configuration was rejected.
pub type ReloadFuture =
    Pin<Box<dyn Future<Output = Result<ReloadPlan, ReloadError>> + Send + 'static>>;

/// What the admin server needs from the rest of the proxy beyond numbers.
/// Implemented by the main binary.
pub trait AdminHooks: Send + Sync + 'static {
    /// Current health of every pool, for `GET /health`. Called per request:
    /// should be cheap and non-blocking (e.g. read flags the pools maintain).
    fn health(&self) -> HealthReport;

    /// Re-reads and applies the configuration, for `POST /admin/reload`.
    fn reload(&self) -> ReloadFuture;
}

/// Health of one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolHealth {
    /// Pool name.
    pub name: String,
    /// Whether the pool can currently serve clients.
    pub healthy: bool,
    /// Why not, when unhealthy (e.g. the last connect error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Health of the whole proxy: healthy when every pool is (vacuously so with
/// no pools).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// One entry per pool.
    pub pools: Vec<PoolHealth>,
}

impl HealthReport {
    /// True when every pool is healthy.
    pub fn is_healthy(&self) -> bool {
        self.pools.iter().all(|p| p.healthy)
    }

    /// The unhealthy pools.
    pub fn failing(&self) -> Vec<PoolHealth> {
        self.pools.iter().filter(|p| !p.healthy).cloned().collect()
    }
}

/// Everything a request handler needs; cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct AdminState {
    /// Source of pool snapshots and client gauges.
    pub registry: Arc<Registry>,
    /// What `GET /metrics` renders: collectors over `registry` and the process.
    pub metrics: Arc<Exposition>,
    /// Bearer token required for `/admin/*`; `None` disables the check.
    pub token: Option<String>,
    /// Health and reload callbacks.
    pub hooks: Arc<dyn AdminHooks>,
}

impl AdminState {
    /// Bundles the registry, optional token and hooks, and sets up the
    /// Prometheus exposition over the registry (fails only if the `prometheus`
    /// crate rejects a metric descriptor).
    pub fn new(
        registry: Arc<Registry>,
        token: Option<String>,
        hooks: Arc<dyn AdminHooks>,
    ) -> Result<Self, ExpositionError> {
        let metrics = Arc::new(Exposition::new(Arc::clone(&registry))?);
        Ok(Self {
            registry,
            metrics,
            token,
            hooks,
        })
    }
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("registry", &self.registry)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
