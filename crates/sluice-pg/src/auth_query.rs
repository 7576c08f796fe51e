//! PgBouncer's `auth_query`: the secret of a user the configuration does not list, read
//! from PostgreSQL at login as `auth_user`, so no user's password need be in Sluice's
//! configuration.
//!
//! Answers are cached for `auth_cache_ttl`, including "no such user" (a negative entry),
//! in at most [`AUTH_CACHE_CAP`] entries. A login that fails against a cached secret drops
//! it, so a changed password is read afresh on the next attempt. Each database has one
//! connection for these queries, used by one login at a time; a login that waited for it
//! looks in the cache again first, so a burst of logins of one user runs one query.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_auth::Secret;
use sluice_config::PostgresConfig;
use thiserror::Error;
use tokio::time::Instant;

use crate::upstream::{PgUpstreamError, ServerConn, UpstreamSecret};

/// How one user proves who they are.
#[derive(Debug, Clone)]
pub struct UserAuth {
    /// The stored secret (plaintext, md5 hash or SCRAM verifier).
    pub secret: Secret,
    /// The SCRAM verifier for this secret, when SCRAM is possible.
    pub scram: Option<sluice_auth::ScramVerifier>,
}

/// Where a database's users are looked up: its name and upstream server.
pub struct QueryTarget<'a> {
    /// The database's name (the cache key).
    pub name: &'a str,
    /// Its upstream (host, port, database; the user is replaced by `auth_user`).
    pub upstream: &'a sluice_config::Upstream,
    /// TLS towards it.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// Its sslmode.
    pub sslmode: sluice_config::SslMode,
}

/// Most (database, user) answers kept; past it, expired entries go first, then the oldest.
pub const AUTH_CACHE_CAP: usize = 10_000;

/// Why `auth_query` gave no answer (the client gets FATAL 08006; nothing is cached).
#[derive(Debug, Error)]
pub enum AuthQueryError {
    /// Connecting or logging in as `auth_user`, or the query itself, failed.
    #[error("auth_query as \"{user}\" failed: {source}")]
    Upstream {
        /// The auth_user.
        user: String,
        /// What went wrong.
        #[source]
        source: PgUpstreamError,
    },
    /// Another login held the query connection for too long.
    #[error("auth_query: timed out waiting for the query connection")]
    Busy,
    /// The query returned a secret Sluice cannot read.
    #[error("auth_query returned an unreadable secret for \"{user}\": {source}")]
    BadSecret {
        /// The user it was for.
        user: String,
        /// Why.
        #[source]
        source: sluice_auth::AuthError,
    },
}

/// What a lookup found.
pub struct Fetched {
    /// The user's credentials, or `None` when PostgreSQL has no such user (or no password).
    pub auth: Option<UserAuth>,
    /// Whether this came from the cache (a failed login should then drop it).
    pub cached: bool,
}

struct Entry {
    auth: Option<UserAuth>,
    fetched: Instant,
}

type QueryConn = Arc<tokio::sync::Mutex<Option<ServerConn>>>;

/// The `auth_query` state shared by every context (its cache outlives reloads).
#[derive(Default)]
pub struct AuthQuery {
    /// `auth_user` and what it logs in with; `None`: auth_query is off.
    login: Option<(String, UpstreamSecret)>,
    cache: parking_lot::Mutex<HashMap<(String, String), Entry>>,
    /// The query connection of each database, by database name.
    conns: parking_lot::Mutex<HashMap<String, QueryConn>>,
}

impl AuthQuery {
    /// Looks users up as `user`, logging in with `secret`.
    pub fn new(user: String, secret: UpstreamSecret) -> Self {
        Self {
            login: Some((user, secret)),
            ..Self::default()
        }
    }

    /// Whether `auth_user` is set.
    pub fn enabled(&self) -> bool {
        self.login.is_some()
    }

    /// Entries in the cache now (for figures).
    pub fn cached(&self) -> usize {
        self.cache.lock().len()
    }

    /// The credentials of `user` on `db`: cached if fresh, else from `auth_query`.
    pub async fn lookup(
        &self,
        pg: &PostgresConfig,
        db: &QueryTarget<'_>,
        user: &str,
    ) -> Result<Fetched, AuthQueryError> {
        let key = (db.name.to_owned(), user.to_owned());
        if let Some(auth) = self.fresh(&key, pg.auth_cache_ttl) {
            return Ok(Fetched { auth, cached: true });
        }
        let Some((auth_user, secret)) = &self.login else {
            return Ok(Fetched {
                auth: None,
                cached: false,
            });
        };
        let conn = self.conn(db.name);
        let bound = pg.server_connect_timeout + crate::upstream::CLEANUP_TIMEOUT;
        let mut conn = tokio::time::timeout(bound, conn.lock())
            .await
            .map_err(|_| AuthQueryError::Busy)?;
        if let Some(auth) = self.fresh(&key, pg.auth_cache_ttl) {
            return Ok(Fetched { auth, cached: true });
        }
        let row = query(&mut conn, pg, db, (auth_user, secret), user).await?;
        let auth = credentials(user, row)?;
        self.remember(key, auth.clone(), pg.auth_cache_ttl);
        Ok(Fetched {
            auth,
            cached: false,
        })
    }

    /// Drops what is cached for `user` on `db` (its login just failed).
    pub fn forget(&self, db: &str, user: &str) {
        self.cache.lock().remove(&(db.to_owned(), user.to_owned()));
    }

