//! Load and faults, loopback only, bounded in time.
//!
//! * `many_clients_few_active` (CI): 2,000 connected clients, 200 of them running queries,
//!   over `pool_size = 20` in transaction mode: zero errors, never more than 20 server
//!   connections, and every idle client still works at the end.
//! * `ten_thousand_clients` (`#[ignore]`, run by `tests/load/ten_thousand.sh`, ~20 s on 2
//!   cores): the same with 10,000 clients, 1,000 active. `SLUICE_LOAD_CLIENTS` and
//!   `SLUICE_LOAD_ACTIVE` change its sizes.
//! * `postgres_killed_under_load` (CI): PostgreSQL is killed (`pg_ctl stop -m immediate`)
//!   and started again while 40 clients run queries: Sluice recovers by itself, errors
//!   happen only during the outage, no client waits forever, and the server connections
//!   return to at most `pool_size`.
//!
//! Clients use md5 authentication towards Sluice: SCRAM's 4096 PBKDF2 rounds per login in
//! an unoptimised test build would dominate the run time without testing anything more
//! about pooling.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{sluice_for, wait_backends};
use sluice_tests::{shared_cluster, within, PgCluster, PoolMode, Sluice, APP_PASSWORD, APP_USER};
use tokio::sync::{Barrier, Semaphore};
use tokio_postgres::{Client, NoTls};

/// Raises this process's open-files limit to the hard limit and returns what it got.
fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => panic!("raising RLIMIT_NOFILE failed: {e}"),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

async fn connect(sluice: &Sluice, db: &str) -> Result<Client, tokio_postgres::Error> {
    let mut config = sluice.pg_config(APP_USER, APP_PASSWORD, db);
    config.connect_timeout(Duration::from_secs(60));
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `clients` connected at once, `active` of them running `rounds` queries each (simple and
/// prepared, with a short sleep so transactions overlap), over `pool_size`.
async fn many_clients(clients: usize, active: usize, pool_size: u32, rounds: usize) {
    let nofile = raise_nofile();
    eprintln!("load: RLIMIT_NOFILE of the test process is {nofile}");
    assert!(
        nofile as usize > clients + 100,
        "RLIMIT_NOFILE {nofile} is too low for {clients} clients"
    );
    let cluster = shared_cluster();
    let db = cluster.fresh_database("load").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(pool_size)
        .min_pool_size(0)
        .max_client_conn(u32::try_from(clients + 100).unwrap())
        .pool_timeout(Duration::from_secs(120))
        .auth_type("md5")
        .rust_log("warn")
        .start();
    let su = cluster.superuser().await;

    // Connect everyone (64 handshakes in flight at a time; the rest stay connected).
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(64));
    let mut connecting = Vec::with_capacity(clients);
    for _ in 0..clients {
        let gate = gate.clone();
        let config_sluice = sluice.pg_config(APP_USER, APP_PASSWORD, &db);
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let mut config = config_sluice;
            config.connect_timeout(Duration::from_secs(60));
            let (client, conn) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<_, tokio_postgres::Error>(client)
        }));
    }
    let mut all = Vec::with_capacity(clients);
    for (i, t) in connecting.into_iter().enumerate() {
        let c = within(Duration::from_secs(300), "connect", t)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("client {i} of {clients} could not connect: {e:?}"));
        all.push(Arc::new(c));
    }
    eprintln!(
        "load: {clients} clients connected in {:?}",
        started.elapsed()
    );

    // The active ones run queries concurrently; a watcher samples pg_stat_activity.
    let started = Instant::now();
    let errors = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(active));
    let mut tasks = Vec::with_capacity(active);
    for (i, c) in all.iter().take(active).enumerate() {
        let c = c.clone();
        let barrier = barrier.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let stmt = c.prepare("SELECT $1::int8 * 2").await.map_err(|e| (0, e))?;
            for r in 0..rounds {
                let n = (i * rounds + r) as i64;
                let res = if r % 2 == 0 {
                    c.query_one(&stmt, &[&n])
                        .await
                        .map(|row| row.get::<_, i64>(0) == n * 2)
                } else {
                    c.simple_query(&format!("SELECT pg_sleep(0.002), {n}"))
                        .await
                        .map(|m| {
                            sluice_tests::rows(&m)[0][1].as_deref() == Some(n.to_string().as_str())
                        })
                };
                match res {
                    Ok(true) => {}
                    Ok(false) => panic!("client {i} round {r}: wrong answer"),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return Err((r, e));
                    }
                }
            }
            Ok(())
        }));
    }
    let mut max_backends = 0;
    let watch_until = Instant::now() + Duration::from_secs(600);
    while tasks.iter().any(|t| !t.is_finished()) && Instant::now() < watch_until {
        max_backends = max_backends.max(PgCluster::backend_count(&su, &db).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, t) in tasks.into_iter().enumerate() {
        if let Err((round, e)) = within(Duration::from_secs(60), "active client", t)
            .await
            .unwrap()
        {
            panic!("active client {i} failed in round {round}: {e:?}");
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "load: {active} active clients x {rounds} queries in {elapsed:?} ({:.0} q/s), at most \
         {max_backends} server connections",
        (active * rounds) as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    assert!(
        max_backends <= i64::from(pool_size),
        "{max_backends} server connections for pool_size {pool_size}"
    );

    // Every idle client is still connected and served.
    let gate = Arc::new(Semaphore::new(200));
    let mut checks = Vec::with_capacity(clients);
    for (i, c) in all.iter().enumerate().skip(active) {
        let c = c.clone();
        let gate = gate.clone();
        checks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            c.simple_query(&format!("SELECT {i}"))
                .await
                .map_err(|e| (i, e))
        }));
    }
    for t in checks {
        if let Err((i, e)) = within(Duration::from_secs(120), "idle client", t)
            .await
            .unwrap()
        {
            panic!("idle client {i} failed: {e:?}");
        }
    }
    drop(all);
    let left = wait_backends(&su, &db, 0).await;
    assert!(
        left <= i64::from(pool_size),
        "{left} server connections left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_few_active() {
    many_clients(2_000, 200, 20, 20).await;
}

