//! Unit tests of the statement registry (interning, freeing, the LRU cap) and of each
//! server's statement LRU.

use super::*;

fn body(i: usize) -> Vec<u8> {
    format!("select {i}\0\0\0").into_bytes()
}

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
fn a_statement_nobody_holds_leaves_the_registry() {
    let r = StatementRegistry::default();
    let held: Vec<_> = (0..1000).map(|i| r.intern(&body(i))).collect();
    assert_eq!(r.len(), 1000);
    drop(held);
    assert_eq!(r.len(), 0, "every entry freed with its last holder");
    assert!(r.is_empty());

    // A server's cache keeps its statements alive (and shared) after the client left.
    let mut server = ServerStatements::default();
    let client = r.intern(b"select 1\0\0\0");
    let name = client.server_name.clone();
    assert!(server.insert(client.clone(), 10).is_none());
    drop(client);
    assert_eq!(r.len(), 1);
    assert_eq!(r.intern(b"select 1\0\0\0").server_name, name);
    server.remove(&name);
    assert_eq!(r.len(), 0);
}

#[test]
fn an_invalidated_or_evicted_statement_dropped_late_spares_its_successor() {
    let r = StatementRegistry::new(1);
    let old = r.intern(b"select 1\0\0\0");
    r.invalidate(&old);
    let new = r.intern(b"select 1\0\0\0");
    drop(old);
    assert_eq!(r.len(), 1);
    assert!(Arc::ptr_eq(&new, &r.intern(b"select 1\0\0\0")));

    let other = r.intern(b"select 2\0\0\0"); // evicts `new` from the index (cap 1)
    let newer = r.intern(b"select 1\0\0\0"); // evicts `other`
    assert_ne!(new.server_name, newer.server_name);
    drop(new);
    drop(other);
    assert_eq!(r.len(), 1);
    assert!(Arc::ptr_eq(&newer, &r.intern(b"select 1\0\0\0")));
}

#[test]
fn the_cap_drops_the_least_recently_parsed() {
    let r = StatementRegistry::new(64);
    let held: Vec<_> = (0..64).map(|i| r.intern(&body(i))).collect();
    assert_eq!(r.len(), 64);
    // Statement 0 is parsed again, so it is the most recently used now.
    assert!(Arc::ptr_eq(&held[0], &r.intern(&body(0))));
    let extra = r.intern(&body(64));
    assert!(r.len() <= 64, "{} entries", r.len());
    assert!(r.len() >= 56, "only the oldest eighth goes: {}", r.len());
    assert!(
        Arc::ptr_eq(&held[0], &r.intern(&body(0))),
        "recently used kept"
    );
    assert!(Arc::ptr_eq(&extra, &r.intern(&body(64))));
    // Statement 1 was the least recently used: still usable by its holder, but the next
    // Parse of its text gets a new server-side name.
    let again = r.intern(&body(1));
    assert_ne!(again.server_name, held[1].server_name);

    for i in 100..10_000 {
        drop(r.intern(&body(i)));
        assert!(r.len() <= 64);
    }
    r.set_capacity(8);
    assert!(r.len() <= 8);
    r.set_capacity(0);
    assert!(r.len() <= 1, "a capacity of 0 means 1");
}

#[test]
fn lru_evicts_least_recently_used() {
    let r = StatementRegistry::default();
    let [a, b, c] = [1, 2, 3].map(|i| r.intern(&body(i)));
    let mut s = ServerStatements::default();
    assert!(s.insert(a.clone(), 2).is_none());
    assert!(s.insert(b.clone(), 2).is_none());
    assert!(s.touch(&a.server_name));
    let victim = s.insert(c.clone(), 2).expect("one evicted");
    assert!(Arc::ptr_eq(&victim, &b));
    assert!(s.touch(&a.server_name) && s.touch(&c.server_name) && !s.touch(&b.server_name));
    s.remove(&a.server_name);
    assert_eq!(s.len(), 1);
}
