//! Replica sets through Sluice: following the primary when it goes away, electing by
//! `electionId` when two members claim to be primary, routing by `$readPreference` (modes,
//! tags, `maxStalenessSeconds`), with a secondary's cursor continued on the secondary.
//! Test servers are single-node SecantusDB instances behind relays that rewrite their
//! `hello` replies: one says it is a secondary, or lists the set's members, or carries an
//! `electionId` or an old `lastWriteDate` (their data and cursors stay real and their own,
//! which is what lets a test see where a request went).

use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::error::ErrorKind;
use mongodb::options::{ReadPreference, ReadPreferenceOptions, SelectionCriteria, TagSet};
use sluice_tests::mongo::{unchanged, HelloRewriter, MongoServer, MongoSluiceBuilder};
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
async fn read_preference_routes_reads_and_cursors_to_the_secondary_until_it_leaves() {
    let primary = MongoServer::start(&[]);
    let member = MongoServer::start(&[]);
    if !primary.is_managed() {
        eprintln!("skipped: needs servers this harness starts");
        return;
    }
    let relay = HelloRewriter::start(&member.host(), as_secondary).await;
    // The primary lists both members, as a real set's primary does (a host it does not
    // list is not a member).
    let front = HelloRewriter::start(&primary.host(), unchanged).await;
    front.set(doc! {"hosts": [front.host(), relay.host()]});
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
        front.host(),
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
    let names = pool_names(&sluice);
    assert!(names.iter().any(|n| n == "mongo"), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("mongo@")), "{names:?}");

    // The primary stops listing the secondary: it has left the set, its pool is closed
    // and no read reaches it any more.
    front.set(doc! {"hosts": [front.host()]});
    within(HANG, "member removed", async {
        logged(&sluice, "replica-set member removed", 1).await;
        let err = coll
            .count_documents(doc! {})
            .selection_criteria(secondary(None))
            .await
            .expect_err("no secondary is left");
        assert_eq!(code(&err), Some(133), "{err}");
    })
    .await;
    let names = pool_names(&sluice);
    assert!(!names.iter().any(|n| n.starts_with("mongo@")), "{names:?}");
}

/// The names of Sluice's MongoDB pools, from `/admin/pool-stats`.
fn pool_names(sluice: &sluice_tests::mongo::MongoSluice) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&sluice.admin_get("/admin/pool-stats")).expect("json");
    v["mongo_pools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

/// An `electionId` as a 6.0+ primary reports it: the term in the low bytes.
fn election(term: u8) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[0] = 0x7f;
    bytes[11] = term;
    ObjectId::from_bytes(bytes)
}

