//! `sluice-tools demo`: starts a throwaway PostgreSQL cluster (or uses `--upstream`),
//! starts Sluice in front of it in this process, runs the same many-client workload
//! directly and through Sluice, and prints what pooling changed — measured, not quoted.

mod cluster;
mod config;
mod report;
mod workload;

use std::process::ExitCode;
use std::time::Duration;

use sluice_config::Upstream;

use crate::cli::DemoArgs;
use crate::in_process::InProcess;
use crate::pg::{connect, pg_error};
use cluster::{find_bindir, Cluster};
use config::{demo_config, pg_config};
use workload::{backends, settle, workload};

/// Exit code when the PostgreSQL server programs are missing (`EX_UNAVAILABLE`).
const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code after Ctrl-C (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;
/// The demo's table, created in the demo database and dropped at the end.
const TABLE: &str = "sluice_demo_accounts";
/// Rows in [`TABLE`]: enough that concurrent clients rarely touch the same row.
const ROWS: i32 = 10_000;

/// What has to be undone, whatever happens.
#[derive(Default)]
struct Cleanup {
    cluster: Option<Cluster>,
    sluice: Option<InProcess>,
    /// `--upstream`: drop the demo table there.
    upstream_table: Option<tokio_postgres::Config>,
}

impl Cleanup {
    /// Stops Sluice, drops the demo table on an `--upstream`, stops and removes the
    /// throwaway cluster.
    async fn run(&mut self) {
        if let Some(sluice) = self.sluice.take() {
            sluice.stop().await;
        }
        if let Some(pg) = self.upstream_table.take() {
            let drop_table = async {
                let client = connect(&pg).await.ok()?;
                client
                    .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}"))
                    .await
                    .ok()
            };
            if tokio::time::timeout(Duration::from_secs(10), drop_table)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                eprintln!("note: could not drop table {TABLE} on the upstream; drop it by hand");
            }
        }
        if let Some(cluster) = self.cluster.take() {
            let root = cluster.root.clone();
            let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
            println!(
                "Cleaned up: PostgreSQL stopped, {} removed.",
                root.display()
            );
        }
    }
}

/// Why the demo stopped early.
enum Stop {
    /// The message says what to do; exit with the code.
    Failed(String, u8),
}

/// Runs `sluice-tools demo`.
pub(crate) async fn main(args: DemoArgs) -> ExitCode {
    if args.clients == 0 || args.transactions == 0 || args.pool_size == 0 {
        eprintln!(
            "sluice-tools demo: --clients, --transactions and --pool-size must be at least 1"
        );
        return ExitCode::from(2);
    }
    let mut cleanup = Cleanup::default();
    let outcome = tokio::select! {
        r = demo(&args, &mut cleanup) => r,
        _ = sluice::shutdown_signal() => {
            eprintln!("\nInterrupted: cleaning up.");
            Err(Stop::Failed(String::new(), EXIT_INTERRUPTED))
        }
    };
    cleanup.run().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Stop::Failed(message, code)) => {
            if !message.is_empty() {
                eprintln!("{message}");
            }
            ExitCode::from(code)
        }
    }
}

/// A failure of the demo (exit 1) with `message`.
fn failed(message: impl Into<String>) -> Stop {
    Stop::Failed(format!("sluice-tools demo: {}", message.into()), 1)
}

/// The whole demo; what it leaves to undo is in `cleanup`.
async fn demo(args: &DemoArgs, cleanup: &mut Cleanup) -> Result<(), Stop> {
    // 1. A PostgreSQL to talk to.
    let (upstream_url, monitor) = match &args.upstream {
        Some(url) => {
            let up = Upstream::parse(url).map_err(|e| failed(format!("--upstream: {e}")))?;
            println!(
                "Using the PostgreSQL at {} (database {}).",
                up.address(),
                up.database
            );
            let pg = pg_config(&up);
            cleanup.upstream_table = Some(pg.clone());
            (url.clone(), pg)
        }
        None => throwaway(args, cleanup).await?,
    };
    let upstream = Upstream::parse(&upstream_url).map_err(|e| failed(e.to_string()))?;
    let direct = pg_config(&upstream);
    create_table(&direct).await?;

    println!(
        "\nWorkload: {} concurrent clients, each connects and runs {} short transactions \
         (SELECT + UPDATE of one row), {} ms apart.",
        args.clients, args.transactions, args.think_ms
    );
    // 2. Directly. Sluice starts afterwards, so none of its connections count here.
    let idle = backends(&monitor).await?;
    let direct_run = workload("direct", args, &direct, &monitor).await?;
    settle(&monitor, idle).await;

    // 3. Sluice in front of it, in this process; the same workload through it.
    let through = start_sluice(args, &upstream, cleanup).await?;
    let sluice_run = workload("through Sluice", args, &through, &monitor).await?;

    // 4. The table.
    print!("{}", report::benefits(args, &direct_run, &sluice_run));
    for (name, run) in [("direct", &direct_run), ("through Sluice", &sluice_run)] {
        if let Some(e) = &run.first_error {
            println!("first error {name}: {e}");
        }
    }
    Ok(())
}

