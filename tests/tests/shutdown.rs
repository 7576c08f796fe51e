//! SIGTERM / SIGINT: stop accepting, let running transactions finish, exit 0.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sluice_for;
use sluice_tests::{scalar, shared_cluster, within, PoolMode, APP_PASSWORD, APP_USER};

#[tokio::test]
async fn sigterm_lets_running_transaction_commit_then_exits_zero() {
    let cluster = shared_cluster();
    for mode in common::MODES {
        let db = cluster.fresh_database("shutdown_tx").await;
        let mut sluice = sluice_for(cluster, &db, mode)
            .shutdown_timeout(Duration::from_secs(20))
            .start();
        let setup = sluice.client(&db).await;
        setup
            .batch_execute("CREATE TABLE done (x int)")
            .await
            .unwrap();
        drop(setup);

        let c = sluice.client(&db).await;
        c.batch_execute("BEGIN; INSERT INTO done VALUES (1)")
            .await
            .unwrap();
        // A statement still running when the signal arrives.
        let running = c.simple_query("SELECT pg_sleep(1.5)");
        let (res, ()) = tokio::join!(running, async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sluice.sigterm();
        });
        res.unwrap_or_else(|e| panic!("{mode:?}: running statement failed on SIGTERM: {e:?}"));
        assert!(
            sluice.is_running(),
            "{mode:?}: exited with a transaction open"
        );

        // New clients are refused while draining.
        let refused = within(
            Duration::from_secs(20),
            "connect while draining",
            sluice.connect(APP_USER, APP_PASSWORD, &db),
        )
        .await;
        assert!(
            refused.is_err(),
            "{mode:?}: new client accepted after SIGTERM"
        );

        c.batch_execute("INSERT INTO done VALUES (2); COMMIT")
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: COMMIT after SIGTERM failed: {e:?}"));
        drop(c);
        let status = sluice
            .wait_exit(Duration::from_secs(25))
            .await
            .unwrap_or_else(|| panic!("{mode:?}: still running 25 s after SIGTERM"));
        assert!(status.success(), "{mode:?}: exit status {status}");
        let direct = cluster.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
        assert_eq!(scalar(&direct, "SELECT count(*) FROM done").await, "2");
    }
}

#[tokio::test]
async fn sigterm_with_idle_clients_exits_zero() {
    let cluster = shared_cluster();
    for mode in common::MODES {
        let db = cluster.fresh_database("shutdown_idle").await;
        let mut sluice = sluice_for(cluster, &db, mode).start();
        let a = sluice.client(&db).await;
        assert_eq!(scalar(&a, "SELECT 1").await, "1");
        sluice.sigterm();
        let status = sluice
            .wait_exit(Duration::from_secs(40))
            .await
            .unwrap_or_else(|| panic!("{mode:?}: still running 40 s after SIGTERM"));
        assert!(status.success(), "{mode:?}: exit status {status}");
        drop(a);
    }
}

#[tokio::test]
async fn sigint_exits_zero() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("shutdown_int").await;
    let mut sluice = sluice_for(cluster, &db, PoolMode::Transaction).start();
    sluice.sigint();
    let status = sluice
        .wait_exit(Duration::from_secs(40))
        .await
        .expect("still running 40 s after SIGINT");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn shutdown_timeout_bounds_a_transaction_that_never_ends() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("shutdown_bound").await;
    let mut sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .shutdown_timeout(Duration::from_secs(1))
        .start();
    let c = sluice.client(&db).await;
    c.batch_execute("BEGIN").await.unwrap();
    sluice.sigterm();
    // Hang guard only: the program must give up on the open transaction eventually.
    let status = sluice
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("still running 30 s after SIGTERM with shutdown_timeout 1s");
    assert!(status.success(), "exit status {status}");
    // The abandoned transaction is gone from PostgreSQL (rolled back, not left idle).
    let su = cluster.superuser().await;
    assert_eq!(common::wait_backends(&su, &db, 0).await, 0);
    drop(c);
}

/// A client whose query waits for a server when shutdown begins is told at once (57P01),
/// not after `pool_timeout`; the running transaction still commits.
#[tokio::test]
async fn a_client_waiting_for_a_server_is_told_of_shutdown_at_once() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("shutdown_waiting").await;
    let mut sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(1)
        .pool_timeout(Duration::from_secs(60))
        .shutdown_timeout(Duration::from_secs(30))
        .start();
    let holder = sluice.client(&db).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = sluice.client(&db).await;
    let query = tokio::spawn(async move { waiter.simple_query("SELECT 1").await.map(|_| ()) });
    // The waiter is queued behind the open transaction.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!query.is_finished());
    sluice.sigterm();
    let answer = within(
        Duration::from_secs(10),
        "the waiting client's answer",
        query,
    )
    .await
    .unwrap();
    let err = answer.expect_err("no server is handed out after shutdown began");
    assert_eq!(
        sluice_tests::sqlstate(&err).as_deref(),
        Some("57P01"),
        "{err:?}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let status = sluice
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exits after the transaction committed");
    assert!(status.success(), "exit status {status}");
}
