//! Startup and authentication: SSLRequest, unknown database, bad credentials, the user
//! list's password forms, auth_type trust, ParameterStatus.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{expect_sqlstate, sluice_for, MODES};
use sluice_tests::{scalar, shared_cluster, within, PoolMode, APP_PASSWORD, APP_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn ssl_request_is_answered_n_and_startup_continues_in_plaintext() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("auth_ssl").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction).start();

    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", sluice.port()))
        .await
        .unwrap();
    // SSLRequest: length 8, code 80877103.
    stream
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    within(T, "SSLRequest answer", stream.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(
        answer[0], b'N',
        "SSLRequest answered {:?}",
        answer[0] as char
    );

    // Continue on the same socket with a StartupMessage: the proxy must ask for a password
    // (AuthenticationRequest, 'R') rather than drop the connection.
    let mut body = Vec::new();
    body.extend_from_slice(&196608u32.to_be_bytes());
    for (k, v) in [("user", APP_USER), ("database", db.as_str())] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    stream.write_all(&msg).await.unwrap();
    let mut tag = [0u8; 1];
    within(T, "startup answer", stream.read_exact(&mut tag))
        .await
        .unwrap();
    assert_eq!(tag[0], b'R', "expected an authentication request");
}

#[tokio::test]
async fn unknown_database_is_3d000() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("auth_unknown_db").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction).start();
    let res = within(
        T,
        "connect",
        sluice.connect(APP_USER, APP_PASSWORD, "no_such_db"),
    )
    .await;
    expect_sqlstate(res, &["3D000"]);
    // The proxy is still fine.
    let c = sluice.client(&db).await;
    assert_eq!(scalar(&c, "SELECT 1").await, "1");
}

#[tokio::test]
async fn bad_password_and_unknown_user_are_28p01_without_user_list() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("auth_nolist").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction).start();
    let res = within(T, "connect", sluice.connect(APP_USER, "wrong", &db)).await;
    expect_sqlstate(res, &["28P01"]);
    let res = within(T, "connect", sluice.connect("nobody", APP_PASSWORD, &db)).await;
    expect_sqlstate(res, &["28P01"]);
    let c = sluice.client(&db).await;
    assert_eq!(scalar(&c, "SELECT current_user").await, "app");
}

#[tokio::test]
async fn bad_password_and_unknown_user_are_28p01_with_user_list() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("auth_list").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .user(APP_USER, APP_PASSWORD)
        .start();
    let res = within(T, "connect", sluice.connect(APP_USER, "wrong", &db)).await;
    expect_sqlstate(res, &["28P01"]);
    let res = within(T, "connect", sluice.connect("nobody", APP_PASSWORD, &db)).await;
    expect_sqlstate(res, &["28P01"]);
    let c = sluice.client(&db).await;
    assert_eq!(scalar(&c, "SELECT 1").await, "1");
}

/// Logs in through a proxy configured with `auth_type` and one user entry, checking that the
/// right password works and a wrong one fails with 28P01.
async fn check_user_entry(auth_type: &str, user: &str, configured: &str, password: &str) {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("auth_entry").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .auth_type(auth_type)
        .user(user, configured)
        .start();
    let c = within(T, "connect", sluice.connect(user, password, &db))
        .await
        .unwrap_or_else(|e| panic!("{auth_type} login as {user} failed: {e:?}"));
    assert_eq!(scalar(&c, "SELECT 41 + 1").await, "42");
    let res = within(T, "connect", sluice.connect(user, "not-the-password", &db)).await;
    expect_sqlstate(res, &["28P01"]);
}

#[tokio::test]
async fn scram_with_plaintext_password() {
    check_user_entry("scram-sha-256", APP_USER, APP_PASSWORD, APP_PASSWORD).await;
}

