//! The admin listener: /health, /admin/pool-stats, /metrics, reload (HTTP and SIGHUP),
//! error statuses — driven over real HTTP against the real program.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sluice_for;
use sluice_tests::{http, metric_value, scalar, shared_cluster, PoolMode, APP_PASSWORD, APP_USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stats_metrics_and_errors() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("admin_http").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(4)
        .min_pool_size(2)
        .start();
    let client = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    for _ in 0..20 {
        assert_eq!(scalar(&client, "select 1::text").await, "1");
    }
    let port = sluice.admin_port();

    let (status, body) = http(port, "GET", "/health", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");

    let (status, body) = http(port, "GET", "/admin/pool-stats", "").await;
    assert_eq!(status, 200, "{body}");
    for key in [
        "\"postgres_utilization\"",
        "\"postgres_waiting\":0",
        "\"postgres_max\":4",
        &format!("\"database\":\"{db}\""),
        "\"checkout_wait\"",
        "\"queries_total\"",
    ] {
        assert!(body.contains(key), "missing {key} in {body}");
    }
    // 20 queries (+ the login's) went through this pool.
    let queries: u64 = body
        .split("\"queries_total\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(queries >= 20, "queries_total {queries}");

    let (status, body) = http(port, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    for name in [
        "sluice_pool_connections{",
        "sluice_pool_wait_seconds_bucket{",
        "sluice_client_connections{",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(body.contains(name), "missing {name}");
    }
    let pool = format!("{db}/{APP_USER}");
    let labels = [
        ("database", db.as_str()),
        ("user", APP_USER),
        ("pool", &pool),
    ];
    assert_eq!(
        metric_value(&body, "sluice_pool_max_connections", &labels),
        4.0
    );
    let metric_queries = metric_value(&body, "sluice_pool_queries_total", &labels);
    assert!(metric_queries >= 20.0, "{body}");
    assert!(metric_value(&body, "sluice_pool_checkouts_total", &labels) >= 1.0);

    assert_eq!(http(port, "GET", "/nope", "").await.0, 404);
    assert_eq!(http(port, "POST", "/health", "").await.0, 405);
}

/// The soft `Max open files` limit of process `pid`, from `/proc/<pid>/limits`.
fn soft_fd_limit(pid: u32) -> f64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .unwrap();
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// The process_* metrics describe the sluice process itself (the `prometheus` crate's
/// process collector): its fd limit, threads and memory, not only what /proc/self/status
/// and a tick count give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_describe_the_sluice_process() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("admin_process").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction).start();
    let (status, body) = http(sluice.admin_port(), "GET", "/metrics", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        metric_value(&body, "process_max_fds", &[]),
        soft_fd_limit(sluice.pid())
    );
    let open = metric_value(&body, "process_open_fds", &[]);
    assert!(
        open >= 3.0 && open <= metric_value(&body, "process_max_fds", &[]),
        "{body}"
    );
    // The default runtime is one thread; the figure must be the process's own count.
    let threads = metric_value(&body, "process_threads", &[]);
    let actual = std::fs::read_dir(format!("/proc/{}/task", sluice.pid()))
        .map(|d| d.count())
        .unwrap_or_default() as f64;
    assert!(
        threads >= 1.0 && (threads - actual).abs() <= 2.0,
        "{threads} vs {actual}"
    );
    let rss = metric_value(&body, "process_resident_memory_bytes", &[]);
    let vsize = metric_value(&body, "process_virtual_memory_bytes", &[]);
    assert!(rss > 0.0 && vsize >= rss, "{body}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = metric_value(&body, "process_start_time_seconds", &[]);
    assert!(
        started <= now && started > now - 600.0,
        "{started} vs {now}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_pool_size_and_rejects_bad_files() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("admin_reload").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(2)
        .start();
    let port = sluice.admin_port();
    let original = std::fs::read_to_string(sluice.config_path()).unwrap();
    assert!(original.contains("pool_size = 2"), "{original}");

    std::fs::write(
        sluice.config_path(),
        original.replacen("pool_size = 2", "pool_size = 7", 1),
    )
    .unwrap();
    let (status, body) = http(port, "POST", "/admin/reload", "").await;
    assert_eq!(status, 200, "{body}");
    let (_, stats) = http(port, "GET", "/admin/pool-stats", "").await;
    assert!(stats.contains("\"postgres_max\":7"), "{stats}");

    // An invalid file is rejected and the running configuration kept.
    std::fs::write(sluice.config_path(), "[postgres]\npool_size = 0\n").unwrap();
    let (status, body) = http(port, "POST", "/admin/reload", "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("pool_size"), "{body}");
    let (_, stats) = http(port, "GET", "/admin/pool-stats", "").await;
    assert!(stats.contains("\"postgres_max\":7"), "{stats}");

    // SIGHUP reloads too.
    std::fs::write(
        sluice.config_path(),
        original.replacen("pool_size = 2", "pool_size = 3", 1),
    )
    .unwrap();
    sluice.signal("HUP");
    let mut seen = String::new();
    for _ in 0..50 {
        seen = http(port, "GET", "/admin/pool-stats", "").await.1;
        if seen.contains("\"postgres_max\":3") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.contains("\"postgres_max\":3"), "{seen}");
    // Clients still work after all that.
    let client = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    assert_eq!(scalar(&client, "select 41 + 1").await, "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_when_the_upstream_is_unreachable() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("admin_down").await;
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .database(
            "down",
            &format!("postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{dead_port}/{db}"),
        )
        .start();
    let port = sluice.admin_port();
    let mut last = (0, String::new());
    for _ in 0..50 {
        last = http(port, "GET", "/health", "").await;
        if last.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, 503, "{}", last.1);
    assert!(last.1.contains("down/"), "{}", last.1);
}
