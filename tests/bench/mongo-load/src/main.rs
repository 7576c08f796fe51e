//! `mongo-load`: the load generator of `tests/bench/mongo_compare.sh`. It runs N concurrent
//! clients, each its own driver `Client` with one pooled connection (as N application
//! processes would be), and each repeating one find by `_id` (of a seeded document) and one
//! insert, for a fixed time after a warm-up. It prints one JSON line: round trips per second,
//! pairs per second, errors, per-pair latency p50/p99, and optionally the target server's
//! own count of open connections (`serverStatus.connections.current`), read halfway
//! through the measured time over a separate direct connection.
//!
//! `mongo-load --seed --uri URI` (re)creates the seeded collection and exits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bson::{doc, Bson, Document};
use clap::Parser;
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use rand::Rng as _;

/// Command-line arguments.
#[derive(Parser, Debug, Clone)]
#[command(about = "N clients doing find-by-_id + insert against a MongoDB-wire server")]
struct Args {
    /// Target URI (the server itself, or Sluice's listener).
    #[arg(long)]
    uri: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of load before measuring (connections opened, caches warm).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Seeded documents (`_id` 0..docs in `items`).
    #[arg(long, default_value_t = 10_000)]
    docs: i64,
    /// Seed the collection and exit.
    #[arg(long)]
    seed: bool,
    /// URI of the server itself, to read its open connection count halfway through.
    #[arg(long)]
    status_uri: Option<String>,
    /// Database used.
    #[arg(long, default_value = "bench")]
    db: String,
}

/// What one client did in the measured window.
#[derive(Default)]
struct Tally {
    pairs: u64,
    errors: u64,
    /// Latency of each measured find + insert pair, in microseconds.
    latencies: Vec<u32>,
}

/// A driver client with exactly one pooled connection.
async fn client(uri: &str) -> anyhow::Result<Client> {
    let mut options = ClientOptions::parse(uri).await.context("parse the URI")?;
    options.max_pool_size = Some(1);
    options.min_pool_size = Some(1);
    Ok(Client::with_options(options)?)
}

/// Drops and refills `items` with `docs` documents.
async fn seed(args: &Args) -> anyhow::Result<()> {
    let coll: Collection<Document> = client(&args.uri)
        .await?
        .database(&args.db)
        .collection("items");
    coll.drop().await.context("drop items")?;
    let batch: i64 = 1000;
    for start in (0..args.docs).step_by(batch as usize) {
        let docs = (start..(start + batch).min(args.docs))
            .map(|i| doc! {"_id": i, "name": format!("item {i}"), "qty": i % 97});
        coll.insert_many(docs).await.context("seed items")?;
    }
    Ok(())
}

/// One client: find + insert pairs until `end`, counting those that start after `from`.
async fn run_client(
    args: Arc<Args>,
    n: usize,
    from: Instant,
    end: Instant,
) -> anyhow::Result<Tally> {
    let client = client(&args.uri).await?;
    let db = client.database(&args.db);
    let items: Collection<Document> = db.collection("items");
    let log: Collection<Document> = db.collection("log");
    let mut tally = Tally::default();
    let mut i: i64 = 0;
    loop {
        let started = Instant::now();
        if started >= end {
            return Ok(tally);
        }
        let id = rand::thread_rng().gen_range(0..args.docs);
        let found = items.find_one(doc! {"_id": id}).await;
        let inserted = log
            .insert_one(doc! {"client": n as i64, "i": i, "item": id, "note": "load"})
            .await;
        i += 1;
        if started < from {
            continue;
        }
        match (found, inserted) {
            (Ok(Some(_)), Ok(_)) => {
                tally.pairs += 1;
                let us = started.elapsed().as_micros();
                tally.latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            _ => tally.errors += 1,
        }
    }
}

/// `serverStatus.connections.current` of the server at `uri`.
async fn server_connections(uri: &str) -> anyhow::Result<i64> {
    let status = client(uri)
        .await?
        .database("admin")
        .run_command(doc! {"serverStatus": 1})
        .await?;
    let current = status
        .get_document("connections")
        .ok()
        .and_then(|c| c.get("current"));
    match current {
        Some(Bson::Int32(n)) => Ok(i64::from(*n)),
        Some(Bson::Int64(n)) => Ok(*n),
        Some(Bson::Double(f)) => Ok(*f as i64),
        _ => bail!("serverStatus has no connections.current"),
    }
}

/// The `q` quantile of sorted `v`, in milliseconds.
fn quantile_ms(v: &[u32], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let at = ((v.len() - 1) as f64 * q).round() as usize;
    f64::from(v[at.min(v.len() - 1)]) / 1000.0
}

/// Runs the clients and prints the JSON line.
async fn load(args: Args) -> anyhow::Result<()> {
    let args = Arc::new(args);
    let from = Instant::now() + Duration::from_secs(args.warmup);
    let end = from + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.clients)
        .map(|n| tokio::spawn(run_client(args.clone(), n, from, end)))
        .collect();
    let status = args.status_uri.clone().map(|uri| {
        let halfway = from + Duration::from_secs(args.seconds) / 2;
        tokio::spawn(async move {
            tokio::time::sleep_until(halfway.into()).await;
            server_connections(&uri).await
        })
    });
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.context("client task")??;
        all.pairs += t.pairs;
        all.errors += t.errors;
        all.latencies.extend(t.latencies);
    }
    let upstream = match status {
        Some(task) => Some(task.await.context("status task")??),
        None => None,
    };
    all.latencies.sort_unstable();
    let secs = args.seconds as f64;
    let line = serde_json::json!({
        "clients": args.clients,
        "seconds": args.seconds,
        "pairs": all.pairs,
        "ops_per_s": (2 * all.pairs) as f64 / secs,
        "pairs_per_s": all.pairs as f64 / secs,
        "errors": all.errors,
        "p50_ms": quantile_ms(&all.latencies, 0.5),
        "p99_ms": quantile_ms(&all.latencies, 0.99),
        "server_connections": upstream,
    });
    println!("{line}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.docs <= 0 {
        bail!("--docs must be positive");
    }
    if args.seed {
        seed(&args).await
    } else {
        load(args).await
    }
}
