//! The bounded pool of upstream connections. A request checks a connection out for one
//! round trip (or a transaction holds it, see [`crate::pins`]).
//!
//! Bounds: a fair (FIFO) semaphore of `max_pool_size` permits; a permit is held by every
//! checked-out connection and by every connection being opened, and a new connection is
//! opened only when no idle one exists, so open connections never exceed `max_pool_size`.
//! The whole checkout (queueing and connecting) runs under one `pool_timeout`.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_stats::{CheckoutInfo, ErrorKind, PoolCounters, PoolSnapshot, PoolSource};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::upstream::{ServerInfo, Target, UpstreamConn, UpstreamError};

/// Sizes and timeouts of the pool (at creation: [`Pool::resize`] changes the first three).
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
pub enum PoolError {
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
    Connect(#[source] UpstreamError),
    /// The pool is shut down.
    #[error("the pool is closed")]
    Closed,
}

struct Inner {
    settings: PoolSettings,
    /// Current `max_pool_size`, `min_pool_size` and `pool_timeout` (reloadable).
    max_size: AtomicUsize,
    min_size: AtomicUsize,
    timeout: Mutex<Duration>,
    target: Target,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<UpstreamConn>>,
    /// Open connections (idle + checked out).
    open: AtomicUsize,
    /// Connections checked out.
    active: AtomicUsize,
    /// Queued requests by ticket, with their start, for `longest_wait_seconds`.
    waiters: Mutex<BTreeMap<u64, Instant>>,
    /// Checked-out connections by ticket: since when and for which client.
    checkouts: Mutex<HashMap<u64, (Instant, String)>>,
    next_ticket: AtomicU64,
    counters: PoolCounters,
    /// The latest connect outcome, for `/health`.
    health: Mutex<Result<(), String>>,
    /// The upstream's wire versions and limits, once known.
    info: Mutex<Option<ServerInfo>>,
    closed: AtomicBool,
    /// The member this pool connects to; `None`: the first writable primary among the
    /// seeds. Connections to any other address are closed instead of reused.
    address: Mutex<Option<String>>,
}

impl Inner {
    /// Whether `conn` goes to the member this pool is pointed at.
    fn wants(&self, conn: &UpstreamConn) -> bool {
        self.address.lock().as_ref().is_none_or(|a| *a == conn.addr)
    }
}

/// A cheap-to-clone handle on the pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// A pool with no connections yet (see [`Pool::spawn_maintenance`]).
    pub fn new(settings: PoolSettings, target: Target) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(settings.max_size)),
                max_size: AtomicUsize::new(settings.max_size),
                min_size: AtomicUsize::new(settings.min_size),
                timeout: Mutex::new(settings.timeout),
                settings,
                target,
                idle: Mutex::new(Vec::new()),
                open: AtomicUsize::new(0),
                active: AtomicUsize::new(0),
                waiters: Mutex::new(BTreeMap::new()),
                checkouts: Mutex::new(HashMap::new()),
                next_ticket: AtomicU64::new(1),
                counters: PoolCounters::new(),
                health: Mutex::new(Ok(())),
                info: Mutex::new(None),
                closed: AtomicBool::new(false),
                address: Mutex::new(None),
            }),
        }
    }

    /// Points the pool at one member (the replica-set monitor found the primary there, or
    /// this is a secondary's pool); idle connections to another address are closed. With
    /// `None` (no primary known) every idle connection is closed: they go to a server that
    /// is no longer known to be the primary, and new ones look for a writable seed.
    pub fn set_address(&self, address: Option<String>) {
        let inner = &self.inner;
        *inner.address.lock() = address.clone();
        let mut idle = inner.idle.lock();
        let before = idle.len();
        match &address {
            Some(addr) => idle.retain(|c| c.addr == *addr),
            None => idle.clear(),
        }
        inner.open.fetch_sub(before - idle.len(), Ordering::Relaxed);
    }

    /// The settings the pool was created with.
    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// Applies new sizes and `pool_timeout` online (config reload). Growing takes effect at
    /// once; shrinking takes the surplus permits as checkouts return them (queueing like a
    /// request, so no running request is disturbed) and closes surplus idle connections.
    /// Returns the previous `max_pool_size`.
    pub fn resize(&self, max: usize, min: usize, timeout: Duration) -> usize {
        let inner = &self.inner;
        let max = max.max(1);
        inner.min_size.store(min.min(max), Ordering::Relaxed);
        *inner.timeout.lock() = timeout;
        let old = inner.max_size.swap(max, Ordering::Relaxed);
        resize_semaphore(&inner.permits, old, max);
        if max < old {
            self.trim_idle();
        }
        tracing::info!(
            max_pool_size = max,
            min_pool_size = min,
            ?timeout,
            "mongo pool resized"
        );
        old
    }

    /// Closes idle connections while more than `max_pool_size` are open.
    fn trim_idle(&self) {
        let inner = &self.inner;
        let mut idle = inner.idle.lock();
        while inner.open.load(Ordering::Relaxed) > inner.max_size.load(Ordering::Relaxed) {
            if idle.pop().is_none() {
                break;
            }
            inner.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counters shared with the statistics.
    pub fn counters(&self) -> &PoolCounters {
        &self.inner.counters
    }

    /// The upstream's wire versions and limits, if any connection was ever made.
    pub fn server_info(&self) -> Option<ServerInfo> {
        self.inner.info.lock().clone()
    }

    /// `Ok` when the latest connect attempt (or live connection) succeeded.
    pub fn health(&self) -> Result<(), String> {
        self.inner.health.lock().clone()
    }

    /// Checks out a connection for `client` (its address, for statistics).
    pub async fn checkout(&self, client: &str) -> Result<PooledConn, PoolError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Relaxed) {
            return Err(PoolError::Closed);
        }
        let start = Instant::now();
        let ticket = inner.next_ticket.fetch_add(1, Ordering::Relaxed);
        inner.waiters.lock().insert(ticket, start);
        let timeout = *inner.timeout.lock();
        let acquired = tokio::time::timeout(timeout, inner.permits.clone().acquire_owned()).await;
        inner.waiters.lock().remove(&ticket);
        inner.counters.record_checkout_wait(start.elapsed());
        let permit = match acquired {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(PoolError::Closed),
            Err(_) => {
                inner.counters.inc_error(ErrorKind::Timeout);
                return Err(PoolError::Timeout {
                    waited: start.elapsed(),
                    max: inner.max_size.load(Ordering::Relaxed),
                });
            }
        };
        let conn = match self.take_idle() {
            Some(conn) => conn,
            None => {
                let left = timeout.saturating_sub(start.elapsed());
                let limit = left
                    .min(inner.settings.connect_timeout)
                    .max(Duration::from_millis(100));
                self.open_connection(limit)
                    .await
                    .map_err(PoolError::Connect)?
            }
        };
        inner.active.fetch_add(1, Ordering::Relaxed);
        inner.counters.inc_checkouts();
        inner
            .checkouts
            .lock()
            .insert(ticket, (Instant::now(), client.to_owned()));
        Ok(PooledConn {
            conn: Some(conn),
            _permit: permit,
            pool: self.inner.clone(),
            ticket,
        })
    }

    /// Pops a live idle connection, closing dead ones (and ones to a former primary) on
    /// the way.
    fn take_idle(&self) -> Option<UpstreamConn> {
        loop {
            let conn = self.inner.idle.lock().pop()?;
            if conn.is_reusable() && self.inner.wants(&conn) {
                return Some(conn);
            }
            self.inner.open.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(
                conn = conn.id,
                "dropping an idle upstream connection the server closed"
            );
        }
    }

    async fn open_connection(&self, limit: Duration) -> Result<UpstreamConn, UpstreamError> {
        let inner = &self.inner;
        let mut address = inner.address.lock().clone();
        let mut connected = self.connect_once(address.as_deref(), limit).await;
        // The replica-set monitor moved the pool to a new primary while this connection was
        // being opened: it goes to the former one, so open one to the new primary instead.
        if matches!(&connected, Ok(conn) if !inner.wants(conn)) {
            tracing::debug!("primary changed while connecting; reconnecting");
            address = inner.address.lock().clone();
            connected = self.connect_once(address.as_deref(), limit).await;
        }
        match connected {
            Ok(conn) => {
                inner.open.fetch_add(1, Ordering::Relaxed);
                inner.counters.inc_server_connects();
                *inner.health.lock() = Ok(());
                *inner.info.lock() = Some(conn.info.clone());
                tracing::debug!(conn = conn.id, addr = %conn.addr, "upstream connection opened");
                Ok(conn)
            }
            Err(e) => {
                inner.counters.inc_error(ErrorKind::Connect);
                *inner.health.lock() = Err(match &address {
                    Some(addr) if !e.to_string().contains(addr.as_str()) => format!("{addr}: {e}"),
                    _ => e.to_string(),
                });
                tracing::warn!(error = %e, "cannot open an upstream connection");
                Err(e)
            }
        }
    }

    async fn connect_once(
        &self,
        address: Option<&str>,
        limit: Duration,
    ) -> Result<UpstreamConn, UpstreamError> {
        match address {
            Some(addr) => UpstreamConn::connect_to(&self.inner.target, addr, limit).await,
            None => UpstreamConn::connect(&self.inner.target, limit).await,
        }
    }

    /// Starts the task that keeps `min_pool_size` connections open and drops idle ones the
    /// server closed, once a second, until [`Pool::close`].
    pub fn spawn_maintenance(&self) {
        let pool = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !pool.inner.closed.load(Ordering::Relaxed) {
                tick.tick().await;
                pool.maintain().await;
            }
        });
    }

    async fn maintain(&self) {
        let inner = &self.inner;
        let alive: Vec<UpstreamConn> = {
            let mut idle = inner.idle.lock();
            std::mem::take(&mut *idle)
        };
        let before = alive.len();
        let kept: Vec<UpstreamConn> = alive.into_iter().filter(|c| c.is_reusable()).collect();
        inner.open.fetch_sub(before - kept.len(), Ordering::Relaxed);
        inner.idle.lock().extend(kept);
        self.trim_idle();
        let min_size = inner.min_size.load(Ordering::Relaxed);
        while inner.open.load(Ordering::Relaxed) < min_size && !inner.closed.load(Ordering::Relaxed)
        {
            let Ok(permit) = inner.permits.clone().try_acquire_owned() else {
                break;
            };
            if inner.open.load(Ordering::Relaxed) >= min_size {
                break;
            }
            match self.open_connection(inner.settings.connect_timeout).await {
                Ok(conn) => inner.idle.lock().push(conn),
                Err(_) => break,
            }
            drop(permit);
        }
    }

    /// Whether [`Pool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Relaxed)
    }

    /// Closes idle connections and refuses new checkouts.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner.permits.close();
        let idle = std::mem::take(&mut *self.inner.idle.lock());
        self.inner.open.fetch_sub(idle.len(), Ordering::Relaxed);
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

