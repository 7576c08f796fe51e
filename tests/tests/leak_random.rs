//! Randomized state-leak test: many client lifetimes drawn at random over `pool_size = 2`,
//! in both pool modes. After each lifetime two fresh clients take both servers of the pool
//! and assert each one is clean: no open transaction, default settings, no temp tables, no
//! advisory locks, no SQL or client-named prepared statements, no cursors, no LISTEN.
//!
//! Replay a failure with the seed it prints:
//!
//! ```sh
//! SLUICE_LEAK_SEED=12345 cargo test -p sluice-tests --test leak_random
//! ```
//!
//! `SLUICE_LEAK_LIFETIMES` changes the number of lifetimes per mode (default 400; the issue's
//! "thousands" is `SLUICE_LEAK_LIFETIMES=2000`, a few minutes).
#![allow(clippy::unwrap_used)]

mod common;

use std::fmt::Write as _;
use std::time::Duration;

use common::sluice_for;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_tests::{
    rows, shared_cluster, sqlstate, within, PoolMode, Sluice, APP_PASSWORD, APP_USER,
};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, Statement};

const DEFAULT_SEED: u64 = 0x5eed_1eaf_2026;
const DEFAULT_LIFETIMES: usize = 400;
/// Hang guard for one operation (includes waiting for a pool slot while the previous
/// client's server is cleaned up).
const T: Duration = Duration::from_secs(30);

/// The settings the lifetimes change; the checker compares them with a fresh server's.
const GUCS: &[&str] = &[
    "statement_timeout",
    "work_mem",
    "search_path",
    "application_name",
    "DateStyle",
    "lock_timeout",
];

/// One query that inspects the whole session of the server it runs on. Run right after
/// `BEGIN` in the same simple-query message, so `now() = statement_timestamp()` holds only if
/// that BEGIN started the transaction.
fn check_sql() -> String {
    let mut sql = String::from(
        "SELECT now() = statement_timestamp() AS fresh_transaction, \
         (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temp_relations, \
         (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory_locks, \
         (SELECT count(*) FROM pg_prepared_statements WHERE from_sql) AS sql_prepared, \
         (SELECT string_agg(name, ',' ORDER BY name) FROM pg_prepared_statements \
            WHERE NOT from_sql AND name NOT LIKE 'sluice\\_%') AS client_prepared, \
         (SELECT count(*) FROM pg_cursors) AS cursors, \
         (SELECT count(*) FROM pg_listening_channels()) AS listening, \
         coalesce(current_setting('leak.flag', true), '') AS custom_guc",
    );
    for g in GUCS {
        let _ = write!(sql, ", current_setting('{g}') AS \"{g}\"");
    }
    sql.push_str(", pg_backend_pid() AS pid");
    sql
}

/// Column names and values of one check row.
type CheckRow = Vec<(String, Option<String>)>;

async fn connect(
    sluice: &Sluice,
    db: &str,
) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
    let (client, conn) = sluice
        .pg_config(APP_USER, APP_PASSWORD, db)
        .connect(NoTls)
        .await?;
    let handle = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, handle))
}

/// Runs `BEGIN; <check>` and returns the row (the transaction stays open, holding the
/// server).
async fn check_row(client: &Client, what: &str) -> CheckRow {
    let msgs = within(
        T,
        what,
        client.simple_query(&format!("BEGIN; {}", check_sql())),
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: check query failed: {e:?}"));
    let row = msgs
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{what}: check query returned no row"));
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name().to_string(), row.get(i).map(str::to_string)))
        .collect()
}

fn value<'a>(row: &'a CheckRow, name: &str) -> Option<&'a str> {
    row.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
}

