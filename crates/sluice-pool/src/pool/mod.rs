//! [`Pool`]: the handle, its limits (changed live by [`Pool::set_limits`]) and its error
//! type, over the state in [`crate::state`]. Checkout is in `checkout`, a checked-out
//! connection in `pooled`, PAUSE / close / listings / maintenance in `control`.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_stats::PoolCounters;
use thiserror::Error;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::connector::Connector;
use crate::state::State;

mod checkout;
mod control;
mod pooled;

pub use pooled::Pooled;

/// Sizes and timeouts of one pool; all of them can change while it runs
/// ([`Pool::set_limits`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Most connections open at once.
    pub max_size: usize,
    /// Connections kept open even when idle.
    pub min_size: usize,
    /// Longest a checkout may take (waiting in line plus connecting).
    pub timeout: Duration,
    /// Longest one connect + login may take.
    pub connect_timeout: Duration,
    /// Close idle connections above `min_size` unused this long.
    pub idle_timeout: Option<Duration>,
    /// Close connections older than this (with up to 10% jitter, so they do not all go at
    /// once).
    pub lifetime: Option<Duration>,
    /// After a refused login, no new attempt for this long (doubling up to 8×).
    pub login_retry: Duration,
    /// Retry transient connect failures within the checkout's time (the upstream
    /// restarting) instead of failing at once.
    pub retry_transient: bool,
    /// Open a connection now and then when none is open, so `/health` stays true to the
    /// upstream without a probe per request.
    pub probe_when_empty: bool,
    /// Connections beyond `max_size` a client may open once it has waited
    /// `reserve_timeout` (PgBouncer's `reserve_pool_size`); they close as they come back
    /// with nobody waiting.
    pub reserve_size: usize,
    /// How long a client waits before it may use the reserve.
    pub reserve_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: 10,
            min_size: 0,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: None,
            lifetime: None,
            login_retry: Duration::ZERO,
            retry_transient: false,
            probe_when_empty: false,
            reserve_size: 0,
            reserve_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a checkout failed.
#[derive(Debug, Clone, Error)]
pub enum CheckoutError<E: std::fmt::Display> {
    /// No connection became available in time.
    #[error("timed out after {waited:?} (pool_timeout {timeout:?})")]
    Timeout {
        /// How long the client waited.
        waited: Duration,
        /// The limit in force.
        timeout: Duration,
    },
    /// Opening a connection failed.
    #[error("{0}")]
    Connect(E),
    /// The pool is closed (shutdown, or the pool was removed).
    #[error("the pool is closed")]
    Closed,
}

/// What the pool holds now, all read under one lock.
#[derive(Debug, Clone)]
pub struct Occupancy<H> {
    /// `max_size` in force.
    pub max: usize,
    /// Open connections plus ones being opened.
    pub size: usize,
    /// Open and not checked out.
    pub idle: usize,
    /// Checked out.
    pub active: usize,
    /// Clients waiting for a connection now (queued, or held by PAUSE). A client that gave
    /// up or left is not counted.
    pub waiting: usize,
    /// How long the longest of them has waited (zero if none).
    pub longest_wait: Duration,
    /// The checkout held the longest: for how long, by whom.
    pub oldest: Option<(Duration, Arc<H>)>,
}

/// One connection, for listings (`SHOW SERVERS`).
#[derive(Debug, Clone)]
pub struct ConnView<H> {
    /// [`Connector::ident`] of it.
    pub ident: i64,
    /// How long ago it was opened.
    pub age: Duration,
    /// Who holds it, if it is checked out.
    pub holder: Option<Arc<H>>,
}

/// Outcome of the latest connect attempts.
struct Health<E> {
    last_ok: Option<Instant>,
    last_error: Option<(Instant, String)>,
    /// After a refused login: no new attempt before this instant; the error clients get.
    blocked: Option<(Instant, E)>,
    /// Consecutive refused logins (the pause doubles, up to 8×).
    refusals: u32,
}

pub(crate) struct Inner<K: Connector> {
    pub(crate) connector: K,
    name: String,
    pub(crate) state: Mutex<State<K::Conn, K::Holder>>,
    counters: PoolCounters,
    health: Mutex<Health<K::Error>>,
    /// Woken when PAUSE ends or the pool closes.
    resumed: Notify,
    /// Woken when the last checkout returns while paused.
    drained: Notify,
    /// Budgets shared with other pools; each connection holds a permit of every one.
    pub(crate) budgets: Vec<Arc<crate::Budget>>,
}

impl<K: Connector> crate::budget::Evict for Inner<K> {
    fn evict_idle(&self) -> bool {
        let entry = {
            let mut st = self.state.lock();
            if st.idle.is_empty() {
                return false;
            }
            st.total -= 1;
            st.idle.remove(0)
        };
        tracing::debug!(pool = %self.name, "closing an idle connection for another pool of its budget");
        drop(entry);
        true
    }
}

/// A handle on one pool; clones share it.
pub struct Pool<K: Connector> {
    inner: Arc<Inner<K>>,
}

impl<K: Connector> Clone for Pool<K> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

type Result<T, K> = std::result::Result<T, CheckoutError<<K as Connector>::Error>>;

impl<K: Connector> Pool<K> {
    /// An empty pool; [`Pool::spawn_maintenance`] keeps `min_size` open.
    pub fn new(name: impl Into<String>, connector: K, limits: Limits) -> Self {
        Self::with_budgets(name, connector, limits, Vec::new())
    }

    /// An empty pool whose connections also count against `budgets`.
    pub fn with_budgets(
        name: impl Into<String>,
        connector: K,
        limits: Limits,
        budgets: Vec<Arc<crate::Budget>>,
    ) -> Self {
        let pool = Pool {
            inner: Arc::new(Inner {
                connector,
                name: name.into(),
                state: Mutex::new(State::new(limits)),
                counters: PoolCounters::new(),
                health: Mutex::new(Health {
                    last_ok: None,
                    last_error: None,
                    blocked: None,
                    refusals: 0,
                }),
                resumed: Notify::new(),
                drained: Notify::new(),
                budgets,
            }),
        };
        for b in &pool.inner.budgets {
            let weak = Arc::downgrade(&pool.inner);
            b.join(weak);
        }
        pool
    }

    /// The pool's name (in logs).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// What opens this pool's connections.
    pub fn connector(&self) -> &K {
        &self.inner.connector
    }

    /// The counters the front end adds queries, transactions and bytes to.
    pub fn counters(&self) -> &PoolCounters {
        &self.inner.counters
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.inner.state.lock().limits.clone()
    }

    /// Applies new limits at once: waiters get slots a larger size frees, surplus idle
    /// connections of a smaller one close, and surplus checked-out ones close as they come
    /// back (no running client is disturbed).
    pub fn set_limits(&self, limits: Limits) {
        let surplus = {
            let mut st = self.inner.state.lock();
            st.limits = limits;
            st.grant_free_slots();
            st.trim_surplus()
        };
        drop(surplus);
    }
}
