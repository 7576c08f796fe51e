//! A database with several hosts against a real streaming replica (`pg_basebackup -R`):
//! reads split off to the replica and writes on the primary (checked with
//! `pg_is_in_recovery()` inside the query), settings and prepared statements across
//! hosts, `target_session_attrs`, a stopped replica banned, a lagging replica banned, and
//! a promotion found without a restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use sluice_tests::{scalar, DatabaseConfig, PgCluster, Sluice, APP_PASSWORD, APP_USER};

/// A primary, its replica, and Sluice in front of both (`extra`: more `[postgres]` keys).
fn setup(extra: &str) -> (PgCluster, PgCluster, Sluice) {
    let primary = PgCluster::start();
    let owner = std::process::Command::new(primary.client_tool("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .args([
            "-p",
            &primary.port().to_string(),
            "-U",
            APP_USER,
            "-d",
            "app",
        ])
        .args(["-c", "CREATE TABLE t (x int)"])
        .env("PGPASSWORD", APP_PASSWORD)
        .status()
        .unwrap();
    assert!(owner.success(), "CREATE TABLE failed");
    let replica = primary.replica();
    let url = format!(
        "postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{},127.0.0.1:{}/app",
        primary.port(),
        replica.port()
    );
    let mut db = DatabaseConfig::new("app", &url);
    db.extra = "read_write_split = true\n".into();
    let sluice = common::sluice()
        .database_config(db)
        .pool_size(4)
        .min_pool_size(0)
        .user(APP_USER, APP_PASSWORD)
        .user("admin", "adminpw")
        .extra_postgres(&format!(
            "health_check_interval = \"200ms\"\nban_time = \"2s\"\nadmin_users = [\"admin\"]\n{extra}"
        ))
        .start();
    (primary, replica, sluice)
}