/// Waits until Sluice logged `needle` at least `times` times.
async fn logged(sluice: &sluice_tests::mongo::MongoSluice, needle: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sluice.stderr().matches(needle).count() < times {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} x{times} in:\n{}",
            sluice.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_primaries_are_decided_by_election_id_not_host_order() {
    let a = MongoServer::start(&[]);
    let b = MongoServer::start(&[]);
    if !a.is_managed() {
        eprintln!("skipped: needs servers this harness starts");
        return;
    }
    // Both are writable primaries of the same set; A comes first in the seed list, but B
    // was elected later.
    let ra = HelloRewriter::start(&a.host(), unchanged).await;
    let rb = HelloRewriter::start(&b.host(), unchanged).await;
    let hosts = vec![ra.host(), rb.host()];
    let claim =
        |term: u8| doc! {"hosts": hosts.clone(), "electionId": election(term), "setVersion": 1};
    ra.set(claim(1));
    rb.set(claim(2));
    let uri = format!(
        "mongodb://{},{}/?replicaSet=secantus&heartbeatFrequencyMS=500",
        ra.host(),
        rb.host()
    );
    let sluice = MongoSluiceBuilder::new(&uri)
        .max_pool_size(3)
        .pool_timeout("5s")
        .start();
    let client = sluice.client().await;
    let coll = client.database("rs").collection::<Document>("elect");
    within(HANG, "election", async {
        for n in 0..5 {
            coll.insert_one(doc! {"n": n}).await.expect("insert");
        }
        assert_eq!((count(&a, "elect").await, count(&b, "elect").await), (0, 5));
        // A, the stale primary, is not a secondary either: nothing serves a secondary read.
        let err = coll
            .count_documents(doc! {})
            .selection_criteria(secondary(None))
            .await
            .expect_err("a stale primary is never chosen");
        assert_eq!(code(&err), Some(133), "{err}");

        // A wins a newer election: writes move to A, B is now the stale one.
        ra.set(claim(3));
        logged(&sluice, "replica-set primary changed", 2).await;
        for n in 5..10 {
            coll.insert_one(doc! {"n": n}).await.expect("insert after");
        }
        assert_eq!((count(&a, "elect").await, count(&b, "elect").await), (5, 5));
    })
    .await;
    // The log names the election that made A primary.
    assert!(
        sluice.stderr().contains(&election(3).to_hex()),
        "{}",
        sluice.stderr()
    );
}

fn with_staleness(mode: &str, max: Duration) -> SelectionCriteria {
    let options = Some(ReadPreferenceOptions::builder().max_staleness(max).build());
    SelectionCriteria::ReadPreference(match mode {
        "secondary" => ReadPreference::Secondary { options },
        "nearest" => ReadPreference::Nearest { options },
        _ => ReadPreference::SecondaryPreferred { options },
    })
}

/// Says it is a secondary whose last write is 10 minutes old.
fn lagging_secondary(reply: &mut Document) {
    as_secondary(reply);
    let old = DateTime::from_millis(DateTime::now().timestamp_millis() - 600_000);
    reply.insert("lastWrite", doc! {"lastWriteDate": old});
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_staleness_seconds_skips_a_lagging_secondary() {
    let primary = MongoServer::start(&[]);
    let fresh = MongoServer::start(&[]);
    let stale = MongoServer::start(&[]);
    if !primary.is_managed() {
        eprintln!("skipped: needs servers this harness starts");
        return;
    }
    let front = HelloRewriter::start(&primary.host(), unchanged).await;
    let r_fresh = HelloRewriter::start(&fresh.host(), as_secondary).await;
    let r_stale = HelloRewriter::start(&stale.host(), lagging_secondary).await;
    front.set(doc! {"hosts": [front.host(), r_fresh.host(), r_stale.host()]});
    for (server, on) in [(&primary, "primary"), (&fresh, "fresh"), (&stale, "stale")] {
        server
            .direct_client()
            .await
            .database("rs")
            .collection::<Document>("lag")
            .insert_one(doc! {"on": on})
            .await
            .expect("seed");
    }
    let uri = format!(
        "mongodb://{},{},{}/?replicaSet=secantus&heartbeatFrequencyMS=500",
        front.host(),
        r_fresh.host(),
        r_stale.host()
    );
    let sluice = MongoSluiceBuilder::new(&uri).max_pool_size(3).start();
    let client = sluice.client().await;
    let coll = client.database("rs").collection::<Document>("lag");
    let read = |criteria: SelectionCriteria| {
        let coll = coll.clone();
        async move {
            coll.find_one(doc! {})
                .selection_criteria(criteria)
                .await
                .map(|d| d.and_then(|d| d.get_str("on").ok().map(str::to_owned)))
        }
    };
    within(HANG, "max staleness", async {
        // Without a limit both secondaries serve reads; with 120 s only the fresh one.
        let mut seen = Vec::new();
        for _ in 0..20 {
            seen.push(
                read(secondary(None))
                    .await
                    .expect("read")
                    .unwrap_or_default(),
            );
        }
        assert!(
            seen.iter().all(|on| on == "fresh" || on == "stale"),
            "{seen:?}"
        );
        for mode in ["secondary", "nearest", "secondaryPreferred"] {
            for _ in 0..10 {
                let on = read(with_staleness(mode, Duration::from_secs(120))).await;
                let on = on.expect("read with maxStalenessSeconds");
                assert_ne!(on.as_deref(), Some("stale"), "{mode}");
            }
        }
        // A limit under 90 s is refused the way mongos refuses it.
        let err = read(with_staleness("secondary", Duration::from_secs(30)))
            .await
            .expect_err("maxStalenessSeconds 30");
        assert_eq!(code(&err), Some(215), "{err}");
        assert!(err.to_string().contains("90"), "{err}");

        // The fresh secondary falls behind too: secondary reads with a limit find no
        // member, secondaryPreferred ones go to the primary.
        r_fresh.set(doc! {"lastWrite": {"lastWriteDate": DateTime::from_millis(
            DateTime::now().timestamp_millis() - 900_000,
        )}});
        let deadline = Instant::now() + Duration::from_secs(30);
        let err = loop {
            match read(with_staleness("secondary", Duration::from_secs(120))).await {
                Err(e) => break e,
                Ok(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "the fresh secondary never fell behind"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        assert_eq!(code(&err), Some(133), "{err}");
        let on = read(with_staleness(
            "secondaryPreferred",
            Duration::from_secs(120),
        ))
        .await;
        assert_eq!(on.expect("fallback").as_deref(), Some("primary"));
        // Without a limit the lagging secondaries still serve.
        let on = read(secondary(None)).await.expect("read without limit");
        assert_ne!(on.as_deref(), Some("primary"));
    })
    .await;
}
