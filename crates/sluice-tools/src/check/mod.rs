//! `sluice-tools check`: verifies an installation the way an operator would by hand — the
//! configuration, every upstream with the configured credentials, a query through Sluice
//! (the running one on `postgres.listen`, else one started in-process on free ports),
//! `/health` and `/admin/pool-stats` — one ✓/✗ line each.

mod admin;
mod report;
mod upstream;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sluice::health::loopback;
use sluice_config::{ClientTlsMode, Config};

use crate::cli::CheckArgs;
use crate::in_process::InProcess;
use report::Report;
use upstream::{check_upstream, client_credentials, query_through, upstream_credentials};

/// Runs `sluice-tools check`.
pub(crate) async fn main(args: CheckArgs) -> ExitCode {
    let mut report = Report::default();
    let Some(config) = load(&mut report, &args) else {
        return report.finish();
    };
    let pg = &config.postgres;
    if pg.databases.is_empty() {
        report.fail("no [[postgres.databases]] configured: Sluice has nothing to pool");
        return report.finish();
    }
    for db in &pg.databases {
        check_upstream(&mut report, db, &config).await;
    }
    if config.mongo.is_some() {
        report.note("[mongo] upstream: not checked by `sluice-tools check` (PostgreSQL only)");
    }
    let Some(target) = choose_target(&mut report, &config, &args).await else {
        return report.finish();
    };
    check_queries(&mut report, &config, &target).await;
    match target.admin {
        None => report.note("admin listener disabled (admin.enabled = false): /health and /admin/pool-stats not checked"),
        Some(admin) => {
            let token = config.admin.token.as_deref();
            admin::check_health(&mut report, admin).await;
            let names: Vec<&str> = pg.databases.iter().map(|d| d.name.as_str()).collect();
            admin::check_pool_stats(&mut report, admin, token, &names).await;
        }
    }
    if let Some(sluice) = target.in_process {
        sluice.stop().await;
    }
    report.finish()
}

/// Loads the configuration the way `sluice run` would (file, environment) and reports
/// on it; `None` when it does not load.
fn load(report: &mut Report, args: &CheckArgs) -> Option<Config> {
    let source = match &args.config {
        Some(path) => path.display().to_string(),
        None => match std::env::var(sluice_config::CONFIG_ENV) {
            Ok(p) if !p.trim().is_empty() => format!("{p} (from ${})", sluice_config::CONFIG_ENV),
            _ => "built-in defaults (no --config, no $SLUICE_CONFIG)".to_owned(),
        },
    };
    let config = match Config::load(args.config.as_deref(), &|k| std::env::var(k).ok(), &[]) {
        Ok(c) => c,
        Err(e) => {
            report.fail(format!("configuration {source}: {e}"));
            return None;
        }
    };
    let pg = &config.postgres;
    report.ok(format!(
        "configuration {source} is valid: {} database(s), pool_mode {}, pool_size {}, listen {}{}",
        pg.databases.len(),
        pg.pool_mode,
        pg.pool_size,
        pg.listen,
        if config.admin.enabled {
            format!(", admin http://{}", config.admin.listen)
        } else {
            String::new()
        }
    ));
    Some(config)
}

/// The Sluice the checks go through.
struct Target {
    /// Where clients connect.
    addr: SocketAddr,
    /// Its admin listener, when it has one.
    admin: Option<SocketAddr>,
    /// (user, password) per configured database, in order.
    creds: Vec<(String, String)>,
    /// Set when it runs in this process (to stop at the end).
    in_process: Option<InProcess>,
}

/// Through Sluice: the running one when it answers and we can log in, else one started
/// in-process. `None` (after a ✗ line) when neither is possible.
async fn choose_target(report: &mut Report, config: &Config, args: &CheckArgs) -> Option<Target> {
    let pg = &config.postgres;
    let listen = loopback(pg.listen);
    let running = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(listen),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let credentials: Option<Vec<(String, String)>> = pg
        .databases
        .iter()
        .map(|db| client_credentials(config, db, args))
        .collect();
    if let Some(creds) = credentials.filter(|_| running && pg.tls.mode != ClientTlsMode::Require) {
        report.note(format!("Sluice answers on {listen}: checking through it"));
        let admin = config.admin.enabled.then(|| loopback(config.admin.listen));
        return Some(Target {
            addr: listen,
            admin,
            creds,
            in_process: None,
        });
    }
    if running {
        report.note(format!(
            "Sluice answers on {listen}, but {}: checking through an in-process Sluice instead",
            if pg.tls.mode == ClientTlsMode::Require {
                "it requires TLS from clients".to_owned()
            } else {
                "no client password is known (pass --user and --password)".to_owned()
            }
        ));
    }
    match InProcess::start(config).await {
        Ok(sluice) => {
            if !running {
                report.note(format!(
                    "no Sluice answers on {listen}: started one in-process on {} (admin http://{})",
                    sluice.listen, sluice.admin
                ));
            }
            Some(Target {
                addr: sluice.listen,
                admin: Some(sluice.admin),
                creds: pg.databases.iter().map(upstream_credentials).collect(),
                in_process: Some(sluice),
            })
        }
        Err(e) => {
            report.fail(format!("starting an in-process Sluice: {e}"));
            None
        }
    }
}

/// `SELECT 1` through `target` to every configured database.
async fn check_queries(report: &mut Report, config: &Config, target: &Target) {
    let pg = &config.postgres;
    let addr = target.addr;
    for (db, (user, password)) in pg.databases.iter().zip(&target.creds) {
        let started = Instant::now();
        let limit = pg.server_connect_timeout + pg.pool_timeout.min(Duration::from_secs(10));
        let what = format!(
            "query through Sluice ({addr}) to database {} as {user}",
            db.name
        );
        match tokio::time::timeout(limit, query_through(addr, user, password, &db.name)).await {
            Ok(Ok(())) => report.ok(format!(
                "{what}: ok in {} ms",
                started.elapsed().as_millis()
            )),
            Ok(Err(e)) => report.fail(format!("{what}: {e}")),
            Err(_) => report.fail(format!("{what}: no answer within {limit:?}")),
        }
    }
}
