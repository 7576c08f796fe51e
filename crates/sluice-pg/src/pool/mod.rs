//! The Postgres side's pools, one per (database, user), over the shared pool core
//! ([`sluice_pool`]).
//!
//! This module supplies what is Postgres-specific: how a server connection is opened
//! ([`PgConnector`]), the settings a pool is built from, the prepared statements and
//! reported startup values its clients share, and how the pool reads in statistics. Slots,
//! the FIFO queue, PAUSE, timeouts and maintenance live in the core. A checked-out
//! connection lives in a [`PooledConn`]: dropping it without [`PooledConn::checkin`] closes
//! the connection and frees its slot, so a dying client task never leaks a slot or hands on
//! a dirty server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use sluice_pool::{CheckoutError, Limits, Pooled};
use sluice_stats::{CheckoutInfo, PoolCounters, PoolSnapshot, PoolSource};

mod connector;
mod error;
mod hub;
mod pins;
mod settings;

pub use connector::PgConnector;
pub use error::PgPoolError;
pub use pins::PinSlot;
pub use settings::PoolSettings;

use crate::state::prepared::StatementRegistry;
use crate::upstream::{ServerConn, ServerParams, UpstreamSecret};

/// Says which host a pool connects to and what it is now (see [`PgPool::set_member`]).
pub type MemberSource = Box<dyn Fn() -> Option<sluice_stats::MemberInfo> + Send + Sync>;

/// Who holds a checked-out connection (for "oldest checkout" in the stats).
#[derive(Debug, Clone)]
pub struct ClientMeta {
    /// The client's address.
    pub addr: SocketAddr,
    /// Its application_name (a boxed str: 8 bytes less than a `String` in every client's
    /// metadata, which then fits jemalloc's 64-byte class).
    pub application_name: Box<str>,
}

/// A startup setting as a client sent it: (lower-case name, value).
type StartupValue = (String, Vec<u8>);

/// Most distinct startup values whose reported form a pool remembers.
const REPORTED_CACHE_CAP: usize = 1024;

struct Inner {
    core: sluice_pool::Pool<PgConnector>,
    /// The settings in force (reload swaps them).
    settings: RwLock<Arc<PoolSettings>>,
    /// Prepared statements shared by this pool's clients (and by the pools of the same
    /// user on the other hosts of a multi-host database, so names never clash).
    statements: Arc<StatementRegistry>,
    /// Startup setting (name, value as a client sent it) → the value the server reports
    /// for it (`euc-jp` → `EUC_JP`), so a client is told at login what PostgreSQL would say.
    reported: Mutex<HashMap<StartupValue, Vec<u8>>>,
    /// LISTEN/NOTIFY for this pool's clients in transaction mode.
    notify: crate::notify::NotifyHub,
    /// Closed (reload removed its database, or shutdown).
    closed: std::sync::atomic::AtomicBool,
    /// What servers are logged in with (the connector's, shared).
    secret: Arc<RwLock<UpstreamSecret>>,
    /// Clients pinning a server (transaction mode), by pin id.
    pins: Mutex<(u64, std::collections::BTreeMap<u64, pins::PinRecord>)>,
    /// The host of a multi-host database this pool connects to, and its role now (the
    /// `member` and `role` labels of its series); set once, by the database.
    member: std::sync::OnceLock<MemberSource>,
}

/// A handle to one pool; clones share it.
#[derive(Clone)]
pub struct PgPool {
    inner: Arc<Inner>,
}

/// The core's limits for these settings.
fn limits(s: &PoolSettings) -> Limits {
    Limits {
        max_size: s.max_size,
        min_size: s.min_size,
        timeout: s.timeout,
        connect_timeout: s.connect_timeout,
        idle_timeout: s.server_idle_timeout,
        lifetime: s.server_lifetime,
        login_retry: s.server_login_retry,
        retry_transient: s.retry_connect,
        probe_when_empty: true,
        reserve_size: s.reserve_size,
        reserve_timeout: s.reserve_timeout,
    }
}

impl PgPool {
    /// Creates an empty pool that logs in with the upstream URL's password; call
    /// [`PgPool::spawn_maintenance`] to keep `min_size` open.
    pub fn new(settings: PoolSettings) -> Self {
        let secret = UpstreamSecret::of(&settings.upstream);
        Self::with_secret(settings, secret, Vec::new())
    }

    /// Creates an empty pool that logs in with `secret`, its connections also counted
    /// against `budgets` (`max_db_connections`, `max_user_connections`).
    pub fn with_secret(
        settings: PoolSettings,
        secret: UpstreamSecret,
        budgets: Vec<Arc<sluice_pool::Budget>>,
    ) -> Self {
        let secret = Arc::new(RwLock::new(secret));
        Self::build(settings, secret, budgets, Arc::default())
    }

    /// A pool of the same user on another host (`settings` names it): it shares this
    /// pool's login secret and statement registry, and counts against `budgets`.
    pub fn sibling(&self, settings: PoolSettings, budgets: Vec<Arc<sluice_pool::Budget>>) -> Self {
        Self::build(
            settings,
            self.inner.secret.clone(),
            budgets,
            self.inner.statements.clone(),
        )
    }

