//! Prepared-statement bookkeeping for transaction mode.
//!
//! Clients name their statements freely (`s0`, `__asyncpg_stmt_1__`, ...). Sluice interns
//! each distinct (query text, parameter types) once per pool as a [`Statement`] with a
//! server-side name it owns (`sluice_<n>`), so identical statements from many clients share
//! one server-side statement. Each server connection remembers which of those names it has
//! prepared in a bounded LRU ([`ServerStatements`]); evicted entries are closed on the server.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

/// One distinct statement, shared by every client that prepared the same text and types.
#[derive(Debug)]
pub struct Statement {
    /// The name Sluice uses for it on servers.
    pub server_name: Arc<str>,
    /// The Parse body after the name: query text and parameter types, replayed verbatim.
    pub rest: Bytes,
}

/// Interns statements for one pool.
#[derive(Debug, Default)]
pub struct StatementRegistry {
    inner: Mutex<(HashMap<Bytes, Arc<Statement>>, u64)>,
}

impl StatementRegistry {
    /// Returns the shared statement for this Parse body (after the name), creating it once.
    pub fn intern(&self, rest: &[u8]) -> Arc<Statement> {
        let mut guard = self.inner.lock();
        let (map, next) = &mut *guard;
        if let Some(s) = map.get(rest) {
            return s.clone();
        }
        *next += 1;
        let rest = Bytes::copy_from_slice(rest);
        let stmt = Arc::new(Statement {
            server_name: format!("sluice_{next}").into(),
            rest: rest.clone(),
        });
        map.insert(rest, stmt.clone());
        stmt
    }

    /// Forgets `stmt` (its server copies went stale, e.g. `cached plan must not change
    /// result type` after ALTER TABLE): the next Parse of the same text gets a fresh
    /// server-side statement, while clients that already hold `stmt` keep getting the
    /// server's error, exactly as on a direct connection.
    pub fn invalidate(&self, stmt: &Arc<Statement>) {
        let mut guard = self.inner.lock();
        if guard
            .0
            .get(&stmt.rest)
            .is_some_and(|s| Arc::ptr_eq(s, stmt))
        {
            guard.0.remove(&stmt.rest);
        }
    }

    /// Number of distinct statements seen.
    pub fn len(&self) -> usize {
        self.inner.lock().0.len()
    }

    /// True if no statement was interned yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The statements one server connection has prepared, least recently used first out.
#[derive(Debug, Default)]
pub struct ServerStatements {
    entries: HashMap<Arc<str>, u64>,
    tick: u64,
}

impl ServerStatements {
    /// True if prepared here; marks it most recently used.
    pub fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.entries.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `name` as prepared. If that makes more than `cap` entries, removes and
    /// returns the least recently used one, which the caller must Close on the server.
    pub fn insert(&mut self, name: Arc<str>, cap: usize) -> Option<Arc<str>> {
        self.tick += 1;
        self.entries.insert(name, self.tick);
        if self.entries.len() <= cap.max(1) {
            return None;
        }
        let victim = self
            .entries
            .iter()
            .min_by_key(|(_, t)| **t)
            .map(|(k, _)| k.clone())?;
        self.entries.remove(&victim);
        Some(victim)
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
mod tests {
    use super::*;

    #[test]
    fn interning_shares_identical_statements() {
        let r = StatementRegistry::default();
        let a = r.intern(b"select 1\0\0\0");
        let b = r.intern(b"select 1\0\0\0");
        let c = r.intern(b"select 2\0\0\0");
        assert!(Arc::ptr_eq(&a, &b));
        assert_ne!(a.server_name, c.server_name);
        assert_eq!(r.len(), 2);
        r.invalidate(&a);
        let d = r.intern(b"select 1\0\0\0");
        assert_ne!(a.server_name, d.server_name);
        r.invalidate(&a); // stale handle: no effect on the new one
        assert!(Arc::ptr_eq(&d, &r.intern(b"select 1\0\0\0")));
    }

    #[test]
    fn lru_evicts_least_recently_used() {
        let mut s = ServerStatements::default();
        assert_eq!(s.insert("a".into(), 2), None);
        assert_eq!(s.insert("b".into(), 2), None);
        assert!(s.touch("a"));
        assert_eq!(s.insert("c".into(), 2).as_deref(), Some("b"));
        assert!(s.touch("a") && s.touch("c") && !s.touch("b"));
        s.remove("a");
        assert_eq!(s.len(), 1);
    }
}
