//! MongoDB faults end to end: `failCommand` fail points (upstream errors and closed
//! connections), a 15 MiB document, a message over `maxMessageSizeBytes`, the upstream
//! restarted under load, and (ignored) a throughput comparison direct vs through Sluice.
//!
//! Fail points are server-wide, so those tests start their own SecantusDB.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, spec::BinarySubtype, Binary, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::Client;
use sluice_tests::mongo::{shared_mongo, MongoServer, MongoSluiceBuilder};
use sluice_tests::{unique_name, within};

const HANG: Duration = Duration::from_secs(120);

fn server_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}

async fn fail_point(direct: &Client, mode: Document, data: Document) {
    direct
        .database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": mode, "data": data})
        .await
        .expect("configureFailPoint");
}

/// An upstream error reply (`errorCode`) reaches the client as the server's own document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_command_error_passes_through() {
    let server = MongoServer::start(&[]);
    let direct = server.direct_client().await;
    let sluice = MongoSluiceBuilder::new(server.uri())
        .max_pool_size(2)
        .start();
    within(HANG, "failCommand errorCode", async {
        let client = Client::with_uri_str(sluice.uri("retryReads=false&retryWrites=false"))
            .await
            .expect("client");
        let coll = client
            .database(&unique_name("fp"))
            .collection::<Document>("c");
        coll.insert_one(doc! {"_id": 1}).await.expect("setup");
        fail_point(
            &direct,
            doc! {"times": 1},
            doc! {"failCommands": ["find"], "errorCode": 4242, "errmsg": "injected by failCommand"},
        )
        .await;
        let err = coll
            .find_one(doc! {"_id": 1})
            .await
            .expect_err("fail point");
        assert_eq!(server_code(&err), Some(4242), "{err:?}");
        let ErrorKind::Command(c) = err.kind.as_ref() else {
            panic!("not a command error: {err:?}");
        };
        // The upstream's document, not one Sluice made up.
        assert!(!c.message.contains("sluice"), "{c:?}");
        // Once only: the same connection (pool of 2) serves the next find.
        let found = coll
            .find_one(doc! {"_id": 1})
            .await
            .expect("after fail point");
        assert!(found.is_some());
        let v: serde_json::Value =
            serde_json::from_str(&sluice.admin_get("/admin/pool-stats")).expect("json");
        assert_eq!(
            v["mongo_pools"][0]["counters"]["errors"]["server_lost"].as_u64(),
            Some(0),
            "an error reply is not a lost connection: {v}"
        );
    })
    .await;
}

/// `closeConnection: true`: the client gets a retryable HostUnreachable (or the driver's
/// retry succeeds), and the broken connection is not handed out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_command_close_connection_is_dropped_from_the_pool() {
    let server = MongoServer::start(&[]);
    let direct = server.direct_client().await;
    // One upstream connection: if the closed one went back to the pool, the next request
    // would fail on it.
    let sluice = MongoSluiceBuilder::new(server.uri())
        .max_pool_size(1)
        .start();
    within(HANG, "failCommand closeConnection", async {
        let name = unique_name("fpclose");
        let no_retry = Client::with_uri_str(sluice.uri("retryReads=false&retryWrites=false"))
            .await
            .expect("client");
        let coll = no_retry.database(&name).collection::<Document>("c");
        coll.insert_one(doc! {"_id": 1}).await.expect("setup");

        fail_point(
            &direct,
            doc! {"times": 1},
            doc! {"failCommands": ["find"], "closeConnection": true},
        )
        .await;
        let err = coll.find_one(doc! {"_id": 1}).await.expect_err("closed");
        assert_eq!(
            server_code(&err),
            Some(6),
            "HostUnreachable expected: {err:?}"
        );
        let ErrorKind::Command(c) = err.kind.as_ref() else {
            panic!("not a command error: {err:?}");
        };
        assert_eq!(c.code_name, "HostUnreachable", "{c:?}");
        assert!(
            err.contains_label("RetryableWriteError"),
            "retryable label expected: {err:?}"
        );
        // The next request through Sluice succeeds, on a fresh upstream connection.
        let found = coll.find_one(doc! {"_id": 1}).await.expect("next request");
        assert!(found.is_some());
        coll.insert_one(doc! {"_id": 2}).await.expect("next write");

        // With retries (the driver default), the application never sees the failure.
        let retrying = Client::with_uri_str(sluice.uri("")).await.expect("client");
        fail_point(
            &direct,
            doc! {"times": 1},
            doc! {"failCommands": ["find", "insert"], "closeConnection": true},
        )
        .await;
        let rcoll = retrying.database(&name).collection::<Document>("c");
        let found = rcoll.find_one(doc! {"_id": 2}).await.expect("retried read");
        assert!(found.is_some());
        fail_point(
            &direct,
            doc! {"times": 1},
            doc! {"failCommands": ["insert"], "closeConnection": true},
        )
        .await;
        rcoll
            .insert_one(doc! {"_id": 3})
            .await
            .expect("retried write");
        assert_eq!(
            direct
                .database(&name)
                .collection::<Document>("c")
                .count_documents(doc! {})
                .await
                .expect("count"),
            3
        );

        let v: serde_json::Value =
            serde_json::from_str(&sluice.admin_get("/admin/pool-stats")).expect("json");
        let pool = &v["mongo_pools"][0];
        assert!(pool["size"].as_u64() <= Some(1), "{v}");
        assert!(
            pool["counters"]["server_connects_total"].as_u64() >= Some(4),
            "each closed connection must be replaced: {v}"
        );
        assert!(
            pool["counters"]["errors"]["server_lost"].as_u64() >= Some(3),
            "{v}"
        );
    })
    .await;
}