    fn conn(&self, db: &str) -> QueryConn {
        self.conns.lock().entry(db.to_owned()).or_default().clone()
    }

    /// The cached answer, if younger than `ttl`.
    fn fresh(&self, key: &(String, String), ttl: Duration) -> Option<Option<UserAuth>> {
        let cache = self.cache.lock();
        let e = cache.get(key)?;
        (e.fetched.elapsed() < ttl).then(|| e.auth.clone())
    }

    fn remember(&self, key: (String, String), auth: Option<UserAuth>, ttl: Duration) {
        let mut cache = self.cache.lock();
        if cache.len() >= AUTH_CACHE_CAP && !cache.contains_key(&key) {
            evict(&mut cache, ttl);
        }
        let fetched = Instant::now();
        cache.insert(key, Entry { auth, fetched });
    }
}

/// Runs `auth_query` for `user` on `conn` (opened first as `auth_user` when there is none
/// or it died); a connection that failed other than with a server error is dropped.
async fn query(
    conn: &mut Option<ServerConn>,
    pg: &PostgresConfig,
    db: &QueryTarget<'_>,
    (auth_user, secret): (&str, &UpstreamSecret),
    user: &str,
) -> Result<Option<Vec<Option<Vec<u8>>>>, AuthQueryError> {
    let failed = |source| AuthQueryError::Upstream {
        user: auth_user.to_owned(),
        source,
    };
    if conn.as_ref().is_none_or(|c| !c.looks_alive()) {
        let settings = db.upstream.as_user(auth_user);
        let opened = ServerConn::connect(
            &settings,
            secret,
            pg.server_connect_timeout,
            db.tls.as_ref(),
            db.sslmode,
        );
        *conn = Some(Box::pin(opened).await.map_err(failed)?);
    }
    let Some(c) = conn.as_mut() else {
        return Err(AuthQueryError::Busy);
    };
    let params = [user.as_bytes()];
    let query = c.query_first_row_with(pg.auth_query.as_bytes(), &params);
    match tokio::time::timeout(crate::upstream::CLEANUP_TIMEOUT, query).await {
        Ok(Ok(row)) => Ok(row),
        Ok(Err(e)) if matches!(e, PgUpstreamError::Server { .. }) => Err(failed(e)),
        Ok(Err(e)) => {
            *conn = None;
            Err(failed(e))
        }
        Err(_) => {
            *conn = None;
            Err(failed(PgUpstreamError::Timeout))
        }
    }
}

/// Makes room for one entry: the expired ones go, else the oldest.
fn evict(cache: &mut HashMap<(String, String), Entry>, ttl: Duration) {
    let before = cache.len();
    cache.retain(|_, e| e.fetched.elapsed() < ttl);
    if cache.len() < before {
        return;
    }
    let oldest = cache
        .iter()
        .min_by_key(|(_, e)| e.fetched)
        .map(|(k, _)| k.clone());
    if let Some(k) = oldest {
        cache.remove(&k);
    }
}

/// The credentials in `auth_query`'s first row (`name`, `secret`): none without a row or
/// with a NULL secret, as PgBouncer.
fn credentials(
    user: &str,
    row: Option<Vec<Option<Vec<u8>>>>,
) -> Result<Option<UserAuth>, AuthQueryError> {
    let Some(secret) = row.and_then(|r| r.into_iter().nth(1).flatten()) else {
        return Ok(None);
    };
    let bad = |source| AuthQueryError::BadSecret {
        user: user.to_owned(),
        source,
    };
    let text = String::from_utf8(secret)
        .map_err(|_| bad(sluice_auth::AuthError::Malformed("secret is not UTF-8")))?;
    let secret = Secret::parse(&text).map_err(bad)?;
    let scram = secret.scram_verifier();
    Ok(Some(UserAuth { secret, scram }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rows_become_credentials_and_null_or_no_row_is_no_user() {
        assert!(credentials("u", None).unwrap().is_none());
        assert!(credentials("u", Some(vec![Some(b"u".to_vec()), None]))
            .unwrap()
            .is_none());
        let md5 = b"md5a3556571e93b0d20722ba62be61e8c2d".to_vec();
        let auth = credentials("u", Some(vec![Some(b"u".to_vec()), Some(md5)]))
            .unwrap()
            .unwrap();
        assert!(matches!(auth.secret, Secret::Md5(_)) && auth.scram.is_none());
        let bad = b"SCRAM-SHA-256$nonsense".to_vec();
        assert!(credentials("u", Some(vec![None, Some(bad)])).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_expires_forgets_and_stays_bounded() {
        let q = AuthQuery::default();
        let key = |u: &str| ("db".to_owned(), u.to_owned());
        let ttl = Duration::from_secs(10);
        q.remember(key("a"), None, ttl);
        assert!(q.fresh(&key("a"), ttl).is_some());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(q.fresh(&key("a"), ttl).is_none());
        q.remember(key("a"), None, ttl);
        q.forget("db", "a");
        assert!(q.fresh(&key("a"), ttl).is_none());
        q.remember(key("0"), None, ttl);
        tokio::time::advance(Duration::from_secs(1)).await;
        for i in 1..AUTH_CACHE_CAP + 5 {
            q.remember(key(&i.to_string()), None, ttl);
        }
        assert_eq!(q.cached(), AUTH_CACHE_CAP);
        // The newest entry is kept; the oldest went.
        assert!(q
            .fresh(&key(&(AUTH_CACHE_CAP + 4).to_string()), ttl)
            .is_some());
        assert!(q.fresh(&key("0"), ttl).is_none());
    }
}
