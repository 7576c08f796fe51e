//! Tests for the Prometheus renderer: the output is parsed back line by line.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::counters::PoolCounters;
use crate::pool::{CheckoutInfo, PoolSource};

/// A fake pool with live counters, as the real pool code would have.
struct FakePool {
    name: String,
    database: String,
    counters: PoolCounters,
}

impl PoolSource for FakePool {
    fn snapshot(&self) -> PoolSnapshot {
        PoolSnapshot {
            name: self.name.clone(),
            database: self.database.clone(),
            user: "app".into(),
            mode: "transaction".into(),
            max: 10,
            size: 4,
            idle: 1,
            active: 3,
            waiting: 2,
            longest_wait_seconds: 0.25,
            oldest_checkout: Some(CheckoutInfo {
                client_addr: "127.0.0.1:5555".into(),
                application_name: "psql".into(),
                age_seconds: 1.5,
            }),
            prepared_statements: 7,
            ..Default::default()
        }
        .with_counters(self.counters.snapshot())
    }
}

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `{a="x",b="y\"z"}` starting after the `{`; returns labels and the
/// rest of the line after `}`.
fn parse_labels(s: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return (labels, r);
        }
        let eq = rest.find('=').expect("label '='");
        let key = &rest[..eq];
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label name {key:?}"
        );
        let mut chars = rest[eq + 1..].char_indices();
        assert_eq!(
            chars.next().map(|c| c.1),
            Some('"'),
            "label value must be quoted"
        );
        let mut value = String::new();
        let end = loop {
            let (i, c) = chars.next().expect("unterminated label value");
            match c {
                '\\' => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => panic!("bad escape \\{c}"),
                },
                '"' => break i,
                '\n' => panic!("raw newline in label value"),
                c => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = &rest[eq + 1 + end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses the whole exposition, checking HELP/TYPE come before samples.
fn parse(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("help text");
            assert!(!help.is_empty(), "{name} has empty help");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("type");
            assert!(["gauge", "counter", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "dup TYPE {name}"
            );
        } else {
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "odd line {line:?}"
            );
            let name_end = line.find(['{', ' ']).expect("name end");
            let name = &line[..name_end];
            assert!(name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'));
            let (labels, rest) = match line[name_end..].strip_prefix('{') {
                Some(r) => parse_labels(r),
                None => (BTreeMap::new(), &line[name_end..]),
            };
            let value = rest.strip_prefix(' ').expect("space before value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value {v:?}")),
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "sample {name} before its TYPE");
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
    }
    (types, samples)
}

fn registry() -> (Registry, Arc<FakePool>) {
    let registry = Registry::new();
    let odd = Arc::new(FakePool {
        name: "we\"ird\\na\nme".into(),
        database: "db2".into(),
        counters: PoolCounters::new(),
    });
    let main = Arc::new(FakePool {
        name: "main".into(),
        database: "db1".into(),
        counters: PoolCounters::new(),
    });
    main.counters.inc_checkouts();
    main.counters.inc_queries();
    main.counters.add_bytes_in(100);
    main.counters.add_bytes_out(2000);
    main.counters.inc_error(ErrorKind::Timeout);
    for ms in [0, 1, 3, 30, 700, 90_000] {
        main.counters
            .record_checkout_wait(Duration::from_millis(ms));
    }
    registry.register(main.clone());
    registry.register(odd);
    registry.clients().inc(ClientState::Active);
    (registry, main)
}

