//! Wiring between the Postgres side and the admin listener: health from live pool state,
//! and online reload (also on SIGHUP) of pool sizes and timeouts.

use std::sync::Arc;

use sluice_admin::{AdminHooks, HealthReport, PoolHealth, ReloadFuture};
use sluice_config::{Config, ConfigError};
use sluice_pg::Context;

/// Re-reads the configuration with the same file, environment and flags as at start.
pub type Loader = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// The MongoDB side's shared state, when a `[mongo]` section runs.
pub type MongoCtx = Option<Arc<sluice_mongo::Context>>;

/// The admin listener's view of the running proxy.
pub struct Hooks {
    /// Shared Postgres state.
    pub ctx: Arc<Context>,
    /// Shared MongoDB state.
    pub mongo: MongoCtx,
    /// How to load the configuration again.
    pub loader: Loader,
}

impl AdminHooks for Hooks {
    fn health(&self) -> HealthReport {
        let pools = self
            .ctx
            .pools()
            .map(|pool| {
                let health = pool.health();
                PoolHealth {
                    name: pool.settings().name.clone(),
                    healthy: health.is_ok(),
                    reason: health.err(),
                }
            })
            .collect();
        HealthReport { pools }
    }

    fn reload(&self) -> ReloadFuture {
        let result = reload(&self.ctx, self.mongo.as_deref(), &self.loader);
        Box::pin(async move { result })
    }
}

/// The console's RELOAD and SHUTDOWN. Holds the context weakly: the context owns it.
pub struct ConsoleBridge {
    /// Shared Postgres state.
    pub ctx: std::sync::Weak<Context>,
    /// Shared MongoDB state.
    pub mongo: MongoCtx,
    /// How to load the configuration again.
    pub loader: Loader,
    /// Cancelled by SHUTDOWN.
    pub stop: tokio_util::sync::CancellationToken,
}

impl sluice_pg::console::ConsoleHooks for ConsoleBridge {
    fn reload(&self) -> Result<String, String> {
        let ctx = self.ctx.upgrade().ok_or("shutting down")?;
        reload(&ctx, self.mongo.as_deref(), &self.loader)
    }

    fn shutdown(&self) {
        tracing::info!("SHUTDOWN from the admin console");
        self.stop.cancel();
    }
}

/// Loads the configuration again and applies what can change online: pool sizes,
/// `min_pool_size` and `pool_timeout` (Postgres and MongoDB),
/// `prepared_statement_registry_size`, and certificates. Changes that need a restart (listen address,
/// databases, users, pool mode, auth) are named in the result. An invalid file changes
/// nothing and is returned as the error.
pub fn reload(
    ctx: &Context,
    mongo: Option<&sluice_mongo::Context>,
    loader: &Loader,
) -> Result<String, String> {
    let new = loader().map_err(|e| {
        tracing::error!(error = %e, "reload rejected; keeping the running configuration");
        e.to_string()
    })?;
    ctx.reload_tls(&new).map_err(|e| {
        tracing::error!(error = %e, "reload rejected: TLS files");
        e.to_string()
    })?;
    let old = &ctx.config;
    let (pg, new_pg) = (&old.postgres, &new.postgres);
    let mut applied = 0;
    for db in &new_pg.databases {
        if let Some(running) = ctx.databases.get(&db.name) {
            for pool in running.pools.values() {
                pool.resize(
                    db.pool_size(new_pg),
                    db.min_pool_size(new_pg),
                    new_pg.pool_timeout,
                );
                pool.statements()
                    .set_capacity(new_pg.prepared_statement_registry_size);
                applied += 1;
            }
        }
    }
    let mut restart = Vec::new();
    if pg.listen != new_pg.listen {
        restart.push("postgres.listen");
    }
    let shape = |c: &sluice_config::PostgresConfig| {
        c.databases
            .iter()
            .map(|d| (d.name.clone(), d.upstream.clone(), d.pool_mode))
            .collect::<Vec<_>>()
    };
    if shape(pg) != shape(new_pg) {
        restart.push("postgres.databases (added, removed or upstream changed)");
    }
    if pg.users != new_pg.users || pg.admin_users != new_pg.admin_users {
        restart.push("postgres.users");
    }
    if pg.pool_mode != new_pg.pool_mode || pg.auth_type != new_pg.auth_type {
        restart.push("postgres.pool_mode / auth_type");
    }
    if pg.max_client_conn != new_pg.max_client_conn {
        restart.push("postgres.max_client_conn");
    }
    if old.admin != new.admin {
        restart.push("admin");
    }
    match (mongo, &new.mongo) {
        (Some(running), Some(new_mongo)) => {
            restart.extend(running.reload(new_mongo));
            applied += 1;
        }
        (None, None) => {}
        _ => restart.push("mongo (section added or removed)"),
    }
    let detail = if restart.is_empty() {
        format!("applied pool sizes, pool_timeout and TLS certificates to {applied} pools")
    } else {
        format!(
            "applied pool sizes and timeouts to {applied} pools; needs a restart to take effect: {}",
            restart.join(", ")
        )
    };
    tracing::info!(%detail, "configuration reloaded");
    Ok(detail)
}
