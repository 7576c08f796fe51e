//! Reload does what it says: a key the answer lists under "applied" really takes effect
//! for the next client (client_idle_timeout, server_reset_query, max_packet_size), and a
//! key that needs a restart (postgres.listen) is named as such and left alone — against
//! the real program and PostgreSQL, reloaded over HTTP, SIGHUP and the console.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{expect_sqlstate, sluice_for};
use sluice_tests::{http, scalar, shared_cluster, PoolMode, Sluice, APP_PASSWORD, APP_USER};

/// Rewrites the running program's file with `lines` added to `[postgres]`.
fn add_postgres_keys(sluice: &Sluice, original: &str, lines: &str) {
    let text = original.replacen("[postgres]\n", &format!("[postgres]\n{lines}\n"), 1);
    assert_ne!(text, original, "no [postgres] section in:\n{original}");
    std::fs::write(sluice.config_path(), text).unwrap();
}

/// `POST /admin/reload`; returns the answer's detail (panics on anything but 200).
async fn reload(sluice: &Sluice) -> String {
    let (status, body) = http(sluice.admin_port(), "POST", "/admin/reload", "").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["detail"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_applies_to_new_clients_after_reload() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("reload_idle").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction).start();
    let original = std::fs::read_to_string(sluice.config_path()).unwrap();
    assert_eq!(reload(&sluice).await, "no changes");

    add_postgres_keys(&sluice, &original, "client_idle_timeout = \"1s\"");
    let detail = reload(&sluice).await;
    assert_eq!(
        detail,
        "applied: postgres.client_idle_timeout; needs restart: none"
    );

    // A client that connects now is closed once idle for 1 s (waited for, not assumed
    // after a fixed sleep).
    let idle = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    assert_eq!(scalar(&idle, "select 1").await, "1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !idle.is_closed() {
        assert!(
            Instant::now() < deadline,
            "an idle client is still connected 20 s after reloading client_idle_timeout 1s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(idle.simple_query("select 1").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_server_reset_query_runs_after_reload() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("reload_reset").await;
    // Session mode with one server: the reset runs whenever a client leaves, and the next
    // client gets that very server.
    let sluice = sluice_for(cluster, &db, PoolMode::Session)
        .pool_size(1)
        .min_pool_size(0)
        .server_reset_query("DISCARD ALL")
        .start();
    let original = std::fs::read_to_string(sluice.config_path()).unwrap();
    let marker = "select coalesce(current_setting('sluice_test.marker', true), '')";
    let client = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    client
        .simple_query("set sluice_test.marker = 'left by a client'")
        .await
        .unwrap();
    drop(client);
    let client = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    assert_eq!(scalar(&client, marker).await, "", "DISCARD ALL ran");
    drop(client);

    let new_reset = "SET sluice_test.marker = 'reset after reload'";
    let text = original.replacen("DISCARD ALL", new_reset, 1);
    assert_ne!(text, original);
    std::fs::write(sluice.config_path(), text).unwrap();
    let detail = reload(&sluice).await;
    assert_eq!(
        detail,
        "applied: postgres.server_reset_query; needs restart: none"
    );

    // The reset at the next release is the new query: its effect is what the next client
    // of the one server sees. (Retried: the previous client's release may still run.)
    let client = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    assert_eq!(scalar(&client, "select 1").await, "1");
    drop(client);
    let mut seen = String::new();
    for _ in 0..50 {
        let client = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
        seen = scalar(&client, marker).await;
        if seen == "reset after reload" {
            break;
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen, "reset after reload",
        "the reloaded server_reset_query ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_packet_size_applies_after_sighup() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("reload_packet").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction).start();
    let original = std::fs::read_to_string(sluice.config_path()).unwrap();
    let big = format!("select length('{}')", "x".repeat(30_000));
    let before = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    assert_eq!(scalar(&before, &big).await, "30000");

    add_postgres_keys(&sluice, &original, "max_packet_size = 20000");
    sluice.signal("HUP");
    // SIGHUP has no answer: wait for the log line, which names the applied key.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sluice.stderr().contains("configuration reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload logged after SIGHUP:\n{}",
            sluice.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    expect_sqlstate(after.simple_query(&big).await, &["08P01"]);
    let small = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let sql = format!("select length('{}')", "x".repeat(10_000));
    assert_eq!(scalar(&small, &sql).await, "10000");
    let log = sluice.stderr();
    let line = log.lines().find(|l| l.contains("configuration reloaded"));
    assert!(
        line.is_some_and(|l| l.contains("postgres.max_packet_size")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_change_is_named_as_needing_a_restart() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("reload_listen").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction).start();
    let original = std::fs::read_to_string(sluice.config_path()).unwrap();
    let old_listen = format!("listen = \"127.0.0.1:{}\"", sluice.port());
    let new_listen = format!("listen = \"127.0.0.1:{}\"", sluice_tests::free_port());
    assert!(original.contains(&old_listen), "{original}");
    let text = original.replacen(&old_listen, &new_listen, 1).replacen(
        "[postgres]\n",
        "[postgres]\nclient_login_timeout = \"30s\"\n",
        1,
    );
    std::fs::write(sluice.config_path(), text).unwrap();
    let expected = "applied: postgres.client_login_timeout; needs restart: postgres.listen";
    assert_eq!(reload(&sluice).await, expected);
    // Still pending on the next reload of the same file: it is compared with the start.
    assert_eq!(
        reload(&sluice).await,
        "applied: none; needs restart: postgres.listen"
    );
    // And the running listener is the old one.
    let client = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    assert_eq!(scalar(&client, "select 41 + 1").await, "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_reload_names_the_keys_and_show_config_follows() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("reload_console").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .user(APP_USER, APP_PASSWORD)
        .user("admin", "adminpw")
        .extra_postgres("admin_users = [\"admin\"]")
        .server_reset_query("DISCARD ALL")
        .start();
    let original = std::fs::read_to_string(sluice.config_path()).unwrap();
    std::fs::write(
        sluice.config_path(),
        original.replacen("DISCARD ALL", "RESET ALL", 1),
    )
    .unwrap();
    // One console session: RELOAD, then SHOW CONFIG sees the reloaded value.
    let out = std::process::Command::new(cluster.client_tool("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-p", &sluice.port().to_string()])
        .args([
            "-U",
            "admin",
            "-d",
            "sluice",
            "-c",
            "RELOAD",
            "-c",
            "SHOW CONFIG",
        ])
        .env("PGPASSWORD", "adminpw")
        .env("PGSSLMODE", "disable")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("NOTICE:  applied: postgres.server_reset_query; needs restart: none"),
        "{stderr}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l == "server_reset_query|RESET ALL|yes"),
        "{stdout}"
    );
}

/// A `[[postgres.databases]]` block for `name` on `cluster` as `app`.
fn database_block(cluster: &sluice_tests::PgCluster, name: &str) -> String {
    format!(
        "\n[[postgres.databases]]\nname = \"{name}\"\nupstream = \"{}\"\n",
        cluster.app_url(name)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_are_added_changed_and_removed_without_a_restart() {
    let cluster = shared_cluster();
    let first = cluster.fresh_database("reload_db_a").await;
    let second = cluster.fresh_database("reload_db_b").await;
    let sluice = sluice_for(cluster, &first, PoolMode::Transaction).start();
    let original = std::fs::read_to_string(sluice.config_path()).unwrap();
    expect_sqlstate(
        sluice.connect(APP_USER, APP_PASSWORD, &second).await,
        &["3D000"],
    );

    // Added: clients of the new database are served at once.
    let with_second = format!("{original}{}", database_block(cluster, &second));
    std::fs::write(sluice.config_path(), &with_second).unwrap();
    assert_eq!(
        reload(&sluice).await,
        "applied: postgres.databases.*.name; needs restart: none"
    );
    let b = sluice
        .connect(APP_USER, APP_PASSWORD, &second)
        .await
        .unwrap();
    assert_eq!(scalar(&b, "SELECT current_database()").await, second);

    // Removed: a client in a transaction finishes it, then is disconnected; new clients
    // are refused.
    let a = sluice
        .connect(APP_USER, APP_PASSWORD, &first)
        .await
        .unwrap();
    a.batch_execute("BEGIN; CREATE TABLE kept (x int)")
        .await
        .unwrap();
    let only_second =
        with_second.replacen(&format!("name = \"{first}\""), "name = \"renamed_away\"", 1);
    std::fs::write(sluice.config_path(), &only_second).unwrap();
    reload(&sluice).await;
    a.batch_execute("COMMIT").await.unwrap();
    let e = expect_sqlstate(a.simple_query("SELECT 1").await, &["57P01"]);
    assert!(sluice_tests::error_message(&e).contains("reload"), "{e:?}");
    expect_sqlstate(
        sluice.connect(APP_USER, APP_PASSWORD, &first).await,
        &["3D000"],
    );
    let direct = cluster
        .connect(APP_USER, APP_PASSWORD, &first)
        .await
        .unwrap();
    assert_eq!(
        scalar(
            &direct,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'kept'"
        )
        .await,
        "1",
        "the transaction in flight during the reload was lost"
    );
    // The other database's clients never noticed.
    assert_eq!(scalar(&b, "SELECT 2").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wildcard_database_serves_any_database_name() {
    let cluster = shared_cluster();
    let first = cluster.fresh_database("wildcard_a").await;
    let second = cluster.fresh_database("wildcard_b").await;
    // Only the wildcard: its URL's database is replaced by the client's.
    let star = cluster.app_url("postgres");
    let sluice = common::sluice()
        .mode(PoolMode::Transaction)
        .database("*", &star)
        .start();
    for db in [&first, &second] {
        let c = sluice.connect(APP_USER, APP_PASSWORD, db).await.unwrap();
        assert_eq!(&scalar(&c, "SELECT current_database()").await, db);
    }
    // A name the server does not have: the server's own error.
    let e = expect_sqlstate(
        sluice
            .connect(APP_USER, APP_PASSWORD, "no_such_db_here")
            .await,
        &["3D000"],
    );
    assert!(
        sluice_tests::error_message(&e).contains("no_such_db_here"),
        "{e:?}"
    );
    // Made databases are listed and survive a reload that leaves the wildcard alone.
    let (_, stats) = http(sluice.admin_port(), "GET", "/admin/pool-stats", "").await;
    assert!(stats.contains(&format!("{first}/{APP_USER}")), "{stats}");
    assert_eq!(reload(&sluice).await, "no changes");
    let again = sluice
        .connect(APP_USER, APP_PASSWORD, &first)
        .await
        .unwrap();
    assert_eq!(scalar(&again, "SELECT current_database()").await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_added_changed_and_removed_without_a_restart() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("reload_users").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .user(APP_USER, APP_PASSWORD)
        .start();
    let original = std::fs::read_to_string(sluice.config_path()).unwrap();
    expect_sqlstate(sluice.connect("newbie", "first-pw", &db).await, &["28P01"]);
    let user = |name: &str, pw: &str| {
        format!("\n[[postgres.users]]\nname = \"{name}\"\npassword = \"{pw}\"\n")
    };

    // Added: the new user logs in at once; clients of the others are untouched.
    let app = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    std::fs::write(
        sluice.config_path(),
        format!("{original}{}", user("newbie", "first-pw")),
    )
    .unwrap();
    let detail = reload(&sluice).await;
    assert!(
        detail.contains("postgres.users.*.name") && detail.ends_with("needs restart: none"),
        "{detail}"
    );
    let newbie = sluice.connect("newbie", "first-pw", &db).await.unwrap();
    assert_eq!(scalar(&newbie, "SELECT 1").await, "1");
    assert_eq!(scalar(&app, "SELECT 2").await, "2");

    // Changed password: the new one works, the old one no longer.
    std::fs::write(
        sluice.config_path(),
        format!("{original}{}", user("newbie", "second-pw")),
    )
    .unwrap();
    reload(&sluice).await;
    expect_sqlstate(sluice.connect("newbie", "first-pw", &db).await, &["28P01"]);
    sluice.connect("newbie", "second-pw", &db).await.unwrap();

    // Removed: new logins are refused; a connected client is disconnected at its next
    // transaction (its pool closed).
    let without_app = original.replacen(
        &format!("name = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\""),
        "name = \"newbie\"\npassword = \"second-pw\"",
        1,
    );
    assert_ne!(without_app, original, "no app user block in:\n{original}");
    std::fs::write(sluice.config_path(), &without_app).unwrap();
    reload(&sluice).await;
    expect_sqlstate(
        sluice.connect(APP_USER, APP_PASSWORD, &db).await,
        &["28P01"],
    );
    expect_sqlstate(app.simple_query("SELECT 3").await, &["57P01"]);
    assert_eq!(scalar(&newbie, "SELECT 4").await, "4");
}