/// 10,000 clients, 1,000 active: run by `tests/load/ten_thousand.sh` (needs ~10,200 fds).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "heavy: 10,000 connections; run tests/load/ten_thousand.sh"]
async fn ten_thousand_clients() {
    let clients = env_usize("SLUICE_LOAD_CLIENTS", 10_000);
    let active = env_usize("SLUICE_LOAD_ACTIVE", 1_000);
    many_clients(clients, active, 20, 20).await;
}

/// One client's view of the fault test: when each query finished and whether it failed.
#[derive(Default)]
struct Outcome {
    /// (query started, error seen, error)
    errors: Vec<(Instant, Instant, String)>,
    ok_after_recovery: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_under_load() {
    const POOL: u32 = 8;
    const CLIENTS: usize = 40;
    /// After PostgreSQL is back, how long errors are still tolerated (broken idle
    /// connections are noticed within a second; a client mid-reconnect may need a moment).
    const GRACE: Duration = Duration::from_secs(5);
    /// No single query or connect may take longer: "no client waits forever".
    const QUERY_LIMIT: Duration = Duration::from_secs(45);
    /// Clients run at least this long, and until this long after the end of GRACE (the
    /// kill and restart take longer on a loaded machine).
    const RUN: Duration = Duration::from_secs(14);
    const AFTER_GRACE: Duration = Duration::from_secs(4);

    raise_nofile();
    let cluster = PgCluster::start();
    let db = cluster.fresh_database("fault").await;
    let sluice = sluice_for(&cluster, &db, PoolMode::Transaction)
        .pool_size(POOL)
        .min_pool_size(2)
        .pool_timeout(Duration::from_secs(10))
        .auth_type("md5")
        .start();
    let sluice = Arc::new(sluice);

    let stop_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let recovered_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let run_until = Instant::now() + RUN;
    let give_up = Instant::now() + Duration::from_secs(180);
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let sluice = sluice.clone();
        let db = db.clone();
        let recovered_at = recovered_at.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            let mut client: Option<Client> = None;
            let mut n = 0u64;
            let keep_going = |now: Instant| {
                let rec = *recovered_at.lock().unwrap();
                now < give_up
                    && (now < run_until || rec.is_none_or(|r| now < r + GRACE + AFTER_GRACE))
            };
            while keep_going(Instant::now()) {
                n += 1;
                let c = match client.take() {
                    Some(c) if !c.is_closed() => c,
                    _ => match tokio::time::timeout(QUERY_LIMIT, connect(&sluice, &db)).await {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            let now = Instant::now();
                            out.errors.push((now, now, format!("connect: {e}")));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        Err(_) => panic!("client {i}: connect hung for {QUERY_LIMIT:?}"),
                    },
                };
                let sql = if n.is_multiple_of(3) {
                    "BEGIN; SELECT pg_sleep(0.05); COMMIT".to_string()
                } else {
                    format!("SELECT pg_sleep(0.02), {n}")
                };
                let started = Instant::now();
                match tokio::time::timeout(QUERY_LIMIT, c.simple_query(&sql)).await {
                    Ok(Ok(_)) => {
                        let rec = *recovered_at.lock().unwrap();
                        if rec.is_some_and(|r| started > r + GRACE) {
                            out.ok_after_recovery += 1;
                        }
                    }
                    Ok(Err(e)) => {
                        out.errors.push((started, Instant::now(), format!("{e:?}")));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_) => panic!("client {i}: query {sql:?} hung for {QUERY_LIMIT:?}"),
                }
                client = Some(c);
            }
            out
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    let su_before = cluster.superuser().await;
    let before = PgCluster::backend_count(&su_before, &db).await;
    eprintln!("fault: {before} server connections before the kill");
    assert!(
        before <= i64::from(POOL),
        "{before} server connections before the kill"
    );
    drop(su_before);
    *stop_at.lock().unwrap() = Some(Instant::now());
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.kill();
        std::thread::sleep(Duration::from_secs(1));
        cluster.start_again();
        cluster
    })
    .await
    .unwrap();
    let back = Instant::now();
    *recovered_at.lock().unwrap() = Some(back);
    let down_at = stop_at.lock().unwrap().unwrap();
    eprintln!("fault: PostgreSQL down for {:?}", back - down_at);

    let mut total_errors = 0;
    let mut late = Vec::new();
    let mut ok_after = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let out = within(Duration::from_secs(120), "client task", t)
            .await
            .unwrap_or_else(|e| panic!("client {i} task failed: {e:?}"));
        total_errors += out.errors.len();
        for (started, seen, e) in out.errors {
            if seen < down_at {
                panic!("client {i}: error before PostgreSQL was killed: {e}");
            }
            if started > back + GRACE {
                late.push(format!(
                    "client {i}, query started {:?} after restart: {e}",
                    started - back
                ));
            }
        }
        assert!(
            out.ok_after_recovery > 0,
            "client {i} never succeeded after PostgreSQL came back"
        );
        ok_after += out.ok_after_recovery;
    }
    eprintln!("fault: {total_errors} errors during the outage, {ok_after} queries after recovery");
    assert!(
        late.is_empty(),
        "errors more than {GRACE:?} after PostgreSQL came back:\n{}",
        late.join("\n")
    );

    let mut sluice = Arc::try_unwrap(sluice).unwrap_or_else(|_| panic!("sluice still shared"));
    assert!(sluice.is_running(), "sluice died with PostgreSQL");
    // No leaked server connections: at most pool_size once the load is gone.
    let su = cluster.superuser().await;
    let mut n = i64::MAX;
    for _ in 0..100 {
        n = PgCluster::backend_count(&su, &db).await;
        if n <= i64::from(POOL) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        n <= i64::from(POOL),
        "{n} server connections after recovery (pool_size {POOL})"
    );
    // And a fresh client works.
    let c = within(
        Duration::from_secs(30),
        "fresh client",
        connect(&sluice, &db),
    )
    .await
    .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
}
