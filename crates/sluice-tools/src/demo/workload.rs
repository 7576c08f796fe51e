//! The demo's workload: many concurrent clients, each connecting and running short
//! transactions, while a monitor connection samples the server connections in use.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::{failed, Stop, ROWS, TABLE};
use crate::cli::DemoArgs;
use crate::pg::{connect, pg_error};

/// Counts the client backends on the monitored database (other than the counting one).
const COUNT_BACKENDS: &str = "SELECT count(*) FROM pg_stat_activity \
     WHERE datname = current_database() AND backend_type = 'client backend' \
     AND pid <> pg_backend_pid()";

/// The client backends on the monitored database now.
pub(super) async fn backends(monitor: &tokio_postgres::Config) -> Result<i64, Stop> {
    let mon = connect(monitor)
        .await
        .map_err(|e| failed(format!("monitor connection: {}", pg_error(&e))))?;
    mon.query_one(COUNT_BACKENDS, &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| failed(format!("reading pg_stat_activity: {}", pg_error(&e))))
}

/// Waits (up to 5 s) until the backends of a finished run have exited, so the next run
/// starts from `idle`.
pub(super) async fn settle(monitor: &tokio_postgres::Config, idle: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match backends(monitor).await {
            Ok(n) if n > idle => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => return,
        }
    }
}

/// What one run measured.
pub(super) struct RunStats {
    /// Most server connections open at once (beyond those open before the run).
    pub(super) peak_server_connections: i64,
    /// Connect + first query, per client that got that far.
    pub(super) acquire: Vec<Duration>,
    /// Transactions committed.
    pub(super) committed: u64,
    /// Failed connects, queries and transactions.
    pub(super) errors: u64,
    /// The first of those errors.
    pub(super) first_error: Option<String>,
    /// Wall-clock time of the run.
    pub(super) elapsed: Duration,
}

