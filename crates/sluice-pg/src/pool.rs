//! Bounded pools of upstream server connections, one per (database, user).
//!
//! A [`Pool`] is a cheap-to-clone handle. Checkout takes an idle connection (most recently
//! used first), opens a new one while the pool is below `pool_size`, or queues the caller
//! in arrival order; the whole checkout is bounded by `pool_timeout`. A returned connection
//! goes straight to the longest-waiting client. The lock is a `parking_lot::Mutex` that is
//! never held across an `.await`. A checked-out connection lives in a [`PooledConn`] guard:
//! dropping the guard without [`PooledConn::checkin`] closes the connection and frees its
//! slot, so a dying client task can never leak a slot or hand on a dirty server.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_stats::{CheckoutInfo, ErrorKind, PoolCounters, PoolSnapshot, PoolSource};

use parking_lot::Mutex;
use sluice_config::{PoolMode, Upstream};
use thiserror::Error;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::prepared::StatementRegistry;
use crate::upstream::{ServerConn, ServerParams, UpstreamError};

/// A server connection as the pool moves it around (boxed: cheap to move, and clients
/// that hold none carry no room for one).
type Conn = Box<ServerConn>;

/// Settings of one pool, resolved from the configuration.
#[derive(Clone)]
pub struct PoolSettings {
    /// Display name, `database/user`, used in errors and logs.
    pub name: String,
    /// Where and as whom to connect.
    pub upstream: Upstream,
    /// Most server connections this pool may hold.
    pub max_size: usize,
    /// Connections opened at start and kept open.
    pub min_size: usize,
    /// How long a client may wait for a connection.
    pub timeout: Duration,
    /// Bound on one connect + login.
    pub connect_timeout: Duration,
    /// Session or transaction pooling.
    pub mode: PoolMode,
    /// Query run before a used connection is reused (empty: none).
    pub reset_query: String,
    /// Per-server prepared statement cache size (0: no statement mapping).
    pub max_prepared_statements: usize,
    /// Close idle connections above `min_size` unused this long.
    pub server_idle_timeout: Option<Duration>,
    /// Close connections older than this (with up to 10% jitter).
    pub server_lifetime: Option<Duration>,
    /// Pause before retrying after the upstream refused a login.
    pub server_login_retry: Duration,
    /// TLS towards the upstream (`None`: sslmode disable).
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// libpq-style sslmode (prefer falls back to plaintext).
    pub sslmode: sluice_config::SslMode,
}

impl std::fmt::Debug for PoolSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSettings")
            .field("name", &self.name)
            .field("upstream", &self.upstream)
            .field("max_size", &self.max_size)
            .field("mode", &self.mode)
            .field("sslmode", &self.sslmode)
            .finish_non_exhaustive()
    }
}

/// Why a checkout failed.
#[derive(Debug, Error)]
pub enum PoolError {
    /// No connection became available within `pool_timeout`.
    #[error("timed out after {waited:?} waiting for a server connection from pool \"{pool}\" (pool_timeout {timeout:?})")]
    Timeout {
        /// Pool name.
        pool: String,
        /// How long the client waited.
        waited: Duration,
        /// The configured limit.
        timeout: Duration,
    },
    /// Opening a new server connection failed.
    #[error("pool \"{pool}\" could not connect to its upstream: {source}")]
    Connect {
        /// Pool name.
        pool: String,
        /// What went wrong.
        #[source]
        source: UpstreamError,
    },
    /// The pool is shutting down.
    #[error("pool \"{0}\" is closed")]
    Closed(String),
}

/// What a waiting client is handed. (Moved by value once per hand-off; boxing it would
/// cost an allocation per checkout.)
enum Grant {
    /// An idle connection, ready to use.
    Conn(Conn),
    /// Permission to open a connection in a freed slot.
    Slot,
}

/// Who holds a checked-out connection (for "oldest checkout" in the stats).
#[derive(Debug, Clone)]
pub struct ClientMeta {
    /// The client's address.
    pub addr: SocketAddr,
    /// Its application_name.
    pub application_name: String,
}

