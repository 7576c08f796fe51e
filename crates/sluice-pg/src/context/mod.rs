//! Everything sessions share: the configuration, the pools per (database, user), the
//! client credentials (with SCRAM verifiers derived once, not per login), the cancel
//! registry and the client-connection count.
//!
//! A reload does not mutate a [`PgContext`]: it builds the next one with
//! [`PgContext::reconfigured`] (same pools, counters and registries; the new configuration
//! and what derives from it) and swaps it into the [`LiveContext`]. Each client takes the
//! context in force when it connects and keeps it, so per-client settings are read from
//! one consistent snapshot without a lock per message.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use sluice_auth::Secret;
use sluice_config::{Config, DatabaseConfig, PostgresConfig};
use sluice_stats::Registry;
use thiserror::Error;

use crate::cancel::CancelRegistry;
use crate::pool::PgPool;
use crate::upstream::UpstreamSecret;

pub use crate::auth_query::UserAuth;
pub use database::{Database, MAX_AUTO_DATABASES, WILDCARD};

mod database;
mod users;
use users::{configured_users, refreshed_users, same_secrets, user_modes};
mod lookup;

/// A configuration that cannot be turned into pools.
#[derive(Debug, Error)]
pub enum ContextError {
    /// TLS certificates or keys could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// A user's password field is not a valid secret.
    #[error("postgres.users: password of user \"{user}\": {source}")]
    BadSecret {
        /// The user.
        user: String,
        /// Why.
        #[source]
        source: sluice_auth::AuthError,
    },
}

/// Shared state of the Postgres listener, as of one configuration.
pub struct PgContext {
    /// The configuration in force (the latest reload's).
    pub config: Arc<Config>,
    /// The configuration at start: what keys that need a restart still follow.
    pub started: Arc<Config>,
    /// Databases by the name clients ask for (not the wildcard `*`).
    pub databases: HashMap<String, Arc<Database>>,
    /// The wildcard entry (`name = "*"`), if any: a client asking for a database not
    /// configured gets one made from it, for its database name.
    wildcard: Option<DatabaseConfig>,
    /// Databases made from the wildcard, by name (kept across reloads that leave the
    /// wildcard as it was).
    auto: database::AutoDatabases,
    /// CancelRequest routing.
    pub cancel: Arc<CancelRegistry>,
    /// Client connections currently open (for `max_client_conn`).
    pub clients: Arc<AtomicUsize>,
    /// Statistics shared with the admin listener.
    pub stats: Arc<Registry>,
    /// Admin users allowed into the SQL console, with their credentials.
    pub admin_users: HashMap<String, UserAuth>,
    /// The TLS acceptor for clients (replaced on reload so new certificates apply).
    pub tls: Arc<parking_lot::RwLock<Option<tokio_rustls::TlsAcceptor>>>,
    /// Reload and shutdown for the console, set by the binary at start.
    pub console_hooks: Arc<std::sync::OnceLock<Arc<dyn ConsoleHooks>>>,
    /// The `max_user_connections` budget of each user (shared by every database).
    user_budgets: database::UserBudgets,
    /// Clients of each user now (for `max_user_client_connections`; shared).
    user_clients: Arc<parking_lot::Mutex<HashMap<String, Arc<AtomicUsize>>>>,
    /// `auth_query` lookups and their cache (shared by every context).
    pub auth_query: Arc<crate::auth_query::AuthQuery>,
    /// Credentials of `postgres.users` (built at start; `admin_users` are looked up here).
    credentials: Arc<HashMap<String, UserAuth>>,
    /// The startup settings of the latest client: clients of one application send the
    /// same startup packet, so they share one copy (see [`PgContext::intern_startup`]).
    last_startup: Arc<parking_lot::Mutex<crate::state::Settings>>,
    /// Database and user names of logged-in clients, shared by every client that uses them
    /// (only names that passed authentication get here, so the set stays small).
    names: Arc<parking_lot::Mutex<std::collections::HashSet<Arc<str>>>>,
}

impl PgContext {
    /// The shared copy of a database or user name.
    pub(crate) fn intern_name(&self, name: &str) -> Arc<str> {
        let mut names = self.names.lock();
        if let Some(n) = names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        names.insert(n.clone());
        n
    }

    /// Points `state`'s startup and current settings at the previous client's copy when
    /// they are equal, so thousands of identical clients hold one allocation.
    pub(crate) fn intern_startup(&self, state: &mut crate::state::ClientState) {
        let mut last = self.last_startup.lock();
        if state.startup == *last {
            state.startup = last.clone();
        } else {
            *last = state.startup.clone();
        }
        state.settings = state.startup.clone();
    }

