//! Checks of the harness itself, straight against PostgreSQL (no proxy involved).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use sluice_tests::{scalar, shared_cluster, sqlstate, PgCluster, PoolMode, APP_PASSWORD, APP_USER};

#[tokio::test]
async fn cluster_accepts_app_and_superuser() {
    let cluster = shared_cluster();
    let su = cluster.superuser().await;
    assert_eq!(scalar(&su, "SELECT current_user").await, "postgres");
    let v: i32 = scalar(&su, "SHOW server_version_num")
        .await
        .parse()
        .unwrap();
    assert!((150000..160000).contains(&v), "server_version_num {v}");
    assert_eq!(scalar(&su, "SHOW fsync").await, "off");
    assert_eq!(scalar(&su, "SHOW max_connections").await, "300");
    assert_eq!(
        scalar(&su, "SHOW password_encryption").await,
        "scram-sha-256"
    );

    let app = cluster
        .connect(APP_USER, APP_PASSWORD, "app")
        .await
        .unwrap();
    assert_eq!(scalar(&app, "SELECT current_database()").await, "app");
    let verifier = cluster.app_verifier().await;
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
}

#[tokio::test]
async fn cluster_rejects_bad_password() {
    let cluster = shared_cluster();
    let err = cluster.connect(APP_USER, "wrong", "app").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err:?}");
}

#[tokio::test]
async fn create_database_and_count_backends() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("harness").await;
    let su = cluster.superuser().await;
    assert_eq!(PgCluster::backend_count(&su, &db).await, 0);
    let a = cluster.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let b = cluster.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    assert_eq!(PgCluster::backend_count(&su, &db).await, 2);
    assert_eq!(
        scalar(&a, "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()").await,
        "app"
    );
    drop(a);
    drop(b);
    // Backends go away asynchronously after the client closes.
    let mut n = -1;
    for _ in 0..100 {
        n = PgCluster::backend_count(&su, &db).await;
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n, 0);
}

#[tokio::test]
async fn own_cluster_restart_stop_start() {
    let cluster = PgCluster::start();
    let dir = cluster.root().to_path_buf();
    let su = cluster.superuser().await;
    assert_eq!(scalar(&su, "SELECT 1").await, "1");
    cluster.restart();
    assert!(
        su.simple_query("SELECT 1").await.is_err(),
        "old session survived restart"
    );
    let su = cluster.superuser().await;
    assert_eq!(scalar(&su, "SELECT 2").await, "2");
    cluster.stop();
    assert!(cluster.connect("postgres", "x", "postgres").await.is_err());
    cluster.start_again();
    let su = cluster.superuser().await;
    assert_eq!(scalar(&su, "SELECT 3").await, "3");
    drop(su);
    drop(cluster);
    assert!(!dir.exists(), "cluster dir {} left behind", dir.display());
}

#[test]
fn config_file_shape() {
    let cluster_url = "postgres://app:secret@127.0.0.1:5432/app";
    let toml = common::sluice()
        .mode(PoolMode::Session)
        .pool_size(3)
        .pool_timeout(Duration::from_millis(500))
        .database("app", cluster_url)
        .user("app", "secret")
        .to_toml(6432, 9930);
    assert!(toml.contains("pool_mode = \"session\""), "{toml}");
    assert!(toml.contains("pool_timeout = \"0.5\""), "{toml}");
    assert!(toml.contains("listen = \"127.0.0.1:6432\""), "{toml}");
    assert!(toml.contains("[[postgres.databases]]"), "{toml}");
    assert!(toml.contains("[[postgres.users]]"), "{toml}");
}
