//! The pool's shared prepared-statement registry stays bounded (issue: it never shrank):
//! one tokio-postgres client prepares hundreds of distinct statements in transaction mode,
//! `sluice_prepared_statements` in `/metrics` (and `prepared_statements` in
//! `/admin/pool-stats` and SHOW POOLS) never passes `prepared_statement_registry_size`,
//! and after the client leaves it falls back to what the server's cache still holds.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sluice_for;
use sluice_tests::{http, rows, shared_cluster, within, PoolMode, Sluice, APP_USER};
use tokio_postgres::{SimpleQueryMessage, Statement};

const T: Duration = Duration::from_secs(60);

/// Per-server statement cache of these tests (`max_prepared_statements`).
const SERVER_CACHE: u64 = 20;

async fn setup(prefix: &str, extra: &str) -> (Sluice, String) {
    let cluster = shared_cluster();
    let db = cluster.fresh_database(prefix).await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(1)
        .min_pool_size(0)
        .extra_postgres(&format!(
            "max_prepared_statements = {SERVER_CACHE}\nadmin_users = [\"{APP_USER}\"]\n{extra}"
        ))
        .start();
    (sluice, db)
}

/// `sluice_prepared_statements` of the pool for `db`, read from `/metrics`.
async fn metric(sluice: &Sluice, db: &str) -> u64 {
    let (status, body) = http(sluice.admin_port(), "GET", "/metrics", "").await;
    assert_eq!(status, 200, "{body}");
    let pool = format!("pool=\"{db}/{APP_USER}\"");
    body.lines()
        .find(|l| l.starts_with("sluice_prepared_statements{") && l.contains(&pool))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sluice_prepared_statements for {pool} in:\n{body}"))
}

/// `prepared_statements` of the pool for `db`, read from `/admin/pool-stats`.
async fn pool_stats_field(sluice: &Sluice, db: &str) -> u64 {
    let (status, body) = http(sluice.admin_port(), "GET", "/admin/pool-stats", "").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pool = json["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["database"] == db)
        .unwrap_or_else(|| panic!("no pool for {db} in {body}"));
    pool["prepared_statements"]
        .as_u64()
        .unwrap_or_else(|| panic!("no prepared_statements in {pool}"))
}

/// Polls the metric until `ok` holds (the client's disconnect is handled asynchronously).
async fn metric_until(sluice: &Sluice, db: &str, ok: impl Fn(u64) -> bool) -> u64 {
    within(T, "sluice_prepared_statements to settle", async {
        loop {
            let n = metric(sluice, db).await;
            if ok(n) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

async fn prepare_distinct(c: &tokio_postgres::Client, n: usize) -> Vec<Statement> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let s = c.prepare(&format!("SELECT $1::int4 + {i}")).await.unwrap();
        held.push(s);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_falls_back_when_the_client_leaves() {
    let (sluice, db) = setup("registry_free", "").await;
    assert_eq!(metric(&sluice, &db).await, 0);
    let c = sluice.client(&db).await;
    let held = prepare_distinct(&c, 300).await;
    // Every statement is still held by the client: all are in the registry.
    assert_eq!(metric(&sluice, &db).await, 300);
    assert_eq!(pool_stats_field(&sluice, &db).await, 300);
    let v: i32 = c.query_one(&held[0], &[&1i32]).await.unwrap().get(0);
    assert_eq!(v, 1);
    drop(held);
    drop(c);
    // Only what the one server connection still has prepared (its LRU) remains.
    let n = metric_until(&sluice, &db, |n| n <= SERVER_CACHE).await;
    assert_eq!(
        n, SERVER_CACHE,
        "the idle server's cached statements stay shared"
    );
    assert_eq!(pool_stats_field(&sluice, &db).await, SERVER_CACHE);

    // A new client preparing a statement the server still has reuses it.
    let c = sluice.client(&db).await;
    let s = c.prepare("SELECT $1::int4 + 299").await.unwrap();
    let v: i32 = c.query_one(&s, &[&1i32]).await.unwrap().get(0);
    assert_eq!(v, 300);
    assert_eq!(metric(&sluice, &db).await, SERVER_CACHE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_cap_drops_least_recently_used_and_clients_keep_working() {
    const CAP: u64 = 100;
    let (sluice, db) = setup(
        "registry_cap",
        &format!("prepared_statement_registry_size = {CAP}"),
    )
    .await;
    let c = sluice.client(&db).await;
    let held = prepare_distinct(&c, 400).await;
    let n = metric(&sluice, &db).await;
    assert!(
        n <= CAP && n > 0,
        "{n} statements in a registry capped at {CAP}"
    );
    // The oldest statements left the registry and the server's cache, but the client
    // still runs them (prepared again transparently), and preparing their text again works.
    for (i, s) in held.iter().enumerate().step_by(37) {
        let v: i32 = c.query_one(s, &[&1i32]).await.unwrap().get(0);
        assert_eq!(v, 1 + i as i32);
    }
    let again = c.prepare("SELECT $1::int4 + 0").await.unwrap();
    let v: i32 = c.query_one(&again, &[&5i32]).await.unwrap().get(0);
    assert_eq!(v, 5);
    assert!(metric(&sluice, &db).await <= CAP);

    // SHOW POOLS carries the same number.
    let admin = sluice.client("pgbouncer").await;
    let pools = admin.simple_query("SHOW POOLS").await.unwrap();
    let cols: Vec<String> = pools
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::RowDescription(cols) => {
                Some(cols.iter().map(|c| c.name().to_owned()).collect())
            }
            _ => None,
        })
        .unwrap();
    let at = cols
        .iter()
        .position(|c| c == "prepared_statements")
        .unwrap_or_else(|| panic!("SHOW POOLS lacks prepared_statements: {cols:?}"));
    let row = rows(&pools)
        .into_iter()
        .find(|r| r[0].as_deref() == Some(db.as_str()))
        .unwrap();
    let shown: u64 = row[at].as_deref().unwrap().parse().unwrap();
    assert!(shown > 0 && shown <= CAP, "SHOW POOLS says {shown}");

    drop((held, again, c));
    metric_until(&sluice, &db, |n| n <= SERVER_CACHE).await;
}
