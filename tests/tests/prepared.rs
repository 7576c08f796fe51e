//! Named prepared statements in transaction mode (issue 3): many tokio-postgres clients
//! preparing and running statements on a small pool, statements used before, inside and
//! after transactions, Parse errors, DEALLOCATE / DISCARD ALL / Close, ALTER TABLE, a tiny
//! per-server statement cache, and the same statement names with different texts from
//! different clients (raw protocol, because tokio-postgres names are process-unique).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{expect_sqlstate, sluice_for};
use futures_util::future::join_all;
use sluice_tests::{scalar, shared_cluster, within, PoolMode, Sluice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

const T: Duration = Duration::from_secs(60);

async fn setup(prefix: &str, pool_size: u32, extra: &str) -> (Sluice, String) {
    let cluster = shared_cluster();
    let db = cluster.fresh_database(prefix).await;
    let mut builder = sluice_for(cluster, &db, PoolMode::Transaction).pool_size(pool_size);
    if !extra.is_empty() {
        builder = builder.extra_postgres(extra);
    }
    (builder.start(), db)
}

async fn create_items(c: &Client) {
    c.batch_execute(
        "CREATE TABLE items (id int4 PRIMARY KEY, name text NOT NULL, score float8 NOT NULL, \
             active bool NOT NULL, big int8 NOT NULL, data bytea); \
         INSERT INTO items SELECT g, 'item ' || g, g * 0.5, g % 2 = 0, g::int8 * 10000000000, \
             decode(lpad(to_hex(g), 8, '0'), 'hex') FROM generate_series(1, 100) g; \
         CREATE TABLE log (task int4 NOT NULL, n int4 NOT NULL, note text)",
    )
    .await
    .unwrap();
}

/// One of the 50 clients: prepares statements of several parameter types and runs them
/// `rounds` times each, in and out of transactions, checking every result.
async fn worker(sluice: &Sluice, db: &str, task: i32, rounds: i32) {
    let mut c = sluice.client(db).await;
    let add = c.prepare("SELECT $1::int4 + $2::int8").await.unwrap();
    let concat = c
        .prepare("SELECT $1::text || '/' || $2::int4::text || '/' || $3::bool::text")
        .await
        .unwrap();
    let lookup = c
        .prepare("SELECT id, name, score, active, big, data FROM items WHERE id = $1")
        .await
        .unwrap();
    let range = c
        .prepare("SELECT count(*), coalesce(sum(score), 0) FROM items WHERE id BETWEEN $1 AND $2 AND active = $3")
        .await
        .unwrap();
    // A text only this task uses (not shared with the others).
    let own = c
        .prepare(&format!("SELECT $1::float8 * {task} + {task}"))
        .await
        .unwrap();
    let insert = c
        .prepare("INSERT INTO log (task, n, note) VALUES ($1, $2, $3)")
        .await
        .unwrap();
    for i in 0..rounds {
        let a: i64 = c
            .query_one(&add, &[&i, &(i64::from(task) << 33)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(a, i64::from(i) + (i64::from(task) << 33), "task {task}");

        let word = format!("t{task}");
        let s: String = c
            .query_one(&concat, &[&word, &i, &(i % 3 == 0)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(s, format!("t{task}/{i}/{}", i % 3 == 0), "task {task}");

        let id = (task * 7 + i) % 100 + 1;
        let row = c.query_one(&lookup, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), id);
        assert_eq!(row.get::<_, String>(1), format!("item {id}"));
        assert_eq!(row.get::<_, f64>(2), f64::from(id) * 0.5);
        assert_eq!(row.get::<_, bool>(3), id % 2 == 0);
        assert_eq!(row.get::<_, i64>(4), i64::from(id) * 10_000_000_000);
        assert_eq!(
            row.get::<_, Option<Vec<u8>>>(5),
            Some((id as u32).to_be_bytes().to_vec())
        );

        let lo = i % 50 + 1;
        let hi = lo + 9;
        let row = c.query_one(&range, &[&lo, &hi, &true]).await.unwrap();
        let want_sum: f64 = (lo..=hi)
            .filter(|x| x % 2 == 0)
            .map(|x| f64::from(x) * 0.5)
            .sum();
        assert_eq!(row.get::<_, i64>(0), 5, "task {task} range {lo}..{hi}");
        assert_eq!(row.get::<_, f64>(1), want_sum, "task {task}");

        let x = f64::from(i) + 0.25;
        let o: f64 = c.query_one(&own, &[&x]).await.unwrap().get(0);
        assert_eq!(o, x * f64::from(task) + f64::from(task), "task {task}");

        // Statement prepared outside, used inside a transaction, then again outside.
        if i % 10 == 0 {
            let tx = c.transaction().await.unwrap();
            tx.execute(&insert, &[&task, &i, &Some(format!("round {i}"))])
                .await
                .unwrap();
            let inside = tx
                .prepare("SELECT count(*) FROM log WHERE task = $1")
                .await
                .unwrap();
            let n: i64 = tx.query_one(&inside, &[&task]).await.unwrap().get(0);
            assert_eq!(n, i64::from(i / 10 + 1), "task {task}");
            let a: i64 = tx.query_one(&add, &[&1i32, &2i64]).await.unwrap().get(0);
            assert_eq!(a, 3);
            tx.commit().await.unwrap();
        }
        // client.query with a &str prepares (and later closes) a named statement each time.
        if i % 5 == 0 {
            let rows = c
                .query(
                    "SELECT name FROM items WHERE id = $1 OR id = $2 ORDER BY id",
                    &[&1i32, &id],
                )
                .await
                .unwrap();
            let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let mut want = vec!["item 1".to_string()];
            if id != 1 {
                want.push(format!("item {id}"));
            }
            assert_eq!(names, want, "task {task}");
        }
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM log WHERE task = $1", &[&task])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, i64::from((rounds + 9) / 10), "task {task}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_share_prepared_statements_on_three_servers() {
    let (sluice, db) = setup("prep_fifty", 3, "").await;
    let c = sluice.client(&db).await;
    create_items(&c).await;
    let rounds = 100;
    let started = std::time::Instant::now();
    within(
        Duration::from_secs(120),
        "50 workers",
        join_all((0..50).map(|task| worker(&sluice, &db, task, rounds))),
    )
    .await;
    eprintln!("50 workers x {rounds} rounds took {:?}", started.elapsed());
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM log").await,
        (50 * ((rounds + 9) / 10)).to_string()
    );
    // The shared texts are prepared once per server, not once per client.
    let servers = scalar(
        &c,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND backend_type = 'client backend'",
    )
    .await;
    assert!(servers.parse::<i32>().unwrap() <= 3, "{servers} servers");
}

#[tokio::test]
async fn statements_before_inside_and_after_transactions_with_others_busy() {
    let (sluice, db) = setup("prep_tx", 2, "").await;
    let mut c = sluice.client(&db).await;
    create_items(&c).await;
    // Background load so the client keeps landing on different servers.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for k in 0..3 {
        let other = sluice.client(&db).await;
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let st = other.prepare("SELECT $1::int4 * 2").await.unwrap();
            let mut n = 0i32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v: i32 = other.query_one(&st, &[&(k + n)]).await.unwrap().get(0);
                assert_eq!(v, (k + n) * 2);
                n += 1;
            }
            n
        }));
    }
    let before = c
        .prepare("SELECT name FROM items WHERE id = $1")
        .await
        .unwrap();
    for round in 0..30i32 {
        let id = round + 1;
        let name: String = c.query_one(&before, &[&id]).await.unwrap().get(0);
        assert_eq!(name, format!("item {id}"));
        let tx = c.transaction().await.unwrap();
        let name: String = tx.query_one(&before, &[&id]).await.unwrap().get(0);
        assert_eq!(name, format!("item {id}"));
        let inside = tx
            .prepare(&format!("SELECT $1::int4 + {round}"))
            .await
            .unwrap();
        let v: i32 = tx.query_one(&inside, &[&5i32]).await.unwrap().get(0);
        assert_eq!(v, 5 + round);
        tx.execute("INSERT INTO log VALUES ($1, $2, NULL)", &[&0i32, &round])
            .await
            .unwrap();
        if round % 2 == 0 {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        // Prepared inside a (committed or rolled back) transaction: still usable after it,
        // like on a plain PostgreSQL connection.
        let v: i32 = c.query_one(&inside, &[&6i32]).await.unwrap().get(0);
        assert_eq!(v, 6 + round);
        let name: String = c.query_one(&before, &[&(id + 1)]).await.unwrap().get(0);
        assert_eq!(name, format!("item {}", id + 1));
    }
    assert_eq!(scalar(&c, "SELECT count(*) FROM log").await, "15");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        let n = within(T, "load task", l).await.unwrap();
        assert!(n > 0);
    }
}

