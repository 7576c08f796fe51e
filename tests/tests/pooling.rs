//! Pool limits: pool_size is never exceeded, FIFO waiting, pool_timeout, max_client_conn,
//! session vs transaction server assignment.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{expect_sqlstate, sluice_for, MODES};
use sluice_tests::{
    error_message, http, rows, scalar, shared_cluster, sqlstate, within, DatabaseConfig, PgCluster,
    PoolMode, Sluice, APP_PASSWORD, APP_USER,
};
use tokio_postgres::types::Type;

const T: Duration = Duration::from_secs(60);

/// Samples the number of backends on `db` every 10 ms until `stop` is set; returns the
/// maximum and the number of samples.
fn spawn_sampler(
    su: tokio_postgres::Client,
    db: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(i64, usize)> {
    tokio::spawn(async move {
        let mut max = 0;
        let mut samples = 0;
        while !stop.load(Ordering::SeqCst) {
            let n = PgCluster::backend_count(&su, &db).await;
            max = max.max(n);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (max, samples)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_never_exceed_pool_size_in_transaction_mode() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("pool_200").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(5)
        .max_client_conn(1000)
        .pool_timeout(Duration::from_secs(120))
        .start();
    let su = cluster.superuser().await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_sampler(cluster.superuser().await, db.clone(), stop.clone());

    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..200i32 {
        let config = sluice.pg_config(APP_USER, APP_PASSWORD, &db);
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            for j in 0..10i32 {
                let r = client.simple_query("SELECT pg_sleep(0.002), 1").await?;
                assert_eq!(rows(&r).len(), 1);
                let row = client
                    .query_typed_one("SELECT $1::int4 * 2", &[(&(i * 100 + j), Type::INT4)])
                    .await?;
                assert_eq!(row.get::<_, i32>(0), (i * 100 + j) * 2);
            }
            client.batch_execute("BEGIN; SELECT 1; COMMIT").await?;
            done.fetch_add(1, Ordering::SeqCst);
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        match within(Duration::from_secs(300), "client task", t)
            .await
            .unwrap()
        {
            Ok(()) => {}
            Err(e) => failures.push(format!("{e:?}")),
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (max, samples) = sampler.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} clients failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(done.load(Ordering::SeqCst), 200);
    assert!(samples > 0);
    assert!(max <= 5, "saw {max} backends on {db} with pool_size 5");
    assert!(max >= 1, "never saw a backend ({samples} samples)");
    let now = PgCluster::backend_count(&su, &db).await;
    assert!(now <= 5, "{now} backends after the load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_clients_queue_for_pool_size_servers() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("pool_session").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Session)
        .pool_size(5)
        .pool_timeout(Duration::from_secs(120))
        .start();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_sampler(cluster.superuser().await, db.clone(), stop.clone());
    let mut tasks = Vec::new();
    for i in 0..40i32 {
        let config = sluice.pg_config(APP_USER, APP_PASSWORD, &db);
        tasks.push(tokio::spawn(async move {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let pid = scalar(&client, "SELECT pg_backend_pid()").await;
            for _ in 0..3 {
                // Named prepared statements are fine in session mode.
                let row = client.query_one("SELECT $1::int4 + 1", &[&i]).await?;
                assert_eq!(row.get::<_, i32>(0), i + 1);
                assert_eq!(scalar(&client, "SELECT pg_backend_pid()").await, pid);
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for t in tasks {
        within(Duration::from_secs(300), "client task", t)
            .await
            .unwrap()
            .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (max, _) = sampler.await.unwrap();
    assert!(
        max <= 5,
        "saw {max} backends with pool_size 5 (session mode)"
    );
    assert!(max >= 1);
}

#[tokio::test]
async fn per_database_pool_size_override() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("pool_override").await;
    let mut entry = DatabaseConfig::new(&db, &cluster.app_url(&db));
    entry.pool_size = Some(2);
    let sluice = common::sluice()
        .mode(PoolMode::Transaction)
        .pool_size(10)
        .database_config(entry)
        .start();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_sampler(cluster.superuser().await, db.clone(), stop.clone());
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let config = sluice.pg_config(APP_USER, APP_PASSWORD, &db);
        tasks.push(tokio::spawn(async move {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            for _ in 0..5 {
                client.simple_query("SELECT pg_sleep(0.02)").await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for t in tasks {
        within(T, "client task", t).await.unwrap().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (max, _) = sampler.await.unwrap();
    assert!(
        max <= 2,
        "saw {max} backends with the database's pool_size 2"
    );
    assert!(max >= 1);
}

/// Waits until `n` clients are queued for a server of the proxy's (only) PostgreSQL pool, as
/// GET /admin/pool-stats counts them.
async fn wait_for_waiting(sluice: &Sluice, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http(sluice.admin_port(), "GET", "/admin/pool-stats", "").await;
        let waiting: Option<u64> = body
            .split("\"postgres_waiting\":")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|v| v.parse().ok());
        if waiting == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} clients not queued (postgres_waiting {waiting:?}): {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Clients that timed out waiting leave the queue at once: `postgres_waiting` is 0 and
/// `longest_wait_seconds` small while one client holds the only server (issue 12, item 1:
/// it used to say 8 waiting, 4 s, while nobody waited).
#[tokio::test]
async fn clients_that_gave_up_do_not_count_as_waiting() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("pool_gave_up").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(1)
        .pool_timeout(Duration::from_secs(1))
        .start();
    let holder = sluice.client(&db).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let config = sluice.pg_config(APP_USER, APP_PASSWORD, &db);
        tasks.push(tokio::spawn(async move {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.simple_query("SELECT 1").await.is_err()
        }));
    }
    for t in tasks {
        assert!(
            within(T, "waiter", t).await.unwrap(),
            "expected a pool timeout"
        );
    }
    let (_, body) = http(sluice.admin_port(), "GET", "/admin/pool-stats", "").await;
    assert!(body.contains("\"postgres_waiting\":0"), "{body}");
    let longest: f64 = body
        .split("\"longest_wait_seconds\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| c != '.' && !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::MAX);
    assert!(longest < 0.5, "longest_wait_seconds {longest}: {body}");
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn waiting_clients_are_served_fifo() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("pool_fifo").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(1)
        .start();
    let setup = sluice.client(&db).await;
    setup
        .batch_execute("CREATE TABLE fifo_log (id serial PRIMARY KEY, n int)")
        .await
        .unwrap();
    let holder = sluice.client(&db).await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder.simple_query("SELECT 1").await.unwrap();

    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(Arc::new(sluice.client(&db).await));
    }
    let mut tasks = Vec::new();
    for (n, c) in clients.iter().enumerate() {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.simple_query(&format!("INSERT INTO fifo_log (n) VALUES ({n})"))
                .await
        }));
        // Each request is in the proxy's queue before the next one is sent.
        wait_for_waiting(&sluice, n as u64 + 1).await;
    }
    holder.batch_execute("COMMIT").await.unwrap();
    for t in tasks {
        within(T, "waiting client", t).await.unwrap().unwrap();
    }
    let order = rows(
        &setup
            .simple_query("SELECT n FROM fifo_log ORDER BY id")
            .await
            .unwrap(),
    );
    let order: Vec<String> = order.into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(order, ["0", "1", "2", "3", "4"]);
}

#[tokio::test]
async fn pool_timeout_gives_an_error_and_the_holder_keeps_working() {
    let cluster = shared_cluster();
    for mode in MODES {
        let db = cluster.fresh_database("pool_timeout").await;
        // Long enough for a first server login on a loaded machine (the holder's).
        let pool_timeout = Duration::from_secs(2);
        let sluice = sluice_for(cluster, &db, mode)
            .pool_size(1)
            .pool_timeout(pool_timeout)
            .start();
        let holder = sluice.client(&db).await;
        holder.batch_execute("BEGIN").await.unwrap();
        assert_eq!(scalar(&holder, "SELECT 7").await, "7");

        let started = Instant::now();
        // In session mode the wait may happen at login or at the first query.
        let waiter = within(T, "second client", async {
            match sluice.connect(APP_USER, APP_PASSWORD, &db).await {
                Ok(c) => {
                    let res = c.simple_query("SELECT 1").await;
                    (Some(c), res.map(|_| ()))
                }
                Err(e) => (None, Err(e)),
            }
        })
        .await;
        let elapsed = started.elapsed();
        let (waiter, res) = waiter;
        let err = expect_sqlstate(res, &["53300", "08P01"]);
        let msg = error_message(&err);
        assert!(
            msg.contains(&db),
            "{mode:?}: pool timeout message does not name the pool ({db}): {msg:?}"
        );
        assert!(
            elapsed >= pool_timeout - Duration::from_millis(100),
            "{mode:?}: error after {elapsed:?}, before pool_timeout {pool_timeout:?}"
        );

        // The holder is unaffected.
        assert_eq!(scalar(&holder, "SELECT 8").await, "8");
        holder.batch_execute("COMMIT").await.unwrap();

        // The waiter's connection is either still usable or closed cleanly.
        if let Some(w) = waiter {
            if !w.is_closed() {
                if mode == PoolMode::Session {
                    drop(holder);
                }
                // The holder's server goes back to the pool asynchronously (in session mode
                // after its disconnect and reset): until then a retry may time out again.
                let deadline = Instant::now() + T;
                loop {
                    match within(T, "waiter retry", w.simple_query("SELECT 9")).await {
                        Ok(r) => assert_eq!(rows(&r)[0][0].as_deref(), Some("9")),
                        Err(e)
                            if sqlstate(&e).as_deref() == Some("53300")
                                && Instant::now() < deadline =>
                        {
                            continue;
                        }
                        Err(e) => assert!(
                            e.is_closed() || w.is_closed(),
                            "{mode:?}: waiter neither usable nor closed: {e:?}"
                        ),
                    }
                    break;
                }
            }
        }
    }
}

#[tokio::test]
async fn max_client_conn_is_enforced() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("pool_maxconn").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .max_client_conn(3)
        .start();
    let a = sluice.client(&db).await;
    let b = sluice.client(&db).await;
    let c = sluice.client(&db).await;
    let res = within(T, "4th client", sluice.connect(APP_USER, APP_PASSWORD, &db)).await;
    let err = expect_sqlstate(res, &["53300"]);
    eprintln!("max_client_conn error: {}", error_message(&err));
    for x in [&a, &b, &c] {
        assert_eq!(scalar(x, "SELECT 1").await, "1");
    }
    drop(c);
    // Once a client leaves, a new one gets in (the proxy notices the close asynchronously).
    let mut last = None;
    for _ in 0..100 {
        match sluice.connect(APP_USER, APP_PASSWORD, &db).await {
            Ok(d) => {
                assert_eq!(scalar(&d, "SELECT 2").await, "2");
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last.is_none(), "no room after a client left: {last:?}");
}

#[tokio::test]
async fn session_mode_client_keeps_its_server_and_the_next_waits() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("pool_sess_keep").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Session)
        .pool_size(1)
        .start();
    let a = sluice.client(&db).await;
    let pid = scalar(&a, "SELECT pg_backend_pid()").await;
    for _ in 0..5 {
        assert_eq!(scalar(&a, "SELECT pg_backend_pid()").await, pid);
    }
    let config = sluice.pg_config(APP_USER, APP_PASSWORD, &db);
    let b = tokio::spawn(async move {
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        scalar(&client, "SELECT pg_backend_pid()").await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !b.is_finished(),
        "second client got a server while the first holds the only one"
    );
    assert_eq!(scalar(&a, "SELECT pg_backend_pid()").await, pid);
    drop(a);
    let b_pid = within(T, "second client", b).await.unwrap();
    // The server was reused rather than replaced.
    assert_eq!(b_pid, pid);
}

#[tokio::test]
async fn transaction_mode_clients_share_one_server() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("pool_tx_share").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(1)
        .start();
    let a = sluice.client(&db).await;
    let b = sluice.client(&db).await;
    let pa = scalar(&a, "SELECT pg_backend_pid()").await;
    let pb = scalar(&b, "SELECT pg_backend_pid()").await;
    assert_eq!(pa, pb);
    // Inside a transaction the server stays with the client.
    let tx_pid = {
        a.batch_execute("BEGIN").await.unwrap();
        let p1 = scalar(&a, "SELECT pg_backend_pid()").await;
        let p2 = scalar(&a, "SELECT pg_backend_pid()").await;
        assert_eq!(p1, p2);
        a.batch_execute("COMMIT").await.unwrap();
        p1
    };
    assert_eq!(tx_pid, pa);
    let su = cluster.superuser().await;
    assert_eq!(PgCluster::backend_count(&su, &db).await, 1);
}

/// A server that hangs during the ROLLBACK Sluice runs when a client leaves mid-transaction
/// (here: its backend is stopped with SIGSTOP) is closed after a bounded wait, so its slot
/// serves the next client instead of being held forever.
#[tokio::test]
async fn a_server_that_hangs_on_rollback_is_closed_and_its_slot_reused() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("pool_hung_rollback").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(1)
        .pool_timeout(Duration::from_secs(25))
        .start();
    let leaver = sluice.client(&db).await;
    let pid = scalar(&leaver, "BEGIN; SELECT pg_backend_pid()::text").await;
    /// Sends SIGCONT on drop, so a failing test never leaves the backend stopped (the shared
    /// cluster could not shut down).
    struct Stopped(String);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &self.0])
                .status();
        }
    }
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(stopped, "kill -STOP {pid}");
    let stopped = Stopped(pid);
    drop(leaver);
    let next = sluice.client(&db).await;
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(40), next.simple_query("SELECT 1")).await;
    drop(stopped);
    assert!(
        answer.is_ok(),
        "no server after a hung ROLLBACK: {answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the slot was held for {:?}",
        started.elapsed()
    );
}

/// A client that disconnects while its query waits for a server leaves the queue at once:
/// `postgres_waiting` falls to 0 although `pool_timeout` is far away, and the server goes to
/// the next client, not to the one that left.
#[tokio::test]
async fn a_waiting_client_that_disconnects_leaves_the_queue_at_once() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("pool_wait_leave").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(1)
        .pool_timeout(Duration::from_secs(60))
        .start();
    let holder = sluice.client(&db).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let config = sluice.pg_config(APP_USER, APP_PASSWORD, &db);
    let (leaver, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let conn = tokio::spawn(conn);
    let query = tokio::spawn(async move { leaver.simple_query("SELECT 1").await.map(|_| ()) });
    wait_for_waiting(&sluice, 1).await;
    // Closing the socket: the connection task owns it.
    conn.abort();
    query.abort();
    let gone = Instant::now();
    wait_for_waiting(&sluice, 0).await;
    assert!(
        gone.elapsed() < Duration::from_secs(5),
        "the gone client was counted as waiting for {:?}",
        gone.elapsed()
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let next = sluice.client(&db).await;
    assert_eq!(
        within(T, "next client", scalar(&next, "select 'next'")).await,
        "next"
    );
}

/// What a client sends while it waits for a server is answered once it has one, without
/// the client sending anything more: a second query written during the wait completes.
/// (psycopg's pipeline mode and any driver that writes ahead rely on this.)
#[tokio::test]
async fn a_query_sent_while_waiting_for_a_server_is_answered() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("pool_wait_more").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(1)
        .pool_timeout(Duration::from_secs(60))
        .start();
    let holder = sluice.client(&db).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = std::sync::Arc::new(sluice.client(&db).await);
    let first = {
        let w = waiter.clone();
        tokio::spawn(async move { simple_scalar(&w, "select 'first'").await })
    };
    wait_for_waiting(&sluice, 1).await;
    // Written while the first query is still in line (no server yet).
    let second = {
        let w = waiter.clone();
        tokio::spawn(async move { simple_scalar(&w, "select 'second'").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let first = within(T, "first query", async { first.await.unwrap() }).await;
    let second = within(T, "second query", async { second.await.unwrap() }).await;
    assert_eq!((first.as_str(), second.as_str()), ("first", "second"));
}

/// One value by the simple query protocol: one message out, nothing more from this client
/// until the answer.
async fn simple_scalar(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = client.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}