/// Checkout ids are unique counters: hashing them with SipHash (per checkout and checkin)
/// buys nothing, so the id is its own hash.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdHash = std::hash::BuildHasherDefault<IdHasher>;

#[derive(Default)]
struct State {
    idle: Vec<Conn>,
    /// Connections that exist or are being opened (idle + checked out + connecting).
    total: usize,
    /// Queued clients, oldest first, with when they started waiting.
    waiters: VecDeque<(Instant, oneshot::Sender<Grant>)>,
    /// Checked-out connections by checkout id: since when, by whom, backend pid.
    active: HashMap<u64, (Instant, Arc<ClientMeta>, i32), IdHash>,
    /// Clients held by PAUSE (they count as waiting), and since when the first of them.
    paused_waiting: usize,
    paused_since: Option<Instant>,
    next_id: u64,
    closed: bool,
}

/// Outcome of the latest connect attempts, for `/health` and `server_login_retry`.
#[derive(Debug, Default, Clone)]
struct Health {
    last_ok: Option<Instant>,
    last_error: Option<(Instant, String)>,
    /// After a refused login: no new attempt before this instant; the error clients get.
    login_blocked: Option<(Instant, UpstreamError)>,
    /// Consecutive refused logins (the retry pause doubles, up to 8×).
    refusals: u32,
}

struct Inner {
    /// Replaced whole by [`Pool::reconfigure`]; read through [`Pool::settings`].
    settings: parking_lot::RwLock<Arc<PoolSettings>>,
    /// `pool_size`, changeable by reload.
    max_size: AtomicUsize,
    /// `min_pool_size`, changeable by reload.
    min_size: AtomicUsize,
    /// `pool_timeout` in microseconds, changeable by reload.
    timeout_us: AtomicU64,
    counters: PoolCounters,
    health: Mutex<Health>,
    /// `PAUSE`: new checkouts wait (within `pool_timeout`) until `RESUME`.
    paused: std::sync::atomic::AtomicBool,
    resumed: tokio::sync::Notify,
    state: Mutex<State>,
    /// Startup parameters of the first server connection, replayed to clients at login.
    params: Mutex<Option<ServerParams>>,
    /// Prepared statements shared by this pool's clients.
    statements: StatementRegistry,
    /// Startup setting (name, value as a client sent it) → the value the server reports
    /// for it (`euc-jp` → `EUC_JP`), so a client is told at login what PostgreSQL would say.
    reported: Mutex<HashMap<StartupValue, Vec<u8>>>,
}

/// A startup setting as a client sent it: (lower-case name, value).
type StartupValue = (String, Vec<u8>);

/// Most distinct startup values whose reported form a pool remembers.
const REPORTED_CACHE_CAP: usize = 1024;

/// A handle to one pool; clones share it.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

enum Step {
    Ready(Conn),
    Connect,
    Wait(oneshot::Receiver<Grant>),
}

