//! A client's session state never reaches the next client: disconnect mid-transaction in
//! both modes, session state in session mode (server_reset_query).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{sluice_for, MODES};
use sluice_tests::{scalar, scalar_opt, shared_cluster, within, PoolMode, Sluice};
use tokio_postgres::Client;

const T: Duration = Duration::from_secs(30);

/// Leaves session state behind: an open transaction (if `in_tx`), a SET, a temp table and a
/// prepared statement.
async fn dirty(client: &Client, in_tx: bool) {
    if in_tx {
        client.batch_execute("BEGIN").await.unwrap();
    }
    client
        .batch_execute(
            "SET statement_timeout = '4321s'; \
             SET application_name = 'dirty-client'; \
             CREATE TEMP TABLE leak_tbl (x int); \
             INSERT INTO leak_tbl VALUES (1); \
             PREPARE leak_stmt AS SELECT 1",
        )
        .await
        .unwrap();
    assert_eq!(scalar(client, "SHOW statement_timeout").await, "4321s");
}

/// Checks that `client` sees a clean session.
async fn assert_clean(client: &Client, what: &str) {
    // No transaction left open: now() is the start of this statement's own transaction.
    assert_eq!(
        scalar(client, "SELECT now() = statement_timestamp()").await,
        "t",
        "{what}: inherited an open transaction"
    );
    assert_eq!(
        scalar(client, "SELECT txid_current_if_assigned() IS NULL").await,
        "t",
        "{what}: inherited a transaction with an xid"
    );
    assert_eq!(
        scalar(client, "SHOW statement_timeout").await,
        "0",
        "{what}: inherited a SET"
    );
    assert_ne!(
        scalar_opt(client, "SHOW application_name").await.as_deref(),
        Some("dirty-client"),
        "{what}: inherited application_name"
    );
    assert_eq!(
        scalar_opt(client, "SELECT to_regclass('pg_temp.leak_tbl')::text").await,
        None,
        "{what}: inherited a temp table"
    );
    assert_eq!(
        scalar(client, "SELECT count(*) FROM pg_prepared_statements").await,
        "0",
        "{what}: inherited a prepared statement"
    );
    // And it can do what the first client did without clashes.
    client
        .batch_execute(
            "BEGIN; CREATE TEMP TABLE leak_tbl (x int); PREPARE leak_stmt AS SELECT 2; \
             DEALLOCATE leak_stmt; ROLLBACK",
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: could not redo the first client's work: {e:?}"));
}

async fn disconnect_mid_transaction(mode: PoolMode) {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("state_midtx").await;
    let sluice: Sluice = sluice_for(cluster, &db, mode).pool_size(1).start();
    let a = sluice.client(&db).await;
    dirty(&a, true).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(a);
    let b = within(T, "next client", sluice.client(&db)).await;
    within(T, "checks", assert_clean(&b, &format!("{mode:?}"))).await;
    // Once more after a clean disconnect (session mode: b holds the only server until now).
    drop(b);
    let c = within(T, "third client", sluice.client(&db)).await;
    within(T, "checks", assert_clean(&c, &format!("{mode:?} (third)"))).await;
}

#[tokio::test]
async fn transaction_mode_disconnect_mid_transaction_leaks_nothing() {
    disconnect_mid_transaction(PoolMode::Transaction).await;
}

#[tokio::test]
async fn session_mode_disconnect_mid_transaction_leaks_nothing() {
    disconnect_mid_transaction(PoolMode::Session).await;
}

#[tokio::test]
async fn session_mode_resets_session_state_before_reuse() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("state_reset").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Session)
        .pool_size(1)
        .server_reset_query("DISCARD ALL")
        .start();
    let a = sluice.client(&db).await;
    let pid = scalar(&a, "SELECT pg_backend_pid()").await;
    dirty(&a, false).await;
    a.batch_execute("LISTEN leak_channel").await.unwrap();
    drop(a);
    let b = within(T, "next client", sluice.client(&db)).await;
    assert_eq!(
        scalar(&b, "SELECT pg_backend_pid()").await,
        pid,
        "the server was not reused (pool_size 1)"
    );
    assert_clean(&b, "session reuse").await;
    assert_eq!(
        scalar(&b, "SELECT count(*) FROM pg_listening_channels()").await,
        "0"
    );
}

#[tokio::test]
async fn disconnect_during_a_running_query_frees_the_server() {
    let cluster = shared_cluster();
    for mode in MODES {
        let db = cluster.fresh_database("state_midquery").await;
        let sluice = sluice_for(cluster, &db, mode).pool_size(1).start();
        let config = sluice.pg_config("app", "secret", &db);
        let (a, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        let conn_task = tokio::spawn(async move {
            let _ = conn.await;
        });
        a.batch_execute("BEGIN; SET statement_timeout = '4321s'")
            .await
            .unwrap();
        let q = tokio::spawn(async move {
            let _ = a.simple_query("SELECT pg_sleep(3)").await;
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Kill the client's socket mid-query.
        conn_task.abort();
        q.abort();
        let b = within(T, "next client", sluice.client(&db)).await;
        within(
            T,
            "checks",
            assert_clean(&b, &format!("{mode:?} mid-query")),
        )
        .await;
    }
}
