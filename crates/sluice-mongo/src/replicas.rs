//! Replica sets, the I/O side: a heartbeat task sends `hello` to every member every
//! `heartbeatFrequencyMS` (and at once after a failed round trip), feeds
//! [`TopologyState`], points the primary pool at the new primary after a failover, and
//! closes the pool of a member the set no longer lists (forgetting the cursors it held).
//! Reads with a non-primary `$readPreference` go to a per-member pool (created on first
//! use, same sizes as the primary's, never failing `/health`), and the cursors they open are
//! remembered so their `getMore`/`killCursors` reach the same member.
//!
//! Only active when the upstream URI names several hosts or a `replicaSet` (and not
//! `directConnection=true`); otherwise every request goes to the one pool as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use sluice_stats::Registry;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::pool::{MongoPool, PoolSettings};
use crate::request::{ReadPref, ReadPrefError};
use crate::topology::{Reply, Role, Route, TopologyState};
use crate::upstream::{Target, UpstreamConn};

/// Most cursors remembered on non-primary members; past it, a new cursor's `getMore`
/// goes to the primary and gets the server's own CursorNotFound.
const MAX_CURSORS: usize = 100_000;

/// A remembered cursor not continued for this long is dropped when the table is full (the
/// server's default `cursorTimeoutMillis`): cursors that errored or were abandoned without
/// `killCursors` would otherwise fill it for good.
const CURSOR_IDLE: Duration = Duration::from_secs(600);

/// Shortest pause between two heartbeat rounds, even when woken by failures.
const MIN_HEARTBEAT: Duration = Duration::from_millis(500);

/// Where one request goes.
pub enum Choice {
    /// The primary pool.
    Primary,
    /// A non-primary member's pool, with its address.
    Member(MongoPool, String),
    /// Nothing satisfies the read preference.
    Unsatisfiable,
    /// The read preference cannot apply to this set (`maxStalenessSeconds` too small).
    Invalid(ReadPrefError),
}

/// Replica-set state shared by every session.
pub struct Replicas {
    target: Target,
    state: RwLock<TopologyState>,
    wake: Notify,
    /// Flips to true after the first heartbeat round.
    ready: watch::Sender<bool>,
    turn: AtomicUsize,
    members: Mutex<HashMap<String, MongoPool>>,
    cursors: Mutex<HashMap<i64, (String, Instant)>>,
    template: Mutex<PoolSettings>,
    stats: Arc<Registry>,
}

impl Replicas {
    /// State for `target`; member pools copy `template`'s sizes and register in `stats`.
    pub fn new(target: Target, template: PoolSettings, stats: Arc<Registry>) -> Replicas {
        let heartbeat = target.heartbeat.max(MIN_HEARTBEAT);
        Replicas {
            state: RwLock::new(TopologyState::new(
                target.hosts.clone(),
                target.set_name.clone(),
                heartbeat,
            )),
            target,
            wake: Notify::new(),
            ready: watch::channel(false).0,
            turn: AtomicUsize::new(0),
            members: Mutex::new(HashMap::new()),
            cursors: Mutex::new(HashMap::new()),
            template: Mutex::new(template),
            stats,
        }
    }

    /// Whether the URI asked for replica-set behaviour.
    pub fn enabled(&self) -> bool {
        self.target.monitor
    }

    /// Asks for a heartbeat round now (after a round trip failed).
    pub fn check_soon(&self) {
        if self.enabled() {
            self.wake.notify_one();
        }
    }

    /// Chooses the pool for a request with a non-primary read preference. Waits for the
    /// first heartbeat round (at most `connect_timeout`) right after start.
    pub async fn choose(&self, pref: &ReadPref) -> Choice {
        if !self.enabled() {
            return Choice::Primary;
        }
        self.first_round().await;
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let route = self.state.read().select(pref, turn);
        match route {
            Route::Primary => Choice::Primary,
            Route::Unsatisfiable => Choice::Unsatisfiable,
            Route::Invalid(e) => Choice::Invalid(e),
            Route::Member(addr) => Choice::Member(self.member_pool(&addr), addr),
        }
    }

