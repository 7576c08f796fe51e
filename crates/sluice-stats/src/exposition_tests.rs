//! Tests for the exposition: the text is read back with `prometheus-parse`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::Collector as _;
use prometheus_parse::{Sample, Scrape, Value};

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
            notify: crate::NotifySnapshot {
                channels: 2,
                listeners: 3,
                notifications_total: 11,
                overflows_total: 1,
                reconnects_total: 4,
            },
            pinned: vec![crate::PinnedInfo::default(); 2],
            ..Default::default()
        }
        .with_counters(self.counters.snapshot())
    }
}

const ODD: &str = "we\"ird\\na\nme";

fn registry() -> (Arc<Registry>, Arc<FakePool>) {
    let registry = Registry::new();
    let odd = Arc::new(FakePool {
        name: ODD.into(),
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
    registry.register_mongo(odd);
    registry.clients().inc(ClientState::Active);
    (Arc::new(registry), main)
}

/// The exposition of `registry`, as text and parsed.
fn scrape(registry: Arc<Registry>) -> (String, Scrape) {
    let text = Exposition::new(registry)
        .expect("exposition")
        .render()
        .expect("render");
    assert!(text.ends_with('\n'));
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse");
    (text, scrape)
}

/// `# TYPE` of family `name`.
fn type_of<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (n, kind) = l.strip_prefix("# TYPE ")?.split_once(' ')?;
        (n == name).then_some(kind)
    })
}

/// The one sample `metric` of `pool` whose labels include `extra`.
fn one<'a>(s: &'a Scrape, metric: &str, pool: &str, extra: &[(&str, &str)]) -> &'a Sample {
    let hits: Vec<_> = s
        .samples
        .iter()
        .filter(|x| {
            x.metric == metric
                && x.labels.get("pool") == Some(pool)
                && extra.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
        })
        .collect();
    assert_eq!(hits.len(), 1, "{metric} {pool} {extra:?}: {hits:?}");
    hits[0]
}

fn scalar(s: &Scrape, metric: &str, pool: &str, extra: &[(&str, &str)]) -> f64 {
    match one(s, metric, pool, extra).value {
        // `prometheus-parse` types a histogram's `_sum` and `_count` as untyped.
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric}: not a scalar: {other:?}"),
    }
}

/// Every family today's dashboards and alerts read, with its type and help.
const FAMILIES: [(&str, &str, &str); 22] = [
    (
        "sluice_pool_connections",
        "gauge",
        "Server connections by state.",
    ),
    (
        "sluice_pool_max_connections",
        "gauge",
        "Configured pool size.",
    ),
    (
        "sluice_pool_open_connections",
        "gauge",
        "Server connections open: idle, checked out, or being opened.",
    ),
    (
        "sluice_pool_waiting_clients",
        "gauge",
        "Clients queued for a server connection.",
    ),
    (
        "sluice_pool_longest_wait_seconds",
        "gauge",
        "Wait time of the longest-queued client.",
    ),
    (
        "sluice_pool_utilization",
        "gauge",
        "Checked-out connections divided by pool size.",
    ),
    (
        "sluice_pool_checkouts_total",
        "counter",
        "Server connection checkouts.",
    ),
    (
        "sluice_pool_transactions_total",
        "counter",
        "Transactions completed.",
    ),
    ("sluice_pool_queries_total", "counter", "Queries forwarded."),
    (
        "sluice_pool_bytes_received_total",
        "counter",
        "Bytes received from clients and forwarded to servers.",
    ),
    (
        "sluice_pool_bytes_sent_total",
        "counter",
        "Bytes received from servers and sent to clients.",
    ),
    ("sluice_pool_errors_total", "counter", "Errors by kind."),
    (
        "sluice_pool_server_connects_total",
        "counter",
        "Server connections opened.",
    ),
    (
        "sluice_pool_wait_seconds",
        "histogram",
        "Time clients waited to check out a server connection.",
    ),
    (
        "sluice_prepared_statements",
        "gauge",
        "Distinct prepared statements in the pool's shared registry (held by a client or server).",
    ),
    (
        "sluice_client_connections",
        "gauge",
        "Client connections by state.",
    ),
    (
        "sluice_pinned_servers",
        "gauge",
        "Servers kept by a client across transactions for session state (transaction mode pinning).",
    ),
    (
        "sluice_listen_channels",
        "gauge",
        "Channels the pool's notification listener connection LISTENs on.",
    ),
    (
        "sluice_listen_clients",
        "gauge",
        "Clients listening on channels through the pool's notification listener.",
    ),
    (
        "sluice_notifications_total",
        "counter",
        "Notifications handed to listening clients.",
    ),
    (
        "sluice_notification_overflows_total",
        "counter",
        "Clients disconnected because their queue of undelivered notifications was full.",
    ),
    (
        "sluice_listen_reconnects_total",
        "counter",
        "Reconnects of the notification listener after its connection broke (notifications sent meanwhile are lost).",
    ),
];

