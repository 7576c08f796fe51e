//! `/metrics` per replica-set member: each member's pool exports its connections (open,
//! idle, active), its waits and its errors with `member` and `role` labels, and the role
//! follows the heartbeats. The set is a SecantusDB primary and a second SecantusDB behind
//! a relay that makes it answer `hello` as a secondary (as in `mongo_replicas.rs`).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::{ReadPreference, SelectionCriteria};
use sluice_tests::mongo::{unchanged, HelloRewriter, MongoServer, MongoSluice, MongoSluiceBuilder};
use sluice_tests::{metric_value as one, metric_values as values, within};

const HANG: Duration = Duration::from_secs(120);

fn as_secondary(reply: &mut Document) {
    reply.insert("isWritablePrimary", false);
    reply.insert("ismaster", false);
    reply.insert("secondary", true);
    reply.remove("hosts");
}

/// Polls `/metrics` until `ok` holds (at most 30 s); returns that scrape.
async fn scrape_until(sluice: &MongoSluice, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = sluice.admin_get("/metrics");
        if ok(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "never {what}:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_member_pool_exports_connections_waits_and_errors() {
    let primary = MongoServer::start(&[]);
    let mut member = MongoServer::start(&[]);
    if !member.is_managed() {
        eprintln!("skipped: needs servers this harness starts and stops");
        return;
    }
    let relay = HelloRewriter::start(&member.host(), as_secondary).await;
    let front = HelloRewriter::start(&primary.host(), unchanged).await;
    front.set(doc! {"hosts": [front.host(), relay.host()]});
    let docs: Vec<Document> = (0..10).map(|i| doc! {"i": i}).collect();
    member
        .direct_client()
        .await
        .database("rs")
        .collection::<Document>("m")
        .insert_many(docs)
        .await
        .expect("seed the secondary");
    let uri = format!(
        "mongodb://{},{}/?replicaSet=secantus&heartbeatFrequencyMS=500",
        front.host(),
        relay.host()
    );
    let sluice = MongoSluiceBuilder::new(&uri).max_pool_size(3).start();
    let client = sluice.client().await;
    let coll = client.database("rs").collection::<Document>("m");
    let pool = format!("mongo@{}", relay.host());
    let on_member = [
        ("pool", pool.as_str()),
        ("member", &relay.host()),
        ("role", "secondary"),
    ];
    let on_primary = [
        ("pool", "mongo"),
        ("member", &front.host()),
        ("role", "primary"),
    ];
    let secondary = SelectionCriteria::ReadPreference(ReadPreference::Secondary { options: None });
    let mut cursor = within(HANG, "reads and writes", async {
        coll.insert_one(doc! {"i": 100})
            .await
            .expect("insert on the primary");
        // A cursor left open on the secondary: its getMore must go back there later.
        let mut cursor = coll
            .find(doc! {})
            .batch_size(2)
            .selection_criteria(secondary)
            .await
            .expect("find on the secondary");
        assert!(cursor.next().await.is_some_and(|d| d.is_ok()));
        cursor
    })
    .await;

    let metrics = sluice.admin_get("/metrics");
    for labels in [&on_member, &on_primary] {
        let open = one(&metrics, "sluice_pool_open_connections", labels);
        assert!(
            (1.0..=3.0).contains(&open),
            "{labels:?}: {open} open\n{metrics}"
        );
        let states: f64 = ["idle", "active"]
            .iter()
            .map(|s| {
                one(
                    &metrics,
                    "sluice_pool_connections",
                    &[labels, &[("state", *s)][..]].concat(),
                )
            })
            .sum();
        assert_eq!(states, open, "{labels:?}: idle + active\n{metrics}");
        assert_eq!(one(&metrics, "sluice_pool_waiting_clients", labels), 0.0);
        assert!(one(&metrics, "sluice_pool_wait_seconds_count", labels) >= 1.0);
        let errors: f64 = values(&metrics, "sluice_pool_errors_total", labels)
            .iter()
            .sum();
        assert_eq!(errors, 0.0, "{labels:?}\n{metrics}");
    }

    // The secondary goes down: its heartbeats fail (role unknown), and the cursor's next
    // getMore fails on its pool, counted there and not on the primary's.
    member.stop();
    within(HANG, "getMore on a stopped member", async {
        while let Some(Ok(_)) = cursor.next().await {}
    })
    .await;
    let member_labels = [("pool", pool.as_str()), ("member", &relay.host())];
    let metrics = scrape_until(&sluice, "an unknown member with errors", |m| {
        let unknown = [&member_labels[..], &[("role", "unknown")]].concat();
        values(m, "sluice_pool_errors_total", &unknown)
            .iter()
            .sum::<f64>()
            >= 1.0
    })
    .await;
    let lost = [&on_primary[..], &[("kind", "server_lost")]].concat();
    assert_eq!(
        one(&metrics, "sluice_pool_errors_total", &lost),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        values(
            &metrics,
            "sluice_pool_open_connections",
            &[("role", "secondary")]
        ),
        Vec::<f64>::new(),
        "no pool is still labelled secondary\n{metrics}"
    );
}
