//! The admin listener: /health, /admin/pool-stats, /metrics, reload (HTTP and SIGHUP),
//! error statuses — driven over real HTTP against the real program.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sluice_for;
use sluice_tests::{http, scalar, shared_cluster, PoolMode, APP_PASSWORD, APP_USER};

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
        "sluice_pool_checkouts_total{",
        "sluice_client_connections{",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(body.contains(name), "missing {name}");
    }

    assert_eq!(http(port, "GET", "/nope", "").await.0, 404);
    assert_eq!(http(port, "POST", "/health", "").await.0, 405);
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