#[test]
fn output_parses_back() {
    let (registry, _main) = registry();
    let process = ProcessStats {
        resident_memory_bytes: 1 << 20,
        open_fds: 12,
        cpu_seconds: 1.5,
        start_time_seconds: 1_700_000_000.0,
    };
    let text = render_prometheus(&registry, &process);
    let (types, samples) = parse(&text);

    for (name, kind) in [
        ("sluice_pool_connections", "gauge"),
        ("sluice_pool_max_connections", "gauge"),
        ("sluice_pool_waiting_clients", "gauge"),
        ("sluice_pool_longest_wait_seconds", "gauge"),
        ("sluice_pool_utilization", "gauge"),
        ("sluice_pool_checkouts_total", "counter"),
        ("sluice_pool_transactions_total", "counter"),
        ("sluice_pool_queries_total", "counter"),
        ("sluice_pool_bytes_received_total", "counter"),
        ("sluice_pool_bytes_sent_total", "counter"),
        ("sluice_pool_errors_total", "counter"),
        ("sluice_pool_server_connects_total", "counter"),
        ("sluice_pool_wait_seconds", "histogram"),
        ("sluice_prepared_statements", "gauge"),
        ("sluice_client_connections", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }

    let find = |name: &str, pool: &str, extra: &[(&str, &str)]| -> f64 {
        let hits: Vec<_> = samples
            .iter()
            .filter(|s| {
                s.name == name
                    && s.labels.get("pool").map(String::as_str) == Some(pool)
                    && extra
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .collect();
        assert_eq!(hits.len(), 1, "{name} {pool} {extra:?}: {hits:?}");
        hits[0].value
    };
    assert_eq!(
        find("sluice_pool_connections", "main", &[("state", "idle")]),
        1.0
    );
    assert_eq!(
        find("sluice_pool_connections", "main", &[("state", "active")]),
        3.0
    );
    assert_eq!(
        find(
            "sluice_pool_max_connections",
            "main",
            &[("database", "db1"), ("user", "app")]
        ),
        10.0
    );
    assert_eq!(find("sluice_pool_utilization", "main", &[]), 0.3);
    assert_eq!(find("sluice_prepared_statements", "main", &[]), 7.0);
    assert_eq!(find("sluice_pool_bytes_received_total", "main", &[]), 100.0);
    assert_eq!(find("sluice_pool_bytes_sent_total", "main", &[]), 2000.0);
    assert_eq!(
        find("sluice_pool_errors_total", "main", &[("kind", "timeout")]),
        1.0
    );
    assert_eq!(
        find("sluice_pool_errors_total", "main", &[("kind", "auth")]),
        0.0
    );
    // The escaped name round-trips.
    assert_eq!(
        find("sluice_pool_waiting_clients", "we\"ird\\na\nme", &[]),
        2.0
    );

    // Histogram: buckets monotonic in le and count, +Inf == _count.
    for pool in ["main", "we\"ird\\na\nme"] {
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.name == "sluice_pool_wait_seconds_bucket" && s.labels["pool"] == pool)
            .map(|s| {
                let le = &s.labels["le"];
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le")
                };
                (le, s.value)
            })
            .collect();
        assert_eq!(buckets.len(), crate::BUCKET_BOUNDS_SECONDS.len() + 1);
        assert!(buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let (last_le, last_count) = buckets[buckets.len() - 1];
        assert_eq!(last_le, f64::INFINITY);
        assert_eq!(
            last_count,
            find("sluice_pool_wait_seconds_count", pool, &[])
        );
    }
    assert_eq!(find("sluice_pool_wait_seconds_count", "main", &[]), 6.0);
    let sum = find("sluice_pool_wait_seconds_sum", "main", &[]);
    assert!((sum - 90.734).abs() < 1e-6, "{sum}");

    let global =
        |name: &str| -> Vec<&Sample> { samples.iter().filter(|s| s.name == name).collect() };
    let clients = global("sluice_client_connections");
    assert_eq!(clients.len(), 3);
    assert!(clients
        .iter()
        .any(|s| s.labels["state"] == "active" && s.value == 1.0));
    assert_eq!(
        global("process_resident_memory_bytes")[0].value,
        1_048_576.0
    );
    assert_eq!(global("process_open_fds")[0].value, 12.0);
    assert_eq!(global("process_cpu_seconds_total")[0].value, 1.5);
    assert_eq!(global("process_start_time_seconds")[0].value, 1.7e9);
}

#[test]
fn empty_registry_still_valid() {
    let text = render_prometheus(&Registry::new(), &ProcessStats::read());
    let (types, samples) = parse(&text);
    assert!(!types.contains_key("sluice_pool_connections"));
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.name == "sluice_client_connections")
            .count(),
        3
    );
    assert!(samples.iter().any(|s| s.name == "process_open_fds"));
}

#[test]
fn escapes_and_float_format() {
    assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    assert_eq!(fmt_f64(f64::NAN), "NaN");
    assert_eq!(fmt_f64(f64::INFINITY), "+Inf");
    assert_eq!(fmt_f64(0.00001), "0.00001");
    assert_eq!(fmt_f64(60.0), "60");
}
