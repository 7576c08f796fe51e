//! End-to-end test harness for Sluice.
//!
//! * [`PgCluster`] runs a throwaway PostgreSQL 15 cluster (SCRAM auth) in a temporary
//!   directory on a free loopback port.
//! * [`Sluice`] writes a configuration file and runs the real `sluice` program (the
//!   `sluice-e2e` binary of this crate) against it.
//! * [`wire_tap::WireTap`] relays MongoDB traffic and counts compressed messages.
//! * A few helpers ([`sqlstate`], [`scalar`], [`unique_name`], [`metric_value`]...) keep
//!   the tests short.
//!
//! Integration tests live in `tests/tests/*.rs`; every file is its own process and usually
//! shares one cluster ([`shared_cluster`]) between its tests, each test isolating itself in
//! its own database ([`PgCluster::create_database`]).

pub mod mongo;
pub mod pg;
pub mod proxy;
pub mod wire_tap;

pub use pg::{shared_cluster, PgCluster, APP_PASSWORD, APP_USER, SUPERUSER, SUPERUSER_PASSWORD};
pub use proxy::{DatabaseConfig, PoolMode, Sluice, SluiceBuilder};

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that this process has not
/// handed out before: the kernel may offer a just-released port again, and two listeners of
/// one test (a proxy's listen and admin ports, say) must not get the same one.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if given.insert(port) {
            return port;
        }
    }
    panic!("no free port that this process has not used yet");
}

/// A name unique within this test process, such as `prefix_3`: lowercase, usable unquoted
/// as a database or table name.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!("{}_{}", prefix, COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The SQLSTATE of a PostgreSQL error, if the error came from the server (or the proxy).
pub fn sqlstate(err: &tokio_postgres::Error) -> Option<String> {
    err.code().map(|c| c.code().to_string())
}

/// The message of the server's (or proxy's) ErrorResponse, or the error's display text.
pub fn error_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_string(),
        None => err.to_string(),
    }
}

/// Rows of a simple-query result as vectors of optional strings.
pub fn rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Runs `sql` with the simple query protocol and returns the first column of the first row
/// (`None` for SQL NULL).
///
/// # Panics
/// If the query fails or returns no row.
pub async fn scalar_opt(client: &Client, sql: &str) -> Option<String> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("query {sql:?} failed: {e:?}"));
    let rows = rows(&messages);
    let first = rows
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("query {sql:?} returned no row"));
    first.into_iter().next().flatten()
}

/// Like [`scalar_opt`], for a non-NULL value.
///
/// # Panics
/// If the query fails, returns no row or returns NULL.
pub async fn scalar(client: &Client, sql: &str) -> String {
    scalar_opt(client, sql)
        .await
        .unwrap_or_else(|| panic!("query {sql:?} returned NULL"))
}

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`: a hang guard, never a
/// performance assertion.
pub async fn within<F: std::future::Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("hang guard: {what} did not finish within {limit:?}"),
    }
}

/// Whether this process runs as root (then PostgreSQL tools run as the `postgres` OS user).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Sends one HTTP/1.1 request (`headers`: extra header lines, each ending in `\r\n`) to
/// 127.0.0.1:`port` and returns (status, body). Used against the admin listener.
///
/// # Panics
/// If the connection fails or the answer takes more than 10 s.
pub async fn http(port: u16, method: &str, path: &str, headers: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the admin listener");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n{headers}\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .expect("send HTTP request");
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("HTTP answer within 10 s")
        .expect("read HTTP answer");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the one counter or gauge sample named `metric` whose labels include every
/// `(name, value)` of `labels`, in a `GET /metrics` body (read with `prometheus-parse`).
///
/// # Panics
/// If the text does not parse, or not exactly one such sample is in it (with the text).
pub fn metric_value(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match metric_values(metrics, metric, labels)[..] {
        [v] => v,
        ref found => panic!("{} samples {metric} {labels:?} in:\n{metrics}", found.len()),
    }
}

/// The values of every counter or gauge sample named `metric` whose labels include every
/// `(name, value)` of `labels`, in a `GET /metrics` body.
///
/// # Panics
/// If the text does not parse (with the text).
pub fn metric_values(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    use prometheus_parse::{Scrape, Value};
    let scrape = Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("unparsable metrics ({e}):\n{metrics}"));
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .filter_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
        .collect()
}
