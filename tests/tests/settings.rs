//! Settings follow the client in transaction mode (issue 3): SET and startup parameters are
//! re-applied on every server a client lands on and never reach other clients; rolled back
//! SETs are forgotten; RESET / RESET ALL; LISTEN answered by Sluice (no pooled server listens); state Sluice cannot
//! carry (temp tables, set_config, advisory locks, SQL PREPARE) never leaks.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{expect_sqlstate, sluice_for};
use sluice_tests::{scalar, scalar_opt, shared_cluster, within, PoolMode, Sluice};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

const T: Duration = Duration::from_secs(60);

/// What a client sees: search_path, statement_timeout, application_name, work_mem.
async fn settings(c: &Client) -> [String; 4] {
    let row = c
        .query_one(
            "SELECT current_setting('search_path'), current_setting('statement_timeout'), \
             current_setting('application_name'), current_setting('work_mem')",
            &[],
        )
        .await
        .unwrap();
    [row.get(0), row.get(1), row.get(2), row.get(3)]
}

async fn setup(prefix: &str, pool_size: u32) -> (Sluice, String) {
    let cluster = shared_cluster();
    let db = cluster.fresh_database(prefix).await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(pool_size)
        .start();
    let c = sluice.client(&db).await;
    c.batch_execute(
        "CREATE SCHEMA sa; CREATE SCHEMA sb; \
         CREATE TABLE public.marker (v text); INSERT INTO public.marker VALUES ('public'); \
         CREATE TABLE sa.marker (v text); INSERT INTO sa.marker VALUES ('sa'); \
         CREATE TABLE sb.marker (v text); INSERT INTO sb.marker VALUES ('sb')",
    )
    .await
    .unwrap();
    (sluice, db)
}

/// `n` clients running short transactions and checking they always see `want` (their own
/// settings, which they do not change), until `stop`. Returns once each of them has run a
/// first round (their logins can take longer than what the test does next), so the load
/// really runs alongside the test.
async fn load(
    sluice: &Sluice,
    db: &str,
    n: usize,
    want: [String; 4],
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<usize>> {
    let running = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<JoinHandle<usize>> = (0..n)
        .map(|k| {
            let config = sluice.pg_config("app", "secret", db);
            let want = want.clone();
            let stop = stop.clone();
            let running = running.clone();
            tokio::spawn(async move {
                let (c, conn) = config.connect(NoTls).await.unwrap();
                tokio::spawn(conn);
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(settings(&c).await, want, "load client {k} round {rounds}");
                    let v: String = c
                        .query_one("SELECT v FROM marker", &[])
                        .await
                        .unwrap()
                        .get(0);
                    assert_eq!(v, "public", "load client {k} round {rounds}");
                    if rounds % 3 == 0 {
                        c.batch_execute("BEGIN; SELECT pg_sleep(0.001); COMMIT")
                            .await
                            .unwrap();
                    }
                    rounds += 1;
                    if rounds == 1 {
                        running.fetch_add(1, Ordering::Relaxed);
                    }
                }
                rounds
            })
        })
        .collect();
    let deadline = Instant::now() + T;
    // A task that ended early (a failed check) is reported by `finish`.
    while running.load(Ordering::Relaxed) < n && !tasks.iter().any(JoinHandle::is_finished) {
        assert!(
            Instant::now() < deadline,
            "the load clients did not start within {T:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tasks
}

async fn finish(stop: &AtomicBool, tasks: Vec<JoinHandle<usize>>) {
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let n = within(T, "load client", t).await.unwrap();
        assert!(n > 0, "a load client never ran");
    }
}

#[tokio::test]
async fn set_follows_the_client_and_does_not_leak() {
    let (sluice, db) = setup("set_follow", 2).await;
    let a = sluice.client(&db).await;
    let baseline = settings(&a).await;
    assert_eq!(baseline[1], "0");
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&sluice, &db, 4, baseline.clone(), stop.clone()).await;

    a.simple_query("SET search_path = sa, public")
        .await
        .unwrap();
    a.simple_query("SET statement_timeout = '12345ms'")
        .await
        .unwrap();
    a.simple_query("SET application_name = 'client-a'")
        .await
        .unwrap();
    a.simple_query("SET work_mem TO '7MB'").await.unwrap();
    let want = [
        "sa, public".to_string(),
        "12345ms".to_string(),
        "client-a".to_string(),
        "7MB".to_string(),
    ];
    // A client with its own settings in parallel.
    let b = sluice.client(&db).await;
    b.simple_query("SET search_path = sb").await.unwrap();
    b.simple_query("SET application_name = 'client-b'")
        .await
        .unwrap();
    let want_b = [
        "sb".to_string(),
        baseline[1].clone(),
        "client-b".to_string(),
        baseline[3].clone(),
    ];
    let shared = "SELECT v FROM marker"; // same text, resolved per search_path
    for round in 0..60 {
        assert_eq!(
            scalar(&a, "SHOW search_path").await,
            want[0],
            "round {round}"
        );
        assert_eq!(scalar(&a, "SHOW statement_timeout").await, want[1]);
        assert_eq!(scalar(&a, "SHOW application_name").await, want[2]);
        assert_eq!(settings(&a).await, want, "round {round}");
        assert_eq!(settings(&b).await, want_b, "round {round}");
        let va: String = a.query_one(shared, &[]).await.unwrap().get(0);
        let vb: String = b.query_one(shared, &[]).await.unwrap().get(0);
        assert_eq!((va.as_str(), vb.as_str()), ("sa", "sb"), "round {round}");
        if round % 4 == 0 {
            a.batch_execute("BEGIN").await.unwrap();
            assert_eq!(settings(&a).await, want, "in transaction, round {round}");
            a.batch_execute("COMMIT").await.unwrap();
        }
    }
    finish(&stop, tasks).await;
    // A new client sees the defaults.
    let c = sluice.client(&db).await;
    assert_eq!(settings(&c).await, baseline);
}

