//! Sluice is indistinguishable from a direct connection (issue 11), with real drivers and a
//! real PostgreSQL, in both pool modes:
//!
//! * any client encoding (LATIN1, LATIN9, EUC_JP, SJIS) however it is chosen, with non-ASCII
//!   text in simple and extended queries, setting values and errors (psycopg 3, psql);
//! * settings however they are changed (set_config(), SET SESSION CHARACTERISTICS, a SET in
//!   a multi-statement string or a function) follow the client and never leak;
//! * session mode: the real backend pid in BackendKeyData, pg_backend_pid() and NOTIFY, and
//!   pg_terminate_backend() of it ends the client with the server's error.
//!
//! The checks live in tests/drivers/transparency.py; it runs against PostgreSQL directly
//! too, so a check that does not hold on a direct connection fails here first.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{run, sluice_for, text};
use sluice_tests::{shared_cluster, PoolMode, APP_PASSWORD, APP_USER};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("drivers/transparency.py")
}

async fn transparency(url: &str, mode: &str, what: &str) {
    let mut cmd = Command::new("python3");
    cmd.arg(script()).arg(url).arg(mode);
    let out = run(cmd).await;
    assert!(out.status.success(), "{what}:\n{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("all checks passed"), "{what}:\n{stdout}");
}

#[tokio::test]
async fn psycopg_direct_is_the_reference() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("tr_direct").await;
    let url = cluster.url(APP_USER, APP_PASSWORD, &db);
    transparency(&url, "session", "direct connection").await;
}

#[tokio::test]
async fn psycopg_through_session_mode() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("tr_session").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Session)
        .pool_size(4)
        .min_pool_size(0)
        .start();
    let url = sluice.url(APP_USER, APP_PASSWORD, &db);
    transparency(&url, "session", "session mode").await;
}

/// One server shared by every client in turn: each check's second client lands on the
/// very server the first one changed.
#[tokio::test]
async fn psycopg_through_transaction_mode() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("tr_txn").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(1)
        .min_pool_size(0)
        .start();
    let url = sluice.url(APP_USER, APP_PASSWORD, &db);
    transparency(&url, "transaction", "transaction mode").await;
}

/// psql with PGCLIENTENCODING=LATIN9 sends the file's bytes as they are: 0xa4 is '€'.
#[tokio::test]
async fn psql_with_a_latin9_client_encoding() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("tr_psql").await;
    for mode in common::MODES {
        let sluice = sluice_for(cluster, &db, mode).pool_size(2).start();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("latin9.sql");
        std::fs::write(
            &file,
            b"select ascii('\xa4'), '\xa4' || 'x';\nset sluice_t.x = 'caf\xe9';\n\
              select 1;\nshow sluice_t.x;\n",
        )
        .unwrap();
        let mut cmd = Command::new(cluster.client_tool("psql"));
        cmd.env("PGCLIENTENCODING", "LATIN9")
            .env("PGPASSWORD", APP_PASSWORD)
            .args([
                "-X",
                "-q",
                "-tA",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args(["-p", &sluice.port().to_string(), "-U", APP_USER, "-d", &db])
            .arg("-f")
            .arg(&file);
        let out = run(cmd).await;
        assert!(out.status.success(), "{mode:?}: {}", text(&out));
        assert_eq!(
            out.stdout,
            b"8364|\xa4x\n1\ncaf\xe9\n",
            "{mode:?}: {}",
            text(&out)
        );
    }
}
