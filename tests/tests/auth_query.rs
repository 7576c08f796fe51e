//! `auth_user` + `auth_query` and SCRAM pass-through, against SCRAM-only PostgreSQL roles:
//! a configuration whose only secret is `auth_user`'s lets any role in as itself, through
//! a `SECURITY DEFINER` lookup function (least privilege), with the verifier cache, its
//! refresh after a password change and its negative entries.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{expect_sqlstate, sluice};
use sluice_tests::{http, scalar, shared_cluster, unique_name, PgCluster, PoolMode, Sluice};

const AUTH_PASSWORD: &str = "auth-user-pw";
/// The lookup the documentation recommends: only this function may read `pg_shadow`.
const LOOKUP: &str = "SELECT usename, passwd FROM sluice.user_lookup($1)";

/// Roles of one test: the auth user and two application roles (names unique per test).
struct Roles {
    auth: String,
    alice: String,
    bob: String,
}

/// A fresh database with the lookup function, and roles that log in with SCRAM only.
async fn setup(cluster: &PgCluster, prefix: &str) -> (String, Roles) {
    let db = cluster.fresh_database(prefix).await;
    let roles = Roles {
        auth: unique_name(&format!("{prefix}_auth")),
        alice: unique_name(&format!("{prefix}_alice")),
        bob: unique_name(&format!("{prefix}_bob")),
    };
    let su = cluster.superuser().await;
    su.batch_execute(&format!(
        "CREATE ROLE {auth} LOGIN PASSWORD '{AUTH_PASSWORD}'; \
         CREATE ROLE {alice} LOGIN PASSWORD 'alice-pw';",
        auth = roles.auth,
        alice = roles.alice,
    ))
    .await
    .unwrap();
    let in_db = cluster.connect("postgres", sluice_tests::SUPERUSER_PASSWORD, &db);
    in_db
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE SCHEMA sluice; \
             CREATE FUNCTION sluice.user_lookup(i_username text, OUT usename name, OUT passwd text) \
             RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS \
             $$ SELECT usename, passwd FROM pg_shadow WHERE usename = i_username $$; \
             REVOKE ALL ON FUNCTION sluice.user_lookup(text) FROM PUBLIC; \
             GRANT USAGE ON SCHEMA sluice TO {auth}; \
             GRANT EXECUTE ON FUNCTION sluice.user_lookup(text) TO {auth};",
            auth = roles.auth
        ))
        .await
        .unwrap();
    (db, roles)
}

/// Sluice for `db` with no password but `auth_user`'s: the upstream URL names no user.
fn start(cluster: &PgCluster, db: &str, roles: &Roles, ttl: &str) -> Sluice {
    let upstream = format!("postgres://127.0.0.1:{}/{db}", cluster.port());
    sluice()
        .mode(PoolMode::Transaction)
        .pool_size(3)
        .min_pool_size(0)
        .database(db, &upstream)
        .user(&roles.auth, AUTH_PASSWORD)
        .extra_postgres(&format!(
            "auth_user = \"{}\"\nauth_query = \"{LOOKUP}\"\nauth_cache_ttl = \"{ttl}\"",
            roles.auth
        ))
        .start()
}

