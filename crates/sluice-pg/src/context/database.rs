//! One configured database: who may log in to it, and its pools (one per user, made at
//! start for the configured users and on first login for users `auth_query` let in).

use std::collections::HashMap;
use std::sync::Arc;

use sluice_auth::Secret;
use sluice_config::{DatabaseConfig, PostgresConfig};
use sluice_pool::Budget;

use super::{ContextError, UserAuth};
use crate::pool::{PgPool, PoolSettings};
use crate::upstream::UpstreamSecret;

mod multihost;
pub(super) use multihost::health_changes;

/// The name of PgBouncer's fallback database entry.
pub const WILDCARD: &str = "*";

/// Most databases the wildcard makes; a client asking for one more gets 3D000.
pub const MAX_AUTO_DATABASES: usize = 1000;

/// Databases made from the wildcard, by name.
pub(crate) type AutoDatabases = Arc<parking_lot::Mutex<HashMap<String, Arc<Database>>>>;

/// The configuration of database `name` made from the wildcard entry `star`: its upstream
/// with `name` as the database.
pub(super) fn from_wildcard(star: &DatabaseConfig, name: &str) -> DatabaseConfig {
    let mut cfg = star.clone();
    cfg.name = name.to_owned();
    cfg.upstream.database = name.to_owned();
    cfg
}

/// The `max_user_connections` budget of each user, shared by every database.
pub(crate) type UserBudgets = Arc<parking_lot::Mutex<HashMap<String, Arc<Budget>>>>;

/// One configured database: its pools and who may use it.
#[derive(Clone)]
pub struct Database {
    /// Its configuration.
    pub config: DatabaseConfig,
    /// Pools by client user name: one per configured user from the start, and one more for
    /// each user `auth_query` let in (shared by every context after a reload).
    pools: Arc<parking_lot::RwLock<HashMap<String, PgPool>>>,
    /// Users allowed on this database and their credentials.
    pub users: HashMap<String, UserAuth>,
    /// Server connections of all its pools together (`max_db_connections`).
    pub(crate) budget: Arc<Budget>,
    /// Server connections of each user across databases (`max_user_connections`;
    /// shared by every database).
    user_budgets: UserBudgets,
    /// Clients of this database now (for `max_db_client_connections`; shared).
    pub(crate) clients: Arc<std::sync::atomic::AtomicUsize>,
    /// TLS towards this database's upstream (`None`: sslmode disable).
    tls: Option<tokio_rustls::TlsConnector>,
    /// Its hosts, when it has several (see [`crate::hosts`]); each has a pool per user
    /// (the first host's are also in `pools`).
    pub(crate) hosts: Option<Arc<crate::hosts::HostSet>>,
}

impl Database {
    /// Applies a reload's user list: pools of users still listed stay (unless the pool
    /// logs in with the user's own secret and that changed), pools of users `auth_query`
    /// let in stay, pools of users no longer listed go (in a new map, so the context in
    /// force before keeps its own until the new one takes over), and new users get pools.
    /// A pool whose user's pool mode (`[[postgres.user_settings]]`) changed is replaced too.
    /// `false` (nothing done) for a database with several hosts whose users changed: it
    /// gets new pools instead.
    pub(super) fn set_users(
        &mut self,
        users: HashMap<String, UserAuth>,
        pg: &PostgresConfig,
    ) -> bool {
        let same_mode =
            |user: &str, pool: &PgPool| pool.settings().mode == self.config.pool_mode_for(pg, user);
        if users.len() == self.users.len()
            && users
                .iter()
                .all(|(u, a)| self.users.get(u).is_some_and(|o| o.secret == a.secret))
            && self.pools.read().iter().all(|(u, p)| same_mode(u, p))
        {
            return true;
        }
        if self.hosts.is_some() {
            return false;
        }
        let forwards = self.config.upstream.forwards_user();
        let mut pools: HashMap<String, PgPool> = HashMap::new();
        for (user, pool) in self.pools.read().iter() {
            let (before, now) = (self.users.get(user), users.get(user));
            let keep = same_mode(user, pool)
                && match (before, now) {
                    (None, None) => true,
                    (Some(b), Some(n)) => !forwards || b.secret == n.secret,
                    _ => false,
                };
            if keep {
                pools.insert(user.clone(), pool.clone());
            }
        }
        self.users = users;
        for (user, auth) in &self.users {
            if !pools.contains_key(user) {
                pools.insert(user.clone(), self.new_pool(user, auth, pg));
            }
        }
        self.pools = Arc::new(parking_lot::RwLock::new(pools));
        true
    }