/// A commit whose upstream connection closes before the answer: Sluice labels the lost
/// round trip `RetryableWriteError` (a commit's outcome is unknown, so it is retried, never
/// given `TransientTransactionError`); the driver retries the commit on another upstream
/// connection and the transaction's writes are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_lost_upstream_is_retried_by_the_driver() {
    let server = MongoServer::start(&[]);
    let direct = server.direct_client().await;
    let sluice = MongoSluiceBuilder::new(server.uri())
        .max_pool_size(2)
        .start();
    within(HANG, "commit retried", async {
        let name = unique_name("fpcommit");
        let client = sluice.client().await;
        let coll = client.database(&name).collection::<Document>("c");
        coll.insert_one(doc! {"_id": 0}).await.expect("setup");
        let mut session = client.start_session().await.expect("session");
        session.start_transaction().await.expect("start");
        coll.insert_one(doc! {"_id": 1})
            .session(&mut session)
            .await
            .expect("insert in transaction");
        fail_point(
            &direct,
            doc! {"times": 1},
            doc! {"failCommands": ["commitTransaction"], "closeConnection": true},
        )
        .await;
        session
            .commit_transaction()
            .await
            .expect("the driver retries the commit and it succeeds");
        let committed = direct
            .database(&name)
            .collection::<Document>("c")
            .find_one(doc! {"_id": 1})
            .await
            .expect("find");
        assert!(committed.is_some(), "the transaction's insert is missing");
        // The fault did happen: one upstream round trip was lost.
        let v: serde_json::Value =
            serde_json::from_str(&sluice.admin_get("/admin/pool-stats")).expect("json");
        assert!(
            v["mongo_pools"][0]["counters"]["errors"]["server_lost"].as_u64() >= Some(1),
            "{v}"
        );
    })
    .await;
}

/// A 15 MiB document goes in and comes back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_mib_document_round_trip() {
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri()).start();
    within(HANG, "15 MiB document", async {
        let client = sluice.client().await;
        let coll = client
            .database(&unique_name("big"))
            .collection::<Document>("c");
        let bytes: Vec<u8> = (0..15 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let payload = Binary {
            subtype: BinarySubtype::Generic,
            bytes: bytes.clone(),
        };
        coll.insert_one(doc! {"_id": 1, "payload": payload})
            .await
            .expect("insert 15 MiB");
        let back = coll
            .find_one(doc! {"_id": 1})
            .await
            .expect("find")
            .expect("document");
        match back.get("payload") {
            Some(Bson::Binary(b)) => {
                assert_eq!(b.bytes.len(), bytes.len());
                assert!(b.bytes == bytes, "payload changed on the way");
            }
            other => panic!("payload: {other:?}"),
        }
    })
    .await;
}