#[tokio::test]
async fn parse_error_is_reported_once_and_the_connection_stays_usable() {
    let (sluice, db) = setup("prep_parse_err", 2, "").await;
    let mut c = sluice.client(&db).await;
    let good = c.prepare("SELECT $1::int4 + 1").await.unwrap();
    expect_sqlstate(
        within(T, "bad prepare", c.prepare("SELEC 1")).await,
        &["42601"],
    );
    expect_sqlstate(
        within(
            T,
            "bad prepare",
            c.prepare("SELECT * FROM no_such_table WHERE x = $1"),
        )
        .await,
        &["42P01"],
    );
    // The next requests get their own answers (no stale error, no lost reply).
    let v: i32 = within(T, "after", c.query_one(&good, &[&41i32]))
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 42);
    assert_eq!(scalar(&c, "SELECT 'fine'").await, "fine");
    // An execution error (not a Parse error) on a prepared statement.
    let div = c.prepare("SELECT 10 / $1::int4").await.unwrap();
    expect_sqlstate(c.query_one(&div, &[&0i32]).await, &["22012"]);
    let v: i32 = c.query_one(&div, &[&5i32]).await.unwrap().get(0);
    assert_eq!(v, 2);
    // A Parse error inside a transaction aborts it like on PostgreSQL.
    let tx = c.transaction().await.unwrap();
    expect_sqlstate(tx.prepare("SELECT FROM WHERE").await, &["42601"]);
    expect_sqlstate(tx.query_one(&good, &[&1i32]).await, &["25P02"]);
    tx.rollback().await.unwrap();
    let v: i32 = c.query_one(&good, &[&1i32]).await.unwrap().get(0);
    assert_eq!(v, 2);
    for i in 0..50i32 {
        let v: i32 = c.query_one(&good, &[&i]).await.unwrap().get(0);
        assert_eq!(v, i + 1);
    }
}