    /// Builds pools and credentials from a validated configuration. Pools are empty until
    /// [`PgContext::start_pools`] is called.
    pub fn new(config: Arc<Config>) -> Result<Self, ContextError> {
        let pg = &config.postgres;
        let configured = configured_users(pg)?;
        let mut databases = HashMap::new();
        let user_budgets = database::UserBudgets::default();
        for db in pg.databases.iter().filter(|d| d.name != WILDCARD) {
            let built = database::database(db, pg, &configured, &user_budgets)?;
            databases.insert(db.name.clone(), Arc::new(built));
        }
        let admin_users = admin_credentials(pg, &config.postgres, &configured);
        let acceptor = crate::tls::acceptor(&pg.tls)?;
        let auth_query = Arc::new(auth_query(pg, &configured));
        let stats = Arc::new(Registry::new());
        for db in databases.values() {
            for (_, pool) in db.pools() {
                stats.register(Arc::new(pool));
            }
        }
        Ok(Self {
            started: config.clone(),
            wildcard: pg.database(WILDCARD).cloned(),
            auto: database::AutoDatabases::default(),
            config,
            databases,
            cancel: Arc::new(CancelRegistry::default()),
            clients: Arc::default(),
            stats,
            admin_users,
            tls: Arc::new(parking_lot::RwLock::new(acceptor)),
            console_hooks: Arc::default(),
            auth_query,
            user_clients: Arc::default(),
            user_budgets,
            credentials: Arc::new(configured),
            last_startup: Arc::default(),
            names: Arc::default(),
        })
    }

    /// The context after a reload to `config`: the same counters and registries; a
    /// database whose upstream, mode and TLS are unchanged keeps its pools, reconfigured
    /// (sizes, timeouts, reset query, lifetimes); an added or changed one gets new pools;
    /// a removed one is gone. Nothing starts or closes until
    /// [`PgContext::take_over_from`]. Users are refreshed the same way: a removed user's
    /// pools go, and a user whose pool mode changed gets new pools.
    pub fn reconfigured(&self, config: Arc<Config>) -> Result<Self, ContextError> {
        let pg = &config.postgres;
        let credentials = Arc::new(refreshed_users(pg, &self.credentials)?);
        let mut databases = HashMap::new();
        for new in pg.databases.iter().filter(|d| d.name != WILDCARD) {
            let kept = self.kept_database(new, pg, &credentials);
            // Added, or its upstream, mode, TLS (or, with several hosts, users) changed:
            // new pools.
            let db = match kept {
                Some(db) => db,
                None => database::database(new, pg, &credentials, &self.user_budgets)?,
            };
            databases.insert(new.name.clone(), Arc::new(db));
        }
        // Databases made from an unchanged wildcard, with unchanged users, stay; any
        // change starts afresh.
        let wildcard = pg.database(WILDCARD).cloned();
        let same_users = same_secrets(&credentials, &self.credentials)
            && user_modes(pg) == user_modes(&self.config.postgres);
        let auto = if wildcard == self.wildcard && same_users {
            for db in self.auto.lock().values() {
                db.reconfigure(pg);
            }
            self.auto.clone()
        } else {
            database::AutoDatabases::default()
        };
        Ok(Self {
            started: self.started.clone(),
            admin_users: admin_credentials(pg, &self.started.postgres, &credentials),
            config,
            databases,
            wildcard,
            auto,
            cancel: self.cancel.clone(),
            clients: self.clients.clone(),
            stats: self.stats.clone(),
            tls: self.tls.clone(),
            console_hooks: self.console_hooks.clone(),
            auth_query: self.auth_query.clone(),
            user_clients: self.user_clients.clone(),
            user_budgets: self.user_budgets.clone(),
            credentials,
            last_startup: self.last_startup.clone(),
            names: self.names.clone(),
        })
    }

    /// The database `new` names, kept from this context with its pools when its upstream
    /// and mode are unchanged (and, with several hosts, its users).
    fn kept_database(
        &self,
        new: &DatabaseConfig,
        pg: &PostgresConfig,
        credentials: &HashMap<String, UserAuth>,
    ) -> Option<Database> {
        let old = self.databases.get(&new.name)?;
        if !old.config.same_upstream(new)
            || old.config.pool_mode(&self.config.postgres) != new.pool_mode(pg)
        {
            return None;
        }
        let mut db = (**old).clone();
        db.config = new.clone();
        if !db.set_users(database::users_of(new, pg, credentials), pg) {
            return None;
        }
        db.reconfigure(pg);
        Some(db)
    }

