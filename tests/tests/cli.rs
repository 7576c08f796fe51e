//! The operator-facing programs: `sluice-tools demo` (throwaway cluster and `--upstream`),
//! `sluice-tools check` (through a running Sluice, through an in-process one, and failing on
//! a wrong password or a bad file), and the proxy's own `sluice health`.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;
use std::time::Duration;

use common::sluice_for;
use sluice_tests::{free_port, scalar, shared_cluster, within, PoolMode};

const BIN: &str = env!("CARGO_BIN_EXE_sluice-e2e");
const TOOLS_BIN: &str = env!("CARGO_BIN_EXE_sluice-tools-e2e");

/// Runs the proxy program with `args` (and extra environment), with a hang guard.
async fn sluice(args: &[&str], env: &[(&str, &str)]) -> Output {
    run(BIN, args, env).await
}

/// Runs the tools program (`demo`, `check`) with `args`, with a hang guard.
async fn tools(args: &[&str], env: &[(&str, &str)]) -> Output {
    run(TOOLS_BIN, args, env).await
}

async fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .env_remove("SLUICE_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    within(
        Duration::from_secs(180),
        &format!("{bin} {args:?}"),
        cmd.output(),
    )
    .await
    .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The two numbers of a row of the Benefits table.
fn table_row<'a>(text: &'a str, row: &str) -> (&'a str, &'a str) {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(row))
        .unwrap_or_else(|| panic!("no row {row:?} in:\n{text}"));
    let cells: Vec<&str> = line[line.find(row).unwrap() + row.len()..]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(cells.len(), 2, "row {row:?}: {line:?}");
    (cells[0], cells[1])
}

/// Whether `--help` output lists subcommand `sub`.
fn lists(text: &str, sub: &str) -> bool {
    text.lines()
        .any(|l| l.trim_start().starts_with(&format!("{sub} ")))
}