#[tokio::test]
async fn deallocate_all_and_discard_all_then_prepare_again() {
    let (sluice, db) = setup("prep_dealloc", 2, "").await;
    let c = sluice.client(&db).await;
    let other = sluice.client(&db).await;
    let text = "SELECT $1::text || '!'";
    let a = c.prepare(text).await.unwrap();
    let b = other.prepare(text).await.unwrap();
    let v: String = c.query_one(&a, &[&"x"]).await.unwrap().get(0);
    assert_eq!(v, "x!");

    let msgs = c.simple_query("DEALLOCATE ALL").await.unwrap();
    assert!(matches!(
        msgs.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(_))
    ));
    // The client's statement is gone...
    expect_sqlstate(
        within(T, "after DEALLOCATE ALL", c.query_one(&a, &[&"x"])).await,
        &["26000"],
    );
    // ...but not the other client's (same text, shared server statement).
    let v: String = other.query_one(&b, &[&"y"]).await.unwrap().get(0);
    assert_eq!(v, "y!");
    // Preparing it again works.
    let a2 = c.prepare(text).await.unwrap();
    let v: String = c.query_one(&a2, &[&"z"]).await.unwrap().get(0);
    assert_eq!(v, "z!");

    c.batch_execute("DISCARD ALL").await.unwrap();
    expect_sqlstate(c.query_one(&a2, &[&"x"]).await, &["26000"]);
    let v: String = other.query_one(&b, &[&"w"]).await.unwrap().get(0);
    assert_eq!(v, "w!");
    let a3 = c.prepare(text).await.unwrap();
    for i in 0..20 {
        let s = i.to_string();
        let v: String = c.query_one(&a3, &[&s]).await.unwrap().get(0);
        assert_eq!(v, format!("{i}!"));
        let v: String = other.query_one(&b, &[&s]).await.unwrap().get(0);
        assert_eq!(v, format!("{i}!"));
    }
    // DEALLOCATE of a name the client never prepared: PostgreSQL's error.
    expect_sqlstate(
        c.batch_execute("DEALLOCATE no_such_statement").await,
        &["26000"],
    );
    assert_eq!(scalar(&c, "SELECT 1").await, "1");
}