#[tokio::test]
async fn scram_with_scram_verifier() {
    let cluster = shared_cluster();
    let verifier = cluster.app_verifier().await;
    assert!(verifier.starts_with("SCRAM-SHA-256$"));
    check_user_entry("scram-sha-256", APP_USER, &verifier, APP_PASSWORD).await;
}

/// PgBouncer's userlist.txt as `postgres.auth_file`, with the role's real SCRAM verifier
/// copied from `pg_authid` (as PgBouncer users generate it): no plaintext anywhere.
#[tokio::test]
async fn pgbouncer_auth_file_with_scram_verifiers() {
    let cluster = shared_cluster();
    let verifier = cluster.app_verifier().await;
    let db = cluster.fresh_database("auth_file").await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("userlist.txt");
    std::fs::write(
        &list,
        format!(";; generated from pg_authid\n\"{APP_USER}\" \"{verifier}\"\n"),
    )
    .unwrap();
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .extra_postgres(&format!("auth_file = \"{}\"", list.display()))
        .start();
    let c = within(T, "connect", sluice.connect(APP_USER, APP_PASSWORD, &db))
        .await
        .unwrap();
    assert_eq!(scalar(&c, "SELECT 41 + 1").await, "42");
    let res = within(T, "connect", sluice.connect(APP_USER, "wrong", &db)).await;
    expect_sqlstate(res, &["28P01"]);
    let res = within(T, "connect", sluice.connect("nobody", APP_PASSWORD, &db)).await;
    expect_sqlstate(res, &["28P01"]);
}

#[tokio::test]
async fn md5_with_plaintext_password() {
    check_user_entry("md5", APP_USER, APP_PASSWORD, APP_PASSWORD).await;
}

#[tokio::test]
async fn md5_with_md5_hash() {
    let cluster = shared_cluster();
    let su = cluster.superuser().await;
    let hash = scalar(&su, "SELECT 'md5' || md5('secret' || 'app')").await;
    check_user_entry("md5", APP_USER, &hash, APP_PASSWORD).await;
}

#[tokio::test]
async fn client_user_differs_from_upstream_user() {
    // The client logs in as "alice" with her own password; Sluice reaches PostgreSQL with
    // the upstream URL's credentials.
    check_user_entry("scram-sha-256", "alice", "wonderland", "wonderland").await;
}

#[tokio::test]
async fn trust_accepts_any_password() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("auth_trust").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .auth_type("trust")
        .start();
    let c = within(T, "connect", sluice.connect(APP_USER, "whatever", &db))
        .await
        .unwrap();
    assert_eq!(scalar(&c, "SELECT current_user").await, "app");
    // An unknown database is still refused.
    let res = within(T, "connect", sluice.connect(APP_USER, "x", "no_such_db")).await;
    expect_sqlstate(res, &["3D000"]);
}

#[tokio::test]
async fn parameter_status_comes_from_upstream() {
    let cluster = shared_cluster();
    let direct = cluster.superuser().await;
    let version = scalar(&direct, "SHOW server_version").await;
    for mode in MODES {
        let db = cluster.fresh_database("auth_params").await;
        let sluice = sluice_for(cluster, &db, mode).start();
        let (c, params) = within(
            T,
            "connect",
            sluice.connect_with_params(APP_USER, APP_PASSWORD, &db),
        )
        .await
        .unwrap();
        assert_eq!(
            params.get("server_version"),
            Some(&version),
            "{mode:?}: {params:?}"
        );
        assert_eq!(
            params.get("server_encoding").map(String::as_str),
            Some("UTF8")
        );
        assert_eq!(
            params.get("client_encoding").map(String::as_str),
            Some("UTF8")
        );
        assert_eq!(
            params.get("integer_datetimes").map(String::as_str),
            Some("on")
        );
        assert!(params.contains_key("DateStyle"), "{mode:?}: {params:?}");
        assert!(
            params.contains_key("standard_conforming_strings"),
            "{mode:?}: {params:?}"
        );
        assert_eq!(scalar(&c, "SELECT 1").await, "1");
    }
}
