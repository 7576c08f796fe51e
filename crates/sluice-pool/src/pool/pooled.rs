//! [`Pooled`]: a checked-out connection and how it goes back (checkin, discard, drop).

use std::ops::{Deref, DerefMut};

use tokio::time::Instant;

use super::Pool;
use crate::connector::Connector;
use crate::state::{Entry, State};

/// A checked-out connection. [`Pooled::checkin`] returns it clean; dropping it closes it and
/// frees its slot, so a dying client task never leaks a slot or hands on a dirty server.
pub struct Pooled<K: Connector> {
    entry: Option<Box<Entry<K::Conn>>>,
    pool: Pool<K>,
    id: u64,
}

impl<K: Connector> Pooled<K> {
    /// The checkout of `entry` from `pool`, registered under `id`.
    pub(super) fn new(pool: &Pool<K>, entry: Box<Entry<K::Conn>>, id: u64) -> Self {
        Pooled {
            entry: Some(entry),
            pool: pool.clone(),
            id,
        }
    }

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

    /// Since when it had been idle in the pool before this checkout; `None` for a
    /// connection opened for this checkout (never returned yet).
    pub fn idle_since(&self) -> Option<Instant> {
        let e = self.entry.as_ref()?;
        (e.idle_since != e.created).then_some(e.idle_since)
    }

    /// Ends the checkout under the lock, then wakes PAUSE if it was the last one, and
    /// checkouts waiting for the pool's budgets if a connection is idle now.
    fn finish<T>(&self, f: impl FnOnce(&mut State<K::Conn, K::Holder>) -> T) -> T {
        let inner = &self.pool.inner;
        let (out, drained, idle_for_budget) = {
            let mut st = inner.state.lock();
            st.active.remove(&self.id);
            let out = f(&mut st);
            let idle_for_budget = !st.idle.is_empty() && !inner.budgets.is_empty();
            (out, st.paused && st.active.is_empty(), idle_for_budget)
        };
        if drained {
            inner.drained.notify_waiters();
        }
        if idle_for_budget {
            inner.budgets.iter().for_each(|b| b.wake());
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