/// Two fresh clients take both servers of the pool (each holds one in an open transaction)
/// and compare what they see with `baseline`.
async fn assert_clean(sluice: &Sluice, db: &str, baseline: &CheckRow, ctx: &str) {
    let (a, ha) = within(T, "checker connect", connect(sluice, db))
        .await
        .unwrap_or_else(|e| panic!("{ctx}: checker could not connect: {e:?}"));
    let row_a = check_row(&a, ctx).await;
    let (b, hb) = within(T, "checker connect", connect(sluice, db))
        .await
        .unwrap_or_else(|e| panic!("{ctx}: second checker could not connect: {e:?}"));
    let row_b = check_row(&b, ctx).await;
    assert_ne!(
        value(&row_a, "pid"),
        value(&row_b, "pid"),
        "{ctx}: two clients holding transactions share one server"
    );
    for row in [&row_a, &row_b] {
        let pid = value(row, "pid").unwrap_or("?");
        for ((name, got), (_, want)) in row.iter().zip(baseline.iter()) {
            if name == "pid" {
                continue;
            }
            assert_eq!(
                got, want,
                "{ctx}: server pid {pid} is not clean: {name} = {got:?}, a fresh server has \
                 {want:?}\nfull row: {row:?}"
            );
        }
    }
    for c in [&a, &b] {
        within(T, "checker rollback", c.simple_query("ROLLBACK"))
            .await
            .unwrap_or_else(|e| panic!("{ctx}: checker ROLLBACK failed: {e:?}"));
    }
    drop((a, b));
    let _ = within(T, "checker disconnect", ha).await;
    let _ = within(T, "checker disconnect", hb).await;
}

/// One client lifetime in progress.
struct Life<'a> {
    mode: PoolMode,
    ctx: String,
    client: Client,
    conn: JoinHandle<()>,
    in_tx: bool,
    /// The transaction failed (or may have: errors are then tolerated until it ends).
    aborted: bool,
    statements: Vec<(Statement, i32)>,
    log: &'a mut Vec<String>,
    uniq: u64,
}