#[tokio::test]
async fn help_lists_the_subcommands() {
    let out = sluice(&["--help"], &[]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    for sub in ["run", "health", "import-pgbouncer"] {
        assert!(
            lists(&text, sub),
            "sluice --help does not list {sub}:\n{text}"
        );
    }
    for sub in ["check", "demo"] {
        assert!(!lists(&text, sub), "sluice --help lists {sub}:\n{text}");
    }
    let out = tools(&["--help"], &[]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    for sub in ["check", "demo"] {
        assert!(
            lists(&text, sub),
            "sluice-tools --help does not list {sub}:\n{text}"
        );
    }
    let out = tools(&["demo", "--help"], &[]).await;
    let text = stdout(&out);
    for flag in ["--clients", "--transactions", "--upstream", "--pool-size"] {
        assert!(text.contains(flag), "demo --help lacks {flag}:\n{text}");
    }
}

/// Checks the Benefits table: both columns, zero errors, Sluice within its pool.
fn assert_benefits(text: &str, clients: usize) {
    assert!(text.contains("Benefits"), "{text}");
    let header = text
        .lines()
        .find(|l| l.contains("direct") && l.contains("through Sluice"))
        .unwrap_or_else(|| panic!("no table header:\n{text}"));
    assert!(header.trim().starts_with("direct"), "{header}");
    assert_eq!(table_row(text, "errors"), ("0", "0"), "{text}");
    let (direct, through) = table_row(text, "server connections used (peak)");
    let direct: usize = direct.parse().unwrap();
    let through: usize = through.parse().unwrap();
    assert!(
        (1..=10).contains(&through),
        "through Sluice used {through} server connections (pool_size 10):\n{text}"
    );
    assert!(direct <= clients, "{text}");
    for row in [
        "connection acquisition p50",
        "connection acquisition p99",
        "throughput",
    ] {
        let (d, t) = table_row(text, row);
        for cell in [d, t] {
            let number: f64 = cell
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap_or_else(|_| panic!("{row}: {cell:?}"));
            assert!(number > 0.0, "{row}: {cell:?}\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_on_a_throwaway_cluster_and_cleans_up() {
    let out = tools(
        &[
            "demo",
            "--clients",
            "20",
            "--transactions",
            "5",
            "--think-ms",
            "5",
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert_benefits(&text, 20);
    assert!(text.contains("http://127.0.0.1:"), "admin URL: {text}");
    assert!(text.contains("/admin/pool-stats"), "{text}");
    // "(data in /tmp/sluice-demo-XXXX)" is gone afterwards, and so is its server.
    let dir = text
        .split("(data in ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no data directory in:\n{text}"));
    assert!(
        !std::path::Path::new(dir).exists(),
        "{dir} still exists after the demo"
    );
    assert!(text.contains("Cleaned up"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_against_an_existing_upstream() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("demo_up").await;
    let url = cluster.app_url(&db);
    let out = tools(
        &[
            "demo",
            "--upstream",
            &url,
            "--clients",
            "10",
            "--transactions",
            "3",
            "--think-ms",
            "1",
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert_benefits(&text, 10);
    assert!(!text.contains("throwaway"), "{text}");
    // The demo's table is dropped again.
    let client = cluster
        .connect(sluice_tests::APP_USER, sluice_tests::APP_PASSWORD, &db)
        .await
        .unwrap();
    assert_eq!(
        scalar(
            &client,
            "SELECT coalesce(to_regclass('sluice_demo_accounts')::text, 'gone')"
        )
        .await,
        "gone"
    );
}

#[tokio::test]
async fn demo_without_server_programs_says_what_to_install() {
    let out = tools(&["demo", "--pg-bindir", "/nonexistent/bin"], &[]).await;
    assert_eq!(out.status.code(), Some(69), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install postgresql"), "{err}");
    assert!(err.contains("--upstream"), "{err}");
}

/// The proxy program no longer has `demo` and `check`: it says where they went.
#[tokio::test]
async fn the_proxy_points_to_the_tools_for_demo_and_check() {
    for sub in ["demo", "check"] {
        let out = sluice(&[sub, "--config", "x.toml"], &[]).await;
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("sluice-tools {sub} --config x.toml")),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_through_a_running_sluice() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("check_run").await;
    let proxy = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(3)
        .start();
    let config = proxy.config_path().to_str().unwrap().to_owned();
    let out = tools(&["check", "--config", &config], &[]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("Sluice answers on 127.0.0.1:{}", proxy.port())),
        "{text}"
    );
    for want in [
        "✓ configuration",
        &format!("✓ upstream of {db}"),
        &format!("✓ query through Sluice (127.0.0.1:{})", proxy.port()),
        &format!("✓ GET http://127.0.0.1:{}/health: 200", proxy.admin_port()),
        "/admin/pool-stats: 200",
    ] {
        assert!(text.contains(want), "missing {want:?}:\n{text}");
    }
    assert!(!text.contains('✗'), "{text}");
    assert_eq!(text.trim_end().lines().last(), Some("✓ All checks passed"));

    // `sluice health` finds the admin listener through $SLUICE_CONFIG (as the container
    // HEALTHCHECK does), or takes it from --admin.
    let out = sluice(&["health"], &[("SLUICE_CONFIG", &config)]).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).contains("\"status\":\"ok\""),
        "{}",
        describe(&out)
    );
    let admin = format!("127.0.0.1:{}", proxy.admin_port());
    let out = sluice(&["health", "--admin", &admin], &[]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let closed = format!("127.0.0.1:{}", free_port());
    let out = sluice(&["health", "--admin", &closed], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
}

/// A configuration for `db` on free ports where nothing listens.
fn idle_config(upstream: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new()
        .prefix("sluice-check-")
        .suffix(".toml")
        .tempfile()
        .unwrap();
    std::fs::write(
        file.path(),
        format!(
            "[admin]\nlisten = \"127.0.0.1:{}\"\n\n[postgres]\nlisten = \"127.0.0.1:{}\"\n\
             pool_size = 4\n\n[[postgres.databases]]\nname = \"appdb\"\nupstream = \"{upstream}\"\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_without_a_running_sluice_starts_one_in_process() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("check_inproc").await;
    let config = idle_config(&cluster.app_url(&db));
    let out = tools(&["check", "--config", config.path().to_str().unwrap()], &[]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.contains("started one in-process"), "{text}");
    for want in [
        "✓ configuration",
        "✓ upstream of appdb",
        "✓ query through Sluice",
        "/health: 200",
        "/admin/pool-stats: 200, 1 pool(s)",
        "✓ All checks passed",
    ] {
        assert!(text.contains(want), "missing {want:?}:\n{text}");
    }
    assert!(!text.contains('✗'), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_on_a_wrong_upstream_password() {
    let cluster = shared_cluster();
    let url = cluster.url(sluice_tests::APP_USER, "not-the-password", "app");
    let config = idle_config(&url);
    let out = tools(&["check", "--config", config.path().to_str().unwrap()], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.contains("✗ upstream of appdb"), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains("✗ query through Sluice"), "{text}");
    assert!(text.contains("check(s) failed"), "{text}");
    assert!(!text.contains("All checks passed"), "{text}");
}

#[tokio::test]
async fn check_fails_on_a_bad_file() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "[postgres]\npool_size = \"many\"\n").unwrap();
    let out = tools(&["check", "--config", file.path().to_str().unwrap()], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.starts_with("✗ configuration"), "{text}");
    assert!(text.contains("pool_size"), "{text}");
}

/// `general.worker_threads` reaches the runtime: the process's thread count follows it.
#[tokio::test]
async fn worker_threads_sets_the_runtime_threads() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("cli_threads").await;
    let threads = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .unwrap_or_default()
    };
    let mut counts = Vec::new();
    for n in [1, 4] {
        let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
            .worker_threads(n)
            .start();
        let client = sluice
            .connect(sluice_tests::APP_USER, sluice_tests::APP_PASSWORD, &db)
            .await
            .unwrap();
        assert_eq!(scalar(&client, "select 1").await, "1");
        counts.push(threads(sluice.pid()));
    }
    // One worker on the main thread (plus at most a blocking-pool thread or two), then four
    // workers of their own.
    assert!(counts[0] <= 3, "worker_threads = 1: {} threads", counts[0]);
    assert!(
        counts[1] >= counts[0] + 3,
        "worker_threads = 4: {} threads (1: {})",
        counts[1],
        counts[0]
    );
}

/// `sluice import-pgbouncer`: a PgBouncer setup (ini + userlist with the role's real SCRAM
/// verifier) becomes a proxy.toml that `sluice-tools check` starts Sluice on and queries
/// through; keys Sluice does not support are listed as comments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_pgbouncer_gives_a_config_sluice_runs_on() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("import_pgb").await;
    let verifier = cluster.app_verifier().await;
    let dir = tempfile::tempdir().unwrap();
    let userlist = dir.path().join("userlist.txt");
    std::fs::write(&userlist, format!("\"app\" \"{verifier}\"\n")).unwrap();
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\n{db} = host=127.0.0.1 port={port} dbname={db} user=app password=secret pool_size=3\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\nauth_type = scram-sha-256\n\
             auth_file = /etc/pgbouncer/userlist.txt\npool_mode = transaction\ndefault_pool_size = 2\n\
             logfile = /var/log/pgbouncer.log\nunix_socket_dir = /tmp\n\
             [users]\napp = pool_mode=session max_user_client_connections=100\n",
            port = cluster.port(),
            listen = free_port()
        ),
    )
    .unwrap();
    let ini_arg = ini.to_str().unwrap();
    let userlist_arg = userlist.to_str().unwrap();
    let out = sluice(
        &["import-pgbouncer", ini_arg, "--userlist", userlist_arg],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let toml = stdout(&out);
    assert!(
        toml.contains("#   logfile = /var/log/pgbouncer.log"),
        "{toml}"
    );
    assert!(
        toml.contains("[[postgres.user_settings]]\nname = \"app\"\npool_mode = \"session\""),
        "{toml}"
    );
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, &toml).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let out = tools(
        &["check", "--config", config.to_str().unwrap()],
        &[("SLUICE_ADMIN_LISTEN", &admin)],
    )
    .await;
    assert!(out.status.success(), "{}\n{toml}", describe(&out));
    assert!(
        stdout(&out).contains("✓ All checks passed"),
        "{}",
        describe(&out)
    );
}
