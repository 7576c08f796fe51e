//! The bounded pool of upstream connections, over the shared pool core
//! ([`sluice_pool`]). A request checks a connection out for one round trip (or a
//! transaction holds it, see [`crate::pins`]).
//!
//! What is MongoDB-specific lives here: [`MongoConnector`] opens connections to the member
//! the replica-set monitor points the pool at, and a [`PooledConn`] goes back to the pool
//! on drop when it is still usable. Slots, the FIFO queue, timeouts and maintenance live in
//! the core; the whole checkout (queueing and connecting) runs under one `pool_timeout`.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_pool::{CheckoutError, Connector, Limits, Pooled};
use sluice_stats::{CheckoutInfo, MemberInfo, PoolCounters, PoolSnapshot, PoolSource};
use thiserror::Error;
use tokio::sync::{watch, Semaphore};

use crate::upstream::{MongoUpstreamError, ServerInfo, Target, UpstreamConn};

/// Sizes and timeouts of the pool (at creation: [`MongoPool::resize`] changes the first three).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Name in statistics (`mongo`).
    pub name: String,
    /// Upstream user, for statistics labels.
    pub user: String,
    /// Most connections open at once.
    pub max_size: usize,
    /// Connections opened at start and kept.
    pub min_size: usize,
    /// Longest wait for a connection (queueing plus connecting).
    pub timeout: Duration,
    /// Longest connect + handshake + login.
    pub connect_timeout: Duration,
    /// Whether this pool's connect failures make `/health` fail (the primary pool: yes; a
    /// secondary's pool: no, reads fall back or get a clear error).
    pub tracks_health: bool,
}

/// Why no connection could be checked out.
#[derive(Debug, Error)]
pub enum MongoPoolError {
    /// Every connection stayed busy for `pool_timeout`.
    #[error("timed out after {waited:?} waiting for an upstream connection (max_pool_size {max})")]
    Timeout {
        /// How long the request waited.
        waited: Duration,
        /// The pool size.
        max: usize,
    },
    /// Opening a connection failed.
    #[error("upstream unreachable: {0}")]
    Connect(#[source] Arc<MongoUpstreamError>),
    /// The pool is shut down.
    #[error("the pool is closed")]
    Closed,
}

/// The upstream's wire versions and limits as Sluice's `hello` shows them, and how many
/// times they changed.
#[derive(Debug, Clone, Default)]
pub struct Shown {
    /// The latest connection's server info (`None`: the upstream was never reached).
    pub info: Option<ServerInfo>,
    /// How many times `info` changed.
    pub changes: i64,
}

impl Shown {
    /// Records `info` from a new connection; whether it differs from what was shown.
    fn update(&mut self, info: &ServerInfo) -> bool {
        if self.info.as_ref() == Some(info) {
            return false;
        }
        self.info = Some(info.clone());
        self.changes += 1;
        true
    }
}

/// Opens connections to the member the pool points at (or the first writable seed).
pub struct MongoConnector {
    target: Target,
    /// The member this pool connects to; `None`: the first writable primary among the
    /// seeds. Connections to any other address are closed instead of reused.
    address: Mutex<Option<String>>,
    /// Seeds never taken as "the first writable one": members that claim to be primary
    /// with an older election than the newest seen (SDAM's stale primaries).
    avoid: Mutex<Vec<String>>,
    /// The upstream's wire versions and limits, once known, as clients are shown them
    /// in Sluice's `hello`.
    info: watch::Sender<Shown>,
    /// The address of the latest connection opened (the member a pool without an
    /// `address` found), for the statistics.
    last_addr: Mutex<String>,
}

impl MongoConnector {
    /// Whether `conn` goes to the member this pool is pointed at.
    fn wants(&self, conn: &UpstreamConn) -> bool {
        self.address.lock().as_ref().is_none_or(|a| *a == conn.addr)
    }

    async fn connect_once(
        &self,
        address: Option<&str>,
        limit: Duration,
    ) -> Result<UpstreamConn, MongoUpstreamError> {
        match address {
            Some(addr) => UpstreamConn::connect_to(&self.target, addr, limit).await,
            None => {
                let avoid = self.avoid.lock().clone();
                UpstreamConn::connect(&self.target, &avoid, limit).await
            }
        }
    }
}

impl Connector for MongoConnector {
    type Conn = UpstreamConn;
    type Error = Arc<MongoUpstreamError>;
    type Holder = String;

    async fn connect(&self, limit: Duration) -> Result<UpstreamConn, Arc<MongoUpstreamError>> {
        let limit = limit.max(Duration::from_millis(100));
        let address = self.address.lock().clone();
        let mut connected = self.connect_once(address.as_deref(), limit).await;
        // The replica-set monitor moved the pool to a new primary while this connection was
        // being opened: it goes to the former one, so open one to the new primary instead.
        if matches!(&connected, Ok(conn) if !self.wants(conn)) {
            tracing::debug!("primary changed while connecting; reconnecting");
            let address = self.address.lock().clone();
            connected = self.connect_once(address.as_deref(), limit).await;
        }
        connected.map_err(|e| {
            tracing::warn!(error = %e, "cannot open an upstream connection");
            Arc::new(e)
        })
    }