#[tokio::test]
async fn a_scram_role_logs_in_as_itself_with_only_auth_users_secret_configured() {
    let cluster = shared_cluster();
    let (db, roles) = setup(cluster, "aq_pass").await;
    let sluice = start(cluster, &db, &roles, "60s");

    // The auth user cannot read pg_shadow itself: only the function can.
    let auth = cluster
        .connect(&roles.auth, AUTH_PASSWORD, &db)
        .await
        .unwrap();
    expect_sqlstate(
        auth.simple_query("SELECT * FROM pg_shadow").await,
        &["42501"],
    );

    // Several clients at once, so the pool opens several servers with the client's keys.
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let client = sluice.connect(&roles.alice, "alice-pw", &db).await.unwrap();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let user = scalar(&client, "SELECT current_user").await;
                assert_ne!(user, "", "current_user is empty");
            }
            scalar(&client, "SELECT current_user").await
        }));
    }
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            roles.alice,
            "not logged in upstream as the client"
        );
    }
    let su = cluster.superuser().await;
    let backends: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $2",
            &[&roles.alice, &db],
        )
        .await
        .unwrap()
        .get(0);
    assert!(backends >= 1, "no server logged in as {}", roles.alice);

    // A wrong password and an unknown user fail alike, after the exchange.
    expect_sqlstate(sluice.connect(&roles.alice, "nope", &db).await, &["28P01"]);
    expect_sqlstate(sluice.connect("no_such_role", "x", &db).await, &["28P01"]);

    // The pool shows up under the user auth_query let in.
    let (_, stats) = http(sluice.admin_port(), "GET", "/admin/pool-stats", "").await;
    assert!(
        stats.contains(&format!("{db}/{}", roles.alice)),
        "no pool for the user in {stats}"
    );
}

#[tokio::test]
async fn a_changed_password_is_read_again_after_one_failed_login_and_unknown_users_are_cached() {
    let cluster = shared_cluster();
    let (db, roles) = setup(cluster, "aq_cache").await;
    let sluice = start(cluster, &db, &roles, "5s");
    let su = cluster.superuser().await;

    let first = sluice.connect(&roles.alice, "alice-pw", &db).await.unwrap();
    assert_eq!(scalar(&first, "SELECT current_user").await, roles.alice);
    su.batch_execute(&format!("ALTER ROLE {} PASSWORD 'changed-pw'", roles.alice))
        .await
        .unwrap();
    // The cached verifier is the old one: the first login with the new password fails
    // and drops it; the next reads the new verifier.
    expect_sqlstate(
        sluice.connect(&roles.alice, "changed-pw", &db).await,
        &["28P01"],
    );
    let again = sluice
        .connect(&roles.alice, "changed-pw", &db)
        .await
        .unwrap();
    assert_eq!(scalar(&again, "SELECT current_user").await, roles.alice);
    expect_sqlstate(
        sluice.connect(&roles.alice, "alice-pw", &db).await,
        &["28P01"],
    );
    // The client logged in before the change still works (its server stays logged in).
    assert_eq!(scalar(&first, "SELECT 1").await, "1");

    // An unknown user is remembered as unknown for auth_cache_ttl.
    expect_sqlstate(sluice.connect(&roles.bob, "bob-pw", &db).await, &["28P01"]);
    su.batch_execute(&format!(
        "CREATE ROLE {} LOGIN PASSWORD 'bob-pw'",
        roles.bob
    ))
    .await
    .unwrap();
    expect_sqlstate(sluice.connect(&roles.bob, "bob-pw", &db).await, &["28P01"]);
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let bob = sluice.connect(&roles.bob, "bob-pw", &db).await.unwrap();
    assert_eq!(scalar(&bob, "SELECT current_user").await, roles.bob);
}

#[tokio::test]
async fn a_database_with_its_own_user_lets_auth_query_users_in_as_that_user() {
    let cluster = shared_cluster();
    let (db, roles) = setup(cluster, "aq_forced").await;
    let sluice = sluice()
        .mode(PoolMode::Transaction)
        .database(&db, &cluster.app_url(&db))
        .user(&roles.auth, AUTH_PASSWORD)
        .extra_postgres(&format!(
            "auth_user = \"{}\"\nauth_query = \"{LOOKUP}\"",
            roles.auth
        ))
        .start();
    let client = sluice.connect(&roles.alice, "alice-pw", &db).await.unwrap();
    assert_eq!(
        scalar(&client, "SELECT current_user").await,
        sluice_tests::APP_USER
    );
    expect_sqlstate(sluice.connect(&roles.alice, "wrong", &db).await, &["28P01"]);
}