impl Life<'_> {
    fn fail(&self, what: &str) -> ! {
        panic!(
            "{}: {what}\nops so far:\n  {}",
            self.ctx,
            self.log.join("\n  ")
        );
    }

    async fn simple(
        &mut self,
        sql: &str,
    ) -> Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error> {
        self.log.push(sql.to_string());
        let r = within(T, &self.ctx, self.client.simple_query(sql)).await;
        if let Err(e) = &r {
            self.log.push(format!("  -> error {:?}", sqlstate(e)));
        }
        r
    }

    /// Runs `sql`, which must succeed unless the transaction is (maybe) aborted.
    async fn ok(&mut self, sql: &str) -> Option<Vec<tokio_postgres::SimpleQueryMessage>> {
        match self.simple(sql).await {
            Ok(m) => Some(m),
            Err(e) => {
                if self.in_tx && self.aborted {
                    None
                } else {
                    self.fail(&format!("{sql:?} failed: {e:?}"));
                }
            }
        }
    }

    fn error_seen(&mut self) {
        if self.in_tx {
            self.aborted = true;
        }
    }

    async fn set(&mut self, rng: &mut StdRng) {
        // (name, SQL value, what current_setting then shows)
        let (name, sql_value, shown) = match rng.gen_range(0..6) {
            0 => {
                // Not a multiple of 60: PostgreSQL would show "8min" for '480s'.
                let secs: u32 = rng.gen_range(100..999);
                let v = format!(
                    "{}s",
                    if secs.is_multiple_of(60) {
                        secs + 1
                    } else {
                        secs
                    }
                );
                ("statement_timeout", format!("'{v}'"), v)
            }
            1 => {
                let v = format!("{}MB", rng.gen_range(5..60));
                ("work_mem", format!("'{v}'"), v)
            }
            2 => (
                "search_path",
                "leak_schema, public".to_string(),
                "leak_schema, public".to_string(),
            ),
            3 => {
                let v = format!("leaky_{}", rng.gen_range(0..1000));
                ("application_name", format!("'{v}'"), v)
            }
            4 => (
                "DateStyle",
                "'German, DMY'".to_string(),
                "German, DMY".to_string(),
            ),
            _ => ("leak.flag", "'on'".to_string(), "on".to_string()),
        };
        let local = rng.gen_bool(0.3);
        let sql = if local {
            format!("SET LOCAL {name} = {sql_value}")
        } else {
            format!("SET {name} = {sql_value}")
        };
        if self.ok(&sql).await.is_none() {
            return;
        }
        if local && !self.in_tx {
            // SET LOCAL outside a transaction: a WARNING, no effect.
            return;
        }
        // The client sees its own setting, wherever its next query lands.
        if let Some(m) = self.ok(&format!("SELECT current_setting('{name}')")).await {
            let got = rows(&m)[0][0].clone().unwrap_or_default();
            if got != shown {
                self.fail(&format!(
                    "after {sql} the client sees {got:?}, want {shown:?}"
                ));
            }
        }
    }

    async fn begin(&mut self) {
        if self.in_tx {
            return;
        }
        self.ok("BEGIN").await;
        self.in_tx = true;
        self.aborted = false;
    }

    async fn end_tx(&mut self, commit: bool) {
        if !self.in_tx {
            return;
        }
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        // COMMIT of an aborted transaction is answered ROLLBACK, not an error.
        self.ok(sql).await;
        self.in_tx = false;
        self.aborted = false;
    }

    async fn protocol_prepare(&mut self) {
        self.uniq += 1;
        let k = (self.uniq % 50) as i32;
        let sql = format!("SELECT $1::int4 + {k}");
        self.log.push(format!("prepare {sql:?}"));
        match within(T, &self.ctx, self.client.prepare(&sql)).await {
            Ok(st) => {
                self.statements.push((st, k));
                self.run_prepared(self.statements.len() - 1).await;
            }
            Err(e) => {
                self.log.push(format!("  -> error {:?}", sqlstate(&e)));
                if !(self.in_tx && self.aborted) {
                    self.fail(&format!("prepare {sql:?} failed: {e:?}"));
                }
                self.error_seen();
            }
        }
    }

    async fn run_prepared(&mut self, i: usize) {
        let (st, k) = self.statements[i].clone();
        self.log.push(format!("execute prepared #{i}"));
        match within(T, &self.ctx, self.client.query_one(&st, &[&7i32])).await {
            Ok(row) => {
                let v: i32 = row.get(0);
                if v != 7 + k {
                    self.fail(&format!("prepared #{i} returned {v}, want {}", 7 + k));
                }
            }
            Err(e) => {
                self.log.push(format!("  -> error {:?}", sqlstate(&e)));
                if !(self.in_tx && self.aborted) {
                    self.fail(&format!("execute prepared #{i} failed: {e:?}"));
                }
                self.error_seen();
            }
        }
    }

    async fn sql_prepare(&mut self) {
        self.uniq += 1;
        let name = format!("leak_p{}", self.uniq);
        // PREPARE and EXECUTE in one message (one transaction in transaction mode).
        self.ok(&format!("PREPARE {name} AS SELECT 1; EXECUTE {name}"))
            .await;
    }

    async fn temp_table(&mut self) {
        self.uniq += 1;
        let name = format!("leak_t{}", self.uniq);
        self.ok(&format!(
            "CREATE TEMP TABLE {name} (x int); INSERT INTO {name} VALUES (1)"
        ))
        .await;
    }

    async fn advisory_lock(&mut self) {
        self.uniq += 1;
        // Keys unique per lifetime: a leaked lock must not make a later lifetime block.
        let key = rand_key(&self.ctx, self.uniq);
        self.ok(&format!("SELECT pg_advisory_lock({key})")).await;
    }

    async fn listen(&mut self) {
        self.uniq += 1;
        let sql = format!("LISTEN leak_ch{}", self.uniq);
        let r = self.simple(&sql).await;
        match (self.mode, r) {
            (PoolMode::Session, Ok(_)) => {}
            (PoolMode::Session, Err(e)) => {
                if !(self.in_tx && self.aborted) {
                    self.fail(&format!("{sql} failed in session mode: {e:?}"));
                }
            }
            // Answered by Sluice's notification hub: no server listens.
            (PoolMode::Transaction, Ok(_)) => {}
            (PoolMode::Transaction, Err(e)) => {
                let code = sqlstate(&e);
                if !(self.in_tx && self.aborted && code.as_deref() == Some("25P02")) {
                    self.fail(&format!(
                        "{sql} in transaction mode: want success, got {e:?}"
                    ));
                }
                self.error_seen();
            }
        }
    }

    async fn cursor(&mut self) {
        self.uniq += 1;
        let name = format!("leak_c{}", self.uniq);
        if let Some(m) = self
            .ok(&format!(
                "DECLARE {name} CURSOR WITH HOLD FOR SELECT generate_series(1, 3); FETCH 1 FROM {name}"
            ))
            .await
        {
            if rows(&m).first().and_then(|r| r[0].as_deref()) != Some("1") {
                self.fail("FETCH from a fresh cursor did not return 1");
            }
        }
    }

    async fn error(&mut self) {
        let r = self.simple("SELECT 1/0").await;
        match r {
            Ok(_) => self.fail("SELECT 1/0 succeeded"),
            Err(e) => {
                let code = sqlstate(&e);
                if code.as_deref() != Some("22012") && !(self.in_tx && self.aborted) {
                    self.fail(&format!("SELECT 1/0: want 22012, got {e:?}"));
                }
                self.error_seen();
            }
        }
    }
}