    fn is_transient(&self, _error: &Arc<MongoUpstreamError>) -> bool {
        // Reported at once: a request fails fast with a MongoDB error the driver retries.
        true
    }

    fn is_reusable(&self, conn: &UpstreamConn) -> bool {
        conn.is_reusable() && self.wants(conn)
    }

    fn ident(&self, conn: &UpstreamConn) -> i64 {
        i64::try_from(conn.id).unwrap_or_default()
    }

    fn opened(&self, conn: &UpstreamConn) {
        self.info.send_if_modified(|shown| shown.update(&conn.info));
        conn.addr.clone_into(&mut self.last_addr.lock());
        tracing::debug!(conn = conn.id, addr = %conn.addr, "upstream connection opened");
    }

    fn describe(&self, e: &Arc<MongoUpstreamError>) -> String {
        match &*self.address.lock() {
            Some(addr) if !e.to_string().contains(addr.as_str()) => format!("{addr}: {e}"),
            _ => e.to_string(),
        }
    }
}

/// The core's limits for these settings.
fn limits(max: usize, min: usize, timeout: Duration, connect_timeout: Duration) -> Limits {
    Limits {
        max_size: max,
        min_size: min.min(max),
        timeout,
        connect_timeout,
        ..Limits::default()
    }
}

struct Inner {
    core: sluice_pool::Pool<MongoConnector>,
    settings: PoolSettings,
    /// The member's role as of the latest heartbeat (the `role` metrics label).
    role: Mutex<&'static str>,
}

/// A cheap-to-clone handle on the pool.
#[derive(Clone)]
pub struct MongoPool {
    inner: Arc<Inner>,
}

impl MongoPool {
    /// A pool with no connections yet (see [`MongoPool::spawn_maintenance`]).
    pub fn new(settings: PoolSettings, target: Target) -> MongoPool {
        let connector = MongoConnector {
            target,
            address: Mutex::new(None),
            avoid: Mutex::new(Vec::new()),
            info: watch::Sender::new(Shown::default()),
            last_addr: Mutex::new(String::new()),
        };
        let l = limits(
            settings.max_size.max(1),
            settings.min_size,
            settings.timeout,
            settings.connect_timeout,
        );
        let core = sluice_pool::Pool::new(settings.name.clone(), connector, l);
        MongoPool {
            inner: Arc::new(Inner {
                core,
                settings,
                role: Mutex::new("primary"),
            }),
        }
    }

    /// Points the pool at one member (the replica-set monitor found the primary there, or
    /// this is a secondary's pool); idle connections to another address are closed. With
    /// `None` (no primary known) every idle connection is closed: they go to a server that
    /// is no longer known to be the primary, and new ones look for a writable seed.
    pub fn set_address(&self, address: Option<String>) {
        let core = &self.inner.core;
        *core.connector().address.lock() = address.clone();
        match address {
            Some(addr) => core.retain_idle(|c| c.addr == addr),
            None => core.retain_idle(|_| false),
        }
    }

    /// Seeds this pool must not take for the primary while none is known (stale
    /// primaries, by the replica-set monitor); idle connections to them are closed.
    pub fn avoid(&self, hosts: Vec<String>) {
        let core = &self.inner.core;
        if !hosts.is_empty() {
            core.retain_idle(|c| !hosts.contains(&c.addr));
        }
        *core.connector().avoid.lock() = hosts;
    }

    /// Records the role of the member this pool connects to (`primary` until told
    /// otherwise: the pool of writes), for the statistics.
    pub fn set_role(&self, role: &'static str) {
        *self.inner.role.lock() = role;
    }

    /// The member this pool connects to and its role: the address it is pointed at, or
    /// that of its latest connection.
    fn member(&self) -> MemberInfo {
        let connector = self.inner.core.connector();
        let pointed = connector.address.lock().clone();
        MemberInfo {
            address: pointed.unwrap_or_else(|| connector.last_addr.lock().clone()),
            role: (*self.inner.role.lock()).to_owned(),
        }
    }

    /// The settings the pool was created with.
    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// Applies new sizes and `pool_timeout` online (config reload). Growing takes effect at
    /// once; shrinking closes surplus idle connections now and surplus busy ones as they
    /// come back (no running request is disturbed). Returns the previous `max_pool_size`.
    pub fn resize(&self, max: usize, min: usize, timeout: Duration) -> usize {
        let core = &self.inner.core;
        let old = core.limits();
        let max = max.max(1);
        core.set_limits(limits(max, min, timeout, old.connect_timeout));
        tracing::info!(
            max_pool_size = max,
            min_pool_size = min,
            ?timeout,
            "mongo pool resized"
        );
        old.max_size
    }

    /// Counters shared with the statistics.
    pub fn counters(&self) -> &PoolCounters {
        self.inner.core.counters()
    }

