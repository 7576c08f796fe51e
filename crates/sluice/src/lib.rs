//! Sluice: the application — command line, wiring, signals and graceful shutdown.
//! `main.rs` is a thin shim over [`cli_main`], so the end-to-end test crate builds the very
//! same program. The operator tools (`demo`, `check`) are the `sluice-tools` crate, which
//! uses [`run`] to start Sluice in-process.

#![forbid(unsafe_code)]

mod admin;
mod cli;
pub mod health;
mod signal;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
/// The configuration [`run`] takes (re-exported so callers need not depend on
/// `sluice-config` themselves).
pub use sluice_config::Config;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use admin::Loader;
pub use cli::Cli;
pub use signal::shutdown_signal;

/// Exit code for a configuration error (`EX_CONFIG` from sysexits.h).
const EXIT_CONFIG: u8 = 78;
/// Exit code for a subcommand that moved to `sluice-tools` (a usage error, as clap's).
const EXIT_MOVED: u8 = 2;

/// Runs the `sluice` command line program and returns its exit code.
pub fn cli_main() -> ExitCode {
    let cli = <Cli as clap::Parser>::parse();
    match &cli.command {
        Some(cli::Command::Health(args)) => return with_runtime(health::main(args.clone())),
        Some(cli::Command::ImportPgbouncer(args)) => return import_pgbouncer(args),
        Some(cli::Command::Demo(args)) => return moved("demo", &args.args),
        Some(cli::Command::Check(args)) => return moved("check", &args.args),
        Some(cli::Command::Run(_)) | None => {}
    }
    init_tracing("info");
    let config = match cli.load_config() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("sluice: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    raise_fd_limit();
    let runtime = match build_runtime(config.general.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let loader: admin::Loader = Arc::new(move || cli.load_config());
    match runtime.block_on(run(config, loader, signal::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice import-pgbouncer`: prints the converted configuration on stdout.
fn import_pgbouncer(args: &cli::ImportArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&args.ini) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice: cannot read {}: {e}", args.ini.display());
            return ExitCode::FAILURE;
        }
    };
    let userlist = args.userlist.as_ref().map(|p| p.display().to_string());
    match sluice_config::pgbouncer::import(&text, userlist.as_deref()) {
        Ok(toml) => {
            print!("{toml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {}: {e}", args.ini.display());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `sluice demo` / `sluice check`: points to the `sluice-tools` program, which has them.
fn moved(sub: &str, args: &[String]) -> ExitCode {
    let rest: String = args.iter().map(|a| format!(" {a}")).collect();
    eprintln!(
        "sluice: `{sub}` is not part of the proxy program; it is in the `sluice-tools` \
         program:\n  sluice-tools {sub}{rest}\n(`cargo run --release -p sluice-tools -- {sub}` \
         from a checkout)"
    );
    ExitCode::from(EXIT_MOVED)
}

/// The runtime `general.worker_threads` asks for: 0 = one worker per CPU, 1 = a
/// single-threaded runtime, n = n workers.
fn build_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match worker_threads {
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

/// Runs Sluice with `config` until `shutdown` completes, then drains: stops accepting,
/// lets running transactions finish (bounded by `general.shutdown_timeout`) and returns.
pub async fn run(
    config: Arc<Config>,
    loader: admin::Loader,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let ctx = Arc::new(sluice_pg::PgContext::new(config.clone()).context("building pools")?);
    // Reloads replace the context in force; `ctx` stays the handle to what outlives them
    // (pools, statistics, console hooks).
    let live = Arc::new(sluice_pg::LiveContext::new(ctx.clone()));
    // Bound before the admin listener so reloads reach it; nothing is accepted until `run`.
    let mongo = bind_mongo(&config, &ctx).await?;
    let mongo_ctx: admin::MongoCtx = mongo.as_ref().map(|m| m.context().clone());
    // The admin listener binds before the Postgres one: if its port is taken, Sluice fails
    // before Postgres clients can reach it.
    let admin_server = bind_admin(&config, &ctx, &live, &mongo_ctx, &loader).await?;
    let listener = sluice_pg::PgListener::bind(live.clone())
        .await
        .with_context(|| format!("binding postgres.listen {}", config.postgres.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        mode = %config.postgres.pool_mode,
        databases = config.postgres.databases.len(),
        "sluice ready"
    );
    ctx.start_pools();
    if let Some(m) = &mongo {
        tracing::info!(listen = %m.local_addr()?, "mongo listener ready");
    }
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    if let Some(server) = admin_server {
        tokio::spawn(server.run(token.clone()));
    }
    let stop = CancellationToken::new();
    let bridge = admin::ConsoleBridge {
        live: Arc::downgrade(&live),
        mongo: mongo_ctx.clone(),
        loader: loader.clone(),
        stop: stop.clone(),
    };
    let _ = ctx.console_hooks.set(Arc::new(bridge));
    tokio::spawn(signal::reload_on_sighup(live.clone(), mongo_ctx, loader));
    let mut accepts = vec![tokio::spawn(listener.run(token.clone(), tracker.clone()))];
    accepts.extend(mongo.map(|m| tokio::spawn(m.run(token.clone(), tracker.clone()))));
    tokio::select! {
        _ = shutdown => {}
        _ = stop.cancelled() => {}
    }
    tracing::info!("shutting down: no new clients; waiting for running transactions");
    token.cancel();
    for accept in accepts {
        let _ = accept.await;
    }
    drain(&ctx, &live, tracker).await;
    Ok(())
}

/// Binds the MongoDB listener when there is a `[mongo]` section (not accepting yet); its
/// pool joins the same statistics.
async fn bind_mongo(
    config: &Config,
    ctx: &sluice_pg::PgContext,
) -> anyhow::Result<Option<sluice_mongo::MongoListener>> {
    let Some(mongo_config) = &config.mongo else {
        return Ok(None);
    };
    let listener = sluice_mongo::MongoListener::bind(mongo_config.clone(), &ctx.stats)
        .await
        .context("starting the MongoDB listener")?;
    Ok(Some(listener))
}

/// Binds the HTTP admin listener when `admin.enabled` (not serving yet).
async fn bind_admin(
    config: &Config,
    ctx: &Arc<sluice_pg::PgContext>,
    live: &Arc<sluice_pg::LiveContext>,
    mongo: &admin::MongoCtx,
    loader: &admin::Loader,
) -> anyhow::Result<Option<sluice_admin::AdminServer>> {
    if !config.admin.enabled {
        return Ok(None);
    }
    let hooks = Arc::new(admin::Hooks {
        live: live.clone(),
        mongo: mongo.clone(),
        loader: loader.clone(),
    });
    let state = sluice_admin::AdminState::new(ctx.stats.clone(), config.admin.token.clone(), hooks)
        .context("setting up the Prometheus exposition")?;
    let server = sluice_admin::AdminServer::bind(config.admin.listen, state)
        .await
        .with_context(|| format!("binding admin.listen {}", config.admin.listen))?;
    tracing::info!(listen = %config.admin.listen, "admin listener ready");
    Ok(Some(server))
}

/// After the listeners stopped: waits for the sessions in `tracker` (bounded by the
/// `general.shutdown_timeout` in force), then closes the pools.
async fn drain(ctx: &sluice_pg::PgContext, live: &sluice_pg::LiveContext, tracker: TaskTracker) {
    tracker.close();
    let grace = live.current().config.general.shutdown_timeout;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown_timeout reached; closing remaining clients"
        );
    }
    ctx.close_pools();
    tracing::info!("bye");
}

/// Runs `fut` on a fresh multi-threaded runtime and returns its exit code (the proxy's
/// subcommands and `sluice-tools`).
pub fn with_runtime(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(fut),
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides `default` (an `EnvFilter` directive such as
/// `info`).
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Raises the open-files soft limit to the hard limit: every client is a socket.
pub fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
}