impl RunStats {
    /// Committed transactions per second.
    pub(super) fn throughput(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`th percentile (nearest rank) of the acquisition times.
    pub(super) fn acquire_percentile(&self, p: usize) -> Option<Duration> {
        let mut v = self.acquire.clone();
        if v.is_empty() {
            return None;
        }
        v.sort();
        let rank = (p * v.len()).div_ceil(100).clamp(1, v.len());
        Some(v[rank - 1])
    }
}

/// What one client did.
#[derive(Default)]
struct ClientStats {
    acquire: Option<Duration>,
    committed: u64,
    errors: u64,
    first_error: Option<String>,
}

impl ClientStats {
    /// Counts an error, keeping the first message.
    fn fail(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

/// Runs `args.clients` concurrent clients against `target` while sampling the server
/// connections on `monitor`'s database.
pub(super) async fn workload(
    name: &str,
    args: &DemoArgs,
    target: &tokio_postgres::Config,
    monitor: &tokio_postgres::Config,
) -> Result<RunStats, Stop> {
    let bar = progress_bar(name, (args.clients * args.transactions) as u64);
    let stop = CancellationToken::new();
    let sampler = sample_peak(monitor, stop.clone(), bar.clone()).await?;
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..args.clients {
        let pg = target.clone();
        let bar = bar.clone();
        let transactions = args.transactions;
        let think = Duration::from_millis(args.think_ms);
        clients.spawn(client(i as u64, pg, transactions, think, bar));
    }
    let mut results = Vec::with_capacity(args.clients);
    while let Some(r) = clients.join_next().await {
        results.push(r.unwrap_or_else(|e| ClientStats {
            errors: 1,
            first_error: Some(format!("client task failed: {e}")),
            ..ClientStats::default()
        }));
    }
    let elapsed = started.elapsed();
    stop.cancel();
    let peak = sampler.await.unwrap_or(0).max(0);
    let stats = RunStats {
        peak_server_connections: peak,
        acquire: results.iter().filter_map(|c| c.acquire).collect(),
        committed: results.iter().map(|c| c.committed).sum(),
        errors: results.iter().map(|c| c.errors).sum(),
        first_error: results.iter().find_map(|c| c.first_error.clone()),
        elapsed,
    };
    bar.finish_and_clear();
    println!(
        "{name:>15}: {} transactions in {:.1} s, {} errors, peak {} server connections",
        stats.committed,
        elapsed.as_secs_f64(),
        stats.errors,
        stats.peak_server_connections
    );
    Ok(stats)
}

/// The progress bar of run `name`: `total` transactions.
fn progress_bar(name: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>15} [{bar:30.cyan/blue}] {pos:>6}/{len} tx {elapsed:>4} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Starts sampling the server connections on `monitor`'s database every 20 ms (shown on
/// `bar`) until `stop`; the task returns the peak beyond those open at the start.
async fn sample_peak(
    monitor: &tokio_postgres::Config,
    stop: CancellationToken,
    bar: ProgressBar,
) -> Result<tokio::task::JoinHandle<i64>, Stop> {
    let mon = connect(monitor)
        .await
        .map_err(|e| failed(format!("monitor connection: {}", pg_error(&e))))?;
    let count_sql = COUNT_BACKENDS;
    let baseline: i64 = mon
        .query_one(count_sql, &[])
        .await
        .map_err(|e| failed(format!("reading pg_stat_activity: {}", pg_error(&e))))?
        .get(0);
    Ok(tokio::spawn(async move {
        let mut peak = baseline;
        while !stop.is_cancelled() {
            if let Ok(row) = mon.query_one(count_sql, &[]).await {
                let now: i64 = row.get(0);
                peak = peak.max(now);
                bar.set_message(format!(
                    "server connections: {} now, {} peak",
                    now - baseline,
                    peak - baseline
                ));
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        peak - baseline
    }))
}

/// One client: connect, first query (the acquisition time), then short transactions.
async fn client(
    index: u64,
    pg: tokio_postgres::Config,
    transactions: usize,
    think: Duration,
    bar: ProgressBar,
) -> ClientStats {
    let mut stats = ClientStats::default();
    let started = Instant::now();
    let mut client = match connect(&pg).await {
        Ok(c) => c,
        Err(e) => {
            stats.fail(format!("connect: {}", pg_error(&e)));
            bar.inc(transactions as u64);
            return stats;
        }
    };
    if let Err(e) = client.simple_query("SELECT 1").await {
        stats.fail(format!("first query: {}", pg_error(&e)));
        bar.inc(transactions as u64);
        return stats;
    }
    stats.acquire = Some(started.elapsed());
    let (select, update) = match prepare(&client).await {
        Ok(s) => s,
        Err(e) => {
            stats.fail(format!("prepare: {}", pg_error(&e)));
            bar.inc(transactions as u64);
            return stats;
        }
    };
    // xorshift: a different, reproducible row sequence per client.
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for n in 0..transactions {
        if n > 0 && !think.is_zero() {
            tokio::time::sleep(think).await;
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let id = (state % ROWS as u64) as i32 + 1;
        match transaction(&mut client, &select, &update, id).await {
            Ok(()) => stats.committed += 1,
            Err(e) => stats.fail(format!("transaction: {}", pg_error(&e))),
        }
        bar.inc(1);
        if client.is_closed() {
            bar.inc((transactions - n - 1) as u64);
            break;
        }
    }
    stats
}

/// The workload's two statements: read one row's balance, add 1 to it.
async fn prepare(
    client: &tokio_postgres::Client,
) -> Result<(tokio_postgres::Statement, tokio_postgres::Statement), tokio_postgres::Error> {
    let select = client
        .prepare(&format!("SELECT balance FROM {TABLE} WHERE id = $1"))
        .await?;
    let update = client
        .prepare(&format!(
            "UPDATE {TABLE} SET balance = balance + 1 WHERE id = $1"
        ))
        .await?;
    Ok((select, update))
}

/// One transaction: SELECT and UPDATE of row `id`, COMMIT.
async fn transaction(
    client: &mut tokio_postgres::Client,
    select: &tokio_postgres::Statement,
    update: &tokio_postgres::Statement,
    id: i32,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.query_one(select, &[&id]).await?;
    tx.execute(update, &[&id]).await?;
    tx.commit().await
}