#[test]
fn families_keep_names_types_help_and_labels() {
    let (text, s) = scrape(registry().0);
    for (name, kind, help) in FAMILIES {
        assert_eq!(type_of(&text, name), Some(kind), "{name}");
        assert_eq!(s.docs.get(name).map(String::as_str), Some(help), "{name}");
    }
    // Label names (and their order on the line) are those of the old encoder.
    assert!(
        text.contains(
            "sluice_pool_errors_total{database=\"db1\",user=\"app\",pool=\"main\",kind=\"timeout\"} 1\n"
        ),
        "{text}"
    );
    assert!(text
        .contains("sluice_pool_max_connections{database=\"db1\",user=\"app\",pool=\"main\"} 10\n"));
    assert!(text.contains("sluice_client_connections{state=\"active\"} 1\n"));
}

#[test]
fn values_come_from_the_snapshots() {
    let (_, s) = scrape(registry().0);
    assert_eq!(
        scalar(&s, "sluice_pool_connections", "main", &[("state", "idle")]),
        1.0
    );
    assert_eq!(
        scalar(
            &s,
            "sluice_pool_connections",
            "main",
            &[("state", "active")]
        ),
        3.0
    );
    let max = &[("database", "db1"), ("user", "app")];
    assert_eq!(scalar(&s, "sluice_pool_max_connections", "main", max), 10.0);
    assert_eq!(scalar(&s, "sluice_pool_utilization", "main", &[]), 0.3);
    assert_eq!(scalar(&s, "sluice_prepared_statements", "main", &[]), 7.0);
    assert_eq!(scalar(&s, "sluice_listen_channels", "main", &[]), 2.0);
    assert_eq!(scalar(&s, "sluice_pinned_servers", "main", &[]), 2.0);
    assert_eq!(scalar(&s, "sluice_listen_clients", "main", &[]), 3.0);
    assert_eq!(scalar(&s, "sluice_notifications_total", "main", &[]), 11.0);
    assert_eq!(
        scalar(&s, "sluice_notification_overflows_total", "main", &[]),
        1.0
    );
    assert_eq!(
        scalar(&s, "sluice_listen_reconnects_total", "main", &[]),
        4.0
    );
    assert_eq!(
        scalar(&s, "sluice_pool_longest_wait_seconds", "main", &[]),
        0.25
    );
    assert_eq!(scalar(&s, "sluice_pool_checkouts_total", "main", &[]), 1.0);
    assert_eq!(scalar(&s, "sluice_pool_queries_total", "main", &[]), 1.0);
    assert_eq!(
        scalar(&s, "sluice_pool_transactions_total", "main", &[]),
        0.0
    );
    assert_eq!(
        scalar(&s, "sluice_pool_bytes_received_total", "main", &[]),
        100.0
    );
    assert_eq!(
        scalar(&s, "sluice_pool_bytes_sent_total", "main", &[]),
        2000.0
    );
    let errors = |kind| scalar(&s, "sluice_pool_errors_total", "main", &[("kind", kind)]);
    assert_eq!(errors("timeout"), 1.0);
    for kind in ["connect", "server_lost", "protocol", "auth"] {
        assert_eq!(errors(kind), 0.0, "{kind}");
    }
    let clients: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == "sluice_client_connections")
        .map(|x| (x.labels.get("state"), x.value.clone()))
        .collect();
    assert_eq!(clients.len(), 3, "{clients:?}");
    assert!(clients.contains(&(Some("active"), Value::Gauge(1.0))));
}

