//! Exhaust cursors and the streaming monitoring protocol end to end, with the real sluice
//! program in front of the test server and pymongo as the client
//! (`tests/drivers/mongo_exhaust.py`, which counts what crosses the wire between pymongo
//! and Sluice).
//!
//! SecantusDB streams exhaust getMores itself (checked directly with pymongo: one
//! exhaust getMore, then a reply with `moreToCome` per batch), so the 100,000-document
//! cursor shows Sluice relaying a real stream, and the pool shows the connection going
//! back clean. A [`WireTap`] that clears `exhaustAllowed` plays a server that does not
//! stream: Sluice must still forward the flag and the cursor must still work. A client
//! that abandons an exhaust cursor mid-stream gets its upstream connection closed, not
//! pooled. Inside a transaction the stream uses the transaction's pinned connection. A
//! monitor in `serverMonitoringMode=stream` gets a stream of hello replies
//! from Sluice, which holds no upstream connection for it.

use std::time::Duration;

use sluice_tests::mongo::{run_pymongo, shared_mongo, MongoSluice, MongoSluiceBuilder};
use sluice_tests::unique_name;
use sluice_tests::wire_tap::{TapMode, WireTap};

const HANG: Duration = Duration::from_secs(300);

/// Runs one scenario of the pymongo script against `sluice`; returns what it counted.
async fn pymongo(sluice: &MongoSluice, scenario: &str) -> serde_json::Value {
    let args = [
        format!("127.0.0.1:{}", sluice.port()),
        sluice.admin_port().to_string(),
        unique_name("exh"),
        scenario.to_owned(),
    ];
    let context = || format!("\nsluice:\n{}", sluice.stderr());
    let stdout = run_pymongo("mongo_exhaust.py", &args, "ALL OK", HANG, context).await;
    let line = stdout.lines().next().unwrap_or_default();
    serde_json::from_str(line).expect("counts json")
}

/// The one mongo pool of `/admin/pool-stats`.
fn pool(sluice: &MongoSluice) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&sluice.admin_get("/admin/pool-stats")).expect("json");
    v["mongo_pools"][0].clone()
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaust_cursor_of_100k_documents_is_streamed() {
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri())
        .max_pool_size(2)
        .start();
    let counts = pymongo(&sluice, "cursor").await;
    // One exhaust getMore, then the rest of the 100,000 documents in batches of 1000 as
    // a stream: without streaming each batch would be a getMore of its own.
    assert!(num(&counts, "exhaust_getmore") >= 1, "{counts}");
    assert!(num(&counts, "streamed_batches") >= 90, "{counts}");
    assert!(num(&counts, "exhaust_getmore") <= 3, "{counts}");
    // The streaming connection went back to the pool, clean, once the stream ended.
    let p = pool(&sluice);
    assert_eq!(num(&p, "active"), 0, "{p}");
    assert!(num(&p, "idle") >= 1, "{p}");
    assert_eq!(
        p["counters"]["errors"]["server_lost"].as_u64(),
        Some(0),
        "{p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaust_flag_is_forwarded_to_a_server_that_does_not_stream() {
    let tap = WireTap::start(&shared_mongo().host(), TapMode::NoStreaming).await;
    let sluice = MongoSluiceBuilder::new(&format!("mongodb://{}/", tap.host()))
        .max_pool_size(2)
        .start();
    let counts = pymongo(&sluice, "cursor").await;
    assert!(tap.exhaust_requests() >= 1, "Sluice cleared exhaustAllowed");
    assert_eq!(num(&counts, "streamed_batches"), 0, "{counts}");
    let p = pool(&sluice);
    assert_eq!(num(&p, "active"), 0, "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_exhaust_stream_closes_its_upstream_connection() {
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri())
        .max_pool_size(1)
        .start();
    let counts = pymongo(&sluice, "early-close").await;
    assert!(num(&counts, "streamed_batches") >= 1, "{counts}");
    // The connection the stream was on had unread replies: closed, never pooled. The
    // only other connection (the inserts') was the same one, so the pool empties.
    let mut p = pool(&sluice);
    for _ in 0..100 {
        if num(&p, "size") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        p = pool(&sluice);
    }
    assert_eq!(num(&p, "size"), 0, "{p}");
    // And the pool still serves.
    let client = sluice.client().await;
    let db = client.database(&unique_name("after"));
    db.run_command(mongodb::bson::doc! {"ping": 1})
        .await
        .expect("ping after an abandoned stream");
}

/// Inside a transaction the stream runs over the transaction's pinned connection, which
/// stays pinned after it: the transaction's later insert and commit work, and nothing was
/// lost or left checked out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaust_cursor_inside_a_transaction_is_streamed_on_its_connection() {
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri())
        .max_pool_size(2)
        .start();
    let counts = pymongo(&sluice, "transaction").await;
    assert!(num(&counts, "exhaust_getmore") >= 1, "{counts}");
    assert!(num(&counts, "streamed_batches") >= 40, "{counts}");
    let p = pool(&sluice);
    assert_eq!(num(&p, "active"), 0, "{p}");
    assert_eq!(
        p["counters"]["errors"]["server_lost"].as_u64(),
        Some(0),
        "{p}"
    );
    assert!(
        p["counters"]["transactions_total"].as_u64() >= Some(1),
        "{p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_monitor_holds_no_upstream_connection() {
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri())
        .max_pool_size(2)
        .start();
    let counts = pymongo(&sluice, "monitor").await;
    // One streaming hello, then a reply every heartbeatFrequencyMS (500 ms) over 4.5 s.
    assert!(num(&counts, "exhaust_hello") >= 1, "{counts}");
    assert!(num(&counts, "exhaust_hello") <= 2, "{counts}");
    assert!(num(&counts, "streamed_hellos") >= 5, "{counts}");
    assert_eq!(num(&counts, "most_active_upstream"), 0, "{counts}");
}
