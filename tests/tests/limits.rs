//! The limits PgBouncer users rely on, beyond `max_client_conn`: clients per database
//! (`max_db_client_connections`) and per user (`max_user_client_connections`), refused with
//! 53300 naming the setting, and admitted again once a client leaves.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{expect_sqlstate, sluice_for};
use sluice_tests::{error_message, scalar, shared_cluster, PoolMode, APP_PASSWORD, APP_USER};

#[tokio::test]
async fn clients_per_database_and_per_user_are_bounded() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("limits_clients").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .user(APP_USER, APP_PASSWORD)
        .user("other", "other-pw")
        .extra_postgres("max_db_client_connections = 3\nmax_user_client_connections = 2")
        .start();

    let a1 = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let a2 = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let e = expect_sqlstate(
        sluice.connect(APP_USER, APP_PASSWORD, &db).await,
        &["53300"],
    );
    assert!(
        error_message(&e).contains("max_user_client_connections = 2"),
        "{e:?}"
    );
    let o1 = sluice.connect("other", "other-pw", &db).await.unwrap();
    let e = expect_sqlstate(sluice.connect("other", "other-pw", &db).await, &["53300"]);
    assert!(
        error_message(&e).contains("max_db_client_connections = 3"),
        "{e:?}"
    );
    // A refused client is not counted: the ones in still work, and one leaving lets
    // another in.
    assert_eq!(scalar(&o1, "SELECT 1").await, "1");
    assert_eq!(scalar(&a2, "SELECT 2").await, "2");
    drop(a1);
    let mut again = None;
    for _ in 0..100 {
        if let Ok(c) = sluice.connect(APP_USER, APP_PASSWORD, &db).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = again.expect("a client was not admitted after another left");
    assert_eq!(scalar(&again, "SELECT 3").await, "3");
}

