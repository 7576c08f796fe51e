//! TLS on both sides: psql with sslmode=verify-full against Sluice's certificate,
//! `require` refusing plaintext, Sluice verifying PostgreSQL's certificate
//! (verify-full / wrong CA), and certificates reloaded on SIGHUP.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{ca, expect_sqlstate, leaf, sluice, write_file as write};
use sluice_tests::{scalar, DatabaseConfig, PgCluster, APP_PASSWORD, APP_USER};

fn psql(cluster: &PgCluster, conninfo: &str, sql: &str) -> (bool, String) {
    let out = Command::new(cluster.client_tool("psql"))
        .args([conninfo, "-XAtc", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_clients_and_to_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let pg_ca = ca("pg test CA");
    let pg_leaf = leaf(&pg_ca);
    let cluster = PgCluster::start();
    cluster.enable_ssl(&pg_leaf.cert.pem(), &pg_leaf.key_pair.serialize_pem());
    let db = cluster.fresh_database("tls").await;

    let front_ca = ca("sluice test CA");
    let front = leaf(&front_ca);
    let front_ca_path = write(dir.path(), "front-ca.pem", &front_ca.cert.pem());
    let cert_path = write(dir.path(), "sluice.crt", &front.cert.pem());
    let key_path = write(dir.path(), "sluice.key", &front.key_pair.serialize_pem());
    let pg_ca_path = write(dir.path(), "pg-ca.pem", &pg_ca.cert.pem());
    let wrong_ca_path = write(dir.path(), "wrong-ca.pem", &ca("unrelated CA").cert.pem());

    let port = cluster.port();
    let mut good = DatabaseConfig::new(&db, &cluster.app_url(&db));
    good.extra = format!("sslmode = \"verify-full\"\nsslrootcert = \"{pg_ca_path}\"\n");
    let mut bad = DatabaseConfig::new("wrongca", &cluster.app_url(&db));
    bad.extra = format!("sslmode = \"verify-ca\"\nsslrootcert = \"{wrong_ca_path}\"\n");
    let sluice = sluice()
        .database_config(good)
        .database_config(bad)
        .user(APP_USER, APP_PASSWORD)
        .extra_postgres(&format!(
            "tls.mode = \"require\"\ntls.cert_file = \"{cert_path}\"\ntls.key_file = \"{key_path}\""
        ))
        .start();
    let _ = port;
    let base = format!(
        "host=localhost port={} user={APP_USER} password={APP_PASSWORD} dbname={db}",
        sluice.port()
    );

    // psql verifies Sluice's certificate, and Sluice's server connection is TLS too.
    let (ok, out) = psql(
        &cluster,
        &format!("{base} sslmode=verify-full sslrootcert={front_ca_path}"),
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "t", "upstream connection is not TLS: {out}");

    // require: plaintext is refused with a clear error.
    let (ok, out) = psql(&cluster, &format!("{base} sslmode=disable"), "select 1");
    assert!(!ok);
    assert!(
        out.contains("TLS is required") || out.contains("SSL"),
        "{out}"
    );

    // Sluice refuses an upstream whose certificate does not chain to its sslrootcert.
    let (ok, out) = psql(
        &cluster,
        &format!(
            "host=localhost port={} user={APP_USER} password={APP_PASSWORD} dbname=wrongca sslmode=require",
            sluice.port()
        ),
        "select 1",
    );
    assert!(!ok, "{out}");

    // New certificates apply on SIGHUP: a client trusting only the new CA gets in.
    let new_ca = ca("rotated CA");
    let new_leaf = leaf(&new_ca);
    let new_ca_path = write(dir.path(), "new-ca.pem", &new_ca.cert.pem());
    write(dir.path(), "sluice.crt", &new_leaf.cert.pem());
    write(dir.path(), "sluice.key", &new_leaf.key_pair.serialize_pem());
    sluice.signal("HUP");
    let mut last = String::new();
    for _ in 0..50 {
        let (ok, out) = psql(
            &cluster,
            &format!("{base} sslmode=verify-full sslrootcert={new_ca_path}"),
            "select 1",
        );
        if ok {
            last.clear();
            break;
        }
        last = out;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last.is_empty(), "rotated certificate not served: {last}");

    // tokio-postgres without TLS is refused too (28000).
    expect_sqlstate(
        sluice
            .connect(APP_USER, APP_PASSWORD, &db)
            .await
            .map(|_| ()),
        &["28000"],
    );
    let _ = scalar;
}
