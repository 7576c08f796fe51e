//! Pinning in transaction mode (`pin_session_state`, issue 15): a temp table, a WITH HOLD
//! cursor, a session advisory lock and an SQL `PREPARE` outlive the transaction that made
//! them, on a pool smaller than the number of clients; the server goes back to the pool
//! (reset) once the state is gone or the client leaves; `max_pinned_servers` caps it; and
//! with the setting off the server is reset as before.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{expect_sqlstate, sluice_for};
use sluice_tests::{http, scalar, shared_cluster, PoolMode, Sluice};
use tokio_postgres::Client;

const POLL: Duration = Duration::from_millis(50);

async fn setup(prefix: &str, pool_size: u32, extra: &str) -> (Sluice, String) {
    let cluster = shared_cluster();
    let db = cluster.fresh_database(prefix).await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(pool_size)
        .extra_postgres(extra)
        .start();
    (sluice, db)
}

/// The `pinned` list of `/admin/pool-stats`, as text.
async fn pinned(sluice: &Sluice) -> String {
    let (_, body) = http(sluice.admin_port(), "GET", "/admin/pool-stats", "").await;
    let start = body.find("\"pinned\":[").expect("pinned in pool-stats") + 10;
    let end = start + body[start..].find(']').unwrap();
    body[start..end].to_owned()
}

/// Other clients keep the remaining servers busy, so a pinned client would lose its
/// server if it were not pinned.
async fn churn(sluice: &Sluice, db: &str) {
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(sluice.client(db).await);
    }
    for round in 0..5 {
        for c in &others {
            assert_eq!(
                scalar(c, &format!("SELECT {round}")).await,
                round.to_string()
            );
        }
    }
}

async fn pid(c: &Client) -> String {
    scalar(c, "SELECT pg_backend_pid()").await
}

#[tokio::test]
async fn session_state_outlives_its_transaction_until_it_is_gone() {
    let (sluice, db) = setup("pin_state", 2, "").await;
    let a = sluice.client(&db).await;

    // Temp table.
    a.batch_execute("CREATE TEMP TABLE t (x int)")
        .await
        .unwrap();
    let server = pid(&a).await;
    churn(&sluice, &db).await;
    a.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    assert_eq!(scalar(&a, "SELECT count(*) FROM t").await, "1");
    assert_eq!(pid(&a).await, server, "the client kept its server");
    let p = pinned(&sluice).await;
    assert!(p.contains("\"reason\":\"temp table\""), "{p}");
    a.batch_execute("DROP TABLE t").await.unwrap();
    assert_eq!(pinned(&sluice).await, "", "dropping the table unpins");

    // WITH HOLD cursor.
    a.batch_execute("DECLARE c CURSOR WITH HOLD FOR SELECT generate_series(1, 3)")
        .await
        .unwrap();
    churn(&sluice, &db).await;
    for want in ["1", "2", "3"] {
        assert_eq!(scalar(&a, "FETCH 1 FROM c").await, want);
    }
    assert!(pinned(&sluice).await.contains("cursor"));
    a.batch_execute("CLOSE c").await.unwrap();
    assert_eq!(pinned(&sluice).await, "");

    // Session advisory lock: another client cannot take it while it is held.
    a.batch_execute("SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    churn(&sluice, &db).await;
    let b = sluice.client(&db).await;
    assert_eq!(scalar(&b, "SELECT pg_try_advisory_lock(4242)").await, "f");
    assert!(pinned(&sluice).await.contains("advisory lock"));
    a.batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    assert_eq!(pinned(&sluice).await, "");
    assert_eq!(scalar(&b, "SELECT pg_try_advisory_lock(4242)").await, "t");
    b.batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();

    // SQL PREPARE.
    a.batch_execute("PREPARE p AS SELECT 7").await.unwrap();
    churn(&sluice, &db).await;
    assert_eq!(scalar(&a, "EXECUTE p").await, "7");
    assert!(pinned(&sluice).await.contains("prepared statement"));
    a.batch_execute("DEALLOCATE p").await.unwrap();
    assert_eq!(pinned(&sluice).await, "");

    // A client that leaves while pinned: its server is reset and reused clean.
    a.batch_execute("CREATE TEMP TABLE gone (x int)")
        .await
        .unwrap();
    assert!(!pinned(&sluice).await.is_empty());
    drop(a);
    for _ in 0..100 {
        if pinned(&sluice).await.is_empty() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(pinned(&sluice).await, "");
    for _ in 0..4 {
        let c = sluice.client(&db).await;
        assert_eq!(
            scalar(
                &c,
                "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()"
            )
            .await,
            "0"
        );
    }
    let (_, metrics) = http(sluice.admin_port(), "GET", "/metrics", "").await;
    assert!(metrics.contains("sluice_pinned_servers{"), "{metrics}");
}

#[tokio::test]
async fn max_pinned_servers_caps_pinning_and_the_rest_is_reset() {
    let (sluice, db) = setup("pin_cap", 4, "max_pinned_servers = 1").await;
    let a = sluice.client(&db).await;
    let b = sluice.client(&db).await;
    a.batch_execute("CREATE TEMP TABLE ta (x int)")
        .await
        .unwrap();
    b.batch_execute("CREATE TEMP TABLE tb (x int)")
        .await
        .unwrap();
    assert_eq!(scalar(&a, "SELECT count(*) FROM ta").await, "0");
    // b was over the cap: its server was reset, the table is gone.
    expect_sqlstate(b.simple_query("SELECT count(*) FROM tb").await, &["42P01"]);
    let p = pinned(&sluice).await;
    assert_eq!(p.matches("\"reason\"").count(), 1, "{p}");
    let (_, console) = http(sluice.admin_port(), "GET", "/admin/pool-stats", "").await;
    assert!(console.contains("\"application_name\""), "{console}");
}

#[tokio::test]
async fn with_pinning_off_the_server_is_reset_after_the_transaction() {
    let (sluice, db) = setup("pin_off", 2, "pin_session_state = false").await;
    let a = sluice.client(&db).await;
    a.batch_execute("CREATE TEMP TABLE t (x int)")
        .await
        .unwrap();
    expect_sqlstate(a.simple_query("SELECT count(*) FROM t").await, &["42P01"]);
    assert_eq!(pinned(&sluice).await, "");
}