#[tokio::test]
async fn max_db_connections_caps_the_pools_of_a_database_together() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("limits_db_conns").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(5)
        .min_pool_size(0)
        .pool_timeout(Duration::from_secs(20))
        .user(APP_USER, APP_PASSWORD)
        .user("other", "other-pw")
        .extra_postgres("max_db_connections = 2")
        .start();
    let su = cluster.superuser().await;

    // app holds both connections the database may have, in open transactions.
    let a1 = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let a2 = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    for c in [&a1, &a2] {
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    // other's query waits for the budget rather than opening a third connection.
    let other = sluice.connect("other", "other-pw", &db).await.unwrap();
    let query = tokio::spawn(async move { scalar(&other, "SELECT 42").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !query.is_finished(),
        "a third server was opened past max_db_connections"
    );
    assert_eq!(sluice_tests::PgCluster::backend_count(&su, &db).await, 2);
    // app's transaction ends: its idle server is closed to make room for other's.
    a1.batch_execute("COMMIT").await.unwrap();
    let answer = sluice_tests::within(Duration::from_secs(10), "other's query", query).await;
    assert_eq!(answer.unwrap(), "42");
    assert!(sluice_tests::PgCluster::backend_count(&su, &db).await <= 2);
    a2.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn query_timeout_and_transaction_timeout_end_the_session_and_free_the_server() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("limits_timeouts").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(1)
        .min_pool_size(0)
        .extra_postgres("query_timeout = \"1s\"\ntransaction_timeout = \"3s\"")
        .start();
    let su = cluster.superuser().await;
    let setup = sluice.client(&db).await;
    setup.batch_execute("CREATE TABLE t (x int)").await.unwrap();

    // A query the server does not finish within query_timeout: cancelled, client told.
    let e = expect_sqlstate(setup.simple_query("SELECT pg_sleep(30)").await, &["57014"]);
    assert!(error_message(&e).contains("query_timeout"), "{e:?}");
    // The cancelled server is gone and the pool's one slot serves the next client.
    let next = sluice.client(&db).await;
    assert_eq!(scalar(&next, "SELECT 7").await, "7");
    let sleeping: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sleeping, 0, "the timed-out query still runs on the server");

    // A transaction open past transaction_timeout: the client is disconnected and the
    // transaction rolled back, though each statement was quick.
    next.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let closed = sluice_tests::within(Duration::from_secs(15), "disconnect", async {
        while !next.is_closed() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    closed.await;
    let after = sluice.client(&db).await;
    assert_eq!(scalar(&after, "SELECT count(*) FROM t").await, "0");
}

#[tokio::test]
async fn server_check_query_runs_on_servers_that_sat_idle_and_a_failing_one_is_replaced() {
    let db = shared_cluster().fresh_database("limits_check").await;
    // A check that passes: the one server serves every transaction.
    assert_eq!(backend_pids(&db, "select 1").await, 1);
    // A check that fails: each returned server is closed when next wanted, and a new one
    // (not checked: it was never idle) takes its place.
    assert_eq!(backend_pids(&db, "SELECT 1/0").await, 3);
}

/// How many server backends three transactions of one client used, with `check` as the
/// server_check_query run on every reused server.
async fn backend_pids(db: &str, check: &str) -> usize {
    let sluice = sluice_for(shared_cluster(), db, PoolMode::Transaction)
        .pool_size(1)
        .min_pool_size(0)
        .extra_postgres(&format!(
            "server_check_query = \"{check}\"\nserver_check_delay = \"0s\""
        ))
        .start();
    let c = sluice.client(db).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        seen.insert(scalar(&c, "SELECT pg_backend_pid()").await);
    }
    seen.len()
}

#[tokio::test]
async fn a_client_that_waited_reserve_pool_timeout_gets_a_reserve_server() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("limits_reserve").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(1)
        .min_pool_size(0)
        .pool_timeout(Duration::from_secs(20))
        .extra_postgres("reserve_pool_size = 1\nreserve_pool_timeout = \"500ms\"")
        .start();
    let holder = sluice.client(&db).await;
    holder.batch_execute("BEGIN").await.unwrap();
    let held = scalar(&holder, "SELECT pg_backend_pid()").await;
    let waiter = sluice.client(&db).await;
    // The pool's one server is held; the waiter is served by a reserve server.
    let reserve = sluice_tests::within(
        Duration::from_secs(10),
        "a query served by the reserve",
        scalar(&waiter, "SELECT pg_backend_pid()"),
    )
    .await;
    assert_ne!(reserve, held);
    // Back with nobody waiting, the reserve server closed.
    let su = cluster.superuser().await;
    assert_eq!(common::wait_backends(&su, &db, 1).await, 1);
    holder.batch_execute("COMMIT").await.unwrap();
}

