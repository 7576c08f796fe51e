//! [`Pool`]: checkout, checkin, PAUSE, reload of limits, maintenance and the numbers the
//! statistics read, over the state in [`crate::state`].

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_stats::{ErrorKind, PoolCounters};
use thiserror::Error;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::connector::Connector;
use crate::guards::{Hold, QueuePlace, Slot};
use crate::state::{Checkout, Entry, Grant, State};

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
        Pool {
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
            }),
        }
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

    /// Checks out an idle connection without waiting, when one is ready and nobody is
    /// queued: the common case, one lock, one clock read, no future. `None`: call
    /// [`Pool::checkout`].
    pub fn try_checkout(&self, holder: &Arc<K::Holder>) -> Option<Pooled<K>> {
        let now = Instant::now();
        let (entry, id) = {
            let mut st = self.inner.state.lock();
            if st.closed || st.paused || !st.waiters.is_empty() {
                return None;
            }
            let entry = st.idle.pop()?;
            if !self.inner.connector.is_reusable(&entry.conn) {
                // The slow path drops it and opens a new one in its slot.
                st.idle.push(entry);
                return None;
            }
            let id = self.register(&mut st, &entry, holder, now);
            (entry, id)
        };
        self.inner.counters.record_checkout_wait(Duration::ZERO);
        self.inner.counters.inc_checkouts();
        Some(Pooled {
            entry: Some(entry),
            pool: self.clone(),
            id,
        })
    }

    /// Checks a connection out: an idle one, a new one while the pool has room, or the
    /// next one returned, in arrival order; at most `timeout` in all. Cancel-safe: dropping
    /// the future leaves the queue at once and hands on whatever it was given.
    pub async fn checkout(&self, holder: &Arc<K::Holder>) -> Result<Pooled<K>, K> {
        let start = Instant::now();
        let counters = &self.inner.counters;
        match self.acquire(start, holder).await {
            Ok((entry, id)) => {
                counters.record_checkout_wait(start.elapsed());
                counters.inc_checkouts();
                Ok(Pooled {
                    entry: Some(entry),
                    pool: self.clone(),
                    id,
                })
            }
            Err(e) => {
                if matches!(e, CheckoutError::Timeout { .. }) {
                    counters.inc_error(ErrorKind::Timeout);
                }
                Err(e)
            }
        }
    }

    fn register(
        &self,
        st: &mut State<K::Conn, K::Holder>,
        entry: &Entry<K::Conn>,
        holder: &Arc<K::Holder>,
        now: Instant,
    ) -> u64 {
        let id = st.next_id();
        let checkout = Checkout {
            since: now,
            holder: holder.clone(),
            ident: self.inner.connector.ident(&entry.conn),
            created: entry.created,
        };
        st.active.insert(id, checkout);
        id
    }

    async fn acquire(
        &self,
        start: Instant,
        holder: &Arc<K::Holder>,
    ) -> Result<(Box<Entry<K::Conn>>, u64), K> {
        let deadline = start + self.inner.state.lock().limits.timeout;
        loop {
            self.wait_while_paused(start, deadline).await?;
            let entry = self.obtain(start, deadline).await?;
            let mut st = self.inner.state.lock();
            if st.paused && !st.closed {
                // PAUSE began while this client connected: it waits like the others.
                let close = st.checkin(entry, Instant::now());
                drop(st);
                drop(close);
                continue;
            }
            let id = self.register(&mut st, &entry, holder, Instant::now());
            return Ok((entry, id));
        }
    }

    async fn wait_while_paused(&self, start: Instant, deadline: Instant) -> Result<(), K> {
        let mut hold = Hold {
            pool: &self.inner,
            id: None,
        };
        loop {
            let resumed = self.inner.resumed.notified();
            let mut resumed = std::pin::pin!(resumed);
            resumed.as_mut().enable();
            {
                let mut st = self.inner.state.lock();
                if st.closed {
                    return Err(CheckoutError::Closed);
                }
                if !st.paused {
                    return Ok(());
                }
                if hold.id.is_none() {
                    let id = st.next_id();
                    st.held.insert(id, start);
                    hold.id = Some(id);
                }
            }
            if tokio::time::timeout_at(deadline, resumed).await.is_err() {
                return Err(self.timeout_error(start));
            }
        }
    }

    /// An idle connection, a new one, or one handed over in line.
    async fn obtain(&self, start: Instant, deadline: Instant) -> Result<Box<Entry<K::Conn>>, K> {
        enum Step<C> {
            Ready(Box<Entry<C>>),
            Connect,
            Wait(u64, tokio::sync::oneshot::Receiver<Grant<C>>),
        }
        let step = {
            let mut st = self.inner.state.lock();
            if st.closed {
                return Err(CheckoutError::Closed);
            }
            if let Some(entry) = st.idle.pop() {
                Step::Ready(entry)
            } else if st.total < st.limits.max_size {
                st.total += 1;
                Step::Connect
            } else {
                let (id, rx) = st.enqueue(Instant::now());
                Step::Wait(id, rx)
            }
        };
        let entry = match step {
            Step::Ready(entry) => entry,
            Step::Connect => {
                return self
                    .connect_in(Slot::taken(&self.inner), start, deadline)
                    .await
            }
            Step::Wait(id, rx) => {
                let mut place = QueuePlace {
                    pool: &self.inner,
                    id,
                    rx: Some(rx),
                };
                match tokio::time::timeout_at(deadline, place.granted()).await {
                    Ok(Some(Grant::Conn(entry))) => entry,
                    Ok(Some(Grant::Slot)) => {
                        return self
                            .connect_in(Slot::taken(&self.inner), start, deadline)
                            .await
                    }
                    Ok(None) => return Err(CheckoutError::Closed),
                    // `place` leaves the queue (and hands on a late grant) as it drops.
                    Err(_) => return Err(self.timeout_error(start)),
                }
            }
        };
        if self.inner.connector.is_reusable(&entry.conn) {
            return Ok(entry);
        }
        // A stale idle connection (the server restarted or closed it): open a new one in
        // its slot.
        tracing::debug!(pool = %self.inner.name, "dropping a dead idle connection");
        drop(entry);
        self.connect_in(Slot::taken(&self.inner), start, deadline)
            .await
    }

    /// Opens a connection in `slot`, retrying transient failures (when the limits say so)
    /// until the deadline. The slot is freed if this fails or is dropped.
    async fn connect_in(
        &self,
        slot: Slot<'_, K>,
        start: Instant,
        deadline: Instant,
    ) -> Result<Box<Entry<K::Conn>>, K> {
        if let Some(e) = self.login_blocked() {
            return Err(CheckoutError::Connect(e));
        }
        let limits = self.limits();
        let mut backoff = Duration::from_millis(50);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.timeout_error(start));
            }
            let limit = (deadline - now).min(limits.connect_timeout);
            match self.inner.connector.connect(limit).await {
                Ok(conn) => {
                    slot.fill();
                    return Ok(self.opened(conn, &limits));
                }
                Err(e) => {
                    self.record_failure(&e);
                    let transient = self.inner.connector.is_transient(&e);
                    if !transient {
                        self.block_logins(&e, limits.login_retry);
                        return Err(CheckoutError::Connect(e));
                    }
                    if Instant::now() >= deadline {
                        return Err(self.timeout_error(start));
                    }
                    if !limits.retry_transient || Instant::now() + backoff >= deadline {
                        return Err(CheckoutError::Connect(e));
                    }
                    tracing::warn!(pool = %self.inner.name, error = %e, "upstream connect failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Records a new connection and wraps it with its lifecycle times.
    fn opened(&self, conn: K::Conn, limits: &Limits) -> Box<Entry<K::Conn>> {
        self.inner.connector.opened(&conn);
        {
            let mut h = self.inner.health.lock();
            h.last_ok = Some(Instant::now());
            h.blocked = None;
            h.refusals = 0;
        }
        self.inner.counters.inc_server_connects();
        let now = Instant::now();
        let expires = limits.lifetime.map(|l| {
            let jitter = 1.0 - rand::random::<f64>() * 0.1;
            now + l.mul_f64(jitter)
        });
        // Boxed once for the connection's life: checkouts, queues and sessions then
        // move a pointer, not the connection.
        Box::new(Entry {
            conn,
            created: now,
            idle_since: now,
            expires,
        })
    }

    fn record_failure(&self, e: &K::Error) {
        let reason = self.inner.connector.describe(e);
        self.inner.health.lock().last_error = Some((Instant::now(), reason));
        self.inner.counters.inc_error(ErrorKind::Connect);
    }

    fn block_logins(&self, e: &K::Error, pause: Duration) {
        if pause.is_zero() {
            return;
        }
        let mut h = self.inner.health.lock();
        let pause = pause * (1u32 << h.refusals.min(3));
        h.refusals += 1;
        h.blocked = Some((Instant::now() + pause, e.clone()));
        tracing::warn!(pool = %self.inner.name, ?pause, "upstream refused the login; pausing new attempts");
    }

    /// The refusal clients get while `login_retry` has not run out.
    fn login_blocked(&self) -> Option<K::Error> {
        let h = self.inner.health.lock();
        match &h.blocked {
            Some((until, e)) if Instant::now() < *until => Some(e.clone()),
            _ => None,
        }
    }

    fn timeout_error(&self, start: Instant) -> CheckoutError<K::Error> {
        CheckoutError::Timeout {
            waited: start.elapsed(),
            timeout: self.inner.state.lock().limits.timeout,
        }
    }

    /// Whether the upstream is reachable, judged from the latest connect attempts:
    /// `Err(reason)` when the latest one failed.
    pub fn health(&self) -> std::result::Result<(), String> {
        let h = self.inner.health.lock();
        match (&h.last_ok, &h.last_error) {
            (_, None) => Ok(()),
            (Some(ok), Some((err, _))) if ok > err => Ok(()),
            (_, Some((_, reason))) => Err(reason.clone()),
        }
    }

    /// `PAUSE`: new checkouts wait (within their timeout) and this waits until no
    /// connection is checked out, at most `bound`. When the bound runs out the pause is
    /// undone and the holders still running are returned.
    pub async fn pause(&self, bound: Duration) -> std::result::Result<(), Vec<Arc<K::Holder>>> {
        self.inner.state.lock().paused = true;
        let deadline = Instant::now() + bound;
        loop {
            let drained = self.inner.drained.notified();
            let mut drained = std::pin::pin!(drained);
            drained.as_mut().enable();
            if self.inner.state.lock().active.is_empty() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                let running = {
                    let mut st = self.inner.state.lock();
                    if st.active.is_empty() {
                        return Ok(());
                    }
                    st.paused = false;
                    st.active.values().map(|c| c.holder.clone()).collect()
                };
                self.inner.resumed.notify_waiters();
                return Err(running);
            }
        }
    }

    /// `RESUME`: held checkouts go on.
    pub fn resume(&self) {
        self.inner.state.lock().paused = false;
        self.inner.resumed.notify_waiters();
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.inner.state.lock().paused
    }

    /// Closes the pool: idle connections close, waiters (queued or held) fail at once,
    /// connections coming back close.
    pub fn close(&self) {
        let (idle, waiters) = {
            let mut st = self.inner.state.lock();
            st.closed = true;
            let idle = std::mem::take(&mut st.idle);
            st.total -= idle.len();
            (idle, std::mem::take(&mut st.waiters))
        };
        drop(idle);
        drop(waiters);
        self.inner.resumed.notify_waiters();
    }

    /// Whether [`Pool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.state.lock().closed
    }

    /// Closes idle connections `keep` says no to (e.g. ones to a former primary).
    pub fn retain_idle(&self, keep: impl Fn(&K::Conn) -> bool) {
        let closed = {
            let mut st = self.inner.state.lock();
            let (kept, closed): (Vec<_>, Vec<_>) = std::mem::take(&mut st.idle)
                .into_iter()
                .partition(|e| keep(&e.conn));
            st.idle = kept;
            // Each freed slot may let a waiter open a connection.
            for _ in 0..closed.len() {
                st.free_slot();
            }
            closed
        };
        drop(closed);
    }

    /// What the pool holds now.
    pub fn occupancy(&self) -> Occupancy<K::Holder> {
        let now = Instant::now();
        let st = self.inner.state.lock();
        let oldest = st
            .active
            .values()
            .min_by_key(|c| c.since)
            .map(|c| (now - c.since, c.holder.clone()));
        Occupancy {
            max: st.limits.max_size,
            size: st.total,
            idle: st.idle.len(),
            active: st.active.len(),
            waiting: st.waiting(),
            longest_wait: st.longest_wait(now).unwrap_or_default(),
            oldest,
        }
    }

    /// Every open connection, idle ones first.
    pub fn conns(&self) -> Vec<ConnView<K::Holder>> {
        let now = Instant::now();
        let st = self.inner.state.lock();
        let idle = st.idle.iter().map(|e| ConnView {
            ident: self.inner.connector.ident(&e.conn),
            age: now - e.created,
            holder: None,
        });
        let active = st.active.values().map(|c| ConnView {
            ident: c.ident,
            age: now - c.created,
            holder: Some(c.holder.clone()),
        });
        idle.chain(active).collect()
    }

    /// Starts the task that, once a second until the pool closes, drops idle connections
    /// that died or outlived their limits and keeps `min_size` open.
    pub fn spawn_maintenance(&self) {
        let pool = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                match pool.maintain().await {
                    None => return,
                    Some(true) => backoff = Duration::from_millis(500),
                    Some(false) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// One maintenance round. `None`: the pool is closed; `Some(false)`: a connect failed.
    pub(crate) async fn maintain(&self) -> Option<bool> {
        let now = Instant::now();
        let stale = self
            .inner
            .health
            .lock()
            .last_ok
            .is_none_or(|t| now - t > Duration::from_secs(15));
        let (retired, want, limits) = {
            let mut st = self.inner.state.lock();
            if st.closed {
                return None;
            }
            let mut retired = st.prune(now, |c| self.inner.connector.is_reusable(c));
            retired.extend(st.trim_surplus());
            let limits = st.limits.clone();
            let want = st.total < limits.min_size
                || (limits.probe_when_empty && st.total == 0 && stale && st.waiters.is_empty());
            if want {
                st.total += 1;
            }
            (retired, want, limits)
        };
        if !retired.is_empty() {
            tracing::debug!(pool = %self.inner.name, closed = retired.len(), "closed dead, expired or long-idle connections");
        }
        drop(retired);
        if !want {
            return Some(true);
        }
        let slot = Slot::taken(&self.inner);
        if self.login_blocked().is_some() {
            return Some(true);
        }
        match self.inner.connector.connect(limits.connect_timeout).await {
            Ok(conn) => {
                slot.fill();
                let entry = self.opened(conn, &limits);
                let close = self.inner.state.lock().checkin(entry, Instant::now());
                drop(close);
                Some(true)
            }
            Err(e) => {
                drop(slot);
                self.record_failure(&e);
                if !self.inner.connector.is_transient(&e) {
                    self.block_logins(&e, limits.login_retry);
                }
                tracing::warn!(pool = %self.inner.name, error = %e, "could not open a min_pool_size connection");
                Some(false)
            }
        }
    }
}

/// A checked-out connection. [`Pooled::checkin`] returns it clean; dropping it closes it and
/// frees its slot, so a dying client task never leaks a slot or hands on a dirty server.
pub struct Pooled<K: Connector> {
    entry: Option<Box<Entry<K::Conn>>>,
    pool: Pool<K>,
    id: u64,
}

impl<K: Connector> Pooled<K> {
    /// Returns the connection to the pool (to the longest waiter, or idle).
    pub fn checkin(mut self) {
        if let Some(entry) = self.entry.take() {
            let close = self.finish(|st| st.checkin(entry, Instant::now()));
            drop(close);
        }
    }

    /// Closes the connection instead of returning it.
    pub fn discard(self) {}

    /// The pool it came from.
    pub fn pool(&self) -> &Pool<K> {
        &self.pool
    }

    /// When the connection was opened.
    pub fn created(&self) -> Instant {
        self.entry.as_ref().map_or_else(Instant::now, |e| e.created)
    }

    /// Ends the checkout under the lock, then wakes PAUSE if it was the last one.
    fn finish<T>(&self, f: impl FnOnce(&mut State<K::Conn, K::Holder>) -> T) -> T {
        let inner = &self.pool.inner;
        let (out, drained) = {
            let mut st = inner.state.lock();
            st.active.remove(&self.id);
            let out = f(&mut st);
            (out, st.paused && st.active.is_empty())
        };
        if drained {
            inner.drained.notify_waiters();
        }
        out
    }
}

impl<K: Connector> Drop for Pooled<K> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.finish(|st| st.free_slot());
            drop(entry);
        }
    }
}

impl<K: Connector> Deref for Pooled<K> {
    type Target = K::Conn;
    fn deref(&self) -> &K::Conn {
        // Invariant: `entry` is only taken by `checkin` (which consumes self) and `drop`.
        match &self.entry {
            Some(e) => &e.conn,
            None => unreachable!("connection present until checkin"),
        }
    }
}

impl<K: Connector> DerefMut for Pooled<K> {
    fn deref_mut(&mut self) -> &mut K::Conn {
        match &mut self.entry {
            Some(e) => &mut e.conn,
            None => unreachable!("connection present until checkin"),
        }
    }
}