impl PoolSource for Pool {
    fn snapshot(&self) -> PoolSnapshot {
        let inner = &self.inner;
        let now = Instant::now();
        let longest = inner
            .waiters
            .lock()
            .values()
            .next()
            .map_or(0.0, |t| now.duration_since(*t).as_secs_f64());
        let oldest_checkout =
            inner
                .checkouts
                .lock()
                .values()
                .min_by_key(|(t, _)| *t)
                .map(|(t, client)| CheckoutInfo {
                    client_addr: client.clone(),
                    application_name: String::new(),
                    age_seconds: now.duration_since(*t).as_secs_f64(),
                });
        let idle = inner.idle.lock().len() as u64;
        PoolSnapshot {
            name: inner.settings.name.clone(),
            database: "mongo".into(),
            user: inner.settings.user.clone(),
            mode: "request".into(),
            max: inner.max_size.load(Ordering::Relaxed) as u64,
            size: inner.open.load(Ordering::Relaxed) as u64,
            idle,
            active: inner.active.load(Ordering::Relaxed) as u64,
            waiting: inner.waiters.lock().len() as u64,
            longest_wait_seconds: longest,
            oldest_checkout,
            ..Default::default()
        }
        .with_counters(inner.counters.snapshot())
    }

    fn health(&self) -> Option<Result<(), String>> {
        self.inner
            .settings
            .tracks_health
            .then(|| Pool::health(self))
    }
}

