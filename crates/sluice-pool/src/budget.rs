//! A connection budget several pools share: PgBouncer's `max_db_connections` (every pool
//! of one database) and `max_user_connections` (every pool of one user).
//!
//! Each open connection holds a [`Permit`] of every budget its pool belongs to, taken
//! before it is opened and given back when it closes (the permit lives in the pool's entry
//! for the connection, so no path can forget it). A checkout that finds its pool below
//! `max_size` but a budget spent first takes an idle connection of its own pool if one
//! came back meanwhile, else closes the least recently used idle connection of another
//! member pool (as PgBouncer does), else waits for a permit until its deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// A pool that can give up an idle connection for another member of its budget.
pub(crate) trait Evict: Send + Sync {
    /// Closes this pool's least recently used idle connection; false if it has none.
    fn evict_idle(&self) -> bool;
}

/// The most connections a group of pools may hold open together.
pub struct Budget {
    name: String,
    /// 0: no limit.
    max: AtomicUsize,
    used: AtomicUsize,
    /// Checkouts of member pools waiting for a permit now.
    pub(crate) waiting: AtomicUsize,
    /// Woken when a permit is given back or the limit changes.
    freed: Notify,
    /// The pools that take from this budget (dead ones are pruned as they are seen).
    members: Mutex<Vec<Weak<dyn Evict>>>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("name", &self.name)
            .field("max", &self.max())
            .field("used", &self.used())
            .finish()
    }
}

impl Budget {
    /// A budget of `max` connections (0: no limit); `name` is for logs and errors.
    pub fn new(name: impl Into<String>, max: usize) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            max: AtomicUsize::new(max),
            used: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            members: Mutex::new(Vec::new()),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limit in force (0: none).
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Connections holding a permit now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Changes the limit (reload). Above the new limit no permit is given until enough
    /// connections have closed; open ones are not disturbed.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    /// A permit, if the budget has room.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Permit> {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let max = self.max.load(Ordering::Relaxed);
                (max == 0 || used < max).then_some(used + 1)
            });
        taken.ok().map(|_| Permit(self.clone()))
    }

    /// Waits until a permit may be free (call [`Budget::try_take`] again).
    pub(crate) fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// Wakes its waiters to look again, if any: a connection of a member pool came back
    /// idle (theirs to take, or another's to close).
    pub(crate) fn wake(&self) {
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.freed.notify_waiters();
        }
    }

    pub(crate) fn join(&self, pool: Weak<dyn Evict>) {
        let mut members = self.members.lock();
        members.retain(|m| m.strong_count() > 0);
        members.push(pool);
    }

    /// Closes an idle connection of some member other than the one at address `own`;
    /// true if one closed.
    pub(crate) fn evict_elsewhere(&self, own: usize) -> bool {
        let members: Vec<Arc<dyn Evict>> = self
            .members
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        members
            .iter()
            .filter(|m| Arc::as_ptr(m).cast::<()>().addr() != own)
            .any(|m| m.evict_idle())
    }
}

/// One connection's share of a [`Budget`], given back on drop.
pub struct Permit(Arc<Budget>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_waiters();
    }
}

impl Permit {
    /// Gives the permit back without waking anyone: a [`take_all`] that could not take
    /// the others undoes its part quietly, or two waiters would wake each other for ever.
    fn undo(self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
        std::mem::forget(self);
    }
}

/// Takes a permit of every budget in `budgets`, or none.
pub(crate) fn take_all(budgets: &[Arc<Budget>]) -> Option<Vec<Permit>> {
    let mut permits = Vec::with_capacity(budgets.len());
    for b in budgets {
        match b.try_take() {
            Some(p) => permits.push(p),
            None => {
                permits.into_iter().for_each(Permit::undo);
                return None;
            }
        }
    }
    Some(permits)
}