/// `(pool_mode, sv_active)` of `user`'s pool on `db` in the console's SHOW POOLS.
async fn pool_row(admin: &tokio_postgres::Client, db: &str, user: &str) -> (String, String) {
    let rows = admin.simple_query("SHOW POOLS").await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r)
                if r.get("database") == Some(db) && r.get("user") == Some(user) =>
            {
                let get = |c: &str| r.get(c).unwrap_or_default().to_owned();
                Some((get("pool_mode"), get("sv_active")))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no pool {db}/{user} in SHOW POOLS"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_settings_override_the_database_for_one_user_and_apply_on_reload() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("limits_user_settings").await;
    let settings = |mode: &str| {
        format!(
            "admin_users = [\"admin\"]\n\n[[postgres.user_settings]]\nname = \"batch\"\n\
             pool_mode = \"{mode}\"\npool_size = 1\nmax_user_client_connections = 1"
        )
    };
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(5)
        .min_pool_size(0)
        .user(APP_USER, APP_PASSWORD)
        .user("batch", "batch-pw")
        .user("admin", "adminpw")
        .extra_postgres(&settings("session"))
        .start();
    let original = std::fs::read_to_string(sluice.config_path()).unwrap();
    let admin = sluice
        .connect("admin", "adminpw", "pgbouncer")
        .await
        .unwrap();

    // batch: its own client limit, while app (the global limit, none) opens two.
    let b1 = sluice.connect("batch", "batch-pw", &db).await.unwrap();
    let e = expect_sqlstate(sluice.connect("batch", "batch-pw", &db).await, &["53300"]);
    assert!(
        error_message(&e).contains("max_user_client_connections = 1"),
        "{e:?}"
    );
    let a1 = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let a2 = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    for c in [&b1, &a1, &a2] {
        assert_eq!(scalar(c, "SELECT 1").await, "1");
    }
    // batch's pool is in session mode: its idle client keeps its server. app's is in the
    // database's transaction mode: idle clients hold none.
    assert_eq!(
        pool_row(&admin, &db, "batch").await,
        ("session".into(), "1".into())
    );
    assert_eq!(
        pool_row(&admin, &db, APP_USER).await,
        ("transaction".into(), "0".into())
    );
    let users = admin.simple_query("SHOW USERS").await.unwrap();
    let batch_mode = users.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get("name") == Some("batch") => {
            r.get("pool_mode").map(str::to_owned)
        }
        _ => None,
    });
    assert_eq!(batch_mode.as_deref(), Some("session"));

    // Reloaded to transaction mode: batch's pool is replaced (its client is told at its
    // next request), and the next batch client's idle session holds no server.
    let text = original.replacen(&settings("session"), &settings("transaction"), 1);
    assert_ne!(text, original);
    std::fs::write(sluice.config_path(), text).unwrap();
    let (status, body) = sluice_tests::http(sluice.admin_port(), "POST", "/admin/reload", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("postgres.user_settings.*.pool_mode"),
        "{body}"
    );
    expect_sqlstate(b1.simple_query("SELECT 2").await, &["57P01"]);
    drop(b1);
    let mut b2 = None;
    for _ in 0..100 {
        if let Ok(c) = sluice.connect("batch", "batch-pw", &db).await {
            b2 = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b2 = b2.expect("batch was not admitted after its only client left");
    assert_eq!(scalar(&b2, "SELECT 3").await, "3");
    assert_eq!(
        pool_row(&admin, &db, "batch").await,
        ("transaction".into(), "0".into())
    );
    // app's clients and pool were left alone.
    assert_eq!(scalar(&a1, "SELECT 4").await, "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_entry_overrides_the_global_db_limits() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("limits_per_db").await;
    let mut capped = sluice_tests::DatabaseConfig::new("capped", &cluster.app_url(&db));
    capped.extra = "max_db_connections = 1\nmax_db_client_connections = 2\n".into();
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .database_config(capped)
        .pool_size(5)
        .min_pool_size(0)
        .pool_timeout(Duration::from_secs(20))
        .user(APP_USER, APP_PASSWORD)
        .user("other", "other-pw")
        .extra_postgres("max_db_connections = 10\nmax_db_client_connections = 10")
        .start();

    let a = sluice
        .connect(APP_USER, APP_PASSWORD, "capped")
        .await
        .unwrap();
    let o = sluice.connect("other", "other-pw", "capped").await.unwrap();
    let e = expect_sqlstate(
        sluice.connect(APP_USER, APP_PASSWORD, "capped").await,
        &["53300"],
    );
    assert!(
        error_message(&e).contains("max_db_client_connections = 2"),
        "{e:?}"
    );
    // The other entry has the global limits: three clients, two servers at once.
    let mut direct = Vec::new();
    for _ in 0..3 {
        direct.push(sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap());
    }
    for c in &direct[..2] {
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    // capped has one server for all its pools: other's query waits for app's.
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let query = tokio::spawn(async move { scalar(&o, "SELECT 42").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!query.is_finished(), "capped opened a second server");
    a.batch_execute("COMMIT").await.unwrap();
    let answer = sluice_tests::within(Duration::from_secs(10), "other's query", query).await;
    assert_eq!(answer.unwrap(), "42");
    for c in &direct[..2] {
        c.batch_execute("COMMIT").await.unwrap();
    }
}
