//! The SQL admin console (database `sluice` / `pgbouncer`): SHOW commands with PgBouncer's
//! columns, PAUSE/RESUME, RELOAD, SHUTDOWN, and who may get in.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{expect_sqlstate, sluice_for};
use sluice_tests::{rows, scalar, shared_cluster, PoolMode, APP_PASSWORD, APP_USER};
use tokio_postgres::SimpleQueryMessage;

fn columns(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::RowDescription(cols) => {
                Some(cols.iter().map(|c| c.name().to_owned()).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_pause_resume_and_access() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("console").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(3)
        .user(APP_USER, APP_PASSWORD)
        .user("admin", "adminpw")
        .extra_postgres("admin_users = [\"admin\"]")
        .start();
    let app = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    assert_eq!(scalar(&app, "select 1").await, "1");

    // Not an admin user: same 28P01 as a wrong password.
    expect_sqlstate(
        sluice.connect(APP_USER, APP_PASSWORD, "pgbouncer").await,
        &["28P01"],
    );
    expect_sqlstate(sluice.connect("admin", "wrong", "sluice").await, &["28P01"]);

    let admin = sluice
        .connect("admin", "adminpw", "pgbouncer")
        .await
        .unwrap();
    let pools = admin.simple_query("SHOW POOLS").await.unwrap();
    let cols = columns(&pools);
    for c in [
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "maxwait",
        "pool_mode",
    ] {
        assert!(
            cols.iter().any(|x| x == c),
            "SHOW POOLS lacks {c}: {cols:?}"
        );
    }
    let app_row = rows(&pools)
        .into_iter()
        .find(|r| r[0].as_deref() == Some(db.as_str()) && r[1].as_deref() == Some(APP_USER))
        .expect("a row for the app pool");
    assert_eq!(
        app_row[2].as_deref(),
        Some("1"),
        "one app client: {app_row:?}"
    );

    let stats = admin.simple_query("show stats;").await.unwrap();
    assert!(columns(&stats).contains(&"total_query_count".to_owned()));
    let clients = admin.simple_query("SHOW CLIENTS").await.unwrap();
    assert!(rows(&clients)
        .iter()
        .any(|r| r[2].as_deref() == Some(db.as_str())));
    let servers = admin.simple_query("SHOW SERVERS").await.unwrap();
    assert!(
        !rows(&servers).is_empty(),
        "the app's server connection is listed"
    );
    let dbs = admin.simple_query("SHOW DATABASES").await.unwrap();
    assert!(rows(&dbs)
        .iter()
        .any(|r| r[0].as_deref() == Some(db.as_str())));
    let users = admin.simple_query("SHOW USERS").await.unwrap();
    assert_eq!(columns(&users), ["name", "pool_mode"]);
    assert!(
        rows(&users)
            .iter()
            .any(|r| r[0].as_deref() == Some(APP_USER)),
        "SHOW USERS lists {APP_USER}"
    );
    let lists = admin.simple_query("SHOW LISTS").await.unwrap();
    let item = |name: &str| -> u64 {
        rows(&lists)
            .iter()
            .find(|r| r[0].as_deref() == Some(name))
            .and_then(|r| r[1].as_deref())
            .unwrap_or_else(|| panic!("SHOW LISTS has no {name}"))
            .parse()
            .unwrap()
    };
    assert_eq!(item("databases"), 1);
    assert!(item("pools") >= 1);
    assert!(
        item("free_clients") + item("used_clients") >= 1,
        "the app client"
    );
    let version = scalar(&admin, "SHOW VERSION").await;
    assert!(version.starts_with("Sluice "), "{version}");
    assert!(!rows(&admin.simple_query("SHOW CONFIG").await.unwrap()).is_empty());
    expect_sqlstate(admin.simple_query("SHOW NONSENSE").await, &["42601"]);

    // PAUSE holds new transactions until RESUME.
    admin.simple_query(&format!("PAUSE {db}")).await.unwrap();
    let held = {
        let app = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
        tokio::spawn(async move { scalar(&app, "select 'ran'").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a query ran while paused");
    admin.simple_query(&format!("RESUME {db}")).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .unwrap()
            .unwrap(),
        "ran"
    );

    admin.simple_query("RELOAD").await.unwrap();
    expect_sqlstate(admin.simple_query("PAUSE no_such_db").await, &["3D000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_from_the_console_exits_cleanly() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("console_stop").await;
    let mut sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .extra_postgres(&format!("admin_users = [\"{APP_USER}\"]"))
        .start();
    let admin = sluice
        .connect(APP_USER, APP_PASSWORD, "sluice")
        .await
        .unwrap();
    admin.simple_query("SHUTDOWN").await.unwrap();
    let status = sluice
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exits");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_kill_db_and_show_mem() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("console_kill").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .user(APP_USER, APP_PASSWORD)
        .user("admin", "adminpw")
        .extra_postgres("admin_users = [\"admin\"]")
        .start();
    let admin = sluice.connect("admin", "adminpw", "sluice").await.unwrap();
    let victim = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let bystander = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    // The victim is mid-transaction: killing it rolls the transaction back.
    victim
        .batch_execute("BEGIN; CREATE TABLE never (x int)")
        .await
        .unwrap();
    let listing = admin.simple_query("SHOW CLIENTS").await.unwrap();
    let id_col = columns(&listing).iter().position(|c| c == "id").unwrap();
    let ids: Vec<String> = rows(&listing)
        .into_iter()
        .map(|r| r[id_col].clone().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    // Ids are unique; the victim connected first, so it has the smaller one.
    let victim_id = ids.iter().map(|i| i.parse::<u64>().unwrap()).min().unwrap();
    expect_sqlstate(admin.simple_query("KILL_CLIENT 999999").await, &["42704"]);
    admin
        .simple_query(&format!("KILL_CLIENT {victim_id}"))
        .await
        .unwrap();
    sluice_tests::within(Duration::from_secs(10), "victim closed", async {
        while !victim.is_closed() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        scalar(
            &bystander,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'never'"
        )
        .await,
        "0"
    );

    let mem = rows(&admin.simple_query("SHOW MEM").await.unwrap());
    let find = |name: &str| mem.iter().find(|r| r[0].as_deref() == Some(name)).cloned();
    // The bystander and this console session.
    assert_eq!(find("client_connections").unwrap()[1].as_deref(), Some("2"));
    let rss: u64 = find("process_resident").unwrap()[2]
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rss > 1_000_000, "resident size {rss}");

    // KILL db: every client goes, and new ones wait until RESUME.
    admin.simple_query(&format!("KILL {db}")).await.unwrap();
    sluice_tests::within(Duration::from_secs(10), "bystander closed", async {
        while !bystander.is_closed() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let late = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let query = tokio::spawn(async move { scalar(&late, "SELECT 5").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !query.is_finished(),
        "a killed database served a query before RESUME"
    );
    admin.simple_query(&format!("RESUME {db}")).await.unwrap();
    let answer = sluice_tests::within(Duration::from_secs(10), "query after RESUME", query).await;
    assert_eq!(answer.unwrap(), "5");
}
