//! The MongoDB side end to end: SecantusDB (or `SLUICE_TEST_MONGODB_URI`) behind the real
//! sluice program, driven by the Rust `mongodb` driver, pymongo and raw OP_MSG/OP_QUERY.

use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::options::FindOptions;
use mongodb::Client;
use sluice_tests::mongo::{run_pymongo, shared_mongo, MongoServer, MongoSluiceBuilder};
use sluice_tests::{metric_value, unique_name, within};

const HANG: Duration = Duration::from_secs(120);

fn server_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|w| w.first())
            .map(|w| w.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_cursor_aggregation_and_errors() {
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri()).start();
    within(HANG, "crud", async {
        let client = sluice.client().await;
        let db = client.database(&unique_name("crud"));
        let coll = db.collection::<Document>("c");
        coll.insert_one(doc! {"_id": 1, "v": "a"})
            .await
            .expect("insert");
        let found = coll
            .find_one(doc! {"_id": 1})
            .await
            .expect("find")
            .expect("doc");
        assert_eq!(found.get_str("v").expect("v"), "a");
        let r = coll
            .update_one(doc! {"_id": 1}, doc! {"$set": {"v": "b"}})
            .await
            .expect("update");
        assert_eq!(r.modified_count, 1);
        let r = coll.delete_one(doc! {"_id": 1}).await.expect("delete");
        assert_eq!(r.deleted_count, 1);

        // 1,000 documents read 10 at a time: 100 getMores.
        let docs: Vec<Document> = (0..1000).map(|i| doc! {"_id": i, "n": i}).collect();
        coll.insert_many(docs).await.expect("insert_many");
        let cursor = coll
            .find(doc! {})
            .with_options(FindOptions::builder().batch_size(10).build())
            .await
            .expect("find");
        let all: Vec<Document> = cursor.try_collect().await.expect("cursor");
        assert_eq!(all.len(), 1000);

        let agg: Vec<Document> = coll
            .aggregate(vec![doc! {"$group": {"_id": null, "sum": {"$sum": "$n"}}}])
            .await
            .expect("aggregate")
            .try_collect()
            .await
            .expect("agg cursor");
        let sum = agg[0].get("sum").expect("sum");
        assert!(
            sum.as_i32() == Some(499_500) || sum.as_i64() == Some(499_500),
            "{sum:?}"
        );

        let uniq = db.collection::<Document>("u");
        uniq.create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"k": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .expect("index");
        uniq.insert_one(doc! {"k": 1}).await.expect("first");
        let dup = uniq.insert_one(doc! {"k": 1}).await.expect_err("duplicate");
        assert_eq!(server_code(&dup), Some(11000), "{dup:?}");

        let unknown = db
            .run_command(doc! {"noSuchCommand": 1})
            .await
            .expect_err("unknown");
        assert_eq!(server_code(&unknown), Some(59), "{unknown:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_and_abort_with_isolation() {
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri()).start();
    within(HANG, "transactions", async {
        let client = sluice.client().await;
        let other = Client::with_uri_str(sluice.uri(""))
            .await
            .expect("second client");
        let name = unique_name("txn");
        let coll = client.database(&name).collection::<Document>("t");
        let seen = other.database(&name).collection::<Document>("t");
        coll.insert_one(doc! {"_id": 0})
            .await
            .expect("create collection");

        let mut session = client.start_session().await.expect("session");
        session.start_transaction().await.expect("start");
        coll.insert_one(doc! {"_id": 1})
            .session(&mut session)
            .await
            .expect("insert in txn");
        assert!(
            seen.find_one(doc! {"_id": 1})
                .await
                .expect("peek")
                .is_none(),
            "uncommitted write visible to another client"
        );
        session.commit_transaction().await.expect("commit");
        assert!(seen
            .find_one(doc! {"_id": 1})
            .await
            .expect("after")
            .is_some());

        session.start_transaction().await.expect("start 2");
        coll.insert_one(doc! {"_id": 2})
            .session(&mut session)
            .await
            .expect("insert 2");
        session.abort_transaction().await.expect("abort");
        assert!(seen
            .find_one(doc! {"_id": 2})
            .await
            .expect("aborted")
            .is_none());
        let stats = sluice.admin_get("/admin/pool-stats");
        let v: serde_json::Value = serde_json::from_str(&stats).expect("json");
        assert!(
            v["mongo_pools"][0]["counters"]["transactions_total"].as_u64() >= Some(2),
            "{v}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_share_five_upstream_connections() {
    // Its own server, so the connection count is not disturbed by other tests.
    let server = MongoServer::start(&[]);
    let direct = server.direct_client().await;
    let baseline = MongoServer::current_connections(&direct).await;
    let sluice = MongoSluiceBuilder::new(server.uri())
        .max_pool_size(5)
        .start();
    let uri = sluice.uri("maxPoolSize=2");
    let name = unique_name("many");
    within(Duration::from_secs(300), "100 clients", async {
        let mut tasks = Vec::new();
        for i in 0..100 {
            let uri = uri.clone();
            let name = name.clone();
            tasks.push(tokio::spawn(async move {
                let client = Client::with_uri_str(&uri).await.expect("client");
                let coll = client.database(&name).collection::<Document>("c");
                for j in 0..5 {
                    coll.insert_one(doc! {"c": i, "j": j}).await.expect("insert");
                    coll.find_one(doc! {"c": i}).await.expect("find");
                }
            }));
        }
        let mut peak = 0;
        while tasks.iter().any(|t| !t.is_finished()) {
            let now = MongoServer::current_connections(&direct).await;
            peak = peak.max(now);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for t in tasks {
            t.await.expect("client task");
        }
        let count = direct
            .database(&name)
            .collection::<Document>("c")
            .count_documents(doc! {})
            .await
            .expect("count");
        assert_eq!(count, 500);
        assert!(
            peak - baseline <= 5,
            "serverStatus.connections.current peaked at {peak} (baseline {baseline}): Sluice used more than 5"
        );
        let v: serde_json::Value =
            serde_json::from_str(&sluice.admin_get("/admin/pool-stats")).expect("json");
        assert!(v["mongo_pools"][0]["size"].as_u64() <= Some(5), "{v}");
        assert!(v["mongo_pools"][0]["counters"]["server_connects_total"].as_u64() <= Some(5), "{v}");
    })
    .await;
}

/// Runs `n` concurrent insert+find pairs through `client` and returns the pool's peak
/// `size` seen in `/admin/pool-stats` while they ran.
async fn burst(sluice: &sluice_tests::mongo::MongoSluice, client: &Client, n: usize) -> u64 {
    let coll = client.database("reload").collection::<Document>("c");
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let coll = coll.clone();
            tokio::spawn(async move {
                for j in 0..5 {
                    coll.insert_one(doc! {"i": i as i64, "j": j})
                        .await
                        .expect("insert");
                    coll.find_one(doc! {"i": i as i64}).await.expect("find");
                }
            })
        })
        .collect();
    let mut peak = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        let v: serde_json::Value =
            serde_json::from_str(&sluice.admin_get("/admin/pool-stats")).expect("json");
        peak = peak.max(v["mongo_pools"][0]["size"].as_u64().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.expect("burst task");
    }
    peak
}

fn pool_stats(sluice: &sluice_tests::mongo::MongoSluice) -> serde_json::Value {
    serde_json::from_str(&sluice.admin_get("/admin/pool-stats")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_resizes_the_pool_online() {
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri())
        .max_pool_size(2)
        .start();
    let client = Client::with_uri_str(sluice.uri("maxPoolSize=30"))
        .await
        .expect("client");
    within(HANG, "reload grow and shrink", async {
        let peak = burst(&sluice, &client, 24).await;
        assert!(peak <= 2, "peak {peak} over max_pool_size 2");

        // Grow while the client stays connected.
        let reply = sluice.reload_with(&[("max_pool_size", "6")]);
        assert!(reply.contains("reloaded"), "{reply}");
        assert_eq!(pool_stats(&sluice)["mongo_max"].as_u64(), Some(6));
        let peak = burst(&sluice, &client, 24).await;
        assert!(
            (3..=6).contains(&peak),
            "after growing to 6 the pool peaked at {peak}"
        );

        // Shrink: surplus connections close as they come back; requests keep working.
        let reply = sluice.reload_with(&[("max_pool_size", "1"), ("min_pool_size", "0")]);
        assert!(reply.contains("reloaded"), "{reply}");
        let peak_during = burst(&sluice, &client, 8).await;
        assert!(peak_during <= 6, "{peak_during}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v = pool_stats(&sluice);
            if v["mongo_pools"][0]["size"].as_u64() <= Some(1) {
                assert_eq!(v["mongo_max"].as_u64(), Some(1), "{v}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pool did not shrink: {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let peak = burst(&sluice, &client, 8).await;
        assert!(peak <= 1, "after shrinking to 1 the pool peaked at {peak}");

        // A bad file is refused and the running pool kept.
        let reply = sluice.reload_with(&[("max_pool_size", "0")]);
        assert!(reply.contains("max_pool_size"), "{reply}");
        assert_eq!(pool_stats(&sluice)["mongo_max"].as_u64(), Some(1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_timeout_is_a_mongodb_error() {
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri())
        .max_pool_size(1)
        .pool_timeout("1s")
        .start();
    within(HANG, "pool timeout", async {
        let client = sluice.client().await;
        let name = unique_name("timeout");
        let coll = client.database(&name).collection::<Document>("t");
        coll.insert_one(doc! {"_id": 0}).await.expect("setup");
        // An open transaction pins the only upstream connection.
        let mut session = client.start_session().await.expect("session");
        session.start_transaction().await.expect("start");
        coll.insert_one(doc! {"_id": 1})
            .session(&mut session)
            .await
            .expect("insert in txn");
        let other = Client::with_uri_str(sluice.uri("retryReads=false&retryWrites=false"))
            .await
            .expect("other");
        let err = other
            .database(&name)
            .run_command(doc! {"count": "t"})
            .await
            .expect_err("no connection left");
        assert_eq!(server_code(&err), Some(202), "{err:?}");
        assert!(err.to_string().contains("timed out"), "{err}");
        session.abort_transaction().await.expect("abort");
        other
            .database(&name)
            .run_command(doc! {"count": "t"})
            .await
            .expect("works again after the pin is released");
        let metrics = sluice.admin_get("/metrics");
        let labels = [
            ("database", "mongo"),
            ("user", ""),
            ("pool", "mongo"),
            ("kind", "timeout"),
        ];
        assert_eq!(
            metric_value(&metrics, "sluice_pool_errors_total", &labels),
            1.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_scram_auth_accepted_and_rejected() {
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri())
        .user("app", "s3cret")
        .start();
    within(HANG, "client auth", async {
        let good = Client::with_uri_str(format!(
            "mongodb://app:s3cret@127.0.0.1:{}/?authSource=admin",
            sluice.port()
        ))
        .await
        .expect("client");
        good.database("x")
            .run_command(doc! {"ping": 1})
            .await
            .expect("authenticated ping");
        let bad = Client::with_uri_str(format!(
            "mongodb://app:wrong@127.0.0.1:{}/?authSource=admin&serverSelectionTimeoutMS=3000",
            sluice.port()
        ))
        .await
        .expect("client");
        let err = bad
            .database("x")
            .run_command(doc! {"ping": 1})
            .await
            .expect_err("wrong password");
        assert!(
            matches!(err.kind.as_ref(), ErrorKind::Authentication { .. }),
            "{err:?}"
        );
        let anonymous = Client::with_uri_str(sluice.uri("")).await.expect("client");
        let err = anonymous
            .database("x")
            .collection::<Document>("c")
            .find_one(doc! {})
            .await
            .expect_err("not logged in");
        assert_eq!(server_code(&err), Some(13), "{err:?}");
    })
    .await;
}

/// Raw wire: legacy OP_QUERY isMaster, an OP_MSG hello, and a malformed message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_is_master_and_malformed_messages() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri()).start();
    within(HANG, "raw wire", async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", sluice.port()))
            .await
            .expect("connect");
        let mut query = Vec::new();
        doc! {"isMaster": 1, "helloOk": true}
            .to_writer(&mut query)
            .expect("bson");
        let mut body = Vec::new();
        body.extend_from_slice(&0i32.to_le_bytes());
        body.extend_from_slice(b"admin.$cmd\0");
        body.extend_from_slice(&0i32.to_le_bytes());
        body.extend_from_slice(&(-1i32).to_le_bytes());
        body.extend_from_slice(&query);
        let reply = round_trip(&mut s, 2004, 77, &body).await;
        assert_eq!(reply.1, 1, "OP_REPLY");
        assert_eq!(reply.0, 77, "responseTo");
        let doc = Document::from_reader(&reply.2[20..]).expect("reply doc");
        assert_eq!(doc.get_str("msg").expect("msg"), "isdbgrid");
        assert!(doc.get_bool("ismaster").expect("ismaster"));
        assert!(doc.get("hosts").is_none() && doc.get("setName").is_none());

        // An OP_MSG whose document length runs past the message.
        let mut bad = vec![0, 0, 0, 0, 0];
        bad.extend_from_slice(&1000i32.to_le_bytes());
        bad.extend_from_slice(&[0; 4]);
        let reply = round_trip(&mut s, 2013, 78, &bad).await;
        assert_eq!(reply.0, 78);
        let doc = Document::from_reader(&reply.2[5..]).expect("error doc");
        assert_eq!(doc.get_i32("code").expect("code"), 9, "{doc}");
        assert_eq!(doc.get_f64("ok").expect("ok"), 0.0);

        async fn round_trip(
            s: &mut tokio::net::TcpStream,
            op: i32,
            id: i32,
            body: &[u8],
        ) -> (i32, i32, Vec<u8>) {
            let len = i32::try_from(16 + body.len()).expect("len");
            let mut msg = Vec::new();
            for v in [len, id, 0, op] {
                msg.extend_from_slice(&v.to_le_bytes());
            }
            msg.extend_from_slice(body);
            s.write_all(&msg).await.expect("write");
            let mut header = [0u8; 16];
            s.read_exact(&mut header).await.expect("read header");
            let field = |i: usize| {
                i32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
            };
            let mut rest = vec![0u8; usize::try_from(field(0) - 16).expect("len")];
            s.read_exact(&mut rest).await.expect("read body");
            (field(2), field(3), rest)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymongo_through_sluice() {
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri())
        .max_pool_size(3)
        .start();
    let args = [sluice.uri(""), unique_name("py")];
    run_pymongo("mongo_pymongo.py", &args, "ALL OK", HANG, String::new).await;
}

/// Sluice's `hello` gossips the upstream's newest `$clusterTime` and `operationTime`, as a
/// mongos's does, when the deployment has one (SecantusDB is a replica set): a client's
/// first command then has a cluster time to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_carries_the_upstreams_newest_cluster_time() {
    let mongo = shared_mongo();
    let sluice = MongoSluiceBuilder::new(mongo.uri()).start();
    within(HANG, "cluster time", async {
        let direct = mongo.direct_client().await;
        let shown = direct
            .database("admin")
            .run_command(doc! {"hello": 1})
            .await
            .expect("direct hello");
        assert!(
            shown.get_document("$clusterTime").is_ok(),
            "the upstream gossips no cluster time: {shown}"
        );
        let client = sluice.client().await;
        let db = client.database(&unique_name("clock"));
        let written = db
            .run_command(doc! {"insert": "c", "documents": [{"v": 1}]})
            .await
            .expect("insert");
        let wrote_at = written
            .get_document("$clusterTime")
            .and_then(|c| c.get_timestamp("clusterTime"))
            .unwrap_or_else(|e| panic!("{e}: {written}"));
        let hello = db
            .run_command(doc! {"hello": 1})
            .await
            .expect("hello through sluice");
        assert_eq!(hello.get_str("msg").ok(), Some("isdbgrid"), "{hello}");
        let gossiped = hello
            .get_document("$clusterTime")
            .unwrap_or_else(|e| panic!("{e}: {hello}"));
        let at = gossiped
            .get_timestamp("clusterTime")
            .unwrap_or_else(|e| panic!("{e}: {hello}"));
        assert!(
            (at.time, at.increment) >= (wrote_at.time, wrote_at.increment),
            "hello's cluster time {at:?} is older than the insert's {wrote_at:?}"
        );
        assert!(gossiped.get_document("signature").is_ok(), "{hello}");
        assert_eq!(
            hello.get_timestamp("operationTime").ok(),
            Some(at),
            "{hello}"
        );
    })
    .await;
}
