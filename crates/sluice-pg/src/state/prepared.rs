//! Prepared-statement bookkeeping for transaction mode.
//!
//! Clients name their statements freely (`s0`, `__asyncpg_stmt_1__`, ...). Sluice interns
//! each distinct (query text, parameter types) once per pool as a [`Statement`] with a
//! server-side name it owns (`sluice_<n>`), so identical statements from many clients share
//! one server-side statement. Each server connection remembers which of those statements it
//! has prepared in a bounded LRU ([`ServerStatements`]); evicted entries are closed on the
//! server.
//!
//! Memory is bounded two ways. The [`StatementRegistry`] only indexes statements (it holds
//! [`Weak`] references): a statement lives as long as some client's statement map or some
//! server's [`ServerStatements`] holds it, and its `Drop` removes it from the index at once.
//! On top of that the index holds at most a configured number of entries, dropping the
//! least recently parsed ones; a client that still holds a dropped statement keeps using
//! it, and the next Parse of the same text simply gets a new server-side name.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

/// Default for [`StatementRegistry::set_capacity`] (`prepared_statement_registry_size`).
pub const DEFAULT_REGISTRY_CAPACITY: usize = 10_000;

/// One distinct statement, shared by every client that prepared the same text and types.
#[derive(Debug)]
pub struct Statement {
    /// The name Sluice uses for it on servers.
    pub server_name: Arc<str>,
    /// The Parse body after the name: query text and parameter types, replayed verbatim.
    pub rest: Bytes,
    /// The index to leave when the last holder lets go (dangling once the pool is gone).
    registry: Weak<Mutex<Index>>,
}

impl Drop for Statement {
    fn drop(&mut self) {
        // Never runs under the index lock: the index holds only `Weak`s, and the one strong
        // reference it makes (in `intern`) leaves the lock as the return value.
        if let Some(index) = self.registry.upgrade() {
            index.lock().forget(&self.rest, self);
        }
    }
}

/// The registry's state, behind one lock.
#[derive(Debug)]
struct Index {
    /// Parse body → the statement interned for it and when it was last parsed.
    map: HashMap<Bytes, Entry>,
    /// Last server-side name number handed out (names are never reused).
    next: u64,
    /// Logical clock for least-recently-used order.
    tick: u64,
    /// Most entries kept; at least 1.
    cap: usize,
}

#[derive(Debug)]
struct Entry {
    stmt: Weak<Statement>,
    used: u64,
}

impl Index {
    /// Removes the entry for `rest` if it is `stmt` (not a newer statement of the same text).
    fn forget(&mut self, rest: &[u8], stmt: *const Statement) {
        if self
            .map
            .get(rest)
            .is_some_and(|e| std::ptr::eq(e.stmt.as_ptr(), stmt))
        {
            self.map.remove(rest);
        }
    }

    /// Over capacity: drops the least recently used eighth of the entries in one pass, so
    /// the cost of finding them is spread over the next `cap / 8` new statements.
    fn shrink(&mut self) {
        if self.map.len() <= self.cap {
            return;
        }
        let keep = self.cap - self.cap / 8;
        let drop = self.map.len() - keep;
        let mut ticks: Vec<u64> = self.map.values().map(|e| e.used).collect();
        let (_, &mut threshold, _) = ticks.select_nth_unstable(drop - 1);
        // Ticks are unique, so exactly `drop` entries are at or below the threshold.
        self.map.retain(|_, e| e.used > threshold);
    }
}

/// Interns statements for one pool.
#[derive(Debug)]
pub struct StatementRegistry {
    inner: Arc<Mutex<Index>>,
}

impl Default for StatementRegistry {
    fn default() -> Self {
        Self::new(DEFAULT_REGISTRY_CAPACITY)
    }
}

impl StatementRegistry {
    /// An empty registry indexing at most `cap` statements (at least 1).
    pub fn new(cap: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Index {
                map: HashMap::new(),
                next: 0,
                tick: 0,
                cap: cap.max(1),
            })),
        }
    }

    /// Changes the most statements indexed (at least 1), dropping the least recently used
    /// ones at once if there are more.
    pub fn set_capacity(&self, cap: usize) {
        let mut index = self.inner.lock();
        index.cap = cap.max(1);
        index.shrink();
    }

    /// Returns the shared statement for this Parse body (after the name), creating it once.
    /// One lock and one hash lookup when the statement is known.
    pub fn intern(&self, rest: &[u8]) -> Arc<Statement> {
        let mut guard = self.inner.lock();
        let index = &mut *guard;
        index.tick += 1;
        let now = index.tick;
        if let Some(e) = index.map.get_mut(rest) {
            if let Some(s) = e.stmt.upgrade() {
                e.used = now;
                return s;
            }
            // Its last holder is dropping it right now and waits for this lock.
        }
        index.next += 1;
        let rest = Bytes::copy_from_slice(rest);
        let stmt = Arc::new(Statement {
            server_name: format!("sluice_{}", index.next).into(),
            rest: rest.clone(),
            registry: Arc::downgrade(&self.inner),
        });
        let entry = Entry {
            stmt: Arc::downgrade(&stmt),
            used: now,
        };
        index.map.insert(rest, entry);
        index.shrink();
        stmt
    }

    /// Forgets `stmt` (its server copies went stale, e.g. `cached plan must not change
    /// result type` after ALTER TABLE): the next Parse of the same text gets a fresh
    /// server-side statement, while clients that already hold `stmt` keep getting the
    /// server's error, exactly as on a direct connection.
    pub fn invalidate(&self, stmt: &Arc<Statement>) {
        self.inner.lock().forget(&stmt.rest, Arc::as_ptr(stmt));
    }

    /// Number of statements indexed: distinct statements some client or server holds,
    /// at most the capacity.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// True if no statement is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The statements one server connection has prepared, least recently used first out.
/// Holding them keeps them alive (and indexed) while this server has them.
#[derive(Debug, Default)]
pub struct ServerStatements {
    entries: HashMap<Arc<str>, (Arc<Statement>, u64)>,
    tick: u64,
}

impl ServerStatements {
    /// True if prepared here; marks it most recently used.
    pub fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.entries.get_mut(name) {
            Some((_, t)) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `stmt` as prepared. If that makes more than `cap` entries, removes and
    /// returns the least recently used one, which the caller must Close on the server.
    pub fn insert(&mut self, stmt: Arc<Statement>, cap: usize) -> Option<Arc<Statement>> {
        self.tick += 1;
        self.entries
            .insert(stmt.server_name.clone(), (stmt, self.tick));
        if self.entries.len() <= cap.max(1) {
            return None;
        }
        let victim = self
            .entries
            .iter()
            .min_by_key(|(_, (_, t))| *t)
            .map(|(k, _)| k.clone())?;
        self.entries.remove(&victim).map(|(s, _)| s)
    }

    /// Forgets `name` (the server does not have it after all).
    pub fn remove(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// Forgets everything (after DISCARD ALL / DEALLOCATE ALL on the server).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number of statements prepared on this server.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
#[path = "prepared_tests.rs"]
mod tests;
