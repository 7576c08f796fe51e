//! Operating a running Sluice: /metrics parsed as Prometheus text under load, SHOW POOLS
//! through psql, a pool_size reload under load, PAUSE/RESUME around an open transaction,
//! and /health following the upstream down and back up. Real PostgreSQL, real sockets.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sluice_for;
use prometheus_parse::{Sample, Scrape, Value};
use sluice_tests::{
    http, rows, scalar, shared_cluster, within, PgCluster, PoolMode, Sluice, APP_PASSWORD, APP_USER,
};

const T: Duration = Duration::from_secs(60);

/// One parsed scrape of GET /metrics.
struct Metrics {
    text: String,
    scrape: Scrape,
}

impl Metrics {
    async fn fetch(sluice: &Sluice) -> Metrics {
        let (status, text) = http(sluice.admin_port(), "GET", "/metrics", "").await;
        assert_eq!(status, 200, "{text}");
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        Metrics { text, scrape }
    }

    /// The `# TYPE` of family `name`.
    fn type_of(&self, name: &str) -> Option<&str> {
        self.text.lines().find_map(|l| {
            let rest = l.strip_prefix("# TYPE ")?;
            let (n, kind) = rest.split_once(' ')?;
            (n == name).then_some(kind.trim())
        })
    }

    /// The samples named `metric` whose labels include all of `labels`.
    fn samples<'a>(
        &'a self,
        metric: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.scrape.samples.iter().filter(move |s| {
            s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The value of the one counter or gauge `metric` with `labels`.
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.samples(metric, labels).collect();
        assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
        match found[0].value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{metric}: not a scalar: {other:?}"),
        }
    }