    /// Puts a reload's database changes into effect, once nothing can fail any more:
    /// pools new since `previous` start, pools it had that this context lost close (their
    /// clients finish the transaction they are in, then are disconnected), and the
    /// statistics follow.
    pub fn take_over_from(&self, previous: &PgContext) {
        database::health_changes(&self.all_databases(), &previous.all_databases());
        let (now, before) = (self.pools(), previous.pools());
        for pool in now.iter().filter(|p| !before.iter().any(|b| b.same(p))) {
            pool.spawn_maintenance();
        }
        for pool in before.iter().filter(|b| !now.iter().any(|p| p.same(b))) {
            tracing::info!(pool = %pool.settings().name, "pool closed by the reload");
            pool.close();
        }
        let sources = now
            .into_iter()
            .map(|p| Arc::new(p) as Arc<dyn sluice_stats::PoolSource>)
            .collect();
        self.stats.replace_all(sources);
    }

    /// Starts the background tasks that open and keep `min_pool_size` connections.
    pub fn start_pools(&self) {
        for pool in self.pools() {
            pool.spawn_maintenance();
        }
        for (_, db) in self.all_databases() {
            db.start_health();
        }
    }

    /// The current client TLS acceptor, if TLS is enabled.
    pub fn tls_acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls.read().clone()
    }

    /// Loads the client certificate and key again (on reload); keeps the old ones if the
    /// new files are bad.
    pub fn reload_tls(&self, config: &Config) -> Result<(), crate::tls::TlsError> {
        let acceptor = crate::tls::acceptor(&config.postgres.tls)?;
        *self.tls.write() = acceptor;
        Ok(())
    }

    /// Every pool, for health reports and reload.
    pub fn pools(&self) -> Vec<PgPool> {
        self.all_databases()
            .into_iter()
            .flat_map(|(_, db)| db.pools().into_iter().map(|(_, p)| p))
            .collect()
    }

    /// Every database, configured or made from the wildcard, in name order.
    pub fn all_databases(&self) -> Vec<(String, Arc<Database>)> {
        let mut all: Vec<_> = self
            .databases
            .iter()
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect();
        all.extend(self.auto.lock().iter().map(|(n, d)| (n.clone(), d.clone())));
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Closes every pool (at shutdown).
    pub fn close_pools(&self) {
        for pool in self.pools() {
            pool.close();
        }
        for (_, db) in self.all_databases() {
            if let Some(hosts) = &db.hosts {
                hosts.close();
            }
        }
    }
}

/// `auth_query` as `auth_user`, logging in with its configured secret (off without one).
fn auth_query(
    pg: &PostgresConfig,
    configured: &HashMap<String, UserAuth>,
) -> crate::auth_query::AuthQuery {
    let login = pg.auth_user.as_ref().and_then(|name| {
        let secret = UpstreamSecret::from_client_secret(&configured.get(name)?.secret);
        Some((name.clone(), secret))
    });
    match login {
        Some((name, secret)) => crate::auth_query::AuthQuery::new(name, secret),
        None => crate::auth_query::AuthQuery::default(),
    }
}

/// What the admin console needs from the binary: reload, shutdown and the context in
/// force. Set once at start (`PgContext::console_hooks`); lives here, with the context that
/// carries it, so the console depends on the context and not the other way round.
pub trait ConsoleHooks: Send + Sync {
    /// Reloads the configuration: what changed, or why nothing did.
    fn reload(&self) -> Result<sluice_config::ReloadPlan, sluice_config::ReloadError>;
    /// The context in force after the latest reload (`None`: keep the session's own).
    fn current(&self) -> Option<Arc<PgContext>>;
    /// Starts a graceful shutdown of the whole process.
    fn shutdown(&self);
}

/// Credentials of the console users `pg.admin_users` names: a configured user, or (with
/// no user list) a database's upstream user, as of the configuration at start (`started`).
fn admin_credentials(
    pg: &PostgresConfig,
    started: &PostgresConfig,
    configured: &HashMap<String, UserAuth>,
) -> HashMap<String, UserAuth> {
    let mut admin_users = HashMap::new();
    for name in &pg.admin_users {
        let auth = configured.get(name).cloned().or_else(|| {
            started
                .databases
                .iter()
                .find(|d| &d.upstream.user == name)
                .map(|d| {
                    let secret = Secret::Plain(d.upstream.password.clone().unwrap_or_default());
                    let scram = secret.scram_verifier();
                    UserAuth { secret, scram }
                })
        });
        if let Some(auth) = auth {
            admin_users.insert(name.clone(), auth);
        }
    }
    admin_users
}

