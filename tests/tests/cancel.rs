//! CancelRequest through the proxy.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{expect_sqlstate, sluice_for, MODES};
use sluice_tests::{scalar, shared_cluster, within, PoolMode};
use tokio_postgres::{Client, NoTls};

/// Hang guard for a cancelled `pg_sleep(30)`: well under the 30 s it would run uncancelled.
const CANCELLED: Duration = Duration::from_secs(20);

/// Waits until PostgreSQL runs `pg_sleep(30)` in database `db` (seen by the superuser client
/// `su`): a CancelRequest that arrives before the query does is ignored by PostgreSQL (or
/// finds no server to cancel in transaction mode), so a fixed sleep is not enough on a slow
/// machine.
async fn wait_until_running(su: &Client, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                 AND state = 'active' AND query LIKE '%pg_sleep(30)%'",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "pg_sleep(30) did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cancel_running_query() {
    let cluster = shared_cluster();
    for mode in MODES {
        let db = cluster.fresh_database("cancel_run").await;
        let sluice = sluice_for(cluster, &db, mode).pool_size(2).start();
        let su = cluster.superuser().await;
        let c = sluice.client(&db).await;
        let token = c.cancel_token();
        let started = Instant::now();
        let (res, ()) = tokio::join!(
            within(
                CANCELLED,
                "cancelled pg_sleep(30)",
                c.simple_query("SELECT pg_sleep(30)")
            ),
            async {
                wait_until_running(&su, &db).await;
                within(Duration::from_secs(10), "cancel", token.cancel_query(NoTls))
                    .await
                    .unwrap();
            }
        );
        expect_sqlstate(res, &["57014"]);
        assert!(started.elapsed() < CANCELLED);
        // The client goes on.
        assert_eq!(scalar(&c, "SELECT 1").await, "1", "{mode:?}");

        // Extended protocol too, inside a transaction.
        c.batch_execute("BEGIN").await.unwrap();
        let token = c.cancel_token();
        let (res, ()) = tokio::join!(
            within(
                CANCELLED,
                "cancelled pg_sleep(30)",
                c.query_typed("SELECT pg_sleep(30)", &[])
            ),
            async {
                wait_until_running(&su, &db).await;
                token.cancel_query(NoTls).await.unwrap();
            }
        );
        expect_sqlstate(res, &["57014"]);
        expect_sqlstate(c.simple_query("SELECT 1").await, &["25P02"]);
        c.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(scalar(&c, "SELECT 2").await, "2", "{mode:?}");
    }
}

#[tokio::test]
async fn cancelling_an_idle_client_is_harmless() {
    let cluster = shared_cluster();
    for mode in MODES {
        let db = cluster.fresh_database("cancel_idle").await;
        // Transaction mode with one server: the idle client's cancel must not hit the other
        // client's query running on the shared server.
        let pool = if mode == PoolMode::Transaction { 1 } else { 2 };
        let sluice = sluice_for(cluster, &db, mode).pool_size(pool).start();
        let idle = sluice.client(&db).await;
        assert_eq!(scalar(&idle, "SELECT 1").await, "1");
        let busy = sluice.client(&db).await;
        let (res, ()) = tokio::join!(
            within(
                Duration::from_secs(30),
                "pg_sleep(1.5)",
                busy.simple_query("SELECT pg_sleep(1.5), 'done'")
            ),
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                idle.cancel_token().cancel_query(NoTls).await.unwrap();
            }
        );
        let res = res.unwrap_or_else(|e| panic!("{mode:?}: busy client's query failed: {e:?}"));
        assert_eq!(sluice_tests::rows(&res)[0][1].as_deref(), Some("done"));
        assert_eq!(scalar(&idle, "SELECT 3").await, "3", "{mode:?}");
        assert_eq!(scalar(&busy, "SELECT 4").await, "4", "{mode:?}");
    }
}

#[tokio::test]
async fn cancel_with_bogus_key_is_ignored() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("cancel_bogus").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction).start();
    let c = sluice.client(&db).await;
    // A CancelRequest with a made-up key: the proxy must just close it.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", sluice.port()))
        .await
        .unwrap();
    let mut msg = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    msg.extend_from_slice(&12345u32.to_be_bytes());
    msg.extend_from_slice(&67890u32.to_be_bytes());
    s.write_all(&msg).await.unwrap();
    let mut buf = Vec::new();
    let _ = within(
        Duration::from_secs(10),
        "cancel close",
        s.read_to_end(&mut buf),
    )
    .await;
    // The client's own query is not disturbed.
    let r = c.simple_query("SELECT pg_sleep(0.5), 1").await.unwrap();
    assert_eq!(sluice_tests::rows(&r)[0][1].as_deref(), Some("1"));
}