/// A raw OP_MSG whose length exceeds `maxMessageSizeBytes` gets 10334 and a closed
/// socket; a driver client next to it carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_max_size_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri()).start();
    within(HANG, "oversized message", async {
        let client = sluice.client().await;
        let hello = client
            .database("admin")
            .run_command(doc! {"hello": 1})
            .await
            .expect("hello");
        let max = hello
            .get_i32("maxMessageSizeBytes")
            .expect("maxMessageSizeBytes");
        let coll = client
            .database(&unique_name("oversize"))
            .collection::<Document>("c");
        coll.insert_one(doc! {"_id": 1}).await.expect("before");

        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", sluice.port()))
            .await
            .expect("connect");
        // The header announces max + 1 bytes; the start of a plausible body follows.
        let mut msg = Vec::new();
        for v in [max + 1, 91, 0, 2013] {
            msg.extend_from_slice(&v.to_le_bytes());
        }
        msg.extend_from_slice(&0u32.to_le_bytes()); // flags
        msg.push(0); // section kind 0
        msg.extend_from_slice(&(max - 21).to_le_bytes()); // document length
        msg.extend_from_slice(&[0x02; 1000]);
        s.write_all(&msg).await.expect("write");
        let mut header = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut header))
            .await
            .expect("no reply to an oversized message (is it being buffered?)")
            .expect("error reply header");
        let field =
            |i: usize| i32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        assert_eq!(field(2), 91, "responseTo");
        assert_eq!(field(3), 2013, "OP_MSG");
        let mut rest = vec![0u8; usize::try_from(field(0) - 16).expect("len")];
        s.read_exact(&mut rest).await.expect("error reply body");
        let doc = Document::from_reader(&rest[5..]).expect("error document");
        assert_eq!(doc.get_i32("code").expect("code"), 10334, "{doc}");
        assert_eq!(doc.get_f64("ok").expect("ok"), 0.0, "{doc}");
        let mut tail = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut tail))
            .await
            .expect("socket closed after the error");
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "socket still open after an oversized message: {n:?}"
        );

        // The other client is unaffected.
        assert!(coll
            .find_one(doc! {"_id": 1})
            .await
            .expect("after")
            .is_some());
        coll.insert_one(doc! {"_id": 2}).await.expect("write after");
    })
    .await;
}