/// Starts the throwaway cluster (into `cleanup`) with a role and database `demo`:
/// (the demo's upstream URL, the monitor's client configuration).
async fn throwaway(
    args: &DemoArgs,
    cleanup: &mut Cleanup,
) -> Result<(String, tokio_postgres::Config), Stop> {
    let bindir =
        find_bindir(args.pg_bindir.as_deref()).map_err(|m| Stop::Failed(m, EXIT_UNAVAILABLE))?;
    let max_connections = args.clients + 50;
    println!(
        "Starting a throwaway PostgreSQL ({}, max_connections {max_connections})...",
        bindir.display()
    );
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(bindir, max_connections))
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(failed)?;
    println!(
        "PostgreSQL {} on 127.0.0.1:{} (data in {}).",
        cluster.version,
        cluster.port,
        cluster.root.display()
    );
    let setup = cluster.superuser_config();
    let password = cluster.password.clone();
    let port = cluster.port;
    cleanup.cluster = Some(cluster);
    let su = connect(&setup)
        .await
        .map_err(|e| failed(format!("connecting as the superuser: {}", pg_error(&e))))?;
    for sql in [
        format!("CREATE ROLE demo LOGIN PASSWORD '{password}'"),
        "CREATE DATABASE demo OWNER demo".to_owned(),
    ] {
        su.batch_execute(&sql)
            .await
            .map_err(|e| failed(format!("creating role and database demo: {}", pg_error(&e))))?;
    }
    let mut monitor = setup;
    monitor.dbname("demo");
    Ok((
        format!("postgres://demo:{password}@127.0.0.1:{port}/demo"),
        monitor,
    ))
}

/// Starts Sluice in this process in front of `upstream` (into `cleanup`) and prints its
/// URLs: the client configuration to reach the same database through it.
async fn start_sluice(
    args: &DemoArgs,
    upstream: &Upstream,
    cleanup: &mut Cleanup,
) -> Result<tokio_postgres::Config, Stop> {
    let config = demo_config(args, upstream)?;
    let sluice = InProcess::start_exact(config)
        .await
        .map_err(|e| failed(format!("starting Sluice: {e}")))?;
    // Same user, password and database name; Sluice's address (a fresh Config: `host`
    // and `port` append to the list).
    let through = pg_config(&Upstream {
        host: sluice.listen.ip().to_string(),
        port: sluice.listen.port(),
        ..upstream.clone()
    });
    println!(
        "Sluice on {} (pool_size {}, transaction mode); its admin listener, up while the demo runs:\n  \
         http://{admin}/admin/pool-stats   http://{admin}/metrics   http://{admin}/health",
        sluice.listen,
        args.pool_size,
        admin = sluice.admin
    );
    cleanup.sluice = Some(sluice);
    Ok(through)
}

/// Creates (afresh) and fills the demo table.
async fn create_table(pg: &tokio_postgres::Config) -> Result<(), Stop> {
    let client = connect(pg)
        .await
        .map_err(|e| failed(format!("connecting to the demo database: {}", pg_error(&e))))?;
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {TABLE};\n\
             CREATE TABLE {TABLE} (id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0);\n\
             INSERT INTO {TABLE} (id) SELECT generate_series(1, {ROWS});\n\
             ANALYZE {TABLE};"
        ))
        .await
        .map_err(|e| failed(format!("creating table {TABLE}: {}", pg_error(&e))))
}
