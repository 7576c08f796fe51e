//! Query protocol through the proxy, in both pool modes: simple and multi-statement
//! queries, extended protocol with unnamed statements, named statements inside
//! transactions, pipelining, COPY both ways, errors in and out of transactions, big results.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{expect_sqlstate, sluice_for, MODES};
use futures_util::{future::join_all, pin_mut, SinkExt, TryStreamExt};
use sluice_tests::{rows, scalar, shared_cluster, within, PoolMode, Sluice};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

const T: Duration = Duration::from_secs(60);

/// One proxy per mode on a fresh database each.
async fn setups(prefix: &str) -> Vec<(PoolMode, Sluice, String)> {
    let cluster = shared_cluster();
    let mut out = Vec::new();
    for mode in MODES {
        let db = cluster.fresh_database(prefix).await;
        let sluice = sluice_for(cluster, &db, mode).pool_size(2).start();
        out.push((mode, sluice, db));
    }
    out
}

#[tokio::test]
async fn simple_and_multi_statement_queries() {
    for (mode, sluice, db) in setups("proto_simple").await {
        let c = sluice.client(&db).await;
        let msgs = within(
            T,
            "multi-statement",
            c.simple_query(
                "CREATE TABLE t (id int, v text); \
                 INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, NULL); \
                 SELECT id, v FROM t ORDER BY id; \
                 SELECT 'x' AS x",
            ),
        )
        .await
        .unwrap();
        let counts: Vec<u64> = msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .collect();
        assert_eq!(counts, [0, 3, 3, 1], "{mode:?}");
        assert_eq!(
            rows(&msgs),
            vec![
                vec![Some("1".into()), Some("a".into())],
                vec![Some("2".into()), Some("b".into())],
                vec![Some("3".into()), None],
                vec![Some("x".into())],
            ],
            "{mode:?}"
        );
        // Empty query.
        c.simple_query("").await.unwrap();
        assert_eq!(scalar(&c, "SELECT count(*) FROM t").await, "3");
    }
}

#[tokio::test]
async fn extended_protocol_with_unnamed_statements() {
    for (mode, sluice, db) in setups("proto_ext").await {
        let c = sluice.client(&db).await;
        c.batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text)")
            .await
            .unwrap();
        for k in 0..20i32 {
            let v = format!("value {k}");
            let n = c
                .execute_typed(
                    "INSERT INTO kv VALUES ($1, $2)",
                    &[(&k, Type::INT4), (&v, Type::TEXT)],
                )
                .await
                .unwrap();
            assert_eq!(n, 1, "{mode:?}");
        }
        let got = c
            .query_typed(
                "SELECT k, v FROM kv WHERE k >= $1 ORDER BY k",
                &[(&15i32, Type::INT4)],
            )
            .await
            .unwrap();
        let got: Vec<(i32, String)> = got.iter().map(|r| (r.get(0), r.get(1))).collect();
        let want: Vec<(i32, String)> = (15..20).map(|k| (k, format!("value {k}"))).collect();
        assert_eq!(got, want, "{mode:?}");
        let null: Option<String> = c
            .query_typed_one("SELECT $1::text", &[(&None::<String>, Type::TEXT)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(null, None);
    }
}

#[tokio::test]
async fn named_statements_inside_transactions() {
    for (mode, sluice, db) in setups("proto_named").await {
        let mut c = sluice.client(&db).await;
        c.batch_execute("CREATE TABLE n (x int)").await.unwrap();
        let tx = c.transaction().await.unwrap();
        let stmt = tx.prepare("INSERT INTO n VALUES ($1)").await.unwrap();
        for x in 0..10i32 {
            tx.execute(&stmt, &[&x]).await.unwrap();
        }
        let sum: i64 = tx
            .query_one("SELECT sum(x)::int8 FROM n WHERE x >= $1", &[&0i32])
            .await
            .unwrap()
            .get(0);
        assert_eq!(sum, 45, "{mode:?}");
        drop(stmt);
        tx.commit().await.unwrap();
        assert_eq!(scalar(&c, "SELECT count(*) FROM n").await, "10", "{mode:?}");
        if mode == PoolMode::Session {
            // Session mode keeps the server, so named statements work anywhere.
            let row = c.query_one("SELECT $1::int4 * 3", &[&5i32]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), 15);
        }
    }
}

