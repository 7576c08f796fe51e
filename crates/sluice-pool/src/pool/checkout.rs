//! Checkout: a free idle connection at once, else a place in the FIFO queue until one is
//! handed over, a slot frees for a new connection, or `pool_timeout` passes; PAUSE holds
//! new checkouts; refused logins are not retried in a tight loop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sluice_stats::ErrorKind;
use tokio::time::Instant;

use super::{CheckoutError, Limits, Pool, Pooled, Result};
use crate::connector::Connector;
use crate::guards::{BudgetWait, Hold, QueuePlace, Slot};
use crate::state::{Checkout, Entry, Grant, State};

/// What waiting for a budget gave: permits to open a connection, or an idle one instead.
enum Budgeted<C> {
    Permits(Vec<crate::Permit>),
    Idle(Box<Entry<C>>),
}

impl<K: Connector> Pool<K> {
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
        Some(Pooled::new(self, entry, id))
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
                Ok(Pooled::new(self, entry, id))
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
        {
            // Nearly always not paused: answer without joining the resume notifier's
            // waiter list (the check below repeats under an enabled wait when paused).
            let st = self.inner.state.lock();
            if st.closed {
                return Err(CheckoutError::Closed);
            }
            if !st.paused {
                return Ok(());
            }
        }
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
                let place = QueuePlace {
                    pool: &self.inner,
                    id,
                    rx: Some(rx),
                };
                match self.wait_in_line(place, start, deadline).await? {
                    Some(entry) => entry,
                    None => {
                        return self
                            .connect_in(Slot::taken(&self.inner), start, deadline)
                            .await
                    }
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

    /// Waits in line for a connection handed over (`Some`) or a slot to open one in
    /// (`None`, counted already): one that frees, or past `reserve_timeout` one of the
    /// reserve's, while the pool is within `max_size + reserve_size`.
    async fn wait_in_line(
        &self,
        mut place: QueuePlace<'_, K>,
        start: Instant,
        deadline: Instant,
    ) -> Result<Option<Box<Entry<K::Conn>>>, K> {
        let limits = self.limits();
        let reserve_at = (limits.reserve_size > 0).then(|| start + limits.reserve_timeout);
        let mut reserve_at = reserve_at.filter(|t| *t < deadline);
        loop {
            let granted = tokio::time::timeout_at(reserve_at.unwrap_or(deadline), place.granted());
            match granted.await {
                Ok(Some(Grant::Conn(entry))) => return Ok(Some(entry)),
                Ok(Some(Grant::Slot)) => return Ok(None),
                Ok(None) => return Err(CheckoutError::Closed),
                Err(_) if reserve_at.take().is_some() => {
                    let taken = {
                        let mut st = self.inner.state.lock();
                        let room = st.total < st.limits.max_size + st.limits.reserve_size;
                        if room {
                            st.total += 1;
                        }
                        room
                    };
                    if taken {
                        tracing::info!(pool = %self.inner.name, "a client waited reserve_pool_timeout: opening a reserve connection");
                        // Leaves the queue; a grant that came meanwhile is handed on.
                        drop(place);
                        return Ok(None);
                    }
                }
                // `place` leaves the queue (and hands on a late grant) as it drops.
                Err(_) => return Err(self.timeout_error(start)),
            }
        }
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
        let permits = match self.budget_permits(deadline).await {
            Some(Budgeted::Permits(p)) => p,
            Some(Budgeted::Idle(entry)) => return Ok(entry),
            None => return Err(self.timeout_error(start)),
        };
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
                    return Ok(self.opened(conn, &limits, permits));
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

    /// A permit of every budget of the pool (none to take: at once), waiting until
    /// `deadline`. Meanwhile an idle connection of this pool is taken instead, and an idle
    /// one of another member pool is closed to make room. `None`: the deadline passed.
    async fn budget_permits(&self, deadline: Instant) -> Option<Budgeted<K::Conn>> {
        let budgets = &self.inner.budgets;
        if budgets.is_empty() {
            return Some(Budgeted::Permits(Vec::new()));
        }
        let own = Arc::as_ptr(&self.inner).cast::<()>().addr();
        let _waiting = BudgetWait::new(&self.inner);
        loop {
            // Registered before looking, so a permit given back in between wakes us.
            let mut freed: Vec<_> = budgets.iter().map(|b| Box::pin(b.freed())).collect();
            for f in &mut freed {
                f.as_mut().enable();
            }
            if let Some(p) = crate::budget::take_all(budgets) {
                return Some(Budgeted::Permits(p));
            }
            if let Some(entry) = self.take_idle() {
                return Some(Budgeted::Idle(entry));
            }
            if budgets.iter().any(|b| b.evict_elsewhere(own)) {
                continue;
            }
            let any = std::future::poll_fn(|cx| {
                match freed.iter_mut().any(|f| f.as_mut().poll(cx).is_ready()) {
                    true => std::task::Poll::Ready(()),
                    false => std::task::Poll::Pending,
                }
            });
            tokio::time::timeout_at(deadline, any).await.ok()?;
        }
    }

    /// A usable idle connection of this pool, if one came back.
    fn take_idle(&self) -> Option<Box<Entry<K::Conn>>> {
        let mut st = self.inner.state.lock();
        let entry = st.idle.pop()?;
        if self.inner.connector.is_reusable(&entry.conn) {
            return Some(entry);
        }
        st.idle.push(entry);
        None
    }

    /// Records a new connection and wraps it with its lifecycle times.
    pub(super) fn opened(
        &self,
        conn: K::Conn,
        limits: &Limits,
        permits: Vec<crate::Permit>,
    ) -> Box<Entry<K::Conn>> {
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
            permits,
        })
    }

    pub(super) fn record_failure(&self, e: &K::Error) {
        let reason = self.inner.connector.describe(e);
        self.inner.health.lock().last_error = Some((Instant::now(), reason));
        self.inner.counters.inc_error(ErrorKind::Connect);
    }

    pub(super) fn block_logins(&self, e: &K::Error, pause: Duration) {
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
    pub(super) fn login_blocked(&self) -> Option<K::Error> {
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
}
