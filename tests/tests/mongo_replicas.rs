//! Replica sets through Sluice: following the primary when it goes away, and routing by
//! `$readPreference` (modes and tags), with a secondary's cursor continued on the
//! secondary. Test servers are single-node SecantusDB instances; one of them is made to
//! say it is a secondary by a relay that rewrites its `hello` replies (its data and
//! cursors stay real and its own, which is what lets the test see where a read went).

use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::options::{ReadPreference, ReadPreferenceOptions, SelectionCriteria, TagSet};
use sluice_tests::mongo::{HelloRewriter, MongoServer, MongoSluiceBuilder};
use sluice_tests::within;

const HANG: Duration = Duration::from_secs(120);

fn code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

async fn count(server: &MongoServer, coll: &str) -> u64 {
    server
        .direct_client()
        .await
        .database("rs")
        .collection::<Document>(coll)
        .count_documents(doc! {})
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_follows_the_new_primary() {
    let mut a = MongoServer::start(&[]);
    let b = MongoServer::start(&[]);
    if !a.is_managed() {
        eprintln!("skipped: needs two servers this harness starts and stops");
        return;
    }
    // Both answer as writable members; A comes first in the seed list.
    let uri = format!(
        "mongodb://{},{}/?heartbeatFrequencyMS=500",
        a.host(),
        b.host()
    );
    let sluice = MongoSluiceBuilder::new(&uri)
        .max_pool_size(3)
        .pool_timeout("5s")
        .start();
    let client = sluice.client().await;
    let coll = client.database("rs").collection::<Document>("failover");
    within(HANG, "failover", async {
        coll.insert_one(doc! {"n": 1}).await.expect("insert before");
        assert_eq!(
            (count(&a, "failover").await, count(&b, "failover").await),
            (1, 0)
        );

        a.stop();
        // Writes fail with retryable errors for a moment, then land on B.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut errors = 0;
        loop {
            match coll.insert_one(doc! {"n": 2}).await {
                Ok(_) => break,
                Err(e) => {
                    errors += 1;
                    assert!(
                        Instant::now() < deadline,
                        "no failover after {errors} errors: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        assert_eq!(count(&b, "failover").await, 1);
        let found = coll
            .find_one(doc! {"n": 2})
            .await
            .expect("read after failover");
        assert!(found.is_some());
    })
    .await;
    assert!(
        sluice.stderr().contains("replica-set primary changed"),
        "{}",
        sluice.stderr()
    );
}

fn as_secondary(reply: &mut Document) {
    reply.insert("isWritablePrimary", false);
    reply.insert("ismaster", false);
    reply.insert("secondary", true);
    reply.insert("tags", doc! {"dc": "west"});
    reply.remove("hosts");
}

fn secondary(tags: Option<Document>) -> SelectionCriteria {
    let options = tags.map(|t| {
        let set: TagSet = t
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
            .collect();
        ReadPreferenceOptions::builder().tag_sets(vec![set]).build()
    });
    SelectionCriteria::ReadPreference(ReadPreference::Secondary { options })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_preference_routes_reads_and_cursors_to_the_secondary() {
    let primary = MongoServer::start(&[]);
    let member = MongoServer::start(&[]);
    if !primary.is_managed() {
        eprintln!("skipped: needs servers this harness starts");
        return;
    }
    let relay = HelloRewriter::start(&member.host(), as_secondary).await;
    // Different data on each, so every read shows where it went.
    let on_member: Vec<Document> = (0..25).map(|i| doc! {"i": i, "on": "secondary"}).collect();
    member
        .direct_client()
        .await
        .database("rs")
        .collection::<Document>("where")
        .insert_many(on_member)
        .await
        .expect("seed secondary");
    primary
        .direct_client()
        .await
        .database("rs")
        .collection::<Document>("where")
        .insert_one(doc! {"i": 0, "on": "primary"})
        .await
        .expect("seed primary");

    let uri = format!(
        "mongodb://{},{}/?replicaSet=secantus&heartbeatFrequencyMS=500",
        primary.host(),
        relay.host()
    );
    let sluice = MongoSluiceBuilder::new(&uri).max_pool_size(3).start();
    let client = sluice.client().await;
    let coll = client.database("rs").collection::<Document>("where");
    within(HANG, "read preference", async {
        // Default (primary).
        let docs: Vec<Document> = coll
            .find(doc! {})
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("docs");
        assert_eq!(docs.len(), 1, "{docs:?}");
        assert_eq!(docs[0].get_str("on"), Ok("primary"));

        // Secondary, read in batches of 10: the getMores must reach the member that holds
        // the cursor (the primary does not know it).
        let docs: Vec<Document> = coll
            .find(doc! {})
            .batch_size(10)
            .selection_criteria(secondary(None))
            .await
            .expect("find on secondary")
            .try_collect()
            .await
            .expect("cursor on secondary");
        assert_eq!(docs.len(), 25);
        assert!(docs.iter().all(|d| d.get_str("on") == Ok("secondary")));

        // Matching tags reach the secondary; unmatched tags: secondaryPreferred falls back
        // to the primary, secondary is refused with FailedToSatisfyReadPreference.
        let n = coll
            .count_documents(doc! {})
            .selection_criteria(secondary(Some(doc! {"dc": "west"})))
            .await
            .expect("tagged count");
        assert_eq!(n, 25);
        let north: TagSet = [("dc".to_owned(), "north".to_owned())]
            .into_iter()
            .collect();
        let preferred = SelectionCriteria::ReadPreference(ReadPreference::SecondaryPreferred {
            options: Some(
                ReadPreferenceOptions::builder()
                    .tag_sets(vec![north])
                    .build(),
            ),
        });
        let n = coll
            .count_documents(doc! {})
            .selection_criteria(preferred)
            .await
            .expect("fallback count");
        assert_eq!(n, 1);
        let err = coll
            .count_documents(doc! {})
            .selection_criteria(secondary(Some(doc! {"dc": "north"})))
            .await
            .expect_err("no member has dc=north");
        assert_eq!(code(&err), Some(133), "{err}");

        // Writes still go to the primary.
        coll.insert_one(doc! {"i": 1, "on": "primary"})
            .await
            .expect("insert");
        assert_eq!(count(&primary, "where").await, 2);
        assert_eq!(count(&member, "where").await, 25);
    })
    .await;
    let v: serde_json::Value =
        serde_json::from_str(&sluice.admin_get("/admin/pool-stats")).expect("json");
    let names: Vec<&str> = v["mongo_pools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"mongo"), "{v}");
    assert!(names.iter().any(|n| n.starts_with("mongo@")), "{v}");
}