/// The upstream goes away while clients run and comes back on the same port (with empty
/// `:memory:` storage): clients see MongoDB errors during the outage and recover alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_restart_while_clients_run() {
    let server = MongoServer::start(&[]);
    if !server.is_managed() {
        eprintln!("skipped: cannot restart an external MongoDB");
        return;
    }
    let sluice = MongoSluiceBuilder::new(server.uri())
        .max_pool_size(4)
        .pool_timeout("3s")
        .start();
    let uri = sluice.uri("serverSelectionTimeoutMS=5000");
    let name = unique_name("restart");
    let stop = Arc::new(AtomicBool::new(false));
    let restarted_at = Arc::new(Mutex::new(None::<Instant>));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let ok_total = Arc::new(AtomicU64::new(0));
    const CLIENTS: usize = 8;
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (uri, name, stop, restarted_at, errors, ok_total) = (
            uri.clone(),
            name.clone(),
            stop.clone(),
            restarted_at.clone(),
            errors.clone(),
            ok_total.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = Client::with_uri_str(&uri).await.expect("client");
            let coll = client.database(&name).collection::<Document>("c");
            let mut ok_after_restart = 0u64;
            let mut j = 0i64;
            while !stop.load(Ordering::Relaxed) {
                j += 1;
                let r = async {
                    coll.insert_one(doc! {"c": i as i64, "j": j}).await?;
                    coll.find_one(doc! {"c": i as i64, "j": j}).await
                }
                .await;
                match r {
                    Ok(_) => {
                        ok_total.fetch_add(1, Ordering::Relaxed);
                        if restarted_at.lock().expect("lock").is_some() {
                            ok_after_restart += 1;
                        }
                    }
                    Err(e) => {
                        let key = match server_code(&e) {
                            Some(code) => format!("code {code}"),
                            None => format!("driver: {}", e.kind),
                        };
                        *errors.lock().expect("lock").entry(key).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            ok_after_restart
        }));
    }
    let mut server = server;
    let outcome = within(Duration::from_secs(240), "restart under load", async {
        // Warm up: every client has done some work.
        let deadline = Instant::now() + Duration::from_secs(60);
        while ok_total.load(Ordering::Relaxed) < (CLIENTS * 5) as u64 {
            assert!(Instant::now() < deadline, "no progress before the restart");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let before = errors.lock().expect("lock").values().sum::<u64>();
        assert_eq!(before, 0, "errors before the restart: {:?}", errors.lock());
        let mut server = tokio::task::spawn_blocking(move || {
            server.stop();
            server
        })
        .await
        .expect("stop");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = errors.lock().expect("lock").values().sum::<u64>();
        server = tokio::task::spawn_blocking(move || {
            server.restart();
            server
        })
        .await
        .expect("restart");
        *restarted_at.lock().expect("lock") = Some(Instant::now());
        let ok_at_restart = ok_total.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while ok_total.load(Ordering::Relaxed) < ok_at_restart + (CLIENTS * 10) as u64 {
            assert!(
                Instant::now() < deadline,
                "clients did not recover: errors {:?}",
                errors.lock()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let every client get a few more rounds in.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let mut per_client = Vec::new();
        for t in tasks {
            per_client.push(t.await.expect("client task"));
        }
        (server, during, per_client)
    })
    .await;
    let (s, during, per_client) = outcome;
    server = s;
    let errors = errors.lock().expect("lock").clone();
    eprintln!("errors by kind: {errors:?}; successes after restart per client: {per_client:?}");
    assert!(
        during > 0,
        "no errors while the upstream was down: {errors:?}"
    );
    assert!(
        per_client.iter().all(|n| *n > 0),
        "a client never recovered: {per_client:?} errors {errors:?}"
    );
    // Errors are MongoDB error documents from Sluice, not broken client connections.
    assert!(
        errors.keys().all(|k| k.starts_with("code ")),
        "non-server errors reached the clients: {errors:?}"
    );
    let direct = server.direct_client().await;
    let count = direct
        .database(&name)
        .collection::<Document>("c")
        .count_documents(doc! {})
        .await
        .expect("count after restart");
    assert!(count > 0, "no writes reached the restarted server");
}

/// Throughput: 100 concurrent clients, each its own driver `Client`, doing an insert and a
/// find by `_id` in a loop for 10 s, directly and through Sluice (`max_pool_size = 20`).
///
/// `cargo test --release -p sluice-tests --test mongo_faults -- --ignored --nocapture mongo_throughput`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "load measurement; run by hand"]
async fn mongo_throughput() {
    let secs: u64 = std::env::var("SLUICE_MONGO_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let clients: usize = std::env::var("SLUICE_MONGO_LOAD_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let pool: u32 = std::env::var("SLUICE_MONGO_LOAD_POOL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    // Each run gets a fresh server: the Python SecantusDB slows down as its store and
    // oplog grow, so a second run on the same server measures far less (a 5x swing was
    // seen). SLUICE_MONGO_LOAD_SLUICE_FIRST=1 swaps the order.
    let direct_run = || async {
        let server = MongoServer::start(&[]);
        run_load(&format!("{}&maxPoolSize=1", server.uri()), clients, secs).await
    };
    let sluice_run = || async {
        let server = MongoServer::start(&[]);
        let sluice = MongoSluiceBuilder::new(server.uri())
            .max_pool_size(pool)
            .min_pool_size(pool)
            .start();
        run_load(&sluice.uri("maxPoolSize=1"), clients, secs).await
    };
    let (direct, through) =
        if std::env::var("SLUICE_MONGO_LOAD_SLUICE_FIRST").is_ok_and(|v| v == "1") {
            let through = sluice_run().await;
            (direct_run().await, through)
        } else {
            let direct = direct_run().await;
            (direct, sluice_run().await)
        };
    eprintln!(
        "mongo throughput, {clients} clients x {secs} s, max_pool_size {pool} \
         (insert + find by _id, each counted as one op):\n  \
         direct:        {:.0} ops/s ({} ops, {} errors)\n  \
         through sluice: {:.0} ops/s ({} ops, {} errors)\n  \
         ratio sluice/direct: {:.2}",
        direct.0,
        direct.1,
        direct.2,
        through.0,
        through.1,
        through.2,
        through.0 / direct.0
    );
    assert!(direct.1 > 0 && through.1 > 0);
}

/// Returns (ops/s, ops, errors).
async fn run_load(uri: &str, clients: usize, secs: u64) -> (f64, u64, u64) {
    let name = unique_name("load");
    let ops = Arc::new(AtomicU64::new(0));
    let errs = Arc::new(AtomicU64::new(0));
    // Connect everyone first so the timed window measures steady state.
    let mut colls = Vec::new();
    for _ in 0..clients {
        let client = Client::with_uri_str(uri).await.expect("client");
        client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .expect("ping");
        colls.push(client.database(&name).collection::<Document>("c"));
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (i, coll) in colls.into_iter().enumerate() {
        let (ops, errs) = (ops.clone(), errs.clone());
        tasks.push(tokio::spawn(async move {
            let mut j = 0i64;
            while Instant::now() < end {
                j += 1;
                let id = format!("{i}-{j}");
                match coll.insert_one(doc! {"_id": &id, "v": j}).await {
                    Ok(_) => ops.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errs.fetch_add(1, Ordering::Relaxed),
                };
                match coll.find_one(doc! {"_id": &id}).await {
                    Ok(Some(_)) => ops.fetch_add(1, Ordering::Relaxed),
                    _ => errs.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.expect("load task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = ops.load(Ordering::Relaxed);
    (n as f64 / elapsed, n, errs.load(Ordering::Relaxed))
}