/// The [`PgContext`] in force, replaced whole on reload. Readers take it once (per accepted
/// client, per reload) and keep their copy; nothing holds the lock across an `.await`.
pub struct LiveContext {
    current: parking_lot::RwLock<Arc<PgContext>>,
    /// Serializes reloads (SIGHUP, HTTP and console may race), so none is lost.
    reloading: parking_lot::Mutex<()>,
}

impl LiveContext {
    /// Starts with `ctx`.
    pub fn new(ctx: Arc<PgContext>) -> Self {
        Self {
            current: parking_lot::RwLock::new(ctx),
            reloading: parking_lot::Mutex::new(()),
        }
    }

    /// The context in force.
    pub fn current(&self) -> Arc<PgContext> {
        self.current.read().clone()
    }

    /// Replaces the context with what `next` builds from the current one (one reload at
    /// a time); on `Err` nothing changes.
    pub fn update<T, E>(
        &self,
        next: impl FnOnce(&Arc<PgContext>) -> Result<(PgContext, T), E>,
    ) -> Result<T, E> {
        let _one_at_a_time = self.reloading.lock();
        let (ctx, out) = next(&self.current())?;
        *self.current.write() = Arc::new(ctx);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use sluice_config::PoolMode;
    use sluice_stats::PoolSource;

    const BASE: &str = r#"
[postgres]
pool_mode = "transaction"
admin_users = []
[[postgres.databases]]
name = "a"
upstream = "postgres://u:p@127.0.0.1:1/a"
"#;

    fn config(text: &str) -> Arc<Config> {
        Arc::new(Config::from_toml_str(text).unwrap())
    }

    #[test]
    fn reconfigured_context_shares_pools_and_applies_live_keys_only() {
        let ctx = PgContext::new(config(BASE)).unwrap();
        let changed = BASE
            .replacen(
                "[postgres]\n",
                "[postgres]\npool_size = 3\nserver_reset_query = \"RESET ALL\"\n",
                1,
            )
            .replace("admin_users = []", "admin_users = [\"u\"]");
        let next = ctx.reconfigured(config(&changed)).unwrap();
        next.take_over_from(&ctx);
        let (old, new) = (
            &ctx.databases["a"].pool("u").unwrap(),
            &next.databases["a"].pool("u").unwrap(),
        );
        // One pool, seen from both contexts.
        assert!(old.same(new) && !new.is_closed());
        let s = new.settings();
        assert_eq!(s.reset_query, "RESET ALL");
        assert_eq!(s.max_size, 3);
        assert_eq!(new.snapshot().max, 3);
        assert_eq!(next.started.postgres.pool_size, 15);
        // admin_users is looked up again; counters are shared.
        assert!(ctx.admin_users.is_empty());
        assert!(next.admin_users.contains_key("u"));
        assert!(Arc::ptr_eq(&ctx.clients, &next.clients));
    }

    #[tokio::test]
    async fn a_changed_upstream_or_mode_gets_new_pools_and_a_removed_database_closes() {
        let two = format!(
            "{BASE}[[postgres.databases]]\nname = \"b\"\nupstream = \"postgres://u:p@127.0.0.1:1/b\"\n"
        );
        let ctx = PgContext::new(config(&two)).unwrap();
        let changed = BASE
            .replace("pool_mode = \"transaction\"", "pool_mode = \"session\"")
            .replace("127.0.0.1:1/a", "127.0.0.1:2/a");
        let next = ctx.reconfigured(config(&changed)).unwrap();
        let old = ctx.databases["a"].pool("u").unwrap();
        // Nothing closes before the new context takes over.
        assert!(!old.is_closed());
        next.take_over_from(&ctx);
        let new = next.databases["a"].pool("u").unwrap();
        assert!(!old.same(&new) && old.is_closed() && !new.is_closed());
        let s = new.settings();
        assert_eq!((s.mode, s.upstream.port), (PoolMode::Session, 2));
        assert!(!next.databases.contains_key("b"));
        assert!(ctx.databases["b"].pool("u").unwrap().is_closed());
        assert_eq!(next.stats.pool_count(), 1);
    }
}