/// Runs `sql` (one row, one column) through Sluice until it gives `want`, for at most 20 s.
async fn eventually(sluice: &Sluice, sql: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        match sluice.connect(APP_USER, APP_PASSWORD, "app").await {
            Ok(c) => match c.simple_query(sql).await {
                Ok(rows) => {
                    last = first_value(&rows).unwrap_or_default();
                    if last == want {
                        return;
                    }
                }
                Err(e) => last = format!("{e:?}"),
            },
            Err(e) => last = format!("connect: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{sql} did not give {want} within 20 s (last: {last})");
}

/// The first column of the first row of a simple query's answer.
fn first_value(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    sluice_tests::rows(messages).first()?.first()?.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_replica_and_writes_to_the_primary() {
    let (_primary, _replica, sluice) = setup("");
    // Once the health check has found the roles, a lone read lands on the replica.
    eventually(&sluice, "SELECT pg_is_in_recovery()", "t").await;
    let c = sluice.connect(APP_USER, APP_PASSWORD, "app").await.unwrap();
    assert_eq!(scalar(&c, "SELECT pg_is_in_recovery()").await, "t");
    // A write, and a transaction begun without READ ONLY, are the primary's.
    c.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(scalar(&c, "SELECT pg_is_in_recovery()").await, "f");
    c.batch_execute("COMMIT").await.unwrap();
    // A READ ONLY transaction goes to the replica as a whole.
    let rows = c
        .simple_query("BEGIN READ ONLY; SELECT pg_is_in_recovery()")
        .await
        .unwrap();
    assert_eq!(first_value(&rows).as_deref(), Some("t"));
    assert_eq!(scalar(&c, "SELECT pg_is_in_recovery()").await, "t");
    c.batch_execute("COMMIT").await.unwrap();
    // The write replicates and is read back from the replica.
    eventually(&sluice, "SELECT count(*) FROM t", "1").await;
    // A row-locking read is a write's business.
    let locked = c
        .simple_query("SELECT pg_is_in_recovery() FROM t FOR UPDATE")
        .await
        .unwrap();
    assert_eq!(first_value(&locked).as_deref(), Some("f"), "{locked:?}");
    // Settings follow the client to the replica; prepared statements work on both hosts.
    c.batch_execute("SET application_name = 'split-test'")
        .await
        .unwrap();
    assert_eq!(scalar(&c, "SHOW application_name").await, "split-test");
    let read = c.prepare("SELECT pg_is_in_recovery()").await.unwrap();
    let write = c.prepare("INSERT INTO t VALUES ($1)").await.unwrap();
    for i in 0..3 {
        let row = c.query_one(&read, &[]).await.unwrap();
        assert!(
            row.get::<_, bool>(0),
            "prepared read {i} ran on the primary"
        );
        c.execute(&write, &[&i]).await.unwrap();
    }
    // SHOW POOLS has a row per host, but counts the one connected client once.
    let admin = sluice
        .connect("admin", "adminpw", "pgbouncer")
        .await
        .unwrap();
    let pools = admin.simple_query("SHOW POOLS").await.unwrap();
    let active: Vec<u64> = pools
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r)
                if r.get("database") == Some("app") && r.get("user") == Some(APP_USER) =>
            {
                r.get("cl_active").and_then(|v| v.parse().ok())
            }
            _ => None,
        })
        .collect();
    assert_eq!(active.len(), 2, "a row per host: {active:?}");
    assert_eq!(active.iter().sum::<u64>(), 1, "{active:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_session_attrs_picks_the_hosts_of_a_session() {
    let (_primary, _replica, sluice) = setup("");
    eventually(&sluice, "SELECT pg_is_in_recovery()", "t").await;
    let mut config = sluice.pg_config(APP_USER, APP_PASSWORD, "app");
    config.options("-c target_session_attrs=read-only");
    let (c, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    // Every transaction of this client runs on the replica: a write fails there.
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(scalar(&c, "SELECT pg_is_in_recovery()").await, "t");
    c.batch_execute("COMMIT").await.unwrap();
    let e = c
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("25006"), "{e:?}");
    // The option itself never reaches PostgreSQL (it would reject it).
    assert_eq!(scalar(&c, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_is_banned_and_reads_go_to_the_primary() {
    let (primary, replica, sluice) = setup("");
    eventually(&sluice, "SELECT pg_is_in_recovery()", "t").await;
    replica.stop();
    // Within a check or two the replica is banned; reads continue on the primary.
    eventually(&sluice, "SELECT pg_is_in_recovery()", "f").await;
    // /health names the banned replica and stays 200: the primary serves.
    let (status, body) = sluice_tests::http(sluice.admin_port(), "GET", "/health", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("banned for"), "{body}");
    // SHOW HOSTS says the same: the replica banned with its error, the primary usable.
    let admin = sluice
        .connect("admin", "adminpw", "pgbouncer")
        .await
        .unwrap();
    let hosts = admin.simple_query("SHOW HOSTS").await.unwrap();
    let rows: Vec<_> = hosts
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                r.get("host").unwrap_or_default().to_owned(),
                r.get("role").unwrap_or_default().to_owned(),
                r.get("banned_for").unwrap_or_default().to_owned(),
            )),
            _ => None,
        })
        .collect();
    let replica_row = rows
        .iter()
        .find(|(h, _, _)| h.ends_with(&format!(":{}", replica.port())))
        .unwrap_or_else(|| panic!("no replica row in {rows:?}"));
    assert_ne!(replica_row.2, "0.0", "{rows:?}");
    assert!(
        rows.iter()
            .any(|(_, role, banned)| role == "primary" && banned == "0.0"),
        "{rows:?}"
    );
    // SHOW POOLS has a row per host.
    let pools = sluice_tests::rows(&admin.simple_query("SHOW POOLS").await.unwrap());
    let hosts: Vec<_> = pools
        .iter()
        .filter_map(|r| r.last().cloned().flatten())
        .collect();
    for port in [primary.port(), replica.port()] {
        let want = format!("127.0.0.1:{port}");
        assert!(
            hosts.contains(&want),
            "{want} not in SHOW POOLS hosts {hosts:?}"
        );
    }
    // /metrics names each host of the pools, with its role (banned while it is).
    let (_, metrics) = sluice_tests::http(sluice.admin_port(), "GET", "/metrics", "").await;
    let replica_member = format!("member=\"127.0.0.1:{}\",role=\"banned\"", replica.port());
    assert!(
        metrics.contains(&replica_member),
        "{replica_member} not in:\n{metrics}"
    );
    assert!(metrics.contains("role=\"primary\""), "{metrics}");
    // Back up: after its ban it takes reads again.
    replica.start_again();
    eventually(&sluice, "SELECT pg_is_in_recovery()", "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_lagging_past_max_replica_lag_is_banned() {
    let (primary, replica, sluice) = setup("max_replica_lag = \"1s\"");
    eventually(&sluice, "SELECT pg_is_in_recovery()", "t").await;
    replica.psql_superuser("SELECT pg_wal_replay_pause()");
    // Writes keep coming while replay stands still: the lag grows past 1 s.
    let su = primary
        .connect(APP_USER, APP_PASSWORD, "app")
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..200 {
            let _ = su
                .batch_execute(&format!("INSERT INTO t VALUES ({i})"))
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    eventually(&sluice, "SELECT pg_is_in_recovery()", "f").await;
    replica.psql_superuser("SELECT pg_wal_replay_resume()");
    writer.abort();
    eventually(&sluice, "SELECT pg_is_in_recovery()", "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_becomes_the_primary_without_a_restart() {
    let (primary, replica, sluice) = setup("");
    eventually(&sluice, "SELECT pg_is_in_recovery()", "t").await;
    let c = sluice.connect(APP_USER, APP_PASSWORD, "app").await.unwrap();
    c.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    primary.stop();
    replica.promote();
    // New transactions find the new primary: writes work, and nothing is in recovery.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = match sluice.connect(APP_USER, APP_PASSWORD, "app").await {
            Ok(c) => c.batch_execute("INSERT INTO t VALUES (2)").await.is_ok(),
            Err(_) => false,
        };
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write succeeded after the promotion"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually(&sluice, "SELECT pg_is_in_recovery()", "f").await;
    eventually(&sluice, "SELECT count(*) FROM t", "2").await;
}
