//! What operators and the front ends do to a pool besides checkout: health, PAUSE and
//! RESUME, close, pruning idle connections, the occupancy and connection listings the
//! statistics read, and the maintenance task (min_size, idle timeout, lifetime).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{ConnView, Occupancy, Pool};
use crate::connector::Connector;
use crate::guards::Slot;

impl<K: Connector> Pool<K> {
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
        // Idle connections never wait for a budget: they are opened only with room.
        let Some(permits) = crate::budget::take_all(&self.inner.budgets) else {
            return Some(true);
        };
        match self.inner.connector.connect(limits.connect_timeout).await {
            Ok(conn) => {
                slot.fill();
                let entry = self.opened(conn, &limits, permits);
                let close = self.inner.state.lock().checkin(entry, Instant::now());
                drop(close);
                // Idle now: a checkout of another pool waiting for the budget may close it.
                self.inner.budgets.iter().for_each(|b| b.wake());
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
