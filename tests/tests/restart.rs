//! PostgreSQL restarts while clients run through the proxy. Each test has its own cluster.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::sluice_for;
use sluice_tests::{rows, scalar, within, PgCluster, PoolMode};

const T: Duration = Duration::from_secs(60);

async fn restart_while_clients_run(mode: PoolMode) {
    let cluster = PgCluster::start();
    let db = cluster.fresh_database("restart").await;
    let mut sluice = sluice_for(&cluster, &db, mode)
        .pool_size(5)
        .min_pool_size(2)
        .start();

    // Clients in the middle of a query.
    let mut busy = Vec::new();
    for _ in 0..3 {
        let c = sluice.client(&db).await;
        assert_eq!(scalar(&c, "SELECT 1").await, "1");
        busy.push(tokio::spawn(async move {
            let res = c.simple_query("SELECT pg_sleep(20)").await;
            (c, res)
        }));
    }
    // An idle transaction-mode client that holds no server across the restart.
    let idle = sluice.client(&db).await;
    assert_eq!(scalar(&idle, "SELECT 1").await, "1");
    // The three queries run on PostgreSQL before it restarts (a query still waiting for a
    // server would run after the restart and succeed).
    {
        let su = cluster.superuser().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n: i64 = su
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND state = 'active' AND query LIKE '%pg_sleep(20)%'",
                    &[&db],
                )
                .await
                .unwrap()
                .get(0);
            if n == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "{n} of 3 pg_sleep(20) running");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let restarter = tokio::task::spawn_blocking(move || {
        cluster.restart();
        cluster
    });
    for b in busy {
        let (_c, res) = within(T, "query during restart", b).await.unwrap();
        assert!(
            res.is_err(),
            "{mode:?}: pg_sleep(20) succeeded across a PostgreSQL restart"
        );
    }
    let cluster = within(T, "restart", restarter).await.unwrap();
    assert!(sluice.is_running(), "{mode:?}: sluice died with PostgreSQL");

    // New clients work once PostgreSQL is back, without restarting Sluice.
    for i in 0..10 {
        let c = within(T, "connect after restart", sluice.client(&db)).await;
        let r = within(
            T,
            "query after restart",
            c.simple_query(&format!("SELECT {i}")),
        )
        .await
        .unwrap_or_else(|e| panic!("{mode:?}: query {i} after restart failed: {e:?}"));
        assert_eq!(rows(&r)[0][0].as_deref(), Some(i.to_string().as_str()));
    }
    // Many at once (more than the pool holds) also work.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let config = sluice.pg_config("app", "secret", &db);
        tasks.push(tokio::spawn(async move {
            let (c, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            c.simple_query("SELECT pg_sleep(0.05)").await?;
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for t in tasks {
        within(T, "client after restart", t)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{mode:?}: client after restart failed: {e:?}"));
    }

    if mode == PoolMode::Transaction {
        // The idle client was never tied to a server: its next query works.
        let r = within(T, "idle client", idle.simple_query("SELECT 'still here'")).await;
        let r = r.unwrap_or_else(|e| panic!("idle transaction-mode client broken: {e:?}"));
        assert_eq!(rows(&r)[0][0].as_deref(), Some("still here"));
    }
    drop(idle);

    // A second restart, this time a full stop and start with a pause.
    cluster.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_again();
    let c = within(T, "connect after stop/start", sluice.client(&db)).await;
    assert_eq!(scalar(&c, "SELECT 'back'").await, "back");
    assert!(sluice.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_in_transaction_mode() {
    restart_while_clients_run(PoolMode::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_in_session_mode() {
    restart_while_clients_run(PoolMode::Session).await;
}
