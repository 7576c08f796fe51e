//! The set of live pools plus client connection gauges.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;

use crate::pool::{ratio, PoolSnapshot, PoolSource};

/// State of one client connection, for the `sluice_client_connections` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientState {
    /// The client holds a server connection (in a transaction or session).
    Active,
    /// The client is connected but holds no server connection.
    Idle,
    /// The client is queued waiting for a server connection.
    Waiting,
}

impl ClientState {
    /// Every state, in label order.
    pub const ALL: [ClientState; 3] =
        [ClientState::Active, ClientState::Idle, ClientState::Waiting];

    /// The `state` label value: `"active"`, `"idle"` or `"waiting"`.
    pub fn label(self) -> &'static str {
        match self {
            ClientState::Active => "active",
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
        }
    }
}

/// Gauges of client connections by state, updated by the session code.
/// Prefer [`ClientGauges::track`], whose guard keeps the numbers balanced.
#[derive(Debug, Default)]
pub struct ClientGauges {
    active: AtomicI64,
    idle: AtomicI64,
    waiting: AtomicI64,
}

impl ClientGauges {
    fn cell(&self, state: ClientState) -> &AtomicI64 {
        match state {
            ClientState::Active => &self.active,
            ClientState::Idle => &self.idle,
            ClientState::Waiting => &self.waiting,
        }
    }

    /// Adds one client in `state`.
    pub fn inc(&self, state: ClientState) {
        self.cell(state).fetch_add(1, Ordering::Relaxed);
    }

    /// Removes one client from `state`.
    pub fn dec(&self, state: ClientState) {
        self.cell(state).fetch_sub(1, Ordering::Relaxed);
    }

    /// Moves one client from `from` to `to` (no-op when equal).
    pub fn transition(&self, from: ClientState, to: ClientState) {
        if from != to {
            self.inc(to);
            self.dec(from);
        }
    }

    /// Current number of clients in `state` (never negative).
    pub fn get(&self, state: ClientState) -> u64 {
        u64::try_from(self.cell(state).load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Copies all three gauges.
    pub fn snapshot(&self) -> ClientSnapshot {
        ClientSnapshot {
            active: self.get(ClientState::Active),
            idle: self.get(ClientState::Idle),
            waiting: self.get(ClientState::Waiting),
        }
    }

    /// Counts a new client in `state` and returns a guard that tracks its
    /// state changes and removes it from the gauges when dropped.
    pub fn track(self: &Arc<Self>, state: ClientState) -> ClientGuard {
        self.inc(state);
        ClientGuard {
            gauges: Arc::clone(self),
            state,
        }
    }
}

/// One client connection counted in [`ClientGauges`]; decrements on drop.
#[derive(Debug)]
pub struct ClientGuard {
    gauges: Arc<ClientGauges>,
    state: ClientState,
}

impl ClientGuard {
    /// Moves this client to `state`.
    pub fn set(&mut self, state: ClientState) {
        self.gauges.transition(self.state, state);
        self.state = state;
    }

    /// The state this client is currently counted in.
    pub fn state(&self) -> ClientState {
        self.state
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.gauges.dec(self.state);
    }
}

/// Client connection counts by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClientSnapshot {
    /// Clients holding a server connection.
    pub active: u64,
    /// Clients connected without a server connection.
    pub idle: u64,
    /// Clients queued for a server connection.
    pub waiting: u64,
}

/// Totals over all pools (the top of `/admin/pool-stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// `postgres_active / postgres_max`, in `0..=1`; 0 when `postgres_max` is 0.
    pub postgres_utilization: f64,
    /// Clients queued for a server connection, all pools.
    pub postgres_waiting: u64,
    /// Server connections checked out, all pools.
    pub postgres_active: u64,
    /// Server connections open and idle, all pools.
    pub postgres_idle: u64,
    /// Sum of configured pool sizes.
    pub postgres_max: u64,
    /// `mongo_active / mongo_max` for the MongoDB pool, in `0..=1`; 0 without one.
    pub mongo_utilization: f64,
    /// Requests queued for an upstream MongoDB connection.
    pub mongo_waiting: u64,
    /// Upstream MongoDB connections checked out.
    pub mongo_active: u64,
    /// Upstream MongoDB connections open and idle.
    pub mongo_idle: u64,
    /// Configured `max_pool_size` of the MongoDB pool.
    pub mongo_max: u64,
}

impl Summary {
    /// Adds up a set of pool snapshots.
    pub fn from_snapshots(pools: &[PoolSnapshot]) -> Self {
        let mut s = Summary::default();
        for p in pools {
            s.postgres_waiting += p.waiting;
            s.postgres_active += p.active;
            s.postgres_idle += p.idle;
            s.postgres_max += p.max;
        }
        s.postgres_utilization = ratio(s.postgres_active, s.postgres_max);
        s
    }

    /// Adds the MongoDB pools' totals to a summary of the Postgres pools.
    pub fn with_mongo(mut self, pools: &[PoolSnapshot]) -> Self {
        for p in pools {
            self.mongo_waiting += p.waiting;
            self.mongo_active += p.active;
            self.mongo_idle += p.idle;
            self.mongo_max += p.max;
        }
        self.mongo_utilization = ratio(self.mongo_active, self.mongo_max);
        self
    }
}