#[tokio::test]
async fn startup_parameters_follow_the_client_and_reset_returns_to_them() {
    let (sluice, db) = setup("set_startup", 2).await;
    let plain = sluice.client(&db).await;
    let baseline = settings(&plain).await;
    drop(plain);
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&sluice, &db, 4, baseline.clone(), stop.clone()).await;

    let mut config = sluice.pg_config("app", "secret", &db);
    config
        .options("-c search_path=sb,public -c statement_timeout=54321 -c work_mem=5MB")
        .application_name("startup-app");
    let (a, conn) = config.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let want = [
        "sb,public".to_string(), // a startup value is shown as given
        "54321ms".to_string(),
        "startup-app".to_string(),
        "5MB".to_string(),
    ];
    for round in 0..50 {
        assert_eq!(settings(&a).await, want, "round {round}");
        assert_eq!(scalar(&a, "SHOW search_path").await, want[0]);
        assert_eq!(scalar(&a, "SELECT v FROM marker").await, "sb");
        if round % 5 == 0 {
            a.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
        }
    }
    // SET over a startup value, then RESET: back to the startup value (as on PostgreSQL).
    a.simple_query("SET statement_timeout = '1s'")
        .await
        .unwrap();
    a.simple_query("SET search_path = sa").await.unwrap();
    for _ in 0..10 {
        assert_eq!(scalar(&a, "SHOW statement_timeout").await, "1s");
        assert_eq!(scalar(&a, "SELECT v FROM marker").await, "sa");
    }
    a.simple_query("RESET statement_timeout").await.unwrap();
    for _ in 0..10 {
        assert_eq!(scalar(&a, "SHOW statement_timeout").await, "54321ms");
        assert_eq!(scalar(&a, "SHOW search_path").await, "sa");
    }
    a.simple_query("SET work_mem = '9MB'").await.unwrap();
    a.simple_query("SET application_name = 'renamed'")
        .await
        .unwrap();
    a.simple_query("RESET ALL").await.unwrap();
    for round in 0..20 {
        assert_eq!(settings(&a).await, want, "after RESET ALL, round {round}");
    }
    finish(&stop, tasks).await;
}