    /// The upstream's wire versions and limits, if any connection was ever made.
    pub fn server_info(&self) -> Option<ServerInfo> {
        self.inner.core.connector().info.borrow().info.clone()
    }

    /// How many times the server info shown to clients changed: Sluice's
    /// `topologyVersion.counter`.
    pub fn info_changes(&self) -> i64 {
        self.inner.core.connector().info.borrow().changes
    }

    /// Wakes on every change of the server info shown to clients (an awaitable `hello`
    /// then answers at once).
    pub fn watch_info(&self) -> watch::Receiver<Shown> {
        self.inner.core.connector().info.subscribe()
    }

    /// `Ok` when the latest connect attempt (or live connection) succeeded.
    pub fn health(&self) -> Result<(), String> {
        self.inner.core.health()
    }

    /// Checks out a connection for `client` (its address, for statistics). Cancel-safe:
    /// dropping the future gives up its place in the queue at once.
    pub async fn checkout(&self, client: &str) -> Result<PooledConn, MongoPoolError> {
        let holder = Arc::new(client.to_owned());
        let core = &self.inner.core;
        match core.checkout(&holder).await {
            Ok(conn) => Ok(PooledConn { conn: Some(conn) }),
            Err(CheckoutError::Timeout { waited, .. }) => Err(MongoPoolError::Timeout {
                waited,
                max: core.limits().max_size,
            }),
            Err(CheckoutError::Connect(e)) => Err(MongoPoolError::Connect(e)),
            Err(CheckoutError::Closed) => Err(MongoPoolError::Closed),
        }
    }

    /// Starts the task that keeps `min_pool_size` connections open and drops idle ones the
    /// server closed, once a second, until [`MongoPool::close`].
    pub fn spawn_maintenance(&self) {
        self.inner.core.spawn_maintenance();
    }

    /// Whether [`MongoPool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.core.is_closed()
    }

    /// Closes idle connections and refuses new checkouts.
    pub fn close(&self) {
        self.inner.core.close();
    }
}

/// Changes a semaphore's capacity from `old` to `new` permits: growing at once, shrinking by
/// taking (in FIFO turn, like any other holder) and forgetting the surplus as holders return
/// permits, so no current holder is disturbed.
pub(crate) fn resize_semaphore(sem: &Arc<Semaphore>, old: usize, new: usize) {
    if new > old {
        sem.add_permits(new - old);
    } else if new < old {
        let sem = sem.clone();
        let surplus = old - new;
        tokio::spawn(async move {
            for _ in 0..surplus {
                match sem.clone().acquire_owned().await {
                    Ok(p) => p.forget(),
                    Err(_) => return,
                }
            }
        });
    }
}

impl PoolSource for MongoPool {
    fn snapshot(&self) -> PoolSnapshot {
        let occ = self.inner.core.occupancy();
        PoolSnapshot {
            name: self.inner.settings.name.clone(),
            database: "mongo".into(),
            user: self.inner.settings.user.clone(),
            mode: "request".into(),
            max: occ.max as u64,
            size: occ.size as u64,
            idle: occ.idle as u64,
            active: occ.active as u64,
            waiting: occ.waiting as u64,
            longest_wait_seconds: occ.longest_wait.as_secs_f64(),
            oldest_checkout: occ.oldest.map(|(age, client)| CheckoutInfo {
                client_addr: (*client).clone(),
                application_name: String::new(),
                age_seconds: age.as_secs_f64(),
            }),
            member: Some(self.member()),
            ..Default::default()
        }
        .with_counters(self.counters().snapshot())
    }

    fn health(&self) -> Option<Result<(), String>> {
        self.inner
            .settings
            .tracks_health
            .then(|| MongoPool::health(self))
    }
}

/// A checked-out connection; goes back to the pool on drop when it is still usable, and is
/// closed otherwise.
pub struct PooledConn {
    conn: Option<Pooled<MongoConnector>>,
}

impl PooledConn {
    /// Closes the connection instead of returning it (e.g. after an I/O error).
    pub fn discard(mut self) {
        if let Some(conn) = self.conn.take() {
            conn.discard();
        }
    }
}

impl Deref for PooledConn {
    type Target = UpstreamConn;

    fn deref(&self) -> &UpstreamConn {
        // `conn` is only taken in `discard` (which consumes self) and in `drop`.
        match &self.conn {
            Some(c) => c,
            None => unreachable!("connection present until drop"),
        }
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut UpstreamConn {
        match &mut self.conn {
            Some(c) => c,
            None => unreachable!("connection present until drop"),
        }
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if conn.pool().connector().is_reusable(&conn) {
                conn.checkin();
            } else {
                conn.discard();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_info_counts_changes_only() {
        let mut shown = Shown::default();
        let info = ServerInfo::default();
        assert!(shown.update(&info), "first reached");
        assert!(!shown.update(&info.clone()), "same again");
        let newer = ServerInfo {
            max_wire_version: info.max_wire_version + 1,
            ..info
        };
        assert!(shown.update(&newer));
        assert_eq!(shown.changes, 2);
    }
}