/// Every live pool plus client gauges: what the admin server and metrics
/// read. Share one `Arc<Registry>` between the proxy and the admin server.
#[derive(Default)]
pub struct Registry {
    pools: RwLock<Vec<Arc<dyn PoolSource>>>,
    /// MongoDB pools: kept apart so a Postgres reload ([`Registry::replace_all`]) leaves
    /// them alone and the summary can total them separately.
    mongo_pools: RwLock<Vec<Arc<dyn PoolSource>>>,
    clients: Arc<ClientGauges>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("pools", &self.pools.read().len())
            .field("clients", &self.clients)
            .finish()
    }
}

impl Registry {
    /// Creates an empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one pool.
    pub fn register(&self, pool: Arc<dyn PoolSource>) {
        self.pools.write().push(pool);
    }

    /// Replaces every pool at once (config reload).
    pub fn replace_all(&self, pools: Vec<Arc<dyn PoolSource>>) {
        *self.pools.write() = pools;
    }

    /// Number of registered pools.
    pub fn pool_count(&self) -> usize {
        self.pools.read().len()
    }

    /// Client connection gauges, for the session code to update.
    pub fn clients(&self) -> &Arc<ClientGauges> {
        &self.clients
    }

    /// Snapshots every pool, in registration order. The lock is released
    /// before any [`PoolSource::snapshot`] runs.
    pub fn pool_snapshots(&self) -> Vec<PoolSnapshot> {
        let pools = self.pools.read().clone();
        pools.iter().map(|p| p.snapshot()).collect()
    }

    /// Totals over every pool (Postgres and MongoDB).
    pub fn summary(&self) -> Summary {
        Summary::from_snapshots(&self.pool_snapshots()).with_mongo(&self.mongo_snapshots())
    }

    /// Adds a MongoDB pool.
    pub fn register_mongo(&self, pool: Arc<dyn PoolSource>) {
        self.mongo_pools.write().push(pool);
    }

    /// Removes the MongoDB pools named `name` (a replica-set member that left the set),
    /// so a member that returns later is not listed twice.
    /// Like [`Registry::pool_snapshots`], no lock is held while a snapshot runs.
    pub fn unregister_mongo(&self, name: &str) {
        let pools = self.mongo_pools.read().clone();
        let gone: Vec<Arc<dyn PoolSource>> = pools
            .into_iter()
            .filter(|p| p.snapshot().name == name)
            .collect();
        self.mongo_pools
            .write()
            .retain(|p| !gone.iter().any(|g| Arc::ptr_eq(g, p)));
    }

    /// Snapshots every MongoDB pool.
    pub fn mongo_snapshots(&self) -> Vec<PoolSnapshot> {
        let pools = self.mongo_pools.read().clone();
        pools.iter().map(|p| p.snapshot()).collect()
    }

    /// Health of every MongoDB pool, as (pool name, result).
    pub fn mongo_health(&self) -> Vec<(String, Result<(), String>)> {
        let pools = self.mongo_pools.read().clone();
        pools
            .iter()
            .filter_map(|p| p.health().map(|h| (p.snapshot().name, h)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(PoolSnapshot);

    impl PoolSource for Fake {
        fn snapshot(&self) -> PoolSnapshot {
            self.0.clone()
        }
    }

    fn fake(name: &str, max: u64, active: u64, idle: u64, waiting: u64) -> Arc<dyn PoolSource> {
        Arc::new(Fake(PoolSnapshot {
            name: name.into(),
            max,
            active,
            idle,
            waiting,
            size: active + idle,
            ..Default::default()
        }))
    }

    #[test]
    fn summary_over_pools() {
        let r = Registry::new();
        assert_eq!(r.summary(), Summary::default());
        r.register(fake("a", 10, 5, 2, 1));
        r.register(fake("b", 10, 3, 0, 4));
        let s = r.summary();
        assert_eq!(s.postgres_max, 20);
        assert_eq!(s.postgres_active, 8);
        assert_eq!(s.postgres_idle, 2);
        assert_eq!(s.postgres_waiting, 5);
        assert!((s.postgres_utilization - 0.4).abs() < 1e-12);
        let names: Vec<_> = r.pool_snapshots().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["a", "b"]);
        r.replace_all(vec![fake("c", 0, 0, 0, 0)]);
        assert_eq!(r.pool_count(), 1);
        assert_eq!(r.summary().postgres_utilization, 0.0);
    }

    #[test]
    fn client_guard_balances() {
        let r = Registry::new();
        {
            let mut g = r.clients().track(ClientState::Idle);
            assert_eq!(r.clients().get(ClientState::Idle), 1);
            g.set(ClientState::Waiting);
            g.set(ClientState::Active);
            assert_eq!(g.state(), ClientState::Active);
            assert_eq!(
                r.clients().snapshot(),
                ClientSnapshot {
                    active: 1,
                    idle: 0,
                    waiting: 0
                }
            );
        }
        assert_eq!(r.clients().snapshot(), ClientSnapshot::default());
        r.clients().dec(ClientState::Idle);
        assert_eq!(r.clients().get(ClientState::Idle), 0, "clamped at 0");
    }
}