#[tokio::test]
async fn rolled_back_set_is_forgotten_committed_set_is_kept() {
    let (sluice, db) = setup("set_tx", 2).await;
    let a = sluice.client(&db).await;
    let base = settings(&a).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&sluice, &db, 3, base.clone(), stop.clone()).await;

    a.batch_execute("BEGIN").await.unwrap();
    a.simple_query("SET work_mem = '3MB'").await.unwrap();
    assert_eq!(scalar(&a, "SHOW work_mem").await, "3MB");
    a.batch_execute("ROLLBACK").await.unwrap();
    for round in 0..20 {
        assert_eq!(
            scalar(&a, "SHOW work_mem").await,
            base[3],
            "rolled back SET came back, round {round}"
        );
    }

    a.batch_execute("BEGIN").await.unwrap();
    a.simple_query("SET work_mem = '6MB'").await.unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    for round in 0..20 {
        assert_eq!(
            scalar(&a, "SHOW work_mem").await,
            "6MB",
            "committed SET lost, round {round}"
        );
    }

    // SET LOCAL lasts until the end of its transaction only.
    a.batch_execute("BEGIN").await.unwrap();
    a.simple_query("SET LOCAL work_mem = '2MB'").await.unwrap();
    assert_eq!(scalar(&a, "SHOW work_mem").await, "2MB");
    a.batch_execute("COMMIT").await.unwrap();
    for _ in 0..10 {
        assert_eq!(scalar(&a, "SHOW work_mem").await, "6MB");
    }

    // A SET in a transaction that then fails.
    a.batch_execute("BEGIN").await.unwrap();
    a.simple_query("SET statement_timeout = '777s'")
        .await
        .unwrap();
    expect_sqlstate(a.simple_query("SELECT 1/0").await, &["22012"]);
    a.batch_execute("COMMIT").await.unwrap(); // becomes ROLLBACK
    for _ in 0..10 {
        assert_eq!(scalar(&a, "SHOW statement_timeout").await, base[1]);
    }

    // An invalid SET is an error and changes nothing.
    expect_sqlstate(a.simple_query("SET work_mem = 'lots'").await, &["22023"]);
    expect_sqlstate(a.simple_query("SET no_such_setting = 1").await, &["42704"]);
    for _ in 0..10 {
        assert_eq!(scalar(&a, "SHOW work_mem").await, "6MB");
    }
    finish(&stop, tasks).await;
}

#[tokio::test]
async fn set_rolled_back_to_a_savepoint_is_undone() {
    let (sluice, db) = setup("set_savepoint", 2).await;
    let a = sluice.client(&db).await;
    let base = settings(&a).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&sluice, &db, 3, base.clone(), stop.clone()).await;
    // Savepoint rolled back: its SET is undone, the outer one kept.
    a.batch_execute("BEGIN").await.unwrap();
    a.simple_query("SET work_mem = '8MB'").await.unwrap();
    a.batch_execute("SAVEPOINT s").await.unwrap();
    a.simple_query("SET work_mem = '10MB'").await.unwrap();
    a.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    assert_eq!(scalar(&a, "SHOW work_mem").await, "8MB");
    a.batch_execute("COMMIT").await.unwrap();
    for round in 0..10 {
        assert_eq!(
            scalar(&a, "SHOW work_mem").await,
            "8MB",
            "after ROLLBACK TO SAVEPOINT + COMMIT, round {round}"
        );
    }
    finish(&stop, tasks).await;
}

#[tokio::test]
async fn listen_is_answered_by_sluice_and_no_pooled_server_listens() {
    let (sluice, db) = setup("set_listen", 2).await;
    let a = sluice.client(&db).await;
    within(T, "LISTEN", a.simple_query("LISTEN some_channel"))
        .await
        .unwrap();
    // Inside a transaction too; the connection stays usable.
    a.batch_execute("BEGIN").await.unwrap();
    a.simple_query("LISTEN other").await.unwrap();
    a.batch_execute("ROLLBACK").await.unwrap();
    // What Sluice cannot follow is refused, not passed to a server.
    let err = expect_sqlstate(a.simple_query("LISTEN a; LISTEN b").await, &["0A000"]);
    eprintln!("LISTEN a; LISTEN b: {}", sluice_tests::error_message(&err));
    assert_eq!(scalar(&a, "SELECT 1").await, "1");
    // NOTIFY is fine.
    a.batch_execute("NOTIFY some_channel, 'x'").await.unwrap();
    assert_eq!(
        scalar(&a, "SELECT count(*) FROM pg_listening_channels()").await,
        "0"
    );
}

/// One server (every client lands on it), client `a` with tracked settings, client `b`,
/// and what `b` sees.
struct OneServer {
    _sluice: Sluice,
    a: Client,
    b: Client,
    base: [String; 4],
}

async fn one_server(prefix: &str) -> OneServer {
    let (sluice, db) = setup(prefix, 1).await;
    let a = sluice.client(&db).await;
    let b = sluice.client(&db).await;
    let base = settings(&b).await;
    a.simple_query("SET search_path = sa, public")
        .await
        .unwrap();
    a.simple_query("SET application_name = 'keeps'")
        .await
        .unwrap();
    let a_pid = scalar(&a, "SELECT pg_backend_pid()").await;
    assert_eq!(scalar(&b, "SELECT pg_backend_pid()").await, a_pid);
    OneServer {
        _sluice: sluice,
        a,
        b,
        base,
    }
}

impl OneServer {
    /// `a` kept its tracked settings (a reset must not lose them), `b` sees its own.
    async fn check(&self, what: &str) {
        for _ in 0..3 {
            assert_eq!(
                scalar(&self.a, "SHOW search_path").await,
                "sa, public",
                "{what}"
            );
            assert_eq!(
                scalar(&self.a, "SHOW application_name").await,
                "keeps",
                "{what}"
            );
            assert_eq!(
                scalar(&self.a, "SELECT v FROM marker").await,
                "sa",
                "{what}"
            );
            assert_eq!(settings(&self.b).await, self.base, "{what}: leaked to b");
            assert_eq!(scalar(&self.b, "SELECT v FROM marker").await, "public");
        }
    }
}

