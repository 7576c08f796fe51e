//! Prometheus text exposition format (version 0.0.4).

use std::fmt::Write as _;

use crate::counters::ErrorKind;
use crate::histogram::HistogramSnapshot;
use crate::pool::PoolSnapshot;
use crate::process::ProcessStats;
use crate::registry::{ClientState, Registry};

/// `Content-Type` for the output of [`render_prometheus`].
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every pool in `registry`, the client gauges and `process` as
/// Prometheus text. Pool series carry `database`, `user` and `pool` labels.
pub fn render_prometheus(registry: &Registry, process: &ProcessStats) -> String {
    let mut pools = registry.pool_snapshots();
    // Postgres pools come first; MongoDB pools have no prepared statements.
    let pg = pools.len();
    pools.extend(registry.mongo_snapshots());
    let labels: Vec<String> = pools.iter().map(pool_labels).collect();
    let mut out = Out(String::with_capacity(2048 + pools.len() * 4096));

    if !pools.is_empty() {
        out.header(
            "sluice_pool_connections",
            "gauge",
            "Server connections by state.",
        );
        for (p, l) in pools.iter().zip(&labels) {
            out.sample_u64(
                "sluice_pool_connections",
                &format!("{l},state=\"idle\""),
                p.idle,
            );
            out.sample_u64(
                "sluice_pool_connections",
                &format!("{l},state=\"active\""),
                p.active,
            );
        }
    }
    let gauges: [PerPool<f64>; 4] = [
        (
            "sluice_pool_max_connections",
            "Configured pool size.",
            |p| p.max as f64,
        ),
        (
            "sluice_pool_waiting_clients",
            "Clients queued for a server connection.",
            |p| p.waiting as f64,
        ),
        (
            "sluice_pool_longest_wait_seconds",
            "Wait time of the longest-queued client.",
            |p| p.longest_wait_seconds,
        ),
        (
            "sluice_pool_utilization",
            "Checked-out connections divided by pool size.",
            |p| p.utilization(),
        ),
    ];
    for (name, help, get) in gauges {
        out.per_pool_f64(&pools, &labels, name, "gauge", help, get);
    }
    out.per_pool_u64(
        &pools[..pg],
        &labels[..pg],
        "sluice_prepared_statements",
        "gauge",
        "Distinct prepared statements in the pool's shared registry (held by a client or server).",
        |p| p.prepared_statements,
    );
    let counters: [PerPool<u64>; 6] = [
        (
            "sluice_pool_checkouts_total",
            "Server connection checkouts.",
            |p| p.counters.checkouts_total,
        ),
        (
            "sluice_pool_transactions_total",
            "Transactions completed.",
            |p| p.counters.transactions_total,
        ),
        ("sluice_pool_queries_total", "Queries forwarded.", |p| {
            p.counters.queries_total
        }),
        (
            "sluice_pool_bytes_received_total",
            "Bytes received from clients and forwarded to servers.",
            |p| p.counters.bytes_in_total,
        ),
        (
            "sluice_pool_bytes_sent_total",
            "Bytes received from servers and sent to clients.",
            |p| p.counters.bytes_out_total,
        ),
        (
            "sluice_pool_server_connects_total",
            "Server connections opened.",
            |p| p.counters.server_connects_total,
        ),
    ];
    for (name, help, get) in counters {
        out.per_pool_u64(&pools, &labels, name, "counter", help, get);
    }
    if !pools.is_empty() {
        out.header("sluice_pool_errors_total", "counter", "Errors by kind.");
        for (p, l) in pools.iter().zip(&labels) {
            for kind in ErrorKind::ALL {
                out.sample_u64(
                    "sluice_pool_errors_total",
                    &format!("{l},kind=\"{}\"", kind.label()),
                    p.counters.errors.get(kind),
                );
            }
        }
        out.header(
            "sluice_pool_wait_seconds",
            "histogram",
            "Time clients waited to check out a server connection.",
        );
        for (p, l) in pools.iter().zip(&labels) {
            out.histogram("sluice_pool_wait_seconds", l, &p.counters.checkout_wait);
        }
    }

    let clients = registry.clients();
    out.header(
        "sluice_client_connections",
        "gauge",
        "Client connections by state.",
    );
    for state in ClientState::ALL {
        out.sample_u64(
            "sluice_client_connections",
            &format!("state=\"{}\"", state.label()),
            clients.get(state),
        );
    }

    let process_metrics: [(&str, &str, &str, f64); 4] = [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            process.resident_memory_bytes as f64,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            process.open_fds as f64,
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            process.cpu_seconds,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            process.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in process_metrics {
        out.header(name, kind, help);
        out.sample_f64(name, "", value);
    }
    out.0
}

/// A per-pool metric family: name, help text and value extractor.
type PerPool<T> = (&'static str, &'static str, fn(&PoolSnapshot) -> T);

/// `database="..",user="..",pool=".."` with escaped values.
fn pool_labels(p: &PoolSnapshot) -> String {
    format!(
        "database=\"{}\",user=\"{}\",pool=\"{}\"",
        escape_label(&p.database),
        escape_label(&p.user),
        escape_label(&p.name)
    )
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Formats a float the way Prometheus parses it.
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Output buffer; writing to a `String` cannot fail, so results are ignored.
struct Out(String);

impl Out {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample_u64(&mut self, name: &str, labels: &str, value: u64) {
        self.sample(name, labels, &value.to_string());
    }

    fn sample_f64(&mut self, name: &str, labels: &str, value: f64) {
        self.sample(name, labels, &fmt_f64(value));
    }

    fn sample(&mut self, name: &str, labels: &str, value: &str) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    fn per_pool_u64(
        &mut self,
        pools: &[PoolSnapshot],
        labels: &[String],
        name: &str,
        kind: &str,
        help: &str,
        get: fn(&PoolSnapshot) -> u64,
    ) {
        if pools.is_empty() {
            return;
        }
        self.header(name, kind, help);
        for (p, l) in pools.iter().zip(labels) {
            self.sample_u64(name, l, get(p));
        }
    }

    fn per_pool_f64(
        &mut self,
        pools: &[PoolSnapshot],
        labels: &[String],
        name: &str,
        kind: &str,
        help: &str,
        get: fn(&PoolSnapshot) -> f64,
    ) {
        if pools.is_empty() {
            return;
        }
        self.header(name, kind, help);
        for (p, l) in pools.iter().zip(labels) {
            self.sample_f64(name, l, get(p));
        }
    }

    fn histogram(&mut self, name: &str, labels: &str, h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for &(le, count) in &h.buckets {
            self.sample_u64(&bucket, &format!("{labels},le=\"{}\"", fmt_f64(le)), count);
        }
        self.sample_u64(&bucket, &format!("{labels},le=\"+Inf\""), h.count);
        self.sample_f64(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample_u64(&format!("{name}_count"), labels, h.count);
    }
}

#[cfg(test)]
#[path = "prometheus_tests.rs"]
mod tests;
