//! The hosts of a multi-host database: each host's role (configured, or found by the
//! health check for `auto`), its ban and replication lag, the pools of each user on it,
//! and the choice of a host for a transaction. The choice ([`choose`]) is a pure function
//! of a snapshot; the periodic check that feeds it ([`health`]) does the I/O.

pub(crate) mod health;
pub(crate) mod readonly;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use sluice_config::{DatabaseConfig, HostConfig, HostRole, PostgresConfig};

use crate::pool::PgPool;

/// What a host is now, as far as Sluice knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not checked yet (`auto` before its first health check).
    Unknown,
    /// Takes writes.
    Primary,
    /// In recovery: reads only.
    Replica,
}

impl Role {
    /// The name shown in statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }

    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Primary,
            2 => Role::Replica,
            _ => Role::Unknown,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Role::Unknown => 0,
            Role::Primary => 1,
            Role::Replica => 2,
        }
    }
}

/// Where a transaction wants to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The primary (writes; the default).
    Primary,
    /// A replica and never the primary (`target_session_attrs` `read-only`, `standby`).
    Replica,
    /// A replica, else the primary (`prefer-standby`, and reads `read_write_split` sends).
    PreferReplica,
    /// Any healthy host (`any`).
    Any,
}

impl Target {
    /// What it asks for, in words (for errors).
    pub fn describe(self) -> &'static str {
        match self {
            Target::Primary => "the primary",
            Target::Replica => "a replica",
            Target::PreferReplica => "a replica or the primary",
            Target::Any => "any host",
        }
    }

    /// From a client's `target_session_attrs` startup parameter (libpq's values); `None`
    /// for a value libpq does not know.
    pub fn from_session_attrs(value: &str) -> Option<Target> {
        Some(match value.to_ascii_lowercase().as_str() {
            "read-write" | "primary" => Target::Primary,
            "read-only" | "standby" => Target::Replica,
            "prefer-standby" => Target::PreferReplica,
            "any" => Target::Any,
            _ => return None,
        })
    }
}

/// One host as [`choose`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct HostView {
    /// What it is now.
    pub role: Role,
    /// Not banned.
    pub usable: bool,
    /// Server connections of the asking pool in use there.
    pub busy: u64,
}

/// The host (index) for `target`: the primary (or, while none is known, the first host
/// not yet checked), or the least busy usable replica (earlier hosts first on ties).
pub fn choose(hosts: &[HostView], target: Target) -> Option<usize> {
    let least_busy = |want: &dyn Fn(&HostView) -> bool| {
        hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.usable && want(h))
            .min_by_key(|(i, h)| (h.busy, *i))
            .map(|(i, _)| i)
    };
    let primary = || {
        let first = |role| hosts.iter().position(|h| h.usable && h.role == role);
        first(Role::Primary).or_else(|| first(Role::Unknown))
    };
    match target {
        Target::Primary => primary(),
        Target::Replica => least_busy(&|h| h.role == Role::Replica),
        Target::PreferReplica => least_busy(&|h| h.role == Role::Replica).or_else(primary),
        Target::Any => least_busy(&|_| true),
    }
}

/// A client's way to a multi-host database: the hosts and its user's pool on each.
pub struct Route {
    /// The database's hosts.
    pub set: Arc<HostSet>,
    /// The user's pool on each host, in host order.
    pub pools: Vec<PgPool>,
}

impl Route {
    /// The pool for a transaction that wants `target`, if a host can take it.
    pub fn pick(&self, target: Target) -> Option<&PgPool> {
        let busy: Vec<u64> = self.pools.iter().map(PgPool::busy).collect();
        self.set
            .choose(target, &busy)
            .and_then(|i| self.pools.get(i))
    }

    /// A connect through `pool` failed: bans its host (as a failed health check does), so
    /// the next transaction goes elsewhere without waiting for the next check.
    pub fn connect_failed(&self, pool: &PgPool, why: &str) {
        if let Some(i) = self.pools.iter().position(|p| p.same(pool)) {
            let on_host: Vec<_> = self.set.hosts[i].pools.read().values().cloned().collect();
            self.set.ban(i, why, &on_host);
        }
    }
}

/// A client's route and what its transactions want (`target_session_attrs`).
pub struct ClientRoute {
    /// The hosts and the client's pool on each.
    pub route: Route,
    /// Where its transactions go unless `read_write_split` sends a read elsewhere.
    pub target: Target,
}

/// What the health check found on one host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckResult {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// How far its replay is behind (replicas; zero when caught up).
    pub lag: Duration,
}

/// The health settings in force (reload updates them).
#[derive(Clone, Copy, Debug)]
pub struct HealthSettings {
    /// How long a failing host is left out.
    pub ban_time: Duration,
    /// How often each host is checked.
    pub interval: Duration,
    /// Most lag a replica may have and take reads (zero: no limit).
    pub max_lag: Duration,
    /// Bound on the check's connect and query.
    pub timeout: Duration,
}

impl HealthSettings {
    fn of(pg: &PostgresConfig) -> Self {
        Self {
            ban_time: pg.ban_time,
            interval: pg.health_check_interval,
            max_lag: pg.max_replica_lag,
            timeout: pg.server_connect_timeout,
        }
    }
}

/// One host of a database and what is known of it.
pub struct HostState {
    /// Its address and configured role.
    pub config: HostConfig,
    role: AtomicU8,
    banned_until: Mutex<Option<Instant>>,
    lag: Mutex<Option<Duration>>,
    last_error: Mutex<Option<String>>,
    /// The pool of each user on this host (every host but the first; the first host's
    /// pools are the database's own).
    pub(crate) pools: RwLock<HashMap<String, PgPool>>,
}