fn rand_key(ctx: &str, uniq: u64) -> i64 {
    // Stable per (context, counter): a hash, in the positive range of bigint.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ctx.bytes().chain(uniq.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

/// How a lifetime ends.
#[derive(Debug, Clone, Copy)]
enum End {
    /// Terminate, socket closed cleanly.
    Graceful,
    /// Socket dropped without Terminate.
    Abrupt,
    /// Socket dropped while `pg_sleep(0.2)` runs.
    MidQuery,
}

async fn lifetime(
    sluice: &Sluice,
    db: &str,
    mode: PoolMode,
    rng: &mut StdRng,
    ctx: &str,
    log: &mut Vec<String>,
) {
    let (client, conn) = within(T, "connect", connect(sluice, db))
        .await
        .unwrap_or_else(|e| panic!("{ctx}: connect failed: {e:?}"));
    let mut life = Life {
        mode,
        ctx: ctx.to_string(),
        client,
        conn,
        in_tx: false,
        aborted: false,
        statements: Vec::new(),
        log,
        uniq: 0,
    };
    let n_ops = rng.gen_range(1..=7);
    for _ in 0..n_ops {
        match rng.gen_range(0..14) {
            0 | 1 => life.set(rng).await,
            2 => life.begin().await,
            3 => life.end_tx(rng.gen_bool(0.5)).await,
            4 => life.protocol_prepare().await,
            5 => {
                if life.statements.is_empty() {
                    life.protocol_prepare().await;
                } else {
                    let i = rng.gen_range(0..life.statements.len());
                    life.run_prepared(i).await;
                }
            }
            6 => life.sql_prepare().await,
            7 => life.temp_table().await,
            8 => life.advisory_lock().await,
            9 => life.listen().await,
            10 => life.cursor().await,
            11 => life.error().await,
            12 => {
                // A statement that runs a while, completed normally.
                life.ok("SELECT pg_sleep(0.01)").await;
            }
            _ => {
                // Commit or not, then maybe reopen: "BEGIN without COMMIT" at the end.
                life.end_tx(true).await;
                life.begin().await;
            }
        }
    }
    let end = match rng.gen_range(0..10) {
        0..=4 => End::Graceful,
        5..=7 => End::Abrupt,
        _ => End::MidQuery,
    };
    let Life {
        client,
        conn,
        in_tx,
        log,
        ..
    } = life;
    log.push(format!("end: {end:?} (in transaction: {in_tx})"));
    match end {
        End::Graceful => {
            drop(client);
            within(T, "graceful disconnect", conn).await.ok();
        }
        End::Abrupt => {
            conn.abort();
            let _ = conn.await;
            drop(client);
        }
        End::MidQuery => {
            let delay = Duration::from_millis(rng.gen_range(0..120));
            let q = tokio::spawn(async move {
                let r = client.simple_query("SELECT pg_sleep(0.2)").await;
                (client, r)
            });
            tokio::time::sleep(delay).await;
            conn.abort();
            let _ = conn.await;
            let (client, _r) = within(T, "query of a dropped connection", q)
                .await
                .unwrap_or_else(|e| panic!("{ctx}: query task panicked: {e:?}"));
            drop(client);
        }
    }
}

fn seed() -> u64 {
    match std::env::var("SLUICE_LEAK_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SLUICE_LEAK_SEED={s:?} is not a u64")),
        Err(_) => DEFAULT_SEED,
    }
}