#[tokio::test]
async fn temp_tables_never_leak() {
    let s = one_server("set_temp").await;
    s.a.batch_execute("BEGIN; CREATE TEMP TABLE tt (x int); INSERT INTO tt VALUES (1); COMMIT")
        .await
        .unwrap();
    assert_eq!(
        scalar_opt(&s.b, "SELECT to_regclass('pg_temp.tt')::text").await,
        None,
        "temp table leaked"
    );
    s.b.batch_execute("BEGIN; CREATE TEMP TABLE tt (y text); DROP TABLE tt; COMMIT")
        .await
        .unwrap();
    // Outside an explicit transaction.
    s.a.batch_execute("CREATE TEMP TABLE tt2 (x int)")
        .await
        .unwrap();
    assert_eq!(
        scalar_opt(&s.b, "SELECT to_regclass('pg_temp.tt2')::text").await,
        None,
        "temp table leaked"
    );
    // Within its own transaction a temp table works.
    let msgs =
        s.a.simple_query(
            "BEGIN; CREATE TEMP TABLE tt3 (x int); INSERT INTO tt3 VALUES (5); \
             SELECT x FROM tt3; COMMIT",
        )
        .await
        .unwrap();
    assert_eq!(sluice_tests::rows(&msgs), vec![vec![Some("5".to_string())]]);
    s.check("after temp tables").await;
}

#[tokio::test]
async fn set_config_never_leaks() {
    let s = one_server("set_setconfig").await;
    s.a.batch_execute("BEGIN; SELECT set_config('work_mem', '13MB', false); COMMIT")
        .await
        .unwrap();
    s.check("set_config in a transaction").await;
    let v = scalar(&s.a, "SELECT set_config('work_mem', '11MB', false)").await;
    assert_eq!(v, "11MB");
    s.check("set_config outside a transaction").await;
}

#[tokio::test]
async fn set_in_a_multi_statement_string_never_leaks() {
    let s = one_server("set_multi").await;
    s.a.batch_execute("SET work_mem = '12MB'; SELECT 1")
        .await
        .unwrap();
    s.check("SET in a multi-statement string").await;
    s.a.batch_execute("SELECT 1; SET statement_timeout = '99s'")
        .await
        .unwrap();
    s.check("SET at the end of a multi-statement string").await;
}

#[tokio::test]
async fn session_advisory_locks_never_leak() {
    let s = one_server("set_advisory").await;
    s.a.batch_execute("SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    assert_eq!(
        scalar(&s.b, "SELECT pg_try_advisory_lock(4242)").await,
        "t",
        "advisory lock leaked"
    );
    s.b.batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    s.check("after an advisory lock").await;
}

#[tokio::test]
async fn with_hold_cursors_never_leak() {
    let s = one_server("set_cursor").await;
    s.a.batch_execute("BEGIN; DECLARE cur CURSOR WITH HOLD FOR SELECT 1; COMMIT")
        .await
        .unwrap();
    assert_eq!(
        scalar(&s.b, "SELECT count(*) FROM pg_cursors").await,
        "0",
        "cursor leaked"
    );
    s.check("after a WITH HOLD cursor").await;
}

#[tokio::test]
async fn sql_prepare_works_within_a_transaction_and_never_leaks() {
    let s = one_server("set_sqlprep").await;
    let msgs =
        s.a.simple_query("BEGIN; PREPARE sqlp (int) AS SELECT $1 * 3; EXECUTE sqlp(14); COMMIT")
            .await
            .unwrap();
    assert_eq!(
        sluice_tests::rows(&msgs),
        vec![vec![Some("42".to_string())]]
    );
    s.a.batch_execute("BEGIN").await.unwrap();
    s.a.batch_execute("PREPARE sqlq AS SELECT 'q'")
        .await
        .unwrap();
    assert_eq!(scalar(&s.a, "EXECUTE sqlq").await, "q");
    s.a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        scalar(
            &s.b,
            "SELECT count(*) FROM pg_prepared_statements WHERE name IN ('sqlp', 'sqlq')"
        )
        .await,
        "0",
        "SQL PREPARE leaked"
    );
    s.b.batch_execute("BEGIN; PREPARE sqlp AS SELECT 1; DEALLOCATE sqlp; COMMIT")
        .await
        .unwrap();
    s.check("after SQL PREPARE").await;
}