#[tokio::test]
async fn pipelined_queries_come_back_in_order() {
    for (mode, sluice, db) in setups("proto_pipe").await {
        let c = sluice.client(&db).await;
        // tokio-postgres writes all of these before reading any answer.
        let futs = (0..100i32).map(|i| {
            let c = &c;
            async move {
                c.query_typed_one("SELECT $1::int4 + 1000", &[(&i, Type::INT4)])
                    .await
                    .map(|r| r.get::<_, i32>(0))
            }
        });
        let got: Vec<i32> = within(T, "pipeline", join_all(futs))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, (1000..1100).collect::<Vec<_>>(), "{mode:?}");

        let simple = (0..50).map(|i| {
            let c = &c;
            async move { scalar(c, &format!("SELECT {i}")).await }
        });
        let got = within(T, "simple pipeline", join_all(simple)).await;
        let want: Vec<String> = (0..50).map(|i| i.to_string()).collect();
        assert_eq!(got, want, "{mode:?}");

        // A failing query in the middle of a pipeline affects only itself.
        let (a, b, d) = tokio::join!(
            c.query_typed_one("SELECT 1::int4", &[]),
            c.query_typed_one("SELECT 1/0", &[]),
            c.query_typed_one("SELECT 3::int4", &[]),
        );
        assert_eq!(a.unwrap().get::<_, i32>(0), 1);
        expect_sqlstate(b, &["22012"]);
        assert_eq!(d.unwrap().get::<_, i32>(0), 3);
    }
}

async fn copy_roundtrip(c: &mut Client, mode: PoolMode) {
    c.batch_execute("CREATE TABLE cp (id int, name text)")
        .await
        .unwrap();
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\tname {i}\n"));
    }
    // COPY FROM STDIN (tokio-postgres prepares a named statement: keep it in a transaction).
    let tx = c.transaction().await.unwrap();
    let sink = tx.copy_in("COPY cp (id, name) FROM STDIN").await.unwrap();
    pin_mut!(sink);
    for chunk in data.as_bytes().chunks(7000) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 5000, "{mode:?}");
    tx.commit().await.unwrap();
    assert_eq!(scalar(c, "SELECT count(*) FROM cp").await, "5000");
    assert_eq!(
        scalar(c, "SELECT sum(id) FROM cp WHERE name = 'name ' || id").await,
        (0..5000).sum::<i64>().to_string()
    );

    // COPY TO STDOUT.
    let tx = c.transaction().await.unwrap();
    let stream = tx
        .copy_out("COPY (SELECT id, name FROM cp ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = within(T, "copy out", stream.try_collect()).await.unwrap();
    tx.commit().await.unwrap();
    let out: Vec<u8> = chunks.concat();
    assert_eq!(String::from_utf8(out).unwrap(), data, "{mode:?}");

    // Bad COPY data: an error, and the connection still works.
    let tx = c.transaction().await.unwrap();
    let sink = tx.copy_in("COPY cp (id, name) FROM STDIN").await.unwrap();
    pin_mut!(sink);
    let res = async {
        sink.send(Bytes::from_static(b"1\tok\nnot-a-number\tbad\n"))
            .await?;
        sink.finish().await
    }
    .await;
    expect_sqlstate(res, &["22P02"]);
    drop(tx);
    assert_eq!(
        scalar(c, "SELECT count(*) FROM cp").await,
        "5000",
        "{mode:?}"
    );
}

#[tokio::test]
async fn copy_in_and_out() {
    for (mode, sluice, db) in setups("proto_copy").await {
        let mut c = sluice.client(&db).await;
        within(T, "copy", copy_roundtrip(&mut c, mode)).await;
    }
}

