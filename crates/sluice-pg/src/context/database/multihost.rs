//! The pools of a database with several hosts: one per user on each host, sharing the
//! user's login secret and statement registry, named `database/user@host:port`; and the
//! [`Route`] a client of such a database takes.

use std::sync::Arc;

use sluice_pool::Budget;

use super::Database;
use crate::hosts::health::{self, CheckLogin};
use crate::hosts::{HostSet, Route};
use crate::pool::{PgPool, PoolSettings};
use crate::upstream::UpstreamSecret;

/// Every host's pools, by user name, then in host order.
pub(super) fn all_pools(hosts: &HostSet) -> Vec<(String, PgPool)> {
    let mut v: Vec<(String, usize, PgPool)> = hosts
        .hosts
        .iter()
        .enumerate()
        .flat_map(|(i, h)| {
            h.pools
                .read()
                .iter()
                .map(|(u, p)| (u.clone(), i, p.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    v.into_iter().map(|(u, _, p)| (u, p)).collect()
}

/// Makes `user`'s pool on every host from the first host's `settings`; returns the first
/// host's.
pub(super) fn host_pools(
    hosts: &Arc<HostSet>,
    user: &str,
    settings: PoolSettings,
    secret: UpstreamSecret,
    budgets: Vec<Arc<Budget>>,
) -> PgPool {
    let on = |i: usize| {
        let mut s = settings.clone();
        let host = &hosts.hosts[i].config;
        s.upstream.host.clone_from(&host.host);
        s.upstream.port = host.port;
        s.name = format!("{}@{}", settings.name, host.address());
        s
    };
    let first = PgPool::with_secret(on(0), secret, budgets.clone());
    for (i, host) in hosts.hosts.iter().enumerate() {
        let pool = if i == 0 {
            first.clone()
        } else {
            first.sibling(on(i), budgets.clone())
        };
        pool.set_member(member_source(hosts, i));
        pool.set_retry_connect(hosts.role(i) != crate::hosts::Role::Replica);
        host.pools.write().insert(user.to_owned(), pool);
    }
    first
}

/// Host `i`'s address and role now, for its pools' statistics (`role` is `primary`,
/// `replica` or `unknown`, and `banned` while it is).
fn member_source(hosts: &Arc<HostSet>, i: usize) -> crate::pool::MemberSource {
    let address = hosts.hosts[i].config.address();
    let weak = Arc::downgrade(hosts);
    Box::new(move || {
        let set = weak.upgrade()?;
        let role = if set.usable(i, std::time::Instant::now()) {
            set.role(i).as_str()
        } else {
            "banned"
        };
        Some(sluice_stats::MemberInfo {
            address: address.clone(),
            role: role.to_owned(),
        })
    })
}

impl Database {
    /// The way to this database's hosts for `user`, when it has several.
    pub(crate) fn route(&self, user: &str) -> Option<Route> {
        let set = self.hosts.clone()?;
        let pools = set
            .hosts
            .iter()
            .map(|h| h.pools.read().get(user).cloned())
            .collect::<Option<Vec<_>>>()?;
        Some(Route { set, pools })
    }

    /// Each host's state, when this database has several.
    pub fn host_report(&self) -> Option<Vec<crate::hosts::HostReport>> {
        self.hosts.as_ref().map(|h| h.report())
    }

    /// Starts the health check of this database's hosts, when it has several.
    pub(crate) fn start_health(&self) {
        if let Some(hosts) = &self.hosts {
            health::spawn(
                hosts,
                CheckLogin {
                    upstream: self.config.upstream.clone(),
                    tls: self.tls.clone(),
                    sslmode: self.config.sslmode,
                },
            );
        }
    }
}

/// After a reload: starts the health check of host sets new in `now`, and stops those of
/// `before` that are gone.
pub(in crate::context) fn health_changes(
    now: &[(String, Arc<Database>)],
    before: &[(String, Arc<Database>)],
) {
    let same = |a: &Database, b: &Database| match (&a.hosts, &b.hosts) {
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        _ => false,
    };
    for (_, db) in now {
        if !before.iter().any(|(_, b)| same(b, db)) {
            db.start_health();
        }
    }
    for (_, db) in before {
        if let Some(hosts) = db.hosts.as_ref() {
            if !now.iter().any(|(_, n)| same(n, db)) {
                hosts.close();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::hosts::CheckResult;
    use std::time::Duration;

    #[test]
    fn a_replicas_pools_fail_connects_at_once_and_the_primarys_retry() {
        let config = sluice_config::Config::from_toml_str(
            "[[postgres.databases]]\nname = \"d\"\nupstream = \"postgres://u:p@a,b/d\"\n",
        )
        .unwrap();
        let pg = &config.postgres;
        let db = &pg.databases[0];
        let hosts = Arc::new(HostSet::new(db, pg));
        let settings = super::super::pool_settings(db, "u", pg, None);
        let _ = host_pools(
            &hosts,
            "u",
            settings,
            UpstreamSecret::of(&db.upstream),
            Vec::new(),
        );
        let retry = |i: usize| hosts.hosts[i].pools.read()["u"].settings().retry_connect;
        // Not checked yet: either may be the primary.
        assert!(retry(0) && retry(1));
        let check = |in_recovery| CheckResult {
            in_recovery,
            lag: Duration::ZERO,
        };
        assert_eq!(hosts.record(0, check(false)), None);
        assert_eq!(hosts.record(1, check(true)), None);
        assert!(retry(0) && !retry(1));
        // Promoted: its writes are retried again.
        assert_eq!(hosts.record(1, check(false)), None);
        assert!(retry(1));
    }
}