    /// Waits (at most `connect_timeout`) for the first heartbeat round right after start,
    /// so that no request goes to a member before the election rules have seen them all
    /// (the first writable seed may be a stale primary). Returns at once after that.
    pub async fn first_round(&self) {
        if !self.enabled() || *self.ready.borrow() {
            return;
        }
        let mut ready = self.ready.subscribe();
        let limit = self.template.lock().connect_timeout;
        let _ = tokio::time::timeout(limit, ready.wait_for(|r| *r)).await;
    }

    /// The pool of a non-primary member (created on first use).
    pub fn member_pool(&self, addr: &str) -> MongoPool {
        let mut members = self.members.lock();
        if let Some(pool) = members.get(addr) {
            return pool.clone();
        }
        let mut settings = self.template.lock().clone();
        settings.name = format!("mongo@{addr}");
        settings.min_size = 0;
        settings.tracks_health = false;
        let pool = MongoPool::new(settings, self.target.clone());
        pool.set_address(Some(addr.to_owned()));
        pool.set_role(self.role_of(addr));
        pool.spawn_maintenance();
        self.stats.register_mongo(Arc::new(pool.clone()));
        members.insert(addr.to_owned(), pool.clone());
        pool
    }

    /// The role of `addr` by the latest heartbeat round (`unknown` if it did not answer).
    fn role_of(&self, addr: &str) -> &'static str {
        let state = self.state.read();
        state.member(addr).map_or(Role::Unknown, |m| m.role).label()
    }

    /// The member that holds any of these cursors, if it is not the primary.
    pub fn cursor_home(&self, ids: &[i64]) -> Option<String> {
        if ids.is_empty() || !self.enabled() {
            return None;
        }
        let cursors = self.cursors.lock();
        ids.iter()
            .find_map(|id| cursors.get(id).map(|(a, _)| a.clone()))
    }

    /// Records that cursor `id` lives on `addr`.
    pub fn remember_cursor(&self, id: i64, addr: &str) {
        let mut cursors = self.cursors.lock();
        if cursors.len() >= MAX_CURSORS && !cursors.contains_key(&id) {
            let now = Instant::now();
            cursors.retain(|_, (_, t)| now.duration_since(*t) < CURSOR_IDLE);
        }
        if cursors.len() < MAX_CURSORS || cursors.contains_key(&id) {
            cursors.insert(id, (addr.to_owned(), Instant::now()));
        } else {
            tracing::warn!(
                cursor = id,
                member = addr,
                "too many cursors on secondaries to track; its getMore will go to the primary"
            );
        }
    }

    /// Forgets exhausted or killed cursors.
    pub fn forget_cursors(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        let mut cursors = self.cursors.lock();
        for id in ids {
            cursors.remove(id);
        }
    }

    /// Applies reloaded sizes to the member pools (and to pools made later).
    pub fn resize(&self, max: usize, timeout: Duration) {
        {
            let mut t = self.template.lock();
            t.max_size = max;
            t.timeout = timeout;
        }
        for pool in self.members.lock().values() {
            pool.resize(max, 0, timeout);
        }
    }

    /// Closes the member pools.
    pub fn close(&self) {
        for pool in self.members.lock().values() {
            pool.close();
        }
    }

    /// Starts the heartbeat task; it points `primary` at the primary it finds and stops
    /// when `primary` is closed.
    pub fn spawn_monitor(self: &Arc<Self>, primary: MongoPool) {
        if !self.enabled() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            while !primary.is_closed() {
                this.round(&primary).await;
                let heartbeat = this.target.heartbeat.max(MIN_HEARTBEAT);
                tokio::select! {
                    _ = tokio::time::sleep(heartbeat) => {}
                    _ = this.wake.notified() => tokio::time::sleep(MIN_HEARTBEAT).await,
                }
            }
            this.close();
        });
    }

    /// One heartbeat round over every known host.
    async fn round(&self, primary: &MongoPool) {
        let hosts = self.state.read().hosts();
        let limit = self.template.lock().connect_timeout;
        let mut probes = JoinSet::new();
        for host in hosts {
            let target = self.target.clone();
            probes.spawn(async move {
                let start = Instant::now();
                let reply = UpstreamConn::probe(&target, &host, limit).await;
                let result = match reply {
                    Ok(doc) => Some(Reply {
                        doc,
                        rtt: start.elapsed(),
                        at: Instant::now(),
                    }),
                    Err(e) => {
                        tracing::debug!(host = %host, error = %e, "replica-set heartbeat failed");
                        None
                    }
                };
                (host, result)
            });
        }
        let mut results = Vec::new();
        while let Some(done) = probes.join_next().await {
            if let Ok(r) = done {
                results.push(r);
            }
        }
        let (changed, deposed) = self.apply(results);
        primary.avoid(deposed);
        if let Some(now) = changed {
            primary.set_role(if now.is_some() { "primary" } else { "unknown" });
            primary.set_address(now);
        }
        self.ready.send_replace(true);
    }

    /// Feeds one round to the topology and closes the pools of removed members. Returns
    /// the new primary (`Some(None)`: none) when it changed, and the deposed claimants.
    fn apply(
        &self,
        results: Vec<(String, Option<Reply>)>,
    ) -> (Option<Option<String>>, Vec<String>) {
        let (outcome, now) = {
            let mut state = self.state.write();
            let outcome = state.update(results);
            (outcome, state.primary().map(str::to_owned))
        };
        for (addr, pool) in self.members.lock().iter() {
            pool.set_role(self.role_of(addr));
        }
        for addr in &outcome.removed {
            tracing::info!(member = %addr, "replica-set member removed; its pool is closed");
            if let Some(pool) = self.members.lock().remove(addr) {
                pool.close();
                self.stats.unregister_mongo(&format!("mongo@{addr}"));
            }
            self.cursors.lock().retain(|_, (home, _)| home != addr);
        }
        if !outcome.primary_changed {
            return (None, outcome.deposed);
        }
        let (election_id, set_version) = now
            .as_deref()
            .and_then(|p| {
                let state = self.state.read();
                state
                    .member(p)
                    .map(|m| (m.election_id.map(|o| o.to_hex()), m.set_version))
            })
            .unwrap_or_default();
        tracing::info!(
            primary = ?now,
            election_id = election_id.as_deref().unwrap_or("none"),
            set_version = ?set_version,
            "replica-set primary changed"
        );
        (Some(now), outcome.deposed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bson::doc;

    fn replicas() -> Replicas {
        let target = Target {
            hosts: vec!["a:1".into(), "b:1".into()],
            credential: None,
            app_name: "test".into(),
            tls: None,
            monitor: true,
            heartbeat: Duration::from_secs(10),
            set_name: Some("rs".into()),
            cluster_time: Default::default(),
            compressors: Vec::new(),
        };
        let template = PoolSettings {
            name: "mongo".into(),
            user: String::new(),
            max_size: 2,
            min_size: 0,
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            tracks_health: true,
        };
        Replicas::new(target, template, Arc::new(Registry::new()))
    }

    fn reply(doc: bson::Document) -> Option<Reply> {
        Some(Reply {
            doc,
            rtt: Duration::from_millis(1),
            at: Instant::now(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_member_loses_its_pool_and_cursors() {
        let r = replicas();
        let secondary = doc! {"secondary": true, "setName": "rs", "ok": 1};
        let primary = |hosts: Vec<&str>| {
            doc! {"isWritablePrimary": true, "setName": "rs", "hosts": hosts, "ok": 1}
        };
        let changed = r.apply(vec![
            ("a:1".into(), reply(primary(vec!["a:1", "b:1"]))),
            ("b:1".into(), reply(secondary.clone())),
        ]);
        assert_eq!(changed, (Some(Some("a:1".into())), vec![]));
        let pool = r.member_pool("b:1");
        r.remember_cursor(7, "b:1");
        assert_eq!(r.stats.mongo_snapshots().len(), 1);
        // The primary no longer lists b.
        let changed = r.apply(vec![
            ("a:1".into(), reply(primary(vec!["a:1"]))),
            ("b:1".into(), reply(secondary)),
        ]);
        assert_eq!(changed, (None, vec![]));
        assert!(pool.is_closed());
        assert_eq!(r.cursor_home(&[7]), None);
        assert!(r.stats.mongo_snapshots().is_empty());
        assert_eq!(r.state.read().hosts(), ["a:1"]);
    }
}
