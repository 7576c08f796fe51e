//! Timeouts and limits: client_login_timeout, client_idle_timeout, idle_transaction_timeout,
//! max_packet_size, server_lifetime, server_idle_timeout, server_login_retry.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{expect_sqlstate, sluice_for, wait_backends};
use sluice_tests::{metric_value, scalar, shared_cluster, PoolMode, APP_PASSWORD, APP_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until EOF (or 10 s); returns what arrived and how long it took.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    (out, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_silent_logins_are_dropped() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("login_timeout").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .extra_postgres("client_login_timeout = \"1s\"")
        .start();
    // Says nothing at all.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", sluice.port()))
        .await
        .unwrap();
    // Sends half a startup packet.
    let mut half = tokio::net::TcpStream::connect(("127.0.0.1", sluice.port()))
        .await
        .unwrap();
    half.write_all(&[0, 0, 0, 40, 0, 3, 0, 0, b'u'])
        .await
        .unwrap();
    for s in [&mut silent, &mut half] {
        let (bytes, took) = read_to_close(s).await;
        assert!(took < Duration::from_secs(8), "not closed: {took:?}");
        assert!(bytes.is_empty() || bytes[0] == b'E', "{bytes:?}");
    }
    // Real clients still log in.
    let client = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    assert_eq!(scalar(&client, "select 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_and_idle_transactions_are_ended() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("idle_timeouts").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(1)
        .extra_postgres("client_idle_timeout = \"1s\"\nidle_transaction_timeout = \"1s\"")
        .start();
    let setup = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    setup.simple_query("create table t(a int)").await.unwrap();
    drop(setup);

    // Idle between transactions: closed with 57P05 (waited for rather than assumed after a
    // fixed sleep: a loaded machine may be late).
    let idle = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !idle.is_closed() {
        assert!(
            Instant::now() < deadline,
            "an idle client is still connected 20 s into client_idle_timeout 1s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(idle.simple_query("select 1").await.is_err());

    // Idle inside a transaction: rolled back, the server goes back to the pool.
    let txn = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    txn.simple_query("begin; insert into t values (1)")
        .await
        .unwrap();
    let other = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let waiter = tokio::spawn(async move {
        let n = scalar(&other, "select count(*) from t").await;
        let in_txn = scalar(&other, "select now() = statement_timestamp()").await;
        (n, in_txn)
    });
    let (n, fresh) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("pool_size 1 was freed by idle_transaction_timeout")
        .unwrap();
    assert_eq!(n, "0", "the idle transaction's insert was rolled back");
    assert_eq!(fresh, "t");
    let err = txn.simple_query("commit").await;
    assert!(
        err.is_err(),
        "the idle-in-transaction client was disconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_with_08p01() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("max_packet").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .extra_postgres("max_packet_size = 20000")
        .start();
    let big = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let sql = format!("select '{}'", "x".repeat(30_000));
    expect_sqlstate(big.simple_query(&sql).await, &["08P01"]);
    let ok = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let sql = format!("select length('{}')", "x".repeat(10_000));
    assert_eq!(scalar(&ok, &sql).await, "10000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifetime_and_idle_timeout_recycle_connections() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("lifetime").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(1)
        .extra_postgres("server_lifetime = \"1s\"\nserver_idle_timeout = \"1s\"")
        .start();
    let client = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let mut pids = HashSet::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3500) {
        pids.insert(scalar(&client, "select pg_backend_pid()").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        pids.len() >= 2,
        "server_lifetime never replaced the connection: {pids:?}"
    );
    // With min_pool_size 0, idle connections go away.
    let su = cluster.superuser().await;
    let n = wait_backends(&su, &db, 0).await;
    assert_eq!(
        n, 0,
        "server_idle_timeout did not close the idle connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_are_not_retried_in_a_tight_loop() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("login_retry").await;
    let port = cluster.port();
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .database(
            "wrongpw",
            &format!("postgres://{APP_USER}:nope@127.0.0.1:{port}/{db}"),
        )
        .user(APP_USER, APP_PASSWORD)
        .extra_postgres("server_login_retry = \"30s\"")
        .start();
    let started = Instant::now();
    for _ in 0..5 {
        let r = sluice.connect(APP_USER, APP_PASSWORD, "wrongpw").await;
        expect_sqlstate(r, &["28P01"]);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // One refused login reached the upstream, not five: the pool's connect-error counter.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", sluice.admin_port()))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (body, _) = read_to_close(&mut s).await;
    let body = String::from_utf8_lossy(&body);
    let body = body.split_once("\r\n\r\n").map_or(&*body, |(_, b)| b);
    let pool = format!("wrongpw/{APP_USER}");
    let labels = [("pool", pool.as_str()), ("kind", "connect")];
    let refused = metric_value(body, "sluice_pool_errors_total", &labels);
    // The pool's health upkeep tries one login when it starts; the first client's login may
    // run before that attempt is refused, so two refusals are legitimate. After a refusal,
    // nothing else reaches the upstream within server_login_retry.
    assert!(
        (1.0..=2.0).contains(&refused),
        "expected one refused login (two if the first client's raced the pool's own): {refused}"
    );
}