fn lifetimes() -> usize {
    std::env::var("SLUICE_LEAK_LIFETIMES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_LIFETIMES)
}

async fn run(mode: PoolMode) {
    let seed = seed();
    let n = lifetimes();
    let mode_seed = seed
        ^ if mode == PoolMode::Session {
            0
        } else {
            0x9e37_79b9_7f4a_7c15
        };
    eprintln!(
        "leak_random {mode:?}: SLUICE_LEAK_SEED={seed} SLUICE_LEAK_LIFETIMES={n} (replay with these)"
    );
    let mut rng = StdRng::seed_from_u64(mode_seed);
    let cluster = shared_cluster();
    let db = cluster.fresh_database("leak_random").await;
    {
        let su = cluster.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
        su.batch_execute("CREATE SCHEMA leak_schema").await.unwrap();
    }
    let sluice = sluice_for(cluster, &db, mode)
        .pool_size(2)
        .min_pool_size(0)
        .pool_timeout(Duration::from_secs(20))
        // Cheap logins: SCRAM's PBKDF2 in a debug test build would dominate the run time.
        .auth_type("md5")
        .start();

    // What a fresh server looks like to a fresh client.
    let baseline = {
        let (c, h) = connect(&sluice, &db).await.unwrap();
        let row = check_row(&c, "baseline").await;
        c.simple_query("ROLLBACK").await.unwrap();
        drop(c);
        let _ = h.await;
        row
    };
    eprintln!("leak_random {mode:?}: baseline {baseline:?}");
    for (name, want) in [
        ("fresh_transaction", "t"),
        ("temp_relations", "0"),
        ("advisory_locks", "0"),
        ("sql_prepared", "0"),
        ("cursors", "0"),
        ("listening", "0"),
    ] {
        assert_eq!(value(&baseline, name), Some(want), "baseline {name}");
    }
    assert_eq!(
        value(&baseline, "client_prepared"),
        None,
        "baseline client_prepared"
    );

    let started = std::time::Instant::now();
    for step in 0..n {
        let ctx = format!("leak_random seed {seed} mode {mode:?} step {step}");
        let mut log = Vec::new();
        lifetime(&sluice, &db, mode, &mut rng, &ctx, &mut log).await;
        let ctx = format!("{ctx} (after lifetime: {})", log.join("; "));
        assert_clean(&sluice, &db, &baseline, &ctx).await;
    }
    eprintln!(
        "leak_random {mode:?}: {n} lifetimes clean in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_lifetimes_leave_no_state_session_mode() {
    run(PoolMode::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_lifetimes_leave_no_state_transaction_mode() {
    run(PoolMode::Transaction).await;
}