    /// Names the host this pool connects to in its statistics (a database with several
    /// hosts); only the first call counts.
    pub fn set_member(&self, source: MemberSource) {
        let _ = self.inner.member.set(source);
    }

    /// Server connections in use or waited for now (how busy this pool is).
    pub fn busy(&self) -> u64 {
        let occ = self.inner.core.occupancy();
        (occ.active + occ.waiting) as u64
    }

    fn build(
        settings: PoolSettings,
        secret: Arc<RwLock<UpstreamSecret>>,
        budgets: Vec<Arc<sluice_pool::Budget>>,
        statements: Arc<StatementRegistry>,
    ) -> Self {
        let connector = PgConnector {
            secret: secret.clone(),
            upstream: settings.upstream.clone(),
            tls: settings.tls.clone(),
            sslmode: settings.sslmode,
            params: Mutex::new(None),
        };
        let core = sluice_pool::Pool::with_budgets(
            settings.name.clone(),
            connector,
            limits(&settings),
            budgets,
        );
        Self {
            inner: Arc::new(Inner {
                core,
                settings: RwLock::new(Arc::new(settings)),
                statements,
                reported: Mutex::new(HashMap::new()),
                notify: crate::notify::NotifyHub::default(),
                secret,
                closed: Default::default(),
                pins: Mutex::new((0, Default::default())),
                member: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Whether `other` is a handle on this same pool.
    pub fn same(&self, other: &PgPool) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// What new server connections log in with.
    pub fn secret(&self) -> UpstreamSecret {
        self.inner.secret.read().clone()
    }

    /// Replaces what new server connections log in with (a client's SCRAM login
    /// revealed fresh keys, or its secret changed); open connections stay.
    pub fn set_secret(&self, secret: UpstreamSecret) {
        *self.inner.secret.write() = secret;
    }

    /// The pool's LISTEN/NOTIFY hub (transaction mode).
    pub fn notify_hub(&self) -> &crate::notify::NotifyHub {
        &self.inner.notify
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.inner.settings.read().clone()
    }

    /// Applies reloaded settings: sizes, timeouts, lifetimes and the reset query take
    /// effect for the next checkout. The name, upstream, TLS and mode stay as they were
    /// (changing them needs a restart).
    pub fn reconfigure(&self, new: PoolSettings) {
        let mut s = self.inner.settings.write();
        let merged = PoolSettings {
            name: s.name.clone(),
            upstream: s.upstream.clone(),
            mode: s.mode,
            tls: s.tls.clone(),
            sslmode: s.sslmode,
            retry_connect: s.retry_connect,
            ..new
        };
        self.inner.core.set_limits(limits(&merged));
        *s = Arc::new(merged);
    }

    /// Whether a refused or reset connect is retried until `pool_timeout` (the primary, or
    /// a host whose role is not known yet) or fails at once so the transaction can go to
    /// another host (a replica). Set by the host's role; takes effect for the next connect.
    pub fn set_retry_connect(&self, retry: bool) {
        let mut s = self.inner.settings.write();
        if s.retry_connect == retry {
            return;
        }
        let mut changed = (**s).clone();
        changed.retry_connect = retry;
        self.inner.core.set_limits(limits(&changed));
        *s = Arc::new(changed);
    }

    /// Applies reloaded sizes and timeout; takes effect for the next checkout.
    pub fn resize(&self, max_size: usize, min_size: usize, timeout: Duration) {
        let current = (*self.settings()).clone();
        self.reconfigure(PoolSettings {
            max_size,
            min_size,
            timeout,
            ..current
        });
    }

    /// `PAUSE`: holds new checkouts and waits until no connection is checked out, at most
    /// `pool_timeout` (clients held longer would time out anyway). When that runs out the
    /// pause is undone and the clients still holding a connection are returned.
    pub async fn pause(&self) -> Result<(), Vec<Arc<ClientMeta>>> {
        let bound = self.settings().timeout;
        self.inner.core.pause(bound).await
    }

    /// `RESUME`: lets held checkouts proceed.
    pub fn resume(&self) {
        self.inner.core.resume();
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.inner.core.is_paused()
    }

    /// Server connections, for `SHOW SERVERS`: (backend pid, active?, age in seconds,
    /// holder's address if active).
    pub fn servers(&self) -> Vec<(i32, bool, f64, Option<SocketAddr>)> {
        self.inner
            .core
            .conns()
            .into_iter()
            .map(|c| {
                let pid = i32::try_from(c.ident).unwrap_or_default();
                let addr = c.holder.as_ref().map(|h| h.addr);
                (pid, addr.is_some(), c.age.as_secs_f64(), addr)
            })
            .collect()
    }

    /// The pool's counters (sessions add queries, transactions and bytes).
    pub fn counters(&self) -> &PoolCounters {
        self.inner.core.counters()
    }

    /// Whether the upstream is reachable, judged from the latest connect attempts:
    /// `Err(reason)` when the latest attempt failed.
    pub fn health(&self) -> Result<(), String> {
        self.inner.core.health()
    }

    /// The prepared statements shared by this pool's clients.
    pub fn statements(&self) -> &StatementRegistry {
        &self.inner.statements
    }

    /// Checks out an idle connection without waiting, when one is ready: the common case,
    /// done under one lock with one clock read and no future. `None`: call
    /// [`PgPool::checkout`].
    pub fn try_checkout(&self, who: &Arc<ClientMeta>) -> Option<PooledConn> {
        self.inner
            .core
            .try_checkout(who)
            .map(|conn| PooledConn { conn })
    }

    /// Checks a connection out, waiting in line at most `pool_timeout`. Cancel-safe:
    /// dropping the future (the client left, shutdown began) gives up its place at once.
    pub async fn checkout(&self, who: &Arc<ClientMeta>) -> Result<PooledConn, PgPoolError> {
        match self.inner.core.checkout(who).await {
            Ok(conn) => Ok(PooledConn { conn }),
            Err(CheckoutError::Timeout { waited, timeout }) => Err(PgPoolError::Timeout {
                pool: self.name(),
                waited,
                timeout,
            }),
            Err(CheckoutError::Connect(source)) => Err(PgPoolError::Connect {
                pool: self.name(),
                source,
            }),
            Err(CheckoutError::Closed) => Err(PgPoolError::Closed(self.name())),
        }
    }

    fn name(&self) -> String {
        self.inner.core.name().to_owned()
    }

    /// Startup parameters to show clients; opens (and returns) a connection the first
    /// time if no server has been seen yet.
    pub async fn server_params(&self, who: &Arc<ClientMeta>) -> Result<ServerParams, PgPoolError> {
        if let Some(p) = self.inner.core.connector().params.lock().clone() {
            return Ok(p);
        }
        let conn = self.checkout(who).await?;
        let params = conn.params.clone();
        conn.checkin();
        Ok(params)
    }

    /// The reported form of a startup setting, if a server already told this pool.
    pub fn reported_value(&self, name: &str, value: &[u8]) -> Option<Vec<u8>> {
        self.inner
            .reported
            .lock()
            .get(&(name.to_owned(), value.to_vec()))
            .cloned()
    }

    /// Remembers the reported form of a startup setting (a bounded cache: when full, it
    /// starts over, which costs one more lookup per distinct value).
    pub fn remember_reported(&self, name: &str, value: &[u8], reported: Vec<u8>) {
        let mut cache = self.inner.reported.lock();
        if cache.len() >= REPORTED_CACHE_CAP {
            cache.clear();
        }
        cache.insert((name.to_owned(), value.to_vec()), reported);
    }

    /// Keeps at least `min_size` connections open until the pool is closed.
    pub fn spawn_maintenance(&self) {
        self.inner.core.spawn_maintenance();
    }

    /// Closes the pool: idle connections are dropped, waiters fail, returned connections
    /// are closed.
    pub fn close(&self) {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.core.close();
    }

    /// Closes every idle server connection now (the console's KILL).
    pub fn close_idle(&self) {
        self.inner.core.retain_idle(|_| false);
    }

    /// Whether [`PgPool::close`] was called (a lock-free read, for session-mode clients).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A checked-out server connection. Dropping it closes the connection; call
/// [`PooledConn::checkin`] to return it when it is clean.
pub struct PooledConn {
    conn: Pooled<PgConnector>,
}

impl PooledConn {
    /// Returns a clean connection (at ReadyForQuery `I`, reset as the mode requires).
    pub fn checkin(self) {
        self.conn.checkin();
    }

    /// Whether it was returned to the pool and sat idle at least `delay` before this
    /// checkout (a connection opened for it never was).
    pub fn idle_at_least(&self, delay: Duration) -> bool {
        self.conn.idle_since().is_some_and(|t| t.elapsed() >= delay)
    }
}

impl Deref for PooledConn {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        &self.conn
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut ServerConn {
        &mut self.conn
    }
}

impl PoolSource for PgPool {
    fn snapshot(&self) -> PoolSnapshot {
        let s = self.settings();
        let (database, user) = s.name.split_once('/').unwrap_or((&s.name, ""));
        let occ = self.inner.core.occupancy();
        PoolSnapshot {
            name: s.name.clone(),
            database: database.to_owned(),
            user: user.to_owned(),
            mode: s.mode.to_string(),
            max: occ.max as u64,
            size: occ.size as u64,
            idle: occ.idle as u64,
            active: occ.active as u64,
            waiting: occ.waiting as u64,
            longest_wait_seconds: occ.longest_wait.as_secs_f64(),
            oldest_checkout: occ.oldest.map(|(age, who)| CheckoutInfo {
                client_addr: who.addr.to_string(),
                application_name: who.application_name.to_string(),
                age_seconds: age.as_secs_f64(),
            }),
            prepared_statements: self.inner.statements.len() as u64,
            pinned: self.pinned_clients(),
            member: self.inner.member.get().and_then(|m| m()),
            notify: self
                .inner
                .notify
                .snapshot(self.counters().listen_reconnects()),
            ..PoolSnapshot::default()
        }
        .with_counters(self.counters().snapshot())
    }
}
