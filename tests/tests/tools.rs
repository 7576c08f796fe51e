//! Real PostgreSQL client programs through the proxy: psql and pgbench.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{pgbench, run, sluice_for, text};
use sluice_tests::{shared_cluster, PoolMode, APP_PASSWORD, APP_USER};

#[tokio::test]
async fn psql_select_and_script() {
    let cluster = shared_cluster();
    for mode in common::MODES {
        let db = cluster.fresh_database("tools_psql").await;
        let sluice = sluice_for(cluster, &db, mode).start();
        let url = sluice.url(APP_USER, APP_PASSWORD, &db);

        // sslmode=prefer (libpq's default) sends an SSLRequest first.
        let mut cmd = Command::new(cluster.client_tool("psql"));
        cmd.args(["-X", "-A", "-t"])
            .arg(format!("{url}?sslmode=prefer"))
            .args(["-c", "select 1"]);
        let out = run(cmd).await;
        assert!(out.status.success(), "{mode:?}: {}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

        let mut cmd = Command::new(cluster.client_tool("psql"));
        cmd.args(["-X", "-A", "-t"])
            .arg(format!("{url}?sslmode=disable"))
            .args(["-c", "select 'plain'"]);
        let out = run(cmd).await;
        assert!(out.status.success(), "{mode:?}: {}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "plain");

        // sslmode=require must fail: the proxy says 'N'.
        let mut cmd = Command::new(cluster.client_tool("psql"));
        cmd.args(["-X", "-A", "-t"])
            .arg(format!("{url}?sslmode=require"))
            .args(["-c", "select 1"]);
        let out = run(cmd).await;
        assert!(
            !out.status.success(),
            "{mode:?}: sslmode=require worked: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("does not support SSL"),
            "{mode:?}: {}",
            text(&out)
        );

        let script = "\\set ON_ERROR_STOP 1\n\
            CREATE TABLE s (id int PRIMARY KEY, v text);\n\
            INSERT INTO s SELECT g, 'v' || g FROM generate_series(1, 100) g;\n\
            BEGIN;\n\
            UPDATE s SET v = 'changed' WHERE id <= 10;\n\
            SELECT count(*) FROM s WHERE v = 'changed';\n\
            COMMIT;\n\
            SELECT 1 AS a \\; SELECT 2 AS b;\n\
            SELECT sum(id) FROM s;\n";
        let path = sluice.dir().join("script.sql");
        std::fs::write(&path, script).unwrap();
        let mut cmd = Command::new(cluster.client_tool("psql"));
        cmd.args(["-X", "-A", "-t", "-q"])
            .arg(&url)
            .arg("-f")
            .arg(&path);
        let out = run(cmd).await;
        assert!(out.status.success(), "{mode:?}: {}", text(&out));
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines, ["10", "1", "2", "5050"], "{mode:?}: {}", text(&out));

        // A failing command: exit status 1 and the server's message.
        let mut cmd = Command::new(cluster.client_tool("psql"));
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1"])
            .arg(&url)
            .args(["-c", "select 1/0"]);
        let out = run(cmd).await;
        assert_eq!(out.status.code(), Some(1), "{mode:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("division by zero"),
            "{}",
            text(&out)
        );
    }
}

#[tokio::test]
async fn pgbench_transaction_mode_simple_and_extended() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("tools_bench_tx").await;
    // Initialize straight against PostgreSQL.
    pgbench(cluster, cluster.port(), &db, &["-i", "-s", "1", "-q"]).await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(5)
        .start();
    for m in ["simple", "extended"] {
        pgbench(
            cluster,
            sluice.port(),
            &db,
            &["-n", "-M", m, "-c", "20", "-j", "2", "-t", "100"],
        )
        .await;
    }
    // Select-only, many clients.
    pgbench(
        cluster,
        sluice.port(),
        &db,
        &[
            "-n", "-S", "-M", "extended", "-c", "40", "-j", "2", "-t", "100",
        ],
    )
    .await;
}

#[tokio::test]
async fn pgbench_session_mode_prepared() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("tools_bench_sess").await;
    pgbench(cluster, cluster.port(), &db, &["-i", "-s", "1", "-q"]).await;
    let sluice = sluice_for(cluster, &db, PoolMode::Session)
        .pool_size(10)
        .start();
    for m in ["simple", "extended", "prepared"] {
        pgbench(
            cluster,
            sluice.port(),
            &db,
            &["-n", "-M", m, "-c", "10", "-j", "2", "-t", "100"],
        )
        .await;
    }
}