/// The hosts of one multi-host database.
pub struct HostSet {
    /// The database's name.
    pub database: String,
    /// In configuration order; the first is the upstream URL's host.
    pub hosts: Vec<HostState>,
    /// `read_write_split`.
    pub read_write_split: bool,
    settings: RwLock<HealthSettings>,
    closed: AtomicBool,
}

/// A host's state for `/health`, `/admin/pool-stats` and the console.
#[derive(Clone, Debug)]
pub struct HostReport {
    /// `host:port`.
    pub address: String,
    /// Configured role (`primary`, `replica`, `auto`).
    pub configured: HostRole,
    /// Role now.
    pub role: Role,
    /// Seconds of ban left (zero: usable).
    pub banned_for: f64,
    /// Replication lag in seconds at the last check, if known.
    pub lag: Option<f64>,
    /// Why the last check failed, if it did.
    pub last_error: Option<String>,
}

impl HostSet {
    /// The hosts of `db` (which lists several), with `pg`'s health settings.
    pub fn new(db: &DatabaseConfig, pg: &PostgresConfig) -> Self {
        let hosts = db
            .hosts
            .iter()
            .map(|h| HostState {
                config: h.clone(),
                role: AtomicU8::new(
                    match h.role {
                        HostRole::Primary => Role::Primary,
                        HostRole::Replica => Role::Replica,
                        HostRole::Auto => Role::Unknown,
                    }
                    .to_u8(),
                ),
                banned_until: Mutex::new(None),
                lag: Mutex::new(None),
                last_error: Mutex::new(None),
                pools: RwLock::new(HashMap::new()),
            })
            .collect();
        Self {
            database: db.name.clone(),
            hosts,
            read_write_split: db.read_write_split,
            settings: RwLock::new(HealthSettings::of(pg)),
            closed: AtomicBool::new(false),
        }
    }

    /// Applies reloaded health settings.
    pub fn reconfigure(&self, pg: &PostgresConfig) {
        *self.settings.write() = HealthSettings::of(pg);
    }

    /// The health settings in force.
    pub fn settings(&self) -> HealthSettings {
        *self.settings.read()
    }

    /// Host `i`'s role now.
    pub fn role(&self, i: usize) -> Role {
        self.hosts.get(i).map_or(Role::Unknown, |h| {
            Role::from_u8(h.role.load(Ordering::Relaxed))
        })
    }

    /// Whether host `i` is not banned at `now`.
    pub fn usable(&self, i: usize, now: Instant) -> bool {
        self.hosts
            .get(i)
            .is_some_and(|h| h.banned_until.lock().is_none_or(|until| until <= now))
    }

    /// Leaves host `i` out for `ban_time` and closes its idle connections (`pools`: the
    /// pools on it). Logged once per ban.
    pub fn ban(&self, i: usize, why: &str, pools: &[PgPool]) {
        let Some(host) = self.hosts.get(i) else {
            return;
        };
        let now = Instant::now();
        let was_usable = self.usable(i, now);
        *host.banned_until.lock() = Some(now + self.settings().ban_time);
        *host.last_error.lock() = Some(why.to_owned());
        if was_usable {
            tracing::warn!(host = %host.config.address(), reason = why, ban_time = ?self.settings().ban_time, "host banned");
            for pool in pools {
                pool.close_idle();
            }
        }
    }

    /// Records a successful check of host `i`: an `auto` host takes the role it reported;
    /// a replica lagging past `max_replica_lag` is banned. Returns the ban reason, if any.
    pub fn record(&self, i: usize, result: CheckResult) -> Option<String> {
        let host = self.hosts.get(i)?;
        if host.config.role == HostRole::Auto {
            let role = if result.in_recovery {
                Role::Replica
            } else {
                Role::Primary
            };
            let before = Role::from_u8(host.role.swap(role.to_u8(), Ordering::Relaxed));
            if before != role {
                tracing::info!(host = %host.config.address(), from = before.as_str(), to = role.as_str(), "host role");
                // A replica's connect fails at once (the transaction goes elsewhere); the
                // primary's is retried, as there is nowhere else for a write to go.
                for pool in host.pools.read().values() {
                    pool.set_retry_connect(role != Role::Replica);
                }
            }
        }
        *host.lag.lock() = result.in_recovery.then_some(result.lag);
        *host.last_error.lock() = None;
        let max = self.settings().max_lag;
        (result.in_recovery && !max.is_zero() && result.lag > max).then(|| {
            format!(
                "replication lag {:.1}s is over max_replica_lag {:?}",
                result.lag.as_secs_f64(),
                max
            )
        })
    }

    /// The host for `target` given how busy the asking user's pool is on each host.
    pub fn choose(&self, target: Target, busy: &[u64]) -> Option<usize> {
        let now = Instant::now();
        let views: Vec<HostView> = (0..self.hosts.len())
            .map(|i| HostView {
                role: self.role(i),
                usable: self.usable(i, now),
                busy: busy.get(i).copied().unwrap_or(0),
            })
            .collect();
        choose(&views, target)
    }

    /// Every host's state now.
    pub fn report(&self) -> Vec<HostReport> {
        let now = Instant::now();
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| HostReport {
                address: h.config.address(),
                configured: h.config.role,
                role: self.role(i),
                banned_for: h
                    .banned_until
                    .lock()
                    .map_or(0.0, |u| u.saturating_duration_since(now).as_secs_f64()),
                lag: h.lag.lock().map(|l| l.as_secs_f64()),
                last_error: h.last_error.lock().clone(),
            })
            .collect()
    }

    /// Stops the health check (the database was removed, or shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Whether [`HostSet::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