/// A checked-out connection; goes back to the pool on drop when it is still usable, and is
/// closed otherwise.
pub struct PooledConn {
    conn: Option<UpstreamConn>,
    _permit: OwnedSemaphorePermit,
    pool: Arc<Inner>,
    ticket: u64,
}

impl PooledConn {
    /// Closes the connection instead of returning it (e.g. after an I/O error).
    pub fn discard(mut self) {
        if self.conn.take().is_some() {
            self.pool.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Deref for PooledConn {
    type Target = UpstreamConn;

    #[allow(clippy::expect_used)]
    fn deref(&self) -> &UpstreamConn {
        // `conn` is only taken in `discard` (which consumes self) and in `drop`.
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl DerefMut for PooledConn {
    #[allow(clippy::expect_used)]
    fn deref_mut(&mut self) -> &mut UpstreamConn {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let pool = &self.pool;
        pool.active.fetch_sub(1, Ordering::Relaxed);
        pool.checkouts.lock().remove(&self.ticket);
        if let Some(conn) = self.conn.take() {
            let surplus = pool.open.load(Ordering::Relaxed) > pool.max_size.load(Ordering::Relaxed);
            if conn.is_reusable()
                && !surplus
                && pool.wants(&conn)
                && !pool.closed.load(Ordering::Relaxed)
            {
                // Back to idle before the permit is released (field drop order), so the
                // next permit holder finds it.
                pool.idle.lock().push(conn);
            } else {
                pool.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