#[test]
fn histogram_has_todays_buckets() {
    let (text, s) = scrape(registry().0);
    let Value::Histogram(buckets) = &one(&s, "sluice_pool_wait_seconds", "main", &[]).value else {
        panic!("not a histogram");
    };
    let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
    let mut want = crate::BUCKET_BOUNDS_SECONDS.to_vec();
    want.push(f64::INFINITY);
    assert_eq!(bounds, want);
    let counts: Vec<f64> = buckets.iter().map(|b| b.count).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    // 0 and 1 ms; 3 ms; 30 ms; 700 ms; 90 s only in +Inf.
    assert_eq!(counts[6], 2.0, "le=0.001");
    assert_eq!(counts[8], 3.0, "le=0.005");
    assert_eq!(counts[20], 5.0, "le=60");
    assert_eq!(counts[21], 6.0, "le=+Inf");
    assert_eq!(
        scalar(&s, "sluice_pool_wait_seconds_count", "main", &[]),
        6.0
    );
    let sum = scalar(&s, "sluice_pool_wait_seconds_sum", "main", &[]);
    assert!((sum - 90.734).abs() < 1e-6, "{sum}");
    // The bounds are written as before (`0.00001`, not `1e-5`).
    assert!(text.contains(
        "sluice_pool_wait_seconds_bucket{database=\"db1\",user=\"app\",pool=\"main\",le=\"0.00001\"} 1\n"
    ));
    assert!(text.contains("le=\"60\"} 5\n"));
}

#[test]
fn label_values_are_escaped() {
    let (text, _) = scrape(registry().0);
    assert!(
        text.contains(
            "sluice_pool_waiting_clients{database=\"db2\",user=\"app\",pool=\"we\\\"ird\\\\na\\nme\"} 2\n"
        ),
        "{text}"
    );
    assert!(!text.contains(ODD));
}

#[test]
fn empty_registry_has_client_and_process_metrics() {
    let (text, s) = scrape(Arc::new(Registry::new()));
    assert_eq!(type_of(&text, "sluice_pool_connections"), None);
    assert_eq!(
        s.samples
            .iter()
            .filter(|x| x.metric == "sluice_client_connections")
            .count(),
        3
    );
    #[cfg(target_os = "linux")]
    for (name, kind) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("process_threads", "gauge"),
    ] {
        assert_eq!(type_of(&text, name), Some(kind), "{name}");
        let value = s.samples.iter().find(|x| x.metric == name);
        assert!(value.is_some(), "{name} has no sample");
    }
}

#[test]
fn every_collected_family_is_described() {
    let collector = PoolCollector::new(registry().0).expect("collector");
    let described: BTreeSet<&str> = collector
        .desc()
        .iter()
        .map(|d| d.fq_name.as_str())
        .collect();
    let collected: BTreeSet<String> = collector
        .collect()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    let want: BTreeSet<&str> = FAMILIES.iter().map(|f| f.0).collect();
    assert_eq!(described, want);
    assert_eq!(
        collected
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        want
    );
    for d in collector.desc() {
        let labels = &d.variable_labels;
        match d.fq_name.as_str() {
            "sluice_client_connections" => assert_eq!(labels, &["state"]),
            "sluice_pool_connections" => assert_eq!(labels, &["database", "user", "pool", "state"]),
            "sluice_pool_errors_total" => assert_eq!(labels, &["database", "user", "pool", "kind"]),
            _ => assert_eq!(labels, &["database", "user", "pool"], "{}", d.fq_name),
        }
    }
}

#[path = "exposition_member_tests.rs"]
mod member;
