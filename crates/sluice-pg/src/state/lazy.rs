//! Collections of a client's state that take one pointer until they hold something: its
//! named prepared statements and the channels it LISTENs on. Most clients never have
//! either, and every idle client carries both fields.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::prepared::Statement;

/// Client statement name (the client's bytes) → the shared statement it stands for.
#[derive(Debug, Default)]
// Boxed on purpose: one pointer inline instead of the map's 48 bytes, at the price of an
// allocation for the clients that do prepare statements.
#[allow(clippy::box_collection)]
pub struct ClientStatements(Option<Box<HashMap<Vec<u8>, Arc<Statement>>>>);

impl ClientStatements {
    /// The statement the client calls `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.0.as_ref()?.get(name)
    }

    /// Whether the client has a statement called `name`.
    pub fn contains_key(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    /// Names `stmt` `name` for this client, returning what had that name.
    pub fn insert(&mut self, name: Vec<u8>, stmt: Arc<Statement>) -> Option<Arc<Statement>> {
        self.0.get_or_insert_with(Box::default).insert(name, stmt)
    }

    /// Forgets `name`, returning its name and statement.
    pub fn remove_entry(&mut self, name: &[u8]) -> Option<(Vec<u8>, Arc<Statement>)> {
        let map = self.0.as_mut()?;
        let entry = map.remove_entry(name);
        if map.is_empty() {
            self.0 = None;
        }
        entry
    }

    /// Forgets `name`, returning its statement.
    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.remove_entry(name).map(|(_, stmt)| stmt)
    }

    /// Forgets every statement.
    pub fn clear(&mut self) {
        self.0 = None;
    }

    /// Whether the client has no statement.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// The channels a client LISTENs on through the pool's notification hub.
#[derive(Debug, Default)]
// Boxed on purpose, as `ClientStatements`: 8 bytes inline instead of 24.
#[allow(clippy::box_collection)]
pub struct Channels(Option<Box<BTreeSet<Vec<u8>>>>);

/// What [`Channels::set`] lends when there is none.
static NO_CHANNELS: BTreeSet<Vec<u8>> = BTreeSet::new();

impl Channels {
    /// The channels as a set (empty when there are none).
    pub fn set(&self) -> &BTreeSet<Vec<u8>> {
        self.0.as_deref().unwrap_or(&NO_CHANNELS)
    }

    /// Whether the client listens on `channel`.
    pub fn contains(&self, channel: &[u8]) -> bool {
        self.set().contains(channel)
    }

    /// Whether the client listens on nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Adds `channel`.
    pub fn insert(&mut self, channel: Vec<u8>) {
        self.0.get_or_insert_with(Box::default).insert(channel);
    }

    /// Removes `channel`.
    pub fn remove(&mut self, channel: &[u8]) {
        if let Some(set) = self.0.as_mut() {
            set.remove(channel);
            if set.is_empty() {
                self.0 = None;
            }
        }
    }

    /// Removes every channel.
    pub fn clear(&mut self) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_no_map_until_a_statement_and_after_the_last() {
        assert_eq!(std::mem::size_of::<ClientStatements>(), 8);
        let mut s = ClientStatements::default();
        assert!(s.is_empty() && s.get(b"a").is_none() && s.remove(b"a").is_none());
        let stmt = super::super::prepared::StatementRegistry::new(4).intern(b"SELECT 1\0\0\0");
        assert!(s.insert(b"a".to_vec(), stmt.clone()).is_none());
        assert!(s.insert(b"b".to_vec(), stmt.clone()).is_none());
        assert!(s.contains_key(b"a") && !s.contains_key(b"c"));
        assert!(s.remove(b"a").is_some());
        assert!(!s.is_empty());
        assert_eq!(s.remove_entry(b"b").map(|(n, _)| n), Some(b"b".to_vec()));
        assert!(s.is_empty(), "the map is freed with its last statement");
        s.insert(b"c".to_vec(), stmt);
        s.clear();
        assert!(s.is_empty());
    }

    #[test]
    fn channels_hold_no_set_when_empty() {
        assert_eq!(std::mem::size_of::<Channels>(), 8);
        let mut c = Channels::default();
        assert!(c.is_empty() && c.set().is_empty());
        c.insert(b"a".to_vec());
        c.insert(b"b".to_vec());
        assert!(c.contains(b"a") && c.set().len() == 2);
        c.remove(b"a");
        assert!(!c.is_empty() && !c.contains(b"a"));
        c.remove(b"b");
        assert!(c.is_empty(), "the set is freed with its last channel");
    }
}