impl Pool {
    /// Creates an empty pool; call [`Pool::spawn_maintenance`] to keep `min_size` open.
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_size: AtomicUsize::new(settings.max_size),
                min_size: AtomicUsize::new(settings.min_size),
                timeout_us: AtomicU64::new(settings.timeout.as_micros() as u64),
                counters: PoolCounters::new(),
                health: Mutex::new(Health::default()),
                paused: std::sync::atomic::AtomicBool::new(false),
                resumed: tokio::sync::Notify::new(),
                settings: parking_lot::RwLock::new(Arc::new(settings)),
                state: Mutex::new(State::default()),
                params: Mutex::new(None),
                statements: StatementRegistry::default(),
                reported: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The pool's settings in force (the latest [`Pool::reconfigure`]; sizes and timeout
    /// as of the latest [`Pool::resize`] are read from the pool itself).
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.inner.settings.read().clone()
    }

    /// Applies reloaded settings: the next checkout, reset, connect and maintenance pass
    /// use them. The pool keeps its name, upstream, TLS and pooling mode.
    pub fn reconfigure(&self, new: PoolSettings) {
        let (max_size, min_size, timeout) = (new.max_size, new.min_size, new.timeout);
        {
            let mut current = self.inner.settings.write();
            let old = &**current;
            *current = Arc::new(PoolSettings {
                name: old.name.clone(),
                upstream: old.upstream.clone(),
                mode: old.mode,
                tls: old.tls.clone(),
                sslmode: old.sslmode,
                ..new
            });
        }
        self.resize(max_size, min_size, timeout);
    }

    /// Applies reloaded sizes and timeout; takes effect for the next checkout.
    pub fn resize(&self, max_size: usize, min_size: usize, timeout: Duration) {
        self.inner.max_size.store(max_size, Ordering::Relaxed);
        self.inner.min_size.store(min_size, Ordering::Relaxed);
        self.inner
            .timeout_us
            .store(timeout.as_micros() as u64, Ordering::Relaxed);
        // Waiters may now fit under a larger limit.
        let mut st = self.inner.state.lock();
        while st.total < max_size {
            let Some((_, tx)) = st.waiters.pop_front() else {
                break;
            };
            if tx.send(Grant::Slot).is_ok() {
                st.total += 1;
            }
        }
    }

    async fn wait_while_paused(&self, deadline: Instant) -> Result<(), ()> {
        while self.inner.paused.load(Ordering::Acquire) {
            let resumed = self.inner.resumed.notified();
            if !self.inner.paused.load(Ordering::Acquire) {
                break;
            }
            if tokio::time::timeout_at(deadline, resumed).await.is_err() {
                return Err(());
            }
        }
        Ok(())
    }

    /// `PAUSE`: holds new checkouts and waits until no connection is checked out.
    pub async fn pause(&self) {
        self.inner.paused.store(true, Ordering::Release);
        while !self.inner.state.lock().active.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `RESUME`: lets held checkouts proceed.
    pub fn resume(&self) {
        self.inner.paused.store(false, Ordering::Release);
        self.inner.resumed.notify_waiters();
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.inner.paused.load(Ordering::Acquire)
    }

    /// Server connections, for `SHOW SERVERS`: (backend pid, active?, age in seconds,
    /// holder's address if active).
    pub fn servers(&self) -> Vec<(i32, bool, f64, Option<SocketAddr>)> {
        let st = self.inner.state.lock();
        let idle = st
            .idle
            .iter()
            .map(|c| (c.cancel.pid, false, c.created.elapsed().as_secs_f64(), None));
        let active = st
            .active
            .values()
            .map(|(since, who, pid)| (*pid, true, since.elapsed().as_secs_f64(), Some(who.addr)));
        idle.chain(active).collect()
    }

    fn max_size(&self) -> usize {
        self.inner.max_size.load(Ordering::Relaxed)
    }

    fn timeout(&self) -> Duration {
        Duration::from_micros(self.inner.timeout_us.load(Ordering::Relaxed))
    }

    /// The pool's counters (sessions add queries, transactions and bytes).
    pub fn counters(&self) -> &PoolCounters {
        &self.inner.counters
    }

    /// Whether the upstream is reachable, judged from the latest connect attempts and
    /// live connections: `Err(reason)` when the latest attempt failed.
    pub fn health(&self) -> Result<(), String> {
        let h = self.inner.health.lock().clone();
        match (h.last_ok, h.last_error) {
            (_, None) => Ok(()),
            (Some(ok), Some((err, _))) if ok > err => Ok(()),
            (_, Some((_, reason))) => Err(reason),
        }
    }

    /// The cached login error while `server_login_retry` has not run out.
    fn login_blocked(&self) -> Option<UpstreamError> {
        let h = self.inner.health.lock();
        match &h.login_blocked {
            Some((until, e)) if Instant::now() < *until => Some(e.clone()),
            _ => None,
        }
    }

    fn block_logins(&self, e: &UpstreamError) {
        let mut h = self.inner.health.lock();
        let factor = 1u32 << h.refusals.min(3);
        h.refusals += 1;
        let settings = self.settings();
        let pause = settings.server_login_retry * factor;
        h.login_blocked = Some((Instant::now() + pause, e.clone()));
        tracing::warn!(pool = %settings.name, ?pause, "upstream refused the login; pausing new attempts");
    }

    fn set_lifetime(&self, conn: &mut ServerConn) {
        if let Some(l) = self.settings().server_lifetime {
            let jitter = 1.0 - rand::random::<f64>() * 0.1;
            conn.expires = Some(conn.created + l.mul_f64(jitter));
        }
    }

    fn record_connect(&self, result: Result<(), String>) {
        let mut h = self.inner.health.lock();
        match result {
            Ok(()) => {
                h.last_ok = Some(Instant::now());
                h.login_blocked = None;
                h.refusals = 0;
                self.inner.counters.inc_server_connects();
            }
            Err(e) => {
                h.last_error = Some((Instant::now(), e));
                self.inner.counters.inc_error(ErrorKind::Connect);
            }
        }
    }

    /// The prepared statements shared by this pool's clients.
    pub fn statements(&self) -> &StatementRegistry {
        &self.inner.statements
    }

    /// Checks out an idle connection without waiting, when one is ready: the common case,
    /// done under one lock with one clock read and no future. `None`: call
    /// [`Pool::checkout`].
    pub fn try_checkout(&self, who: &Arc<ClientMeta>) -> Option<PooledConn> {
        let now = Instant::now();
        let (conn, id) = {
            let mut st = self.inner.state.lock();
            // `paused` is read under the state lock: PAUSE sets it before it checks
            // `active` under this lock, so either it sees this checkout or we see it.
            if st.closed || !st.waiters.is_empty() || self.inner.paused.load(Ordering::Acquire) {
                return None;
            }
            let conn = st.idle.pop()?;
            if !conn.looks_alive() {
                // Let the slow path drop it and open a new one in its slot.
                st.idle.push(conn);
                return None;
            }
            st.next_id += 1;
            let id = st.next_id;
            st.active.insert(id, (now, who.clone(), conn.cancel.pid));
            (conn, id)
        };
        let counters = &self.inner.counters;
        counters.record_checkout_wait(Duration::ZERO);
        counters.inc_checkouts();
        Some(PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            id,
        })
    }

    /// Checks a connection out, waiting in line at most `pool_timeout`.
    pub async fn checkout(&self, who: &Arc<ClientMeta>) -> Result<PooledConn, PoolError> {
        let start = Instant::now();
        let result = self.checkout_inner(start).await;
        let counters = &self.inner.counters;
        match result {
            Ok(conn) => {
                counters.record_checkout_wait(start.elapsed());
                counters.inc_checkouts();
                let id = {
                    let mut st = self.inner.state.lock();
                    st.next_id += 1;
                    let id = st.next_id;
                    st.active
                        .insert(id, (Instant::now(), who.clone(), conn.cancel.pid));
                    id
                };
                Ok(PooledConn {
                    conn: Some(conn),
                    pool: self.clone(),
                    id,
                })
            }
            Err(e) => {
                if matches!(e, PoolError::Timeout { .. }) {
                    counters.inc_error(ErrorKind::Timeout);
                }
                Err(e)
            }
        }
    }

    async fn checkout_inner(&self, start: Instant) -> Result<Conn, PoolError> {
        let deadline = start + self.timeout();
        if self.inner.paused.load(Ordering::Acquire) {
            {
                let mut st = self.inner.state.lock();
                st.paused_waiting += 1;
                st.paused_since.get_or_insert(start);
            }
            let held = self.wait_while_paused(deadline).await;
            {
                let mut st = self.inner.state.lock();
                st.paused_waiting -= 1;
                if st.paused_waiting == 0 {
                    st.paused_since = None;
                }
            }
            if held.is_err() {
                return Err(self.timeout_error(start));
            }
        }
        let conn = match self.next_step() {
            Step::Ready(conn) => conn,
            Step::Connect => self.connect_in_slot(deadline, start).await?,
            Step::Wait(mut rx) => match tokio::time::timeout_at(deadline, &mut rx).await {
                Ok(Ok(Grant::Conn(conn))) => conn,
                Ok(Ok(Grant::Slot)) => self.connect_in_slot(deadline, start).await?,
                Ok(Err(_)) => return Err(PoolError::Closed(self.name())),
                Err(_) => {
                    rx.close();
                    if let Ok(grant) = rx.try_recv() {
                        self.give_back(grant);
                    }
                    // Leave the queue at once, so nobody counts a client that gave up.
                    self.inner
                        .state
                        .lock()
                        .waiters
                        .retain(|(_, tx)| !tx.is_closed());
                    return Err(self.timeout_error(start));
                }
            },
        };
        let conn = if conn.looks_alive() {
            conn
        } else {
            // A stale idle connection (server restarted or closed it): drop it and open a
            // new one in the same slot.
            tracing::debug!(pool = %self.name(), "dropping dead idle server connection");
            drop(conn);
            self.connect_in_slot(deadline, start).await?
        };
        Ok(conn)
    }

    fn next_step(&self) -> Step {
        let mut st = self.inner.state.lock();
        if st.closed {
            let (tx, rx) = oneshot::channel();
            drop(tx);
            return Step::Wait(rx);
        }
        if let Some(conn) = st.idle.pop() {
            return Step::Ready(conn);
        }
        if st.total < self.max_size() {
            st.total += 1;
            return Step::Connect;
        }
        let (tx, rx) = oneshot::channel();
        st.waiters.push_back((Instant::now(), tx));
        Step::Wait(rx)
    }

    /// Opens a connection in a slot already counted in `total`, retrying transient
    /// failures (upstream restarting) until the deadline. Frees the slot on failure.
    async fn connect_in_slot(&self, deadline: Instant, start: Instant) -> Result<Conn, PoolError> {
        let s = self.settings();
        let mut backoff = Duration::from_millis(50);
        if let Some(e) = self.login_blocked() {
            self.free_slot();
            return Err(PoolError::Connect {
                pool: s.name.clone(),
                source: e,
            });
        }
        loop {
            let attempt = tokio::time::timeout_at(
                deadline,
                Box::pin(ServerConn::connect(
                    &s.upstream,
                    s.connect_timeout,
                    s.tls.as_ref(),
                    s.sslmode,
                )),
            )
            .await;
            match attempt {
                Ok(Ok(mut conn)) => {
                    self.remember_params(&conn);
                    self.record_connect(Ok(()));
                    self.set_lifetime(&mut conn);
                    return Ok(Box::new(conn));
                }
                Ok(Err(e)) if e.is_transient() && Instant::now() + backoff < deadline => {
                    self.record_connect(Err(e.to_string()));
                    tracing::warn!(pool = %s.name, error = %e, "upstream connect failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Ok(Err(e)) => {
                    self.free_slot();
                    self.record_connect(Err(e.to_string()));
                    if !e.is_transient() {
                        self.block_logins(&e);
                    }
                    tracing::warn!(pool = %s.name, error = %e, "upstream connect failed");
                    return Err(PoolError::Connect {
                        pool: s.name.clone(),
                        source: e,
                    });
                }
                Err(_) => {
                    self.free_slot();
                    return Err(self.timeout_error(start));
                }
            }
        }
    }

    fn timeout_error(&self, start: Instant) -> PoolError {
        PoolError::Timeout {
            pool: self.name(),
            waited: start.elapsed(),
            timeout: self.timeout(),
        }
    }

    fn name(&self) -> String {
        self.settings().name.clone()
    }

    fn remember_params(&self, conn: &ServerConn) {
        let mut p = self.inner.params.lock();
        if p.is_none() {
            *p = Some(conn.params.clone());
        }
    }

    /// Startup parameters to show clients; opens (and returns) a connection the first
    /// time if no server has been seen yet.
    pub async fn server_params(&self, who: &Arc<ClientMeta>) -> Result<ServerParams, PoolError> {
        if let Some(p) = self.inner.params.lock().clone() {
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

    /// Returns a connection (or a slot) that a timed-out waiter received too late.
    fn give_back(&self, grant: Grant) {
        match grant {
            Grant::Conn(conn) => self.checkin_conn(conn),
            Grant::Slot => self.free_slot(),
        }
    }

    /// Puts a clean connection back: to the longest waiter, else onto the idle stack.
    fn checkin_conn(&self, conn: Conn) {
        let st = self.inner.state.lock();
        self.checkin_locked(st, conn);
    }

    /// [`Pool::checkin_conn`] with the state already locked (one lock per checkin).
    fn checkin_locked(&self, mut st: parking_lot::MutexGuard<'_, State>, conn: Conn) {
        let now = Instant::now();
        let expired = conn.expires.is_some_and(|t| now >= t);
        if st.closed || expired {
            drop(st);
            if expired {
                tracing::debug!(pool = %self.settings().name, "server_lifetime reached; closing");
            }
            self.free_slot();
            return;
        }
        let mut conn = conn;
        conn.idle_since = now;
        while let Some((_, tx)) = st.waiters.pop_front() {
            match tx.send(Grant::Conn(conn)) {
                Ok(()) => return,
                Err(Grant::Conn(c)) => conn = c,
                Err(Grant::Slot) => unreachable!("sent a connection"),
            }
        }
        st.idle.push(conn);
    }

    /// Forgets a connection slot (connection closed or never opened); a waiter, if any,
    /// gets the right to open a new one.
    fn free_slot(&self) {
        let mut st = self.inner.state.lock();
        while let Some((_, tx)) = st.waiters.pop_front() {
            if tx.send(Grant::Slot).is_ok() {
                return;
            }
        }
        st.total = st.total.saturating_sub(1);
    }

    /// Keeps at least `min_size` connections open until the pool is closed.
    pub fn spawn_maintenance(&self) {
        let pool = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                let want = {
                    let mut st = pool.inner.state.lock();
                    if st.closed {
                        return;
                    }
                    // Drop idle connections the server closed (restart, idle timeout), so
                    // min_pool_size is refilled and /health learns the upstream is gone.
                    let before = st.idle.len();
                    let now = Instant::now();
                    let min = pool.inner.min_size.load(Ordering::Relaxed);
                    let idle_limit = pool.settings().server_idle_timeout;
                    // Oldest-idle first are at the front (the stack pops from the back).
                    let mut spare = st.total.saturating_sub(min);
                    st.idle.retain(|c| {
                        let expired = c.expires.is_some_and(|t| now >= t);
                        let idle_too_long = idle_limit.is_some_and(|l| now - c.idle_since >= l);
                        let close = (expired || idle_too_long) && spare > 0;
                        if close {
                            spare -= 1;
                        }
                        !close && c.looks_alive()
                    });
                    let dead = before - st.idle.len();
                    if dead > 0 {
                        st.total -= dead;
                        tracing::debug!(pool = %pool.settings().name, closed = dead, "closed dead, expired or long-idle server connections");
                    }
                    // Below min_pool_size, or nothing open and no recent proof that the
                    // upstream is reachable (keeps /health honest without a probe per request).
                    let stale = pool
                        .inner
                        .health
                        .lock()
                        .last_ok
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(15));
                    let want = st.total < pool.inner.min_size.load(Ordering::Relaxed)
                        || (st.total == 0 && stale && st.waiters.is_empty());
                    if want {
                        st.total += 1;
                    }
                    want
                };
                if !want {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                let s = pool.settings();
                if pool.login_blocked().is_some() {
                    pool.free_slot();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                match Box::pin(ServerConn::connect(
                    &s.upstream,
                    s.connect_timeout,
                    s.tls.as_ref(),
                    s.sslmode,
                ))
                .await
                {
                    Ok(mut conn) => {
                        pool.remember_params(&conn);
                        pool.record_connect(Ok(()));
                        pool.set_lifetime(&mut conn);
                        pool.checkin_conn(Box::new(conn));
                        backoff = Duration::from_millis(500);
                    }
                    Err(e) => {
                        pool.free_slot();
                        pool.record_connect(Err(e.to_string()));
                        if !e.is_transient() {
                            pool.block_logins(&e);
                        }
                        tracing::warn!(pool = %s.name, error = %e, "could not open min_pool_size connection");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        });
    }

    /// Closes the pool: idle connections are dropped, waiters fail, returned connections
    /// are closed.
    pub fn close(&self) {
        let mut st = self.inner.state.lock();
        st.closed = true;
        let idle = std::mem::take(&mut st.idle);
        st.total -= idle.len();
        st.waiters.clear();
    }
}

/// A checked-out server connection. Dropping it closes the connection; call
/// [`PooledConn::checkin`] to return it when it is clean.
pub struct PooledConn {
    conn: Option<Conn>,
    pool: Pool,
    /// Key in the pool's table of active checkouts.
    id: u64,
}

impl PooledConn {
    /// Returns a clean connection (at ReadyForQuery `I`, reset as the mode requires).
    pub fn checkin(mut self) {
        if let Some(conn) = self.conn.take() {
            let mut st = self.pool.inner.state.lock();
            st.active.remove(&self.id);
            self.pool.checkin_locked(st, conn);
        }
    }

    /// The pool this connection belongs to.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.pool.inner.state.lock().active.remove(&self.id);
            self.pool.free_slot();
        }
    }
}

impl PoolSource for Pool {
    fn snapshot(&self) -> PoolSnapshot {
        let s = self.settings();
        let (database, user) = s.name.split_once('/').unwrap_or((&s.name, ""));
        let (size, idle, active, waiting, longest_wait, oldest) = {
            let st = self.inner.state.lock();
            let oldest =
                st.active
                    .values()
                    .min_by_key(|(since, _, _)| *since)
                    .map(|(since, who, _)| CheckoutInfo {
                        client_addr: who.addr.to_string(),
                        application_name: who.application_name.clone(),
                        age_seconds: since.elapsed().as_secs_f64(),
                    });
            // Only waiters still listening count (a client whose wait was cancelled has
            // dropped its receiver, even before a checkin prunes the queue); clients held by
            // PAUSE wait too.
            let mut live = st.waiters.iter().filter(|(_, tx)| !tx.is_closed());
            let waiting = live.clone().count();
            let longest = live
                .next()
                .map(|(t, _)| *t)
                .into_iter()
                .chain(st.paused_since)
                .min()
                .map(|t| t.elapsed().as_secs_f64())
                .unwrap_or(0.0);
            (
                st.total,
                st.idle.len(),
                st.active.len(),
                waiting + st.paused_waiting,
                longest,
                oldest,
            )
        };
        PoolSnapshot {
            name: s.name.clone(),
            database: database.to_owned(),
            user: user.to_owned(),
            mode: s.mode.to_string(),
            max: self.max_size() as u64,
            size: size as u64,
            idle: idle as u64,
            active: active as u64,
            waiting: waiting as u64,
            longest_wait_seconds: longest_wait,
            oldest_checkout: oldest,
            ..PoolSnapshot::default()
        }
        .with_counters(self.inner.counters.snapshot())
    }
}

impl Deref for PooledConn {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        // Invariant: `conn` is only taken in `checkin` (which consumes self) and `drop`.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("connection present until checkin"))
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("connection present until checkin"))
    }
}