#[tokio::test]
async fn alter_table_under_a_prepared_statement() {
    let (sluice, db) = setup("prep_alter", 2, "").await;
    let c = sluice.client(&db).await;
    let other = sluice.client(&db).await;
    c.batch_execute("CREATE TABLE t (a int4, b text); INSERT INTO t VALUES (1, 'one')")
        .await
        .unwrap();
    let star = c.prepare("SELECT * FROM t").await.unwrap();
    let col = c.prepare("SELECT b FROM t WHERE a = $1").await.unwrap();
    let other_star = other.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(c.query(&star, &[]).await.unwrap().len(), 1);
    assert_eq!(other.query(&other_star, &[]).await.unwrap().len(), 1);

    other
        .batch_execute("ALTER TABLE t ADD COLUMN c int4 DEFAULT 7")
        .await
        .unwrap();
    // PostgreSQL refuses a cached plan whose result type changed (0A000); an answer (error or
    // rows) must come, and the connection must stay usable.
    match within(T, "SELECT * after ALTER", c.query(&star, &[])).await {
        Ok(rows) => assert_eq!(rows.len(), 1),
        Err(e) => {
            assert_eq!(
                sluice_tests::sqlstate(&e).as_deref(),
                Some("0A000"),
                "{e:?}"
            );
        }
    }
    // Same result type: re-planned transparently.
    let b: String = within(T, "col after ALTER", c.query_one(&col, &[&1i32]))
        .await
        .unwrap()
        .get(0);
    assert_eq!(b, "one");
    // Re-preparing the same text sees the new column, as on PostgreSQL (where the new
    // statement is a fresh one): from this client, from the other one and from a new client,
    // several times (so on both servers).
    let fresh = sluice.client(&db).await;
    let mut failures = Vec::new();
    for round in 0..4 {
        for (who, client) in [("c", &c), ("other", &other), ("fresh", &fresh)] {
            match within(T, "re-prepare", client.prepare("SELECT * FROM t")).await {
                Ok(st) if st.columns().len() == 3 => {
                    let rows = within(T, "re-prepared", client.query(&st, &[])).await;
                    if let Err(e) = rows {
                        failures.push(format!(
                            "round {round} {who}: execute: {:?} {}",
                            sluice_tests::sqlstate(&e),
                            sluice_tests::error_message(&e)
                        ));
                    }
                }
                Ok(st) => failures.push(format!(
                    "round {round} {who}: {} columns",
                    st.columns().len()
                )),
                Err(e) => failures.push(format!(
                    "round {round} {who}: prepare: {:?} {}",
                    sluice_tests::sqlstate(&e),
                    sluice_tests::error_message(&e)
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "re-preparing \"SELECT * FROM t\" after ALTER TABLE ADD COLUMN failed:\n{}",
        failures.join("\n")
    );
    let star2 = c.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(star2.columns().len(), 3);
    let rows = within(T, "re-prepared", c.query(&star2, &[]))
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, Option<i32>>(2), Some(7));
    // Type change of a parameter column: the old statement errors or works, never hangs.
    other
        .batch_execute("ALTER TABLE t ALTER COLUMN a TYPE int8")
        .await
        .unwrap();
    let _ = within(T, "col after type change", c.query(&col, &[&1i32])).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM t WHERE a = $1", &[&1i64])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(scalar(&other, "SELECT count(*) FROM t").await, "1");
}

#[tokio::test]
async fn tiny_statement_cache_evicts_and_prepares_again() {
    let (sluice, db) = setup("prep_cache", 2, "max_prepared_statements = 3").await;
    let tasks = (0..8).map(|task: i32| {
        let sluice = &sluice;
        let db = &db;
        async move {
            let c = sluice.client(db).await;
            // Six texts shared by all tasks, more than the per-server cache holds.
            let texts: Vec<String> = (0..6)
                .map(|k| format!("SELECT $1::int4 + {} + $2::int4", k * 1000))
                .collect();
            let mut stmts = Vec::new();
            for t in &texts {
                stmts.push(c.prepare(t).await.unwrap());
            }
            for round in 0..30i32 {
                for (k, st) in stmts.iter().enumerate() {
                    let v: i32 = c.query_one(st, &[&round, &task]).await.unwrap().get(0);
                    assert_eq!(v, round + k as i32 * 1000 + task, "task {task} stmt {k}");
                }
            }
        }
    });
    within(Duration::from_secs(120), "cache workers", join_all(tasks)).await;
    let c = sluice.client(&db).await;
    // No server holds many more than the configured number of Sluice's statements.
    let n: i64 = c
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        n <= 4,
        "{n} statements on one server with max_prepared_statements = 3"
    );
}

// ---- raw protocol: same names, different texts; exact message sequences ----

/// A minimal frontend speaking the wire protocol (auth_type trust at the proxy).
struct Wire {
    s: tokio::net::TcpStream,
    out: Vec<u8>,
}

fn msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

impl Wire {
    async fn connect(sluice: &Sluice, db: &str) -> Wire {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", sluice.port()))
            .await
            .unwrap();
        let mut body = 196608u32.to_be_bytes().to_vec();
        for (k, v) in [("user", "app"), ("database", db)] {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.push(0);
        let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        s.write_all(&m).await.unwrap();
        let mut w = Wire { s, out: Vec::new() };
        let got = w.until_ready().await;
        assert!(got.iter().all(|m| !m.starts_with("E:")), "startup: {got:?}");
        w
    }

    fn parse(&mut self, name: &str, sql: &str) -> &mut Self {
        let mut b = Vec::new();
        cstr(&mut b, name);
        cstr(&mut b, sql);
        b.extend_from_slice(&0u16.to_be_bytes());
        msg(&mut self.out, b'P', &b);
        self
    }

    /// Bind (text parameters, `None` = NULL) + Execute of the unnamed portal.
    fn bind_exec(&mut self, name: &str, params: &[Option<&str>]) -> &mut Self {
        let mut b = Vec::new();
        cstr(&mut b, "");
        cstr(&mut b, name);
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&(params.len() as u16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&0u16.to_be_bytes());
        msg(&mut self.out, b'B', &b);
        let mut e = Vec::new();
        cstr(&mut e, "");
        e.extend_from_slice(&0u32.to_be_bytes());
        msg(&mut self.out, b'E', &e);
        self
    }

    fn close(&mut self, name: &str) -> &mut Self {
        let mut b = vec![b'S'];
        cstr(&mut b, name);
        msg(&mut self.out, b'C', &b);
        self
    }

    fn query(&mut self, sql: &str) -> &mut Self {
        let mut b = Vec::new();
        cstr(&mut b, sql);
        msg(&mut self.out, b'Q', &b);
        self
    }

    fn sync(&mut self) -> &mut Self {
        msg(&mut self.out, b'S', &[]);
        self
    }

    /// Sends what was queued and reads until `n` ReadyForQuery messages arrived.
    async fn round(&mut self, n: usize) -> Vec<String> {
        let out = std::mem::take(&mut self.out);
        self.s.write_all(&out).await.unwrap();
        let mut all = Vec::new();
        for _ in 0..n {
            all.extend(self.until_ready().await);
        }
        all
    }

    /// Messages up to and including ReadyForQuery, summarised: `1` ParseComplete, `2`
    /// BindComplete, `3` CloseComplete, `D:a|b`, `C:tag`, `E:SQLSTATE`, `Z:status`;
    /// ParameterStatus, notices and auth messages are left out.
    async fn until_ready(&mut self) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let (tag, body) = within(T, "wire message", self.read()).await;
            let fields = |body: &[u8]| -> String {
                let mut i = 0;
                while i < body.len() && body[i] != 0 {
                    let end = i + 1 + body[i + 1..].iter().position(|&b| b == 0).unwrap();
                    if body[i] == b'C' {
                        return String::from_utf8_lossy(&body[i + 1..end]).into_owned();
                    }
                    i = end + 1;
                }
                String::new()
            };
            match tag {
                b'1' => got.push("1".to_string()),
                b'2' => got.push("2".to_string()),
                b'3' => got.push("3".to_string()),
                b'n' => got.push("n".to_string()),
                b'I' => got.push("I".to_string()),
                b'C' => got.push(format!(
                    "C:{}",
                    String::from_utf8_lossy(&body[..body.len() - 1])
                )),
                b'E' => got.push(format!("E:{}", fields(&body))),
                b'D' => {
                    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let mut i = 2;
                    let mut vals = Vec::new();
                    for _ in 0..n {
                        let len = i32::from_be_bytes(body[i..i + 4].try_into().unwrap());
                        i += 4;
                        if len < 0 {
                            vals.push("NULL".to_string());
                        } else {
                            let len = len as usize;
                            vals.push(String::from_utf8_lossy(&body[i..i + len]).into_owned());
                            i += len;
                        }
                    }
                    got.push(format!("D:{}", vals.join("|")));
                }
                b'T' => got.push("T".to_string()),
                b'Z' => {
                    got.push(format!("Z:{}", body[0] as char));
                    return got;
                }
                _ => {}
            }
        }
    }

    async fn read(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.s.read_exact(&mut body).await.unwrap();
        (head[0], body)
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn wire_setup(prefix: &str, pool_size: u32) -> (Sluice, String) {
    let cluster = shared_cluster();
    let db = cluster.fresh_database(prefix).await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(pool_size)
        .auth_type("trust")
        .start();
    (sluice, db)
}

#[tokio::test]
async fn same_statement_name_different_text_in_each_client() {
    let (sluice, db) = wire_setup("prep_wire_names", 2).await;
    let tasks = (0..8).map(|k| {
        let sluice = &sluice;
        let db = &db;
        async move {
            let mut w = Wire::connect(sluice, db).await;
            // Every client calls its statement "q"; half of them share a text.
            let text = if k % 2 == 0 {
                "SELECT $1::int4 * 2".to_string()
            } else {
                format!("SELECT $1::int4 * 2 + {k}")
            };
            let got = w.parse("q", &text).sync().round(1).await;
            assert_eq!(got, strs(&["1", "Z:I"]), "client {k}");
            for i in 0..100 {
                let p = i.to_string();
                let got = w.bind_exec("q", &[Some(&p)]).sync().round(1).await;
                let want = if k % 2 == 0 { i * 2 } else { i * 2 + k };
                assert_eq!(
                    got,
                    strs(&["2", &format!("D:{want}"), "C:SELECT 1", "Z:I"]),
                    "client {k} round {i}"
                );
            }
            w
        }
    });
    let wires = within(T, "wire clients", join_all(tasks)).await;
    drop(wires);
}

#[tokio::test]
async fn wire_parse_errors_close_and_deallocate_are_exact() {
    let (sluice, db) = wire_setup("prep_wire_exact", 2).await;
    let mut w = Wire::connect(&sluice, &db).await;
    // Load on the other server so statements are prepared on both.
    let mut other = Wire::connect(&sluice, &db).await;

    // A good Parse, a bad Parse, then a Bind of the good one: the error once, the rest
    // skipped until Sync.
    let got = w
        .parse("a", "SELECT $1::int4 + 100")
        .parse("b", "SELEC 1")
        .bind_exec("a", &[Some("1")])
        .sync()
        .round(1)
        .await;
    assert_eq!(got, strs(&["1", "E:42601", "Z:I"]));
    // "a" was parsed before the error: it exists, like on PostgreSQL; "b" does not.
    let got = w
        .bind_exec("a", &[Some("2")])
        .sync()
        .bind_exec("b", &[])
        .sync()
        .round(2)
        .await;
    assert_eq!(
        got,
        strs(&["2", "D:102", "C:SELECT 1", "Z:I", "E:26000", "Z:I"])
    );
    // Parse of an existing name: 42P05.
    let got = w.parse("a", "SELECT 2").sync().round(1).await;
    assert_eq!(got, strs(&["E:42P05", "Z:I"]));
    // The other client has no "a".
    let got = other.bind_exec("a", &[Some("1")]).sync().round(1).await;
    assert_eq!(got, strs(&["E:26000", "Z:I"]));
    let got = other
        .parse("a", "SELECT 'other'")
        .bind_exec("a", &[])
        .sync()
        .round(1)
        .await;
    assert_eq!(got, strs(&["1", "2", "D:other", "C:SELECT 1", "Z:I"]));

    // Close: CloseComplete, the name is free again; closing an unknown name is fine.
    let got = w.close("a").close("never").sync().round(1).await;
    assert_eq!(got, strs(&["3", "3", "Z:I"]));
    let got = w.bind_exec("a", &[Some("1")]).sync().round(1).await;
    assert_eq!(got, strs(&["E:26000", "Z:I"]));
    let got = w
        .parse("a", "SELECT $1::text || 'x'")
        .bind_exec("a", &[Some("y")])
        .sync()
        .round(1)
        .await;
    assert_eq!(got, strs(&["1", "2", "D:yx", "C:SELECT 1", "Z:I"]));

    // Inside a transaction: an error aborts it; a statement parsed in it survives ROLLBACK.
    let got = w
        .query("BEGIN")
        .parse("c", "SELECT 3")
        .bind_exec("c", &[])
        .sync()
        .round(2)
        .await;
    assert_eq!(
        got,
        strs(&["C:BEGIN", "Z:T", "1", "2", "D:3", "C:SELECT 1", "Z:T"])
    );
    let got = w.parse("d", "SELECT nope").sync().round(1).await;
    assert_eq!(got, strs(&["E:42703", "Z:E"]));
    let got = w.bind_exec("c", &[]).sync().round(1).await;
    assert_eq!(got, strs(&["E:25P02", "Z:E"]));
    let got = w.query("ROLLBACK").round(1).await;
    assert_eq!(got, strs(&["C:ROLLBACK", "Z:I"]));
    let got = w.bind_exec("c", &[]).sync().round(1).await;
    assert_eq!(got, strs(&["2", "D:3", "C:SELECT 1", "Z:I"]));

    // DEALLOCATE name (simple query) only affects this client.
    let got = w.query("DEALLOCATE c").round(1).await;
    assert_eq!(got, strs(&["C:DEALLOCATE", "Z:I"]));
    let got = w.bind_exec("c", &[]).sync().round(1).await;
    assert_eq!(got, strs(&["E:26000", "Z:I"]));
    let got = other.bind_exec("a", &[]).sync().round(1).await;
    assert_eq!(got, strs(&["2", "D:other", "C:SELECT 1", "Z:I"]));
    let got = w.query("DEALLOCATE PREPARE ALL").round(1).await;
    assert_eq!(got, strs(&["C:DEALLOCATE ALL", "Z:I"]));
    let got = w.bind_exec("a", &[Some("1")]).sync().round(1).await;
    assert_eq!(got, strs(&["E:26000", "Z:I"]));
    let got = other.bind_exec("a", &[]).sync().round(1).await;
    assert_eq!(got, strs(&["2", "D:other", "C:SELECT 1", "Z:I"]));

    // Pipelined: many Parse/Bind/Execute/Sync groups in one write, answers in order.
    for i in 0..20 {
        w.parse(&format!("p{i}"), &format!("SELECT {i}"))
            .bind_exec(&format!("p{i}"), &[])
            .sync();
    }
    let got = w.round(20).await;
    let mut want = Vec::new();
    for i in 0..20 {
        want.extend(strs(&["1", "2", &format!("D:{i}"), "C:SELECT 1", "Z:I"]));
    }
    assert_eq!(got, want);
    // A bad Parse in the middle of a pipeline: only its own group fails.
    let got = w
        .bind_exec("p1", &[])
        .sync()
        .parse("bad", "SELECT 1 +")
        .bind_exec("bad", &[])
        .sync()
        .bind_exec("p2", &[])
        .sync()
        .round(3)
        .await;
    assert_eq!(
        got,
        strs(&[
            "2",
            "D:1",
            "C:SELECT 1",
            "Z:I",
            "E:42601",
            "Z:I",
            "2",
            "D:2",
            "C:SELECT 1",
            "Z:I"
        ])
    );
}