    /// The buckets (upper bound, cumulative count) of histogram `metric` with `labels`.
    fn histogram(&self, metric: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let found: Vec<&Sample> = self.samples(metric, labels).collect();
        assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
        match &found[0].value {
            Value::Histogram(b) => b.iter().map(|h| (h.less_than, h.count)).collect(),
            other => panic!("{metric}: not a histogram: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_types_and_counters_grow_under_load() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("ops_metrics").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(5)
        .start();
    let first = sluice.client(&db).await;
    assert_eq!(scalar(&first, "select 1").await, "1");
    drop(first);

    let before = Metrics::fetch(&sluice).await;
    for (name, kind) in [
        ("sluice_pool_connections", "gauge"),
        ("sluice_pool_max_connections", "gauge"),
        ("sluice_pool_waiting_clients", "gauge"),
        ("sluice_pool_longest_wait_seconds", "gauge"),
        ("sluice_pool_utilization", "gauge"),
        ("sluice_pool_checkouts_total", "counter"),
        ("sluice_pool_transactions_total", "counter"),
        ("sluice_pool_queries_total", "counter"),
        ("sluice_pool_bytes_received_total", "counter"),
        ("sluice_pool_bytes_sent_total", "counter"),
        ("sluice_pool_server_connects_total", "counter"),
        ("sluice_pool_errors_total", "counter"),
        ("sluice_pool_wait_seconds", "histogram"),
        ("sluice_client_connections", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert_eq!(before.type_of(name), Some(kind), "TYPE of {name}");
        let n = before
            .scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .inspect(|s| {
                let ok = matches!(
                    (&s.value, kind),
                    (Value::Gauge(_), "gauge")
                        | (Value::Counter(_), "counter")
                        | (Value::Histogram(_), "histogram")
                );
                assert!(ok, "{name} parsed as {:?}", s.value);
            })
            .count();
        assert!(n > 0, "no sample of {name}");
    }
    let pool = [("database", db.as_str()), ("user", APP_USER)];
    assert_eq!(before.value("sluice_pool_max_connections", &pool), 5.0);
    for kind in ["timeout", "connect", "server_lost", "protocol", "auth"] {
        let labels = [pool[0], pool[1], ("kind", kind)];
        assert_eq!(before.value("sluice_pool_errors_total", &labels), 0.0);
    }
    assert!(before.value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(before.value("process_open_fds", &[]) >= 3.0);

    // 20 clients x 50 autocommit queries, half simple protocol, half extended.
    let mut tasks = Vec::new();
    for c in 0..20 {
        let config = sluice.pg_config(APP_USER, APP_PASSWORD, &db);
        tasks.push(tokio::spawn(async move {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            for i in 0..50i32 {
                if i % 2 == 0 {
                    let r = client
                        .simple_query(&format!("select {c} * 1000 + {i}"))
                        .await?;
                    assert_eq!(rows(&r)[0][0], Some((c * 1000 + i).to_string()));
                } else {
                    let row = client.query_one("select $1::int + 1", &[&i]).await?;
                    assert_eq!(row.get::<_, i32>(0), i + 1);
                }
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for t in tasks {
        within(T, "load client", t).await.unwrap().unwrap();
    }
    // Counters are updated as replies go out; give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = Metrics::fetch(&sluice).await;

    let delta = |name: &str| after.value(name, &pool) - before.value(name, &pool);
    let queries = delta("sluice_pool_queries_total");
    let transactions = delta("sluice_pool_transactions_total");
    let checkouts = delta("sluice_pool_checkouts_total");
    let bytes_in = delta("sluice_pool_bytes_received_total");
    let bytes_out = delta("sluice_pool_bytes_sent_total");
    assert!(queries >= 1000.0, "queries_total grew by {queries}");
    assert!(
        transactions >= 1000.0,
        "transactions_total grew by {transactions}"
    );
    assert!(checkouts >= 1000.0, "checkouts_total grew by {checkouts}");
    // Every query's text went out and a reply came back.
    assert!(
        bytes_in >= 1000.0 * 15.0,
        "bytes_received grew by {bytes_in}"
    );
    assert!(bytes_out >= 1000.0 * 20.0, "bytes_sent grew by {bytes_out}");
    for kind in ["timeout", "connect", "server_lost", "protocol", "auth"] {
        let labels = [pool[0], pool[1], ("kind", kind)];
        assert_eq!(
            after.value("sluice_pool_errors_total", &labels),
            0.0,
            "{kind}"
        );
    }
    // Never more server connections than the pool holds.
    let servers: f64 = ["idle", "active"]
        .iter()
        .map(|s| after.value("sluice_pool_connections", &[pool[0], pool[1], ("state", s)]))
        .sum();
    assert!(
        (1.0..=5.0).contains(&servers),
        "{servers} server connections"
    );
    assert!(after.value("sluice_pool_server_connects_total", &pool) <= 5.0);

    // The checkout-wait histogram: cumulative, +Inf = _count = checkouts.
    let buckets = after.histogram("sluice_pool_wait_seconds", &pool);
    assert!(buckets
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    let (inf, total) = *buckets.last().unwrap();
    assert!(inf.is_infinite(), "{buckets:?}");
    let count = after.value("sluice_pool_wait_seconds_count", &pool);
    assert_eq!(total, count);
    assert_eq!(count, after.value("sluice_pool_checkouts_total", &pool));
    let count_before = before.value("sluice_pool_wait_seconds_count", &pool);
    assert!(count - count_before >= 1000.0);
    assert!(after.value("sluice_pool_wait_seconds_sum", &pool) >= 0.0);

    // All load clients are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = Metrics::fetch(&sluice).await;
        let clients: f64 = ["active", "idle", "waiting"]
            .iter()
            .map(|s| m.value("sluice_client_connections", &[("state", s)]))
            .sum();
        if clients == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{clients} clients still counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_through_psql() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("ops_psql").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(4)
        .user(APP_USER, APP_PASSWORD)
        .user("admin", "adminpw")
        .extra_postgres("admin_users = [\"admin\"]")
        .start();
    let app = sluice.client(&db).await;
    assert_eq!(scalar(&app, "select 1").await, "1");

    let psql = cluster.client_tool("psql");
    let url = format!(
        "postgres://admin:adminpw@127.0.0.1:{}/pgbouncer",
        sluice.port()
    );
    let out = tokio::process::Command::new(psql)
        .args([
            "-X",
            "-A",
            "-F",
            "|",
            "-P",
            "footer=off",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .arg(&url)
        .args(["-c", "SHOW POOLS"])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::null())
        .output();
    let out = within(T, "psql SHOW POOLS", out).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "psql failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('|').collect();
    assert_eq!(
        header,
        [
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "sv_active",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
            "prepared_statements",
            "pinned",
            "host",
        ],
        "{stdout}"
    );
    let table: Vec<BTreeMap<&str, &str>> = lines
        .map(|l| header.iter().copied().zip(l.split('|')).collect())
        .collect();
    let row = table
        .iter()
        .find(|r| r["database"] == db && r["user"] == APP_USER)
        .unwrap_or_else(|| panic!("no row for {db}/{APP_USER}:\n{stdout}"));
    assert_eq!(row["cl_active"], "1", "{stdout}");
    assert_eq!(row["cl_waiting"], "0", "{stdout}");
    assert_eq!(row["pool_mode"], "transaction", "{stdout}");
    assert_eq!(row["maxwait"], "0", "{stdout}");
    assert_eq!(row["pinned"], "0", "{stdout}");
    // The transaction-mode client holds no server between queries: it sits idle. The pool's
    // health upkeep opens one connection at start, which may race the client's first
    // checkout, so one or two idle servers are both right.
    assert_eq!(row["sv_active"], "0", "{stdout}");
    assert!(matches!(row["sv_idle"], "1" | "2"), "{stdout}");
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_raises_pool_size_under_load() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("ops_reload").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(2)
        .start();
    let su = cluster.superuser().await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..30 {
        let config = sluice.pg_config(APP_USER, APP_PASSWORD, &db);
        let stop = stop.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let (mut client, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let started = Instant::now();
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < T {
                let tx = client.transaction().await?;
                tx.batch_execute("select pg_sleep(0.02)").await?;
                let n: i64 = tx.query_one("select $1::bigint", &[&i]).await?.get(0);
                assert_eq!(n, i, "client {c}");
                tx.commit().await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok::<_, tokio_postgres::Error>(i)
        }));
    }

    // Under pool_size 2, PostgreSQL never sees more than 2 backends for the database.
    let mut max_before = 0;
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_secs(2) || done.load(Ordering::Relaxed) < 30 {
        assert!(sampling.elapsed() < T, "the load made no progress");
        max_before = max_before.max(PgCluster::backend_count(&su, &db).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(max_before, 2, "backends under pool_size 2");

    let config = std::fs::read_to_string(sluice.config_path()).unwrap();
    assert!(config.contains("pool_size = 2"), "{config}");
    std::fs::write(
        sluice.config_path(),
        config.replacen("pool_size = 2", "pool_size = 6", 1),
    )
    .unwrap();
    let (status, body) = http(sluice.admin_port(), "POST", "/admin/reload", "").await;
    assert_eq!(status, 200, "{body}");

    let mut max_after = 0;
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_secs(10) {
        let n = PgCluster::backend_count(&su, &db).await;
        assert!(n <= 6, "{n} backends with pool_size 6");
        max_after = max_after.max(n);
        if max_after > 2 && sampling.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        max_after > 2,
        "backends stayed at {max_after} after raising pool_size to 6"
    );
    let m = Metrics::fetch(&sluice).await;
    let pool = [("database", db.as_str()), ("user", APP_USER)];
    assert_eq!(m.value("sluice_pool_max_connections", &pool), 6.0);

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for (c, t) in tasks.into_iter().enumerate() {
        let n = within(T, "load client", t)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("client {c} got an error across the reload: {e:?}"));
        total += n;
    }
    assert!(total > 60, "only {total} transactions ran");
    let errors: f64 = ["timeout", "connect", "server_lost", "protocol", "auth"]
        .iter()
        .map(|k| m.value("sluice_pool_errors_total", &[pool[0], pool[1], ("kind", k)]))
        .sum();
    assert_eq!(errors, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_the_open_transaction_and_resume_releases_held_queries() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("ops_pause").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(3)
        .user(APP_USER, APP_PASSWORD)
        .user("admin", "adminpw")
        .extra_postgres("admin_users = [\"admin\"]")
        .start();
    let a = sluice.client(&db).await;
    let b = sluice.client(&db).await;
    assert_eq!(scalar(&b, "select 'b ready'").await, "b ready");
    let admin = Arc::new(
        sluice
            .connect("admin", "adminpw", "pgbouncer")
            .await
            .unwrap(),
    );

    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    let pause = {
        let admin = admin.clone();
        let sql = format!("PAUSE {db}");
        tokio::spawn(async move { admin.simple_query(&sql).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE completed while a transaction was open: {:?}",
        pause.await
    );
    // The open transaction goes on while PAUSE waits for it.
    assert_eq!(scalar(&a, "select count(*) from t").await, "1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pause.is_finished(), "PAUSE completed mid-transaction");

    a.batch_execute("COMMIT").await.unwrap();
    within(Duration::from_secs(10), "PAUSE after COMMIT", pause)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("PAUSE failed: {e:?}"));

    // New transactions are held while paused.
    let held = tokio::spawn(async move {
        let r = scalar(&b, "select count(*)::text || ' row' from t").await;
        (b, r)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!held.is_finished(), "a query ran while paused");

    admin.simple_query(&format!("RESUME {db}")).await.unwrap();
    let (_b, r) = within(Duration::from_secs(10), "held query after RESUME", held)
        .await
        .unwrap();
    assert_eq!(r, "1 row");
    assert_eq!(scalar(&a, "select 'a again'").await, "a again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_postgres_is_stopped_and_200_after_it_returns() {
    let cluster = PgCluster::start();
    let db = cluster.fresh_database("ops_health").await;
    let sluice = sluice_for(&cluster, &db, PoolMode::Transaction)
        .pool_size(3)
        .min_pool_size(1)
        .start();
    let port = sluice.admin_port();

    let poll = |want: u16, limit: Duration| async move {
        let deadline = Instant::now() + limit;
        loop {
            let (status, body) = http(port, "GET", "/health", "").await;
            if status == want {
                return (status, body, deadline - limit);
            }
            assert!(
                Instant::now() < deadline,
                "/health did not answer {want} within {limit:?}: last {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (_, body, _) = poll(200, Duration::from_secs(10)).await;
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let c = sluice.client(&db).await;
    assert_eq!(scalar(&c, "select 'up'").await, "up");
    drop(c);

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop();
        cluster
    })
    .await
    .unwrap();
    let stopped = Instant::now();
    let (_, body, _) = poll(503, Duration::from_secs(30)).await;
    eprintln!("/health went 503 {:?} after the stop", stopped.elapsed());
    assert!(body.contains("\"status\":\"unhealthy\""), "{body}");
    assert!(body.contains(&db), "{body}");
    // The failed connect attempts are what the alert rules watch.
    let m = Metrics::fetch(&sluice).await;
    let connect_errors = m.value(
        "sluice_pool_errors_total",
        &[("database", &db), ("user", APP_USER), ("kind", "connect")],
    );
    assert!(connect_errors >= 1.0, "connect errors {connect_errors}");

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.start_again();
        cluster
    })
    .await
    .unwrap();
    let started = Instant::now();
    let (_, body, _) = poll(200, Duration::from_secs(30)).await;
    eprintln!(
        "/health back to 200 {:?} after the start",
        started.elapsed()
    );
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let c = within(T, "connect after start", sluice.client(&db)).await;
    assert_eq!(scalar(&c, "select 'back'").await, "back");
    drop(cluster);
}

/// A client whose query PAUSE holds has sent a query and has no server connection: PgBouncer
/// counts it in `cl_waiting`, and the waiting-clients gauge (which the alerts watch) should
/// see it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_held_by_pause_count_as_waiting() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("ops_pause_wait").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(3)
        .user(APP_USER, APP_PASSWORD)
        .user("admin", "adminpw")
        .extra_postgres("admin_users = [\"admin\"]")
        .start();
    let b = sluice.client(&db).await;
    assert_eq!(scalar(&b, "select 1").await, "1");
    let admin = sluice
        .connect("admin", "adminpw", "pgbouncer")
        .await
        .unwrap();
    admin.simple_query(&format!("PAUSE {db}")).await.unwrap();
    let held = tokio::spawn(async move { scalar(&b, "select 'held'").await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!held.is_finished(), "a query ran while paused");

    // The held query reaches the proxy asynchronously (a loaded machine may take longer than
    // the pause above): poll until it is counted, up to a generous deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (cl_waiting, gauge, clients) = loop {
        assert!(!held.is_finished(), "a query ran while paused");
        let pools = admin.simple_query("SHOW POOLS").await.unwrap();
        let cl_waiting = rows(&pools)
            .into_iter()
            .find(|r| r[0].as_deref() == Some(db.as_str()) && r[1].as_deref() == Some(APP_USER))
            .and_then(|r| r[3].clone());
        let m = Metrics::fetch(&sluice).await;
        let gauge = m.value(
            "sluice_pool_waiting_clients",
            &[("database", &db), ("user", APP_USER)],
        );
        let clients = m.value("sluice_client_connections", &[("state", "waiting")]);
        if (cl_waiting.as_deref(), gauge, clients) == (Some("1"), 1.0, 1.0)
            || Instant::now() > deadline
        {
            break (cl_waiting, gauge, clients);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    admin.simple_query(&format!("RESUME {db}")).await.unwrap();
    assert_eq!(
        within(Duration::from_secs(10), "held query after RESUME", held)
            .await
            .unwrap(),
        "held"
    );
    assert_eq!(
        (cl_waiting.as_deref(), gauge, clients),
        (Some("1"), 1.0, 1.0),
        "(SHOW POOLS cl_waiting, sluice_pool_waiting_clients, \
         sluice_client_connections{{state=\"waiting\"}}) for one client held by PAUSE"
    );
}

/// PAUSE waits for open transactions at most `pool_timeout` (clients it holds would time
/// out by then anyway): then it answers with an error naming the client still holding a
/// server, and the pool is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_gives_up_after_pool_timeout_naming_who_still_runs() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("ops_pause_bound").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(2)
        .pool_timeout(Duration::from_secs(2))
        .user(APP_USER, APP_PASSWORD)
        .user("admin", "adminpw")
        .extra_postgres("admin_users = [\"admin\"]")
        .start();
    let mut config = sluice.pg_config(APP_USER, APP_PASSWORD, &db);
    config.application_name("long-report");
    let (holder, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let admin = sluice
        .connect("admin", "adminpw", "pgbouncer")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = within(
        Duration::from_secs(20),
        "PAUSE with an open transaction",
        admin.simple_query(&format!("PAUSE {db}")),
    )
    .await;
    let err = answer.expect_err("PAUSE cannot complete while the transaction is open");
    let msg = sluice_tests::error_message(&err);
    assert_eq!(
        sluice_tests::sqlstate(&err).as_deref(),
        Some("55000"),
        "{msg}"
    );
    assert!(msg.contains("long-report"), "names the holder: {msg}");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    // Resumed: another client is served at once.
    let other = sluice.client(&db).await;
    assert_eq!(
        within(
            T,
            "query after the failed PAUSE",
            scalar(&other, "select 'served'")
        )
        .await,
        "served"
    );
    holder.batch_execute("COMMIT").await.unwrap();
}
