//! Wiring between the Postgres side and the admin listener: health from live pool state,
//! and online reload (also on SIGHUP and the console's RELOAD) of the configuration.

use std::sync::Arc;

use sluice_admin::{AdminHooks, HealthReport, PoolHealth, ReloadFuture};
use sluice_config::{Config, ConfigError, ReloadError, ReloadPlan};
use sluice_pg::LiveContext;

/// Re-reads the configuration with the same file, environment and flags as at start.
pub type Loader = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// The MongoDB side's shared state, when a `[mongo]` section runs.
pub type MongoCtx = Option<Arc<sluice_mongo::MongoContext>>;

/// The admin listener's view of the running proxy.
pub struct Hooks {
    /// Shared Postgres state.
    pub live: Arc<LiveContext>,
    /// Shared MongoDB state.
    pub mongo: MongoCtx,
    /// How to load the configuration again.
    pub loader: Loader,
}

impl AdminHooks for Hooks {
    fn health(&self) -> HealthReport {
        let ctx = self.live.current();
        let mut pools = Vec::new();
        for (name, db) in ctx.all_databases() {
            let Some(hosts) = db.host_report() else {
                pools.extend(db.pools().iter().map(|(_, pool)| {
                    let health = pool.health();
                    PoolHealth {
                        name: pool.settings().name.clone(),
                        healthy: health.is_ok(),
                        reason: health.err(),
                    }
                }));
                continue;
            };
            // Several hosts: one entry per host. A banned replica is reported but leaves
            // the proxy healthy (reads go elsewhere); a banned primary does not.
            pools.extend(hosts.into_iter().map(|h| {
                let banned = h.banned_for > 0.0;
                PoolHealth {
                    name: format!("{name}@{} ({})", h.address, h.role.as_str()),
                    healthy: !banned || h.role != sluice_pg::hosts::Role::Primary,
                    reason: banned.then(|| {
                        format!(
                            "banned for {:.1}s more: {}",
                            h.banned_for,
                            h.last_error.unwrap_or_default()
                        )
                    }),
                }
            }));
        }
        HealthReport { pools }
    }

    fn reload(&self) -> ReloadFuture {
        let result = reload(&self.live, self.mongo.as_deref(), &self.loader);
        Box::pin(async move { result })
    }
}

/// The console's RELOAD and SHUTDOWN. Holds the context weakly: the context owns it.
pub struct ConsoleBridge {
    /// Shared Postgres state.
    pub live: std::sync::Weak<LiveContext>,
    /// Shared MongoDB state.
    pub mongo: MongoCtx,
    /// How to load the configuration again.
    pub loader: Loader,
    /// Cancelled by SHUTDOWN.
    pub stop: tokio_util::sync::CancellationToken,
}

impl sluice_pg::context::ConsoleHooks for ConsoleBridge {
    fn reload(&self) -> Result<ReloadPlan, ReloadError> {
        let live = self.live.upgrade().ok_or(ReloadError::ShuttingDown)?;
        reload(&live, self.mongo.as_deref(), &self.loader)
    }

    fn current(&self) -> Option<Arc<sluice_pg::PgContext>> {
        self.live.upgrade().map(|live| live.current())
    }

    fn shutdown(&self) {
        tracing::info!("SHUTDOWN from the admin console");
        self.stop.cancel();
    }
}

/// Loads the configuration again and applies it: the next context (same pools, new
/// settings; see [`sluice_pg::PgContext::reconfigured`]) replaces the running one, so every
/// key `sluice_config::KEYS` marks live takes effect for new clients and the next
/// checkout. The answer names the changed keys, those applied and those that need a
/// restart (compared with the configuration at start, so they stay listed until then):
/// `applied: a, b; needs restart: c`, or `no changes`. The client TLS certificates and
/// keys (`[postgres.tls]`, `[mongo.tls]`) are read again every time. An invalid file, or a
/// certificate or key that does not load, changes nothing and is returned as the error.
pub fn reload(
    live: &LiveContext,
    mongo: Option<&sluice_mongo::MongoContext>,
    loader: &Loader,
) -> Result<ReloadPlan, ReloadError> {
    let new = Arc::new(loader().inspect_err(|e| {
        tracing::error!(error = %e, "reload rejected; keeping the running configuration");
    })?);
    let plan = live.update(|current| {
        // Both sides' certificates load before either is installed: bad files on one side
        // change nothing on the other.
        let mongo_tls = match (mongo, &new.mongo) {
            (Some(_), Some(new_mongo)) => {
                Some(sluice_mongo::tls::ClientTls::load(&new_mongo.tls).map_err(tls_rejected)?)
            }
            _ => None,
        };
        let next = current.reconfigured(new.clone()).map_err(tls_rejected)?;
        current.reload_tls(&new).map_err(tls_rejected)?;
        let plan = ReloadPlan {
            applied: sluice_config::diff(&current.config, &new).applied,
            restart: sluice_config::diff(&current.started, &new).restart,
        };
        if let (Some(running), Some(new_mongo)) = (mongo, &new.mongo) {
            running.reload(new_mongo);
            running.set_client_tls(mongo_tls.flatten());
        }
        next.take_over_from(current);
        Ok::<_, ReloadError>((next, plan))
    })?;
    tracing::info!(applied = ?plan.applied, needs_restart = ?plan.restart, "configuration reloaded");
    Ok(plan)
}

/// A certificate or key that does not load rejects the reload (logged here).
fn tls_rejected(e: impl std::error::Error + Send + Sync + 'static) -> ReloadError {
    tracing::error!(error = %e, "reload rejected: TLS files");
    ReloadError::Tls(Box::new(e))
}