    /// Applies a reload's settings to this database's pools and budgets.
    pub(super) fn reconfigure(&self, pg: &PostgresConfig) {
        self.set_budgets(pg);
        if let Some(hosts) = &self.hosts {
            hosts.reconfigure(pg);
        }
        for (user, pool) in self.pools() {
            pool.reconfigure(self.settings_for(&user, pg, &pool.secret()));
            pool.statements()
                .set_capacity(pg.prepared_statement_registry_size);
        }
    }

    /// Applies reloaded `max_db_connections` and `max_user_connections`.
    pub(super) fn set_budgets(&self, pg: &PostgresConfig) {
        self.budget.set_max(self.config.max_db_connections(pg));
        for (user, b) in self.user_budgets.lock().iter() {
            b.set_max(pg.max_user_connections_of(user));
        }
    }

    /// Where `auth_query` looks this database's users up.
    pub(crate) fn query_target(&self) -> crate::auth_query::QueryTarget<'_> {
        crate::auth_query::QueryTarget {
            name: &self.config.name,
            upstream: &self.config.upstream,
            tls: self.tls.clone(),
            sslmode: self.config.sslmode,
        }
    }

    /// The pool of client user `user`, if it has one yet.
    pub fn pool(&self, user: &str) -> Option<PgPool> {
        self.pools.read().get(user).cloned()
    }

    /// Every pool, by user name in name order (with several hosts, each user's pool on
    /// each host, in host order).
    pub fn pools(&self) -> Vec<(String, PgPool)> {
        if let Some(hosts) = &self.hosts {
            return multihost::all_pools(hosts);
        }
        let mut v: Vec<_> = self
            .pools
            .read()
            .iter()
            .map(|(u, p)| (u.clone(), p.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The settings of `user`'s pool under `pg`. A pool that logs in as its client and
    /// has nothing to log in with yet (a verifier, before the first SCRAM login) keeps no
    /// idle connections: it could not open them.
    pub(super) fn settings_for(
        &self,
        user: &str,
        pg: &PostgresConfig,
        secret: &UpstreamSecret,
    ) -> PoolSettings {
        let mut settings = pool_settings(&self.config, user, pg, self.tls.clone());
        if self.config.upstream.forwards_user() {
            settings.upstream = self.config.upstream.as_user(user);
            if secret.is_none() {
                settings.min_size = 0;
            }
        }
        settings
    }

    /// The pool of `user`, made on first use; `true` when it was made just now.
    pub(super) fn pool_or_insert(
        &self,
        user: &str,
        auth: &UserAuth,
        pg: &PostgresConfig,
    ) -> (PgPool, bool) {
        if let Some(pool) = self.pool(user) {
            return (pool, false);
        }
        let mut pools = self.pools.write();
        if let Some(pool) = pools.get(user) {
            return (pool.clone(), false);
        }
        let pool = self.new_pool(user, auth, pg);
        pools.insert(user.to_owned(), pool.clone());
        (pool, true)
    }

    /// The budget of `user`'s connections across databases.
    fn user_budget(&self, user: &str, pg: &PostgresConfig) -> Arc<Budget> {
        let mut budgets = self.user_budgets.lock();
        let budget = budgets.entry(user.to_owned()).or_insert_with(|| {
            Budget::new(format!("user {user}"), pg.max_user_connections_of(user))
        });
        budget.clone()
    }

    /// A new pool for `user`, logging in as the upstream URL's user or (with none in the
    /// URL) as `user` with what `auth` allows.
    fn new_pool(&self, user: &str, auth: &UserAuth, pg: &PostgresConfig) -> PgPool {
        let secret = if self.config.upstream.forwards_user() {
            UpstreamSecret::from_client_secret(&auth.secret)
        } else {
            UpstreamSecret::of(&self.config.upstream)
        };
        let budgets = vec![self.budget.clone(), self.user_budget(user, pg)];
        let settings = self.settings_for(user, pg, &secret);
        let pool = match &self.hosts {
            Some(hosts) => multihost::host_pools(hosts, user, settings, secret, budgets),
            None => PgPool::with_secret(settings, secret, budgets),
        };
        pool.statements()
            .set_capacity(pg.prepared_statement_registry_size);
        pool
    }
}

/// One pool's settings from the configuration (`tls`: the database's upstream connector).
fn pool_settings(
    db: &DatabaseConfig,
    user: &str,
    pg: &PostgresConfig,
    tls: Option<tokio_rustls::TlsConnector>,
) -> PoolSettings {
    let nonzero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
    let max_size = db.pool_size_for(pg, user);
    PoolSettings {
        name: format!("{}/{}", db.name, user),
        upstream: db.upstream.clone(),
        max_size,
        min_size: db.min_pool_size(pg).min(max_size),
        timeout: pg.pool_timeout,
        connect_timeout: pg.server_connect_timeout,
        mode: db.pool_mode_for(pg, user),
        reset_query: pg.server_reset_query.clone(),
        check_query: pg.server_check_query.clone(),
        reserve_size: pg.reserve_pool_size,
        reserve_timeout: pg.reserve_pool_timeout,
        check_delay: pg.server_check_delay,
        pin_session_state: pg.pin_session_state,
        max_pinned: pg.max_pinned_servers.unwrap_or(max_size / 2),
        max_prepared_statements: pg.max_prepared_statements,
        server_idle_timeout: nonzero(pg.server_idle_timeout),
        server_lifetime: nonzero(pg.server_lifetime),
        server_login_retry: pg.server_login_retry,
        retry_connect: true,
        tls,
        sslmode: db.sslmode,
    }
}

/// Who may log in to `db`: the configured users, or with none, the upstream URL's user
/// with its password.
pub(super) fn users_of(
    db: &DatabaseConfig,
    pg: &PostgresConfig,
    configured: &HashMap<String, UserAuth>,
) -> HashMap<String, UserAuth> {
    if !pg.users.is_empty() {
        return configured.clone();
    }
    let secret = Secret::Plain(db.upstream.password.clone().unwrap_or_default());
    let scram = secret.scram_verifier();
    HashMap::from([(db.upstream.user.clone(), UserAuth { secret, scram })])
}

/// One database: who may log in to it and a pool per such user.
pub(super) fn database(
    db: &DatabaseConfig,
    pg: &PostgresConfig,
    configured: &HashMap<String, UserAuth>,
    user_budgets: &UserBudgets,
) -> Result<Database, ContextError> {
    let users = users_of(db, pg, configured);
    let tls = crate::tls::connector(db.sslmode, db.sslrootcert.as_deref())?;
    let database = Database {
        config: db.clone(),
        pools: Arc::default(),
        users,
        budget: Budget::new(format!("database {}", db.name), db.max_db_connections(pg)),
        user_budgets: user_budgets.clone(),
        clients: Arc::default(),
        tls,
        hosts: (db.hosts.len() > 1).then(|| Arc::new(crate::hosts::HostSet::new(db, pg))),
    };
    let pools = database
        .users
        .iter()
        .map(|(user, auth)| (user.clone(), database.new_pool(user, auth, pg)))
        .collect();
    *database.pools.write() = pools;
    Ok(database)
}