#[tokio::test]
async fn errors_outside_and_inside_transactions() {
    for (mode, sluice, db) in setups("proto_err").await {
        let c = sluice.client(&db).await;
        // Outside a transaction: the error, then business as usual.
        expect_sqlstate(c.simple_query("SELECT 1/0").await, &["22012"]);
        assert_eq!(scalar(&c, "SELECT 1").await, "1");
        expect_sqlstate(c.simple_query("SELEC 1").await, &["42601"]);
        expect_sqlstate(c.query_typed("SELEC 1", &[]).await, &["42601"]);
        expect_sqlstate(
            c.query_typed("SELECT * FROM no_such_table", &[]).await,
            &["42P01"],
        );
        assert_eq!(scalar(&c, "SELECT 2").await, "2");

        // Inside a transaction: aborted until ROLLBACK.
        c.batch_execute("CREATE TABLE e (x int)").await.unwrap();
        c.batch_execute("BEGIN; INSERT INTO e VALUES (1)")
            .await
            .unwrap();
        expect_sqlstate(c.simple_query("SELECT 1/0").await, &["22012"]);
        expect_sqlstate(c.simple_query("SELECT 1").await, &["25P02"]);
        expect_sqlstate(c.query_typed("SELECT 1", &[]).await, &["25P02"]);
        c.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(scalar(&c, "SELECT count(*) FROM e").await, "0", "{mode:?}");

        // An error in a multi-statement query aborts its implicit transaction.
        expect_sqlstate(
            c.simple_query("INSERT INTO e VALUES (2); SELECT 1/0; INSERT INTO e VALUES (3)")
                .await,
            &["22012"],
        );
        assert_eq!(scalar(&c, "SELECT count(*) FROM e").await, "0", "{mode:?}");

        // COMMIT of a failed transaction rolls back.
        c.batch_execute("BEGIN; INSERT INTO e VALUES (4)")
            .await
            .unwrap();
        let _ = c.simple_query("SELECT 1/0").await;
        let msgs = c.simple_query("COMMIT").await.unwrap();
        assert!(matches!(
            msgs.last(),
            Some(SimpleQueryMessage::CommandComplete(_))
        ));
        assert_eq!(scalar(&c, "SELECT count(*) FROM e").await, "0", "{mode:?}");

        // A FATAL-free error does not cost other clients anything.
        let other = sluice.client(&db).await;
        assert_eq!(scalar(&other, "SELECT 5").await, "5");
    }
}

#[tokio::test]
async fn large_results_and_large_queries() {
    for (mode, sluice, db) in setups("proto_large").await {
        let c = sluice.client(&db).await;
        let msgs = within(
            T,
            "big result",
            c.simple_query("SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g"),
        )
        .await
        .unwrap();
        assert_eq!(rows(&msgs).len(), 50000, "{mode:?}");
        let big = "y".repeat(2_000_000);
        let row = within(
            T,
            "big param",
            c.query_typed_one("SELECT length($1::text)", &[(&big, Type::TEXT)]),
        )
        .await
        .unwrap();
        assert_eq!(row.get::<_, i32>(0), 2_000_000);
        let q = format!("SELECT length('{big}')");
        assert_eq!(scalar(&c, &q).await, "2000000");
    }
}

#[tokio::test]
async fn transaction_keeps_one_server_and_sees_its_own_writes() {
    for (mode, sluice, db) in setups("proto_tx").await {
        let mut c = sluice.client(&db).await;
        c.batch_execute("CREATE TABLE tx (x int)").await.unwrap();
        let other = sluice.client(&db).await;
        let tx = c.transaction().await.unwrap();
        tx.execute("INSERT INTO tx VALUES (1)", &[]).await.unwrap();
        let pid: i32 = tx
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        // Another client (on the other server) does not see uncommitted data.
        assert_eq!(scalar(&other, "SELECT count(*) FROM tx").await, "0");
        let n: i64 = tx
            .query_one("SELECT count(*) FROM tx", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        let pid2: i32 = tx
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(pid, pid2, "{mode:?}");
        tx.commit().await.unwrap();
        assert_eq!(scalar(&other, "SELECT count(*) FROM tx").await, "1");
    }
}
