//! The pool's bookkeeping, synchronous and under one lock: slots, idle connections, the
//! queue of waiters, checkouts and PAUSE holds. Nothing here awaits; the async code in
//! [`crate::pool`] asks this state what to do next and tells it what happened.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::pool::Limits;

/// A connection as the pool keeps it, with the times its lifecycle is judged by.
pub(crate) struct Entry<C> {
    pub conn: C,
    pub created: Instant,
    pub idle_since: Instant,
    /// When `lifetime` (with jitter) runs out, if set.
    pub expires: Option<Instant>,
    /// Its share of the pool's budgets, given back when the entry drops (closes).
    #[allow(dead_code)] // held only for its Drop
    pub permits: Vec<crate::budget::Permit>,
}

/// What a waiting client is handed.
pub(crate) enum Grant<C> {
    /// An idle connection, ready to use.
    Conn(Box<Entry<C>>),
    /// A slot (already counted in `total`) in which to open a connection.
    Slot,
}

/// One queued client.
pub(crate) struct Waiter<C> {
    pub id: u64,
    pub since: Instant,
    pub tx: oneshot::Sender<Grant<C>>,
}

/// One checked-out connection, for statistics and listings.
pub(crate) struct Checkout<H> {
    pub since: Instant,
    pub holder: Arc<H>,
    pub ident: i64,
    pub created: Instant,
}

/// Everything the pool knows, under one lock.
pub(crate) struct State<C, H> {
    pub limits: Limits,
    /// Idle connections; the most recently used is at the back.
    pub idle: Vec<Box<Entry<C>>>,
    /// Slots in use: idle + checked out + being opened. Never above `limits.max_size`
    /// except after a reload shrank it (the surplus closes as it comes back).
    pub total: usize,
    /// Queued clients, oldest first.
    pub waiters: VecDeque<Waiter<C>>,
    /// Checked-out connections by checkout id.
    pub active: HashMap<u64, Checkout<H>, IdHash>,
    /// Clients held by PAUSE, by id (ids grow, so the first is the oldest).
    pub held: BTreeMap<u64, Instant>,
    pub paused: bool,
    pub closed: bool,
    /// Checkouts that hold a slot but wait for a budget's permit.
    pub budget_waiting: usize,
    next_id: u64,
}

impl<C, H> State<C, H> {
    pub fn new(limits: Limits) -> Self {
        State {
            limits,
            idle: Vec::new(),
            total: 0,
            waiters: VecDeque::new(),
            active: HashMap::default(),
            held: BTreeMap::new(),
            paused: false,
            closed: false,
            budget_waiting: 0,
            next_id: 0,
        }
    }

    /// A fresh id for a waiter, a hold or a checkout.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Queues a client; the receiver gets its grant.
    pub fn enqueue(&mut self, now: Instant) -> (u64, oneshot::Receiver<Grant<C>>) {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.waiters.push_back(Waiter { id, since: now, tx });
        (id, rx)
    }

    /// Takes a waiter out of the queue (it gave up or was cancelled); true if it was there.
    pub fn dequeue(&mut self, id: u64) -> bool {
        match self.waiters.iter().position(|w| w.id == id) {
            Some(i) => {
                self.waiters.remove(i);
                true
            }
            None => false,
        }
    }

    /// Hands `grant` to the longest-waiting client still listening; gives it back if none.
    pub fn hand_to_waiter(&mut self, mut grant: Grant<C>) -> Option<Grant<C>> {
        while let Some(w) = self.waiters.pop_front() {
            match w.tx.send(grant) {
                Ok(()) => return None,
                Err(g) => grant = g,
            }
        }
        Some(grant)
    }

    /// Forgets a slot (its connection closed or was never opened): a waiter gets the right
    /// to open one in its place while the pool is within its size.
    pub fn free_slot(&mut self) {
        if self.total <= self.limits.max_size
            && !self.closed
            && self.hand_to_waiter(Grant::Slot).is_none()
        {
            return;
        }
        self.total = self.total.saturating_sub(1);
    }

    /// Puts a clean connection back: to the longest waiter, else onto the idle stack, or
    /// closes it (pool closed, lifetime over, pool above its size after a reload).
    /// Returns the connection when it must be closed (dropped outside the lock).
    pub fn checkin(&mut self, mut entry: Box<Entry<C>>, now: Instant) -> Option<Box<Entry<C>>> {
        let expired = entry.expires.is_some_and(|t| now >= t);
        // Above the size (a reserve connection, or a reload shrank the pool) a connection
        // still serves whoever waits, and closes when nobody does.
        let surplus = self.total > self.limits.max_size && self.waiters.is_empty();
        if self.closed || expired || surplus {
            self.free_slot();
            return Some(entry);
        }
        entry.idle_since = now;
        match self.hand_to_waiter(Grant::Conn(entry)) {
            None => None,
            Some(Grant::Conn(entry)) => {
                self.idle.push(entry);
                None
            }
            Some(Grant::Slot) => None,
        }
    }

    /// Grants slots to waiters while the pool has room (after a reload grew it).
    pub fn grant_free_slots(&mut self) {
        while self.total < self.limits.max_size && !self.waiters.is_empty() {
            if self.hand_to_waiter(Grant::Slot).is_none() {
                self.total += 1;
            }
        }
    }

    /// Takes idle connections off while the pool is above its size; returns them to close.
    pub fn trim_surplus(&mut self) -> Vec<Box<Entry<C>>> {
        let mut out = Vec::new();
        while self.total > self.limits.max_size {
            // The least recently used go first.
            if self.idle.is_empty() {
                break;
            }
            out.push(self.idle.remove(0));
            self.total -= 1;
        }
        out
    }

    /// Takes off idle connections that are dead (`alive` says no), or past their lifetime
    /// or idle timeout while the pool is above `min_size`. Returns them to close.
    pub fn prune(&mut self, now: Instant, alive: impl Fn(&C) -> bool) -> Vec<Box<Entry<C>>> {
        let mut spare = self.total.saturating_sub(self.limits.min_size);
        let idle_limit = self.limits.idle_timeout;
        let mut out = Vec::new();
        let mut kept = Vec::with_capacity(self.idle.len());
        // Oldest-idle first: they are at the front.
        for e in self.idle.drain(..) {
            let expired = e.expires.is_some_and(|t| now >= t);
            let idle_too_long = idle_limit.is_some_and(|l| now - e.idle_since >= l);
            let retire = (expired || idle_too_long) && spare > 0;
            if retire {
                spare -= 1;
            }
            if retire || !alive(&e.conn) {
                out.push(e);
            } else {
                kept.push(e);
            }
        }
        self.idle = kept;
        self.total -= out.len();
        out
    }

    /// Clients waiting for a connection: queued ones and ones held by PAUSE.
    pub fn waiting(&self) -> usize {
        self.waiters.len() + self.held.len() + self.budget_waiting
    }

    /// How long the longest-waiting client has waited.
    pub fn longest_wait(&self, now: Instant) -> Option<Duration> {
        let queued = self.waiters.front().map(|w| w.since);
        let held = self.held.values().next().copied();
        queued.into_iter().chain(held).min().map(|t| now - t)
    }
}

/// Checkout ids are unique counters: hashing them with SipHash (per checkout and checkin)
/// buys nothing, so the id is its own hash.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

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

pub(crate) type IdHash = std::hash::BuildHasherDefault<IdHasher>;
