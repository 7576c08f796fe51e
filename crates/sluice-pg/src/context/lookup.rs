//! What a logging-in client needs from the context: its database (configured, or made
//! from the wildcard and kept once someone logged in to it), its pool (made on first use
//! for a user `auth_query` let in) and its per-user client count.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::database::MAX_AUTO_DATABASES;
use super::{database, Database, PgContext, UserAuth, WILDCARD};
use crate::pool::PgPool;
use crate::upstream::UpstreamSecret;

impl PgContext {
    /// The pool of `user` on `db`, made (and started) on first use by a user the
    /// configuration does not list, whom `auth` (from `auth_query`) let in.
    pub(crate) fn pool_for(&self, db: &Database, user: &str, auth: &UserAuth) -> PgPool {
        let (pool, new) = db.pool_or_insert(user, auth, &self.config.postgres);
        if !new {
            return pool;
        }
        self.stats.register(Arc::new(pool.clone()));
        pool.spawn_maintenance();
        tracing::info!(pool = %pool.settings().name, "pool opened for a user auth_query let in");
        pool
    }

    /// The count of `user`'s clients (made on first use, for authenticated users only).
    pub(crate) fn user_clients(&self, user: &str) -> Arc<AtomicUsize> {
        let mut map = self.user_clients.lock();
        if let Some(c) = map.get(user) {
            return c.clone();
        }
        let c = Arc::new(AtomicUsize::new(0));
        map.insert(user.to_owned(), c.clone());
        c
    }

    /// Gives `user`'s pool (which logs in as that user) the SCRAM keys of its latest
    /// login, when they differ from those it has: pass-through, so no password is needed.
    /// A pool that had nothing to log in with may now keep its `min_pool_size`.
    pub(crate) fn pass_through(
        &self,
        db: &Database,
        user: &str,
        pool: &PgPool,
        keys: sluice_auth::ScramKeys,
    ) {
        let had = pool.secret();
        if matches!(&had, UpstreamSecret::Scram(k) if *k == keys) {
            return;
        }
        if !matches!(had, UpstreamSecret::None | UpstreamSecret::Scram(_)) {
            // A password or md5 hash is configured: it stays what the pool logs in with.
            return;
        }
        let secret = UpstreamSecret::Scram(keys);
        pool.reconfigure(db.settings_for(user, &self.config.postgres, &secret));
        pool.set_secret(secret);
    }

    /// The database a client asks for: a configured one, one made from the wildcard
    /// before, or a new one from the wildcard (kept only once a client of it has logged
    /// in: [`PgContext::keep`]). `None`: no such database.
    pub(crate) fn database(&self, name: &str) -> Option<Arc<Database>> {
        if let Some(db) = self.databases.get(name) {
            return Some(db.clone());
        }
        if let Some(db) = self.auto.lock().get(name) {
            return Some(db.clone());
        }
        let star = self.wildcard.as_ref().filter(|_| name != WILDCARD)?;
        let pg = &self.config.postgres;
        let cfg = database::from_wildcard(star, name);
        match database::database(&cfg, pg, &self.credentials, &self.user_budgets) {
            Ok(db) => Some(Arc::new(db)),
            Err(e) => {
                tracing::warn!(database = %name, error = %e, "wildcard database not made");
                None
            }
        }
    }

    /// The database a client just logged in to, as kept: a new one from the wildcard is
    /// added (and its pools started) unless one of that name came first, or there are
    /// already [`MAX_AUTO_DATABASES`].
    pub(crate) fn keep(&self, db: Arc<Database>) -> Result<Arc<Database>, usize> {
        let name = &db.config.name;
        if self
            .databases
            .get(name)
            .is_some_and(|d| Arc::ptr_eq(d, &db))
        {
            return Ok(db);
        }
        let mut auto = self.auto.lock();
        if let Some(kept) = auto.get(name) {
            return Ok(kept.clone());
        }
        if auto.len() >= MAX_AUTO_DATABASES {
            return Err(MAX_AUTO_DATABASES);
        }
        auto.insert(name.clone(), db.clone());
        drop(auto);
        for (_, pool) in db.pools() {
            self.stats.register(Arc::new(pool.clone()));
            pool.spawn_maintenance();
        }
        tracing::info!(database = %name, "database made from the wildcard entry");
        Ok(db)
    }
}
